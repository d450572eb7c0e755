"""`distillery run wizardlm`: Evol-Instruct as a pipeline step, end to end and across kill -9, and the
`evol` step agreeing with the `distillery evol` command it shares its recipe with."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from conftest import cli_env, cli_exe, run_cli
from fake_openai import FakeOpenAI
from test_evol import SEED, classify, judged_script, poison_script, request_counts, seeds_file

from distillery.summary import Summary

# Language identification of short instructions loads lingua's large models: seconds no test here needs.
NO_LANG = ("--set", "report.lang_sample=0")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_wizardlm_end_to_end_matches_the_evol_command_and_ends_in_export_and_report(fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds_file(tmp_path / "seeds.json", 12)
    run = tmp_path / "run"
    done = run_cli("run", "wizardlm", "-i", str(tmp_path / "seeds.json"), "-o", str(run), "--seed", str(SEED),
                   "--set", "evol.rounds=2", *NO_LANG, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    pipeline_requests = list(fake_server.requests)
    evolve = [body for body in pipeline_requests if classify(body)[0] == "evolve"]
    assert len(evolve) == 12 * 2, "--set evol.rounds=2: two rounds per seed"
    assert {(b["temperature"], b["top_p"], b["max_tokens"]) for b in evolve} == {(1.0, 0.95, 2048)}, \
        "the pipeline samples as `distillery evol` does"

    # The command over the same seeds writes what the pipeline's evol step wrote, from the same requests.
    fake_server.requests.clear()
    command = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(tmp_path / "evolved.jsonl"), "--rounds", "2",
                      "--seed", str(SEED), env=cli_env(fake_server))
    assert command.returncode == 0, command.stderr
    assert request_counts(fake_server.requests) == request_counts(pipeline_requests)
    evolved = read_jsonl(tmp_path / "evolved.jsonl")
    assert read_jsonl(run / "steps" / "01-evol" / "records.jsonl") == evolved

    dataset = read_jsonl(run / "dataset.jsonl")
    assert dataset and all(r["output"].startswith("A full answer") and r["evol"]["round"] in (1, 2) for r in dataset)
    assert json.loads((run / "data" / "wizardlm.json").read_text()) == dataset
    info = json.loads((run / "data" / "dataset_info.json").read_text())
    assert info["wizardlm"]["file_name"] == "wizardlm.json"
    rejected = read_jsonl(run / "rejected.jsonl")
    assert all(set(r) == {"stage", "reason", "detail", "record"} for r in rejected)
    by_rule = Counter(r["reason"] for r in rejected if r["stage"] == "evol")
    command_rejected = read_jsonl(tmp_path / "evolved.jsonl.rejected.jsonl")
    assert command_rejected == [r for r in rejected if r["stage"] == "evol"], "the command and the run reject alike"
    summary = Summary.read(run / "summary.json")
    assert [s.stage for s in summary.stages] == ["read", "evol", "dedup", "export", "report"]
    evol_stage = summary.stages[1]
    assert (evol_stage.seen, evol_stage.kept, evol_stage.sent) == (12, len(evolved), len(pipeline_requests))
    assert dict(evol_stage.dropped) == dict(by_rule)
    assert "wizardlm pipeline" in (run / "report.html").read_text()


def test_wizardlm_without_input_evolves_the_built_in_seeds_and_dry_run_estimates(fake_server, tmp_path):
    dry = run_cli("run", "wizardlm", "--dry-run", "--set", "evol.rounds=2", env=cli_env(fake_server))
    assert dry.returncode == 0, dry.stderr
    assert "rounds" in dry.stdout and "evol: model fake-model" in dry.stdout
    builtin = sum(1 for _ in (Path(__file__).parents[1] / "src/distillery/data/seeds/en.jsonl").open())
    assert f"at most {builtin * 2 * 3:,} requests" in dry.stdout, "rewrite, judge and answer in each of 2 rounds"
    assert fake_server.requests == []

    fake_server.script = judged_script
    run = tmp_path / "run"
    done = run_cli("run", "wizardlm", "-o", str(run), "--seed", str(SEED), "--set", "evol.rounds=1", *NO_LANG,
                   env=cli_env(fake_server), timeout=300)
    assert done.returncode == 0, done.stderr
    summary = Summary.read(run / "summary.json")
    assert summary.stages[0].kept == summary.stages[1].seen == builtin
    assert len([b for b in fake_server.requests if classify(b)[0] == "evolve"]) == builtin
    assert (run / "data" / "wizardlm.json").is_file() and (run / "report.html").is_file()


def test_kill_9_at_random_moments_then_the_same_command_finishes_identically(tmp_path):
    seeds_file(tmp_path / "seeds.json", 30)
    args = ["run", "wizardlm", "-i", str(tmp_path / "seeds.json"), "--seed", str(SEED), "--set", "evol.rounds=3",
            *NO_LANG]  # the default --concurrency, 16
    with FakeOpenAI(judged_script) as server:
        whole = run_cli(*args, "-o", str(tmp_path / "whole"), env=cli_env(server))
        assert whole.returncode == 0, whole.stderr
        uninterrupted = request_counts(server.requests)
    total = sum(uninterrupted.values())
    assert total > 150

    rng = random.Random(14)
    kills = sorted(rng.sample(range(10, total - 10), 3))
    with FakeOpenAI(judged_script, latency=0.01) as server:
        for moment in kills:
            victim = subprocess.Popen([cli_exe(), *args, "-o", str(tmp_path / "killed")], env=cli_env(server),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while sum(server.answered.values()) < moment and victim.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        assert not (tmp_path / "killed" / "report.html").exists()
        done = run_cli(*args, "-o", str(tmp_path / "killed"), env=cli_env(server))
        assert done.returncode == 0, done.stderr
        resent = request_counts(server.requests) - uninterrupted
        assert sum(resent.values()) <= 16 * len(kills), "only requests in flight at a kill are sent again"
        assert set(request_counts(server.requests)) == set(uninterrupted)

        server.requests.clear()
        again = run_cli(*args, "-o", str(tmp_path / "killed"), env=cli_env(server))
        assert again.returncode == 0 and server.requests == []
    for name in ("dataset.jsonl", "rejected.jsonl", "data/wizardlm.json", "data/dataset_info.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
