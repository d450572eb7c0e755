"""`distillery run` and the pipeline engine: bundled pipelines end to end, resume after kill -9, reuse of
finished steps, the one summary and rejection schema, and the core's pieces on their own."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import FakeOpenAI, Reply, user_text
from tiny_tokenizer import CHATML_JINJA, build_tiny_tokenizer

from distillery.endpoint import EndpointOptions
from distillery.executor import LocalExecutor
from distillery.pipeline import Pipeline, load_pipeline
from distillery.recipes import Convert, Dedup, Export, Read, Stats
from distillery.report import ReportOptions, collect
from distillery.step import Filter
from distillery.summary import SCHEMA, StageStats, Summary

ENDPOINT_FLAGS = {f.name for f in dataclasses.fields(EndpointOptions)}  # every LLM command's, from one place
RAW_SHAREGPT = Path(__file__).resolve().parents[1] / "examples" / "sharegpt_raw.json"
# Language identification of short instructions loads lingua's large models: seconds no test here needs.
NO_LANG = ("--set", "report.lang_sample=0")


def instructions(path: Path, count: int, repeats: int = 0) -> list[dict]:
    """Alpaca records, distinct by Alpaca's ROUGE-L rule, with `repeats` exact repeats at the end."""
    records = [{"instruction": f"Task number {i}", "input": "ctx" if i % 3 == 0 else "", "output": "", "id": i}
               for i in range(count)]
    records += [{**records[i], "id": count + i} for i in range(repeats)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_vicuna_runs_offline_end_to_end(tmp_path):
    run = tmp_path / "run"
    done = run_cli("run", "vicuna", "--input", str(RAW_SHAREGPT), "-o", str(run), env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    dataset = read_jsonl(run / "dataset.jsonl")
    rejected = read_jsonl(run / "rejected.jsonl")
    raw = json.loads(RAW_SHAREGPT.read_text())
    raw_ids = {record["id"] for record in raw}
    assert {r["id"].rsplit("_", 1)[0] if r["id"] not in raw_ids else r["id"] for r in dataset} | {
        r["record"]["id"] for r in rejected} == raw_ids  # every input is kept or explained
    assert all(set(r) == {"stage", "reason", "detail", "record"} for r in rejected)
    assert json.loads((run / "data" / "vicuna.json").read_text()) == dataset
    info = json.loads((run / "data" / "dataset_info.json").read_text())
    assert info["vicuna"]["formatting"] == "sharegpt" and info["vicuna"]["file_name"] == "vicuna.json"
    summary = Summary.read(run / "summary.json")
    assert [s.stage for s in summary.stages] == ["read", "clean", "export", "report"]
    assert summary.stages[1].seen == len(raw) and summary.stages[-1].kept == len(dataset)
    assert sum(summary.stages[1].dropped.values()) == len(rejected)
    assert "vicuna pipeline" in (run / "report.html").read_text()
    assert sorted(p.name for p in (run / "steps").iterdir()) == ["00-read", "01-clean", "02-export", "03-report"]


def test_alpaca_gpt4_end_to_end_with_tokenized_export(fake_server, tmp_path):
    records = instructions(tmp_path / "in.jsonl", 30, repeats=3)
    tokenizer = build_tiny_tokenizer(tmp_path / "tok", CHATML_JINJA)
    run = tmp_path / "run"
    done = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(run),
                   "--set", f"export.tokenizer={tokenizer}", "--set", "export.template=chatml",
                   "--set", "respond.system=Be brief.", *NO_LANG, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    dataset = read_jsonl(run / "dataset.jsonl")
    assert [r["id"] for r in dataset] == [r["id"] for r in records[:30]]
    assert dataset[0]["output"] == "ANSWER: Task number 0\n\nctx"
    assert len(fake_server.requests) == 30  # the repeats were dropped before anything was paid for
    assert fake_server.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    rejected = read_jsonl(run / "rejected.jsonl")
    assert [(r["stage"], r["reason"], r["record"]["id"]) for r in rejected] == [
        ("dedup", "near_duplicate", 30), ("dedup", "near_duplicate", 31), ("dedup", "near_duplicate", 32)]
    assert rejected[0]["detail"]["score"] == 1.0
    assert json.loads((run / "data" / "alpaca_gpt4.json").read_text())[0]["output"] == dataset[0]["output"]
    assert (run / "alpaca_gpt4.tokenized.parquet").stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    respond = next(s for s in summary["stages"] if s["stage"] == "respond")
    assert respond["requests"]["sent"] == 30 and summary["totals"]["requests"] == 30
    assert (run / "report.html").is_file()


def test_kill_9_mid_respond_then_same_command_finishes_identically(tmp_path):
    instructions(tmp_path / "in.jsonl", 400)
    args = ["run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "--concurrency", "8", *NO_LANG]
    with FakeOpenAI(latency=0.02) as server:
        victim = subprocess.Popen([cli_exe(), *args, "-o", str(tmp_path / "killed")], env=cli_env(server),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while sum(server.answered.values()) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        answered_before = sum(server.answered.values())
        assert 100 <= answered_before < 400
        assert not (tmp_path / "killed" / "steps" / "02-respond" / "records.jsonl").exists()
        done = run_cli(*args, "-o", str(tmp_path / "killed"), env=cli_env(server))
        assert done.returncode == 0, done.stderr
        twice = [prompt for prompt, count in server.answered.items() if count > 1]
        assert len(twice) <= 8  # at most the requests in flight at the kill
        assert len(server.answered) == 400
    with FakeOpenAI() as server:
        done = run_cli(*args, "-o", str(tmp_path / "whole"), env=cli_env(server))
        assert done.returncode == 0, done.stderr
    for name in ("dataset.jsonl", "data/alpaca_gpt4.json", "data/dataset_info.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert resumed["reused"] == ["read", "dedup"]


def test_changing_an_export_option_reruns_only_export_and_after(fake_server, tmp_path):
    instructions(tmp_path / "in.jsonl", 12)
    run = tmp_path / "run"
    args = ["run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(run), *NO_LANG]
    assert run_cli(*args, env=cli_env(fake_server)).returncode == 0
    respond_output = run / "steps" / "02-respond" / "records.jsonl"
    written_at = respond_output.stat().st_mtime_ns
    done = run_cli(*args, "--set", "export.name=renamed", "--set", "export.format=sharegpt", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert len(fake_server.requests) == 12  # nothing asked again, not even from the cache
    assert respond_output.stat().st_mtime_ns == written_at
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reused"] == ["read", "dedup", "respond"]
    renamed = json.loads((run / "data" / "renamed.json").read_text())
    assert renamed[0]["conversations"][1]["value"] == "ANSWER: Task number 0\n\nctx"
    assert set(json.loads((run / "data" / "dataset_info.json").read_text())) == {"alpaca_gpt4", "renamed"}
    again = run_cli(*args, "--set", "export.name=renamed", "--set", "export.format=sharegpt", env=cli_env(fake_server))
    assert again.returncode == 0
    assert json.loads((run / "summary.json").read_text())["reused"] == ["read", "dedup", "respond", "export",
                                                                         "report"]
    fresh = run_cli(*args, "--fresh", env=cli_env(fake_server))
    assert fresh.returncode == 0
    assert json.loads((run / "summary.json").read_text())["reused"] == [] and len(fake_server.requests) == 24


def test_report_reads_the_run_summary_and_rejections(fake_server, tmp_path):
    instructions(tmp_path / "in.jsonl", 10, repeats=2)
    run = tmp_path / "run"
    done = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(run), *NO_LANG,
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    options = ReportOptions([run / "dataset.jsonl"], output=tmp_path / "r.html", lang_sample=0,
                            summaries=[run / "summary.json"], rejected=[run / "rejected.jsonl"])
    rejections = collect(options)[0].rejections
    assert [(s.name, s.seen, s.kept, s.dropped) for s in rejections.stages] == [
        ("read", 0, 12, {}), ("dedup", 12, 10, {"near_duplicate": 2}), ("respond", 10, 10, {}),
        ("export", 10, 10, {}), ("report", 10, 10, {})]
    assert len(rejections.examples["near_duplicate"]) == 2


def test_dry_run_prints_steps_options_and_estimate_without_spending(fake_server, tmp_path):
    instructions(tmp_path / "in.jsonl", 25)
    run = tmp_path / "run"
    done = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(run), "--dry-run",
                   "--model", "gpt-4o-mini", "--max-tokens", "100", "--set", "dedup.threshold=0.8",
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert "step dedup" in done.stdout and "0.8" in done.stdout
    assert "respond: model gpt-4o-mini, at most 25 requests" in done.stdout
    assert "2,500 completion tokens" in done.stdout
    assert not fake_server.requests and not run.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "dedup.threshold=high"], "dedup.threshold: expected float, got 'high'"),
    (["--set", "dedup.nope=1"], "step 'dedup' has no option 'nope'"),
    (["--set", "judge.x=1"], "this pipeline has no step 'judge'"),
    (["--set", "respond.endpoint.colour=red"], "no endpoint option 'colour'"),
    (["--input", "missing.jsonl"], "missing.jsonl: no such file"),
])
def test_bad_overrides_are_one_line_exit_2(fake_server, tmp_path, args, expected):
    instructions(tmp_path / "in.jsonl", 3)
    done = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "run"), *args,
                   env=cli_env(fake_server))
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
    assert not fake_server.requests and not (tmp_path / "run").exists()


def test_list_unknown_pipeline_and_a_file_as_run_directory(tmp_path):
    listed = run_cli("run", "--list")
    assert listed.returncode == 0 and "vicuna" in listed.stdout and "alpaca-gpt4" in listed.stdout
    unknown = run_cli("run", "nosuch", "-o", str(tmp_path / "run"))
    assert unknown.returncode == 2 and "no pipeline named 'nosuch'" in unknown.stderr
    assert not (tmp_path / "run").exists()
    (tmp_path / "taken").write_text("mine")
    taken = run_cli("run", "vicuna", "-i", str(RAW_SHAREGPT), "-o", str(tmp_path / "taken"))
    assert taken.returncode == 2 and "is a file; the run's output is a directory" in taken.stderr
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    with FakeOpenAI(latency=0.2) as server:
        instructions(tmp_path / "in.jsonl", 40)
        args = ["run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "run"),
                "--concurrency", "1"]
        first = subprocess.Popen([cli_exe(), *args], env=cli_env(server), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            second = run_cli(*args, env=cli_env(server))
            assert second.returncode == 2 and "another run is using this output" in second.stderr
        finally:
            first.kill()
            first.wait()


# --- the core on its own ------------------------------------------------------------------------------------


def test_stats_add_up():
    a = StageStats("dedup", 10, 7, dropped={"near_duplicate": 3}, sent=2, cost_usd=0.5)
    b = StageStats("dedup", 5, 5, sent=1, cost_usd=0.25)
    total = a + b
    assert (total.seen, total.kept, dict(total.dropped), total.sent, total.cost_usd) == (
        15, 12, {"near_duplicate": 3}, 3, 0.75)
    merged = Summary([a, StageStats("read", 0, 10)]) + Summary([b])
    assert [(s.stage, s.seen) for s in merged.stages] == [("dedup", 15), ("read", 0)]
    assert Summary.from_dict(merged.as_dict()).as_dict() == merged.as_dict()
    assert merged.as_dict()["schema"] == SCHEMA
    with pytest.raises(ValueError):
        a + StageStats("read")


class OddIds(Filter):
    name = "odd_ids"
    cpu_bound = True

    def keep(self, record):
        return True if record["id"] % 2 else (False, "even", {"id": record["id"]})


def test_workers_give_the_same_output_and_counts_as_one_process(tmp_path):
    records = instructions(tmp_path / "in.jsonl", 50)
    outputs = {}
    for workers in (1, 2):
        run = tmp_path / f"run{workers}"
        steps = [Read(files=[str(tmp_path / "in.jsonl")]), OddIds(), Convert(to="sharegpt")]
        result = LocalExecutor(workers=workers, chunk_size=7).run(steps, run)
        assert result.exit_code == 0
        outputs[workers] = ((run / "dataset.jsonl").read_bytes(), (run / "rejected.jsonl").read_bytes(),
                            [(s.stage, s.seen, s.kept, dict(s.dropped)) for s in result.summary.stages])
    assert outputs[1] == outputs[2]
    assert outputs[2][2][1] == ("odd_ids", 50, 25, {"even": 25})
    assert len(outputs[2][0].splitlines()) == len([r for r in records if r["id"] % 2])


def test_python_api_and_fingerprints(tmp_path):
    instructions(tmp_path / "in.jsonl", 20, repeats=2)
    pipeline = Pipeline([Read(), Dedup(threshold=0.7), Convert(to="openai")])
    first = pipeline.run(tmp_path / "run", inputs=[tmp_path / "in.jsonl"])
    assert first.ran == ["read", "dedup", "convert"] and first.records == 20
    again = Pipeline([Read(), Dedup(threshold=0.7), Convert(to="sharegpt")]).run(tmp_path / "run",
                                                                                 inputs=[tmp_path / "in.jsonl"])
    assert again.reused == ["read", "dedup"] and again.ran == ["convert"]
    changed = Pipeline([Read(), Dedup(threshold=0.9), Convert(to="sharegpt")]).run(tmp_path / "run",
                                                                                   inputs=[tmp_path / "in.jsonl"])
    assert changed.reused == ["read"]
    assert "conversations" in read_jsonl(tmp_path / "run" / "dataset.jsonl")[0]
    assert [s.name for s in load_pipeline("vicuna").steps] == ["read", "clean", "export", "report"]


def test_failed_requests_leave_the_llm_step_unfinished_for_a_rerun(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=500) if "number 3" in user_text(body) else "fine"
    instructions(tmp_path / "in.jsonl", 6)
    args = ["run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "run"),
            "--max-retries", "0", *NO_LANG]
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 3
    failed = [r for r in read_jsonl(tmp_path / "run" / "rejected.jsonl") if r["reason"] == "request_failed"]
    assert [r["record"]["id"] for r in failed] == [3] and "HTTP 500" in failed[0]["detail"]
    fake_server.script = lambda body, n: "fine"
    again = run_cli(*args, env=cli_env(fake_server))
    assert again.returncode == 0, again.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "run" / "dataset.jsonl")] == list(range(6))
    assert len(fake_server.requests) == 7  # five answers came back from the journal, one was retried


