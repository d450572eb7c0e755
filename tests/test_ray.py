"""`--executor ray`: the same run directory as a local run, a shard worker killed by SIGKILL that costs no
answered request twice, --max-cost across shards, MinHash decided as locally, and Ray as an optional extra.

Every test here but the last shares the suite's one local Ray cluster (`ray_cluster`, 2 CPUs on loopback)
and stays small: a few dozen records."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import FakeOpenAI
from test_evol import SEED, poison_script, seeds_file

from distillery.pipeline import load_pipeline, parse_pipeline

RAW_SHAREGPT = Path(__file__).resolve().parents[1] / "examples" / "sharegpt_raw.json"
NO_LANG = ["report.lang_sample=0"]


def instructions(path: Path, count: int) -> None:
    records = [{"instruction": f"Task number {i}", "input": "ctx" if i % 3 == 0 else "", "output": "", "id": i}
               for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def stage_counts(run: Path) -> list[dict]:
    """The summary's stages without their wall times, which no two runs share."""
    return [{k: v for k, v in stage.items() if k != "seconds"}
            for stage in json.loads((run / "summary.json").read_text())["stages"]]


def report_sections(run: Path) -> list[str]:
    return re.findall(r"<h[23][^>]*>(.*?)</h[23]>", (run / "report.html").read_text())


def both(pipeline: str, tmp_path: Path, inputs: list[Path], endpoint: dict, sets: list[str], workers: int = 1):
    """The pipeline run locally and on the Ray cluster (2 shards), into tmp_path/local and tmp_path/ray."""
    results = {}
    for executor in ("local", "ray"):
        result = load_pipeline(pipeline, sets).run(tmp_path / executor, inputs, endpoint, workers=workers,
                                                   executor=executor, shards=2)
        assert result.exit_code == 0
        results[executor] = result
    return results


def assert_same_run(local: Path, ray: Path, data: str) -> None:
    for name in ("dataset.jsonl", "rejected.jsonl", f"data/{data}.json", "data/dataset_info.json"):
        assert (ray / name).read_bytes() == (local / name).read_bytes(), name
    assert stage_counts(ray) == stage_counts(local)
    assert report_sections(ray) == report_sections(local)


def test_alpaca_gpt4_on_ray_writes_what_a_local_run_writes(ray_cluster, fake_server, tmp_path):
    instructions(tmp_path / "in.jsonl", 30)
    endpoint = {"base_url": fake_server.base_url, "model": "fake-model"}
    results = both("alpaca-gpt4", tmp_path, [tmp_path / "in.jsonl"], endpoint, NO_LANG)
    assert_same_run(tmp_path / "local", tmp_path / "ray", "alpaca_gpt4")
    assert len(fake_server.requests) == 60  # 30 per run: each shard answered its own slice, once
    assert sorted(p.name for p in (tmp_path / "ray" / "state").glob("*.sqlite")) == [
        "local.sqlite", "shard-0.sqlite", "shard-1.sqlite"]
    assert results["ray"].summary.meta["executor"] == "ray"