def test_a_run_whose_records_are_all_dropped_finishes_empty(tmp_path):
    instructions(tmp_path / "in.jsonl", 5)
    pipeline = Pipeline([Read(), Dedup(against=[str(tmp_path / "in.jsonl")]), Export(), Stats()])
    result = pipeline.run(tmp_path / "run", inputs=[tmp_path / "in.jsonl"])
    assert result.exit_code == 0 and result.records == 0
    assert (tmp_path / "run" / "dataset.jsonl").read_text() == ""
    assert len(read_jsonl(tmp_path / "run" / "rejected.jsonl")) == 5
    assert result.summary.stages[2].notes == {"nothing_to_do": 1}


def test_an_emptied_run_says_so_and_leaves_no_export_or_report_of_an_earlier_one(tmp_path):
    """A teacher whose every evolution is eliminated (the 135M demo teacher) empties the dataset: the run
    ends, exit 0, with one line saying why, and the data file, registry entry and report of an earlier run
    into the same directory are gone rather than passing for this run's result."""
    instructions(tmp_path / "in.jsonl", 4)
    (tmp_path / "other.jsonl").write_text(json.dumps({"instruction": "Name a planet.", "output": "Mars"}) + "\n")
    run = tmp_path / "run"
    pipeline = tmp_path / "p.yaml"
    steps = "steps:\n  - read\n  - dedup:\n      against: [{}]\n  - export:\n      format: alpaca\n  - report\n"
    pipeline.write_text(steps.format(tmp_path / "other.jsonl"))
    first = run_cli("run", str(pipeline), "-i", str(tmp_path / "in.jsonl"), "-o", str(run), *NO_LANG)
    assert first.returncode == 0, first.stderr
    assert (run / "data" / "dataset.json").is_file() and (run / "report.html").is_file()
    pipeline.write_text(steps.format(tmp_path / "in.jsonl"))
    emptied = run_cli("run", str(pipeline), "-i", str(tmp_path / "in.jsonl"), "-o", str(run), *NO_LANG)
    assert emptied.returncode == 0, emptied.stderr
    assert " ".join(emptied.stderr.split()).startswith("the dataset is empty: every record was dropped (dedup: ")
    assert not (run / "data" / "dataset.json").exists() and not (run / "report.html").exists()
    assert json.loads((run / "data" / "dataset_info.json").read_text()) == {}