def test_wizardlm_on_ray_keeps_evol_round_order_and_choices(ray_cluster, fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds_file(tmp_path / "seeds.json", 10)
    endpoint = {"base_url": fake_server.base_url, "model": "fake-model", "seed": SEED}
    both("wizardlm", tmp_path, [tmp_path / "seeds.json"], endpoint, ["evol.rounds=2", *NO_LANG])
    assert_same_run(tmp_path / "local", tmp_path / "ray", "wizardlm")
    evolved = [json.loads(line) for line in (tmp_path / "ray" / "steps" / "01-evol" / "records.jsonl").open()]
    assert [r["evol"]["round"] for r in evolved] == sorted(r["evol"]["round"] for r in evolved)


def test_vicuna_on_ray_cleans_on_the_cluster_and_matches(ray_cluster, tmp_path):
    # Three of clean's 256-record chunks, so the cluster's tasks must come back in input order.
    raw = json.loads(RAW_SHAREGPT.read_text())
    copies = [{**record, "id": f"{record['id']}-{n}"} for n in range(24) for record in raw]
    (tmp_path / "raw.json").write_text(json.dumps(copies))
    both("vicuna", tmp_path, [tmp_path / "raw.json"], {}, [], workers=2)
    assert_same_run(tmp_path / "local", tmp_path / "ray", "vicuna")


def test_minhash_dedup_signed_by_shard_decides_as_locally(ray_cluster, tmp_path):
    texts = [f"Explain how {topic} works in simple terms for a child" for topic in ("rain", "snow", "wind")]
    records = [{"instruction": text + tail, "output": ""} for text in texts for tail in ("", " please", " today")]
    records += [{"instruction": "", "output": ""}, {"instruction": "Write a haiku about autumn leaves"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    doc = {"steps": ["read", {"dedup": {"method": "minhash", "threshold": 0.5}}]}
    for executor in ("local", "ray"):
        parse_pipeline(doc, "minhash").run(tmp_path / executor, [tmp_path / "in.jsonl"], executor=executor, shards=2)
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert (ray / "dataset.jsonl").read_bytes() == (local / "dataset.jsonl").read_bytes()
    assert (ray / "rejected.jsonl").read_bytes() == (local / "rejected.jsonl").read_bytes()
    assert 0 < len((local / "rejected.jsonl").read_text().splitlines()) < len(records)


def test_max_cost_holds_for_the_step_across_shards(ray_cluster, fake_server, tmp_path):
    instructions(tmp_path / "in.jsonl", 40)
    # $1 a completion token, at most 8 of them a request: the limit pays for about a quarter of the records,
    # which a budget per shard would pay twice over.
    endpoint = {"base_url": fake_server.base_url, "model": "fake-model", "max_tokens": 8, "price_input": 0,
                "price_output": 1_000_000, "max_cost": 40, "concurrency": 2}
    result = load_pipeline("alpaca-gpt4", NO_LANG).run(tmp_path / "run", [tmp_path / "in.jsonl"], endpoint,
                                                       executor="ray", shards=2)
    assert result.exit_code == 4 and "--max-cost 40" in result.stopped
    respond = next(stage for stage in result.summary.stages if stage.stage == "respond")
    assert respond.cost_usd <= 40 + 8  # over by at most one request, as a local run
    assert respond.sent == len(fake_server.requests) < 16


def test_sigkill_of_a_shard_worker_resends_no_answered_request(ray_cluster, tmp_path):
    instructions(tmp_path / "in.jsonl", 24)
    args = ["run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "--executor", "ray", "--ray-address",
            ray_cluster, "--shards", "2", "--concurrency", "2", "--set", NO_LANG[0]]
    lock = tmp_path / "killed" / "state" / "shard-0.sqlite.lock"
    with FakeOpenAI(latency=0.2) as server:
        run = subprocess.Popen([cli_exe(), *args, "-o", str(tmp_path / "killed")], env=cli_env(server),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while (sum(server.answered.values()) < 10 or not lock.is_file()) and time.monotonic() < deadline:
            time.sleep(0.02)
        worker = int(lock.read_text().split()[1])  # "pid N on HOST, started …", written by the shard's worker
        assert worker != run.pid
        os.kill(worker, signal.SIGKILL)
        answered_at_kill = sum(server.answered.values())
        _, stderr = run.communicate(timeout=180)
        assert run.returncode == 0, stderr
        assert 10 <= answered_at_kill < 24, "the worker was killed in the middle of its shard"
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
        twice = [prompt for prompt, count in server.answered.items() if count > 1]
        assert len(server.answered) == 24 and len(twice) <= 1  # at most the shard's one request in flight
    with FakeOpenAI() as server:
        whole = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "--set", NO_LANG[0],
                        "-o", str(tmp_path / "whole"), env=cli_env(server))
        assert whole.returncode == 0, whole.stderr
    for name in ("dataset.jsonl", "data/alpaca_gpt4.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_a_shards_user_error_is_one_line_not_a_remote_traceback(ray_cluster, tmp_path):
    instructions(tmp_path / "in.jsonl", 4)
    with FakeOpenAI() as server:
        closed = server.base_url  # nothing listens there once the server is gone
    done = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "run"),
                   "--executor", "ray", "--ray-address", ray_cluster, "--base-url", closed, "--model", "m",
                   "--max-retries", "0", "--set", NO_LANG[0])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach"), done.stderr


def test_executor_ray_without_ray_says_how_to_install(tmp_path):
    missing = tmp_path / "no-ray" / "ray"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('simulated: ray is not installed')\n")
    instructions(tmp_path / "in.jsonl", 3)
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(missing.parent), env.get("PYTHONPATH")]))
    done = run_cli("run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "run"),
                   "--executor", "ray", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --executor ray needs Ray, an optional extra: pip install 'distillery[ray]'"]
    assert not (tmp_path / "run").exists()