@pytest.mark.parametrize(("command", "step", "command_only", "step_only"), [
    ("clean", "clean", {"input", "output", "rejected", "workers", "chunk_size"}, set()),
    ("dedup", "dedup", {"input", "output", "rejected"}, {"num_perm", "against_seeds"}),
    ("self_instruct", "self_instruct", {"output", *ENDPOINT_FLAGS}, {"endpoint"}),
    ("convert", "convert", {"input", "output", "rejected", "dataset_info", "name"}, set()),
    ("export", "export", {"input", "output", "rejected", "allow_template_mismatch"}, {"format", "name"}),
    ("stats", "stats", {"input", "json_path"}, set()),
    ("report", "report", {"inputs", "output", "rejected", "summary"}, set()),
])
def test_step_options_match_their_commands_flags(command, step, command_only, step_only):
    """A pipeline file and the command line take the same options with the same defaults."""
    import dataclasses
    import inspect

    from distillery import cli
    from distillery.recipes import STEPS

    flags = {name: p.default for name, p in inspect.signature(getattr(cli, command)).parameters.items()}
    options = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
               for f in dataclasses.fields(STEPS[step].Options)}
    assert set(flags) - command_only == set(options) - step_only
    for name in set(flags) - command_only:
        if flags[name] is not inspect.Parameter.empty:  # a flag the command requires has no default to match
            assert options[name] == flags[name] or (options[name] == [] and flags[name] is None), name


def test_a_pipeline_file_runs_and_its_mistakes_are_one_line(tmp_path):
    instructions(tmp_path / "in.jsonl", 8, repeats=2)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("description: mine\nsteps:\n  - read\n  - dedup: {method: exact}\n"
                      "  - convert: {to: openai}\n  - stats\n")
    done = run_cli("run", str(recipe), "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 8
    assert json.loads((tmp_path / "run" / "steps" / "03-stats" / "stats.json").read_text())["records"] == 8
    for text, expected in [
        ("steps:\n  - dedup: {num_perm: [1]}\n", "dedup.num_perm: expected int, got [1]"),
        ("steps:\n  - nosuch\n", "unknown step 'nosuch'"),
        ("steps: [read\n", "not valid YAML"),
        ("read: {}\n", "a pipeline file is a mapping with a `steps` list"),
    ]:
        recipe.write_text(text)
        bad = run_cli("run", str(recipe), "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "bad"))
        assert bad.returncode == 2 and expected in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()
