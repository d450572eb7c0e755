"""`--batch`: requests through the provider's Batch API (the fake server's `/v1/files` and `/v1/batches`),
never paid for twice: across kill -9, expired batches and real-time runs sharing the cache."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import Reply, user_text
from test_evol import SEED, poison_script, seeds_file
from test_pipeline_self_instruct import NO_LANG, check_run
from test_respond import alpaca_file
from test_self_instruct import Teacher

from distillery.summary import StageStats, Summary

FAST = ("--batch", "--batch-poll", "0.05")
PRICES = ("--price-input", "1", "--price-output", "2")


def respond(tmp_path, server, *extra: str, name: str = "out.json"):
    return run_cli("respond", str(tmp_path / "in.json"), "-o", str(tmp_path / name), *PRICES, *extra,
                   env=cli_env(server))


def stage_of(path) -> StageStats:
    """The one stage of a command's summary, OUTPUT.summary.json."""
    (stage,) = Summary.read(path.with_name(path.name + ".summary.json")).stages
    return stage


def expected_output(record: dict) -> str:
    return "ANSWER: " + record["instruction"] + ("\n\nctx" if record["input"] else "")


def test_respond_batch_matches_real_time_at_half_price_and_shares_the_cache(fake_server, tmp_path):
    records = alpaca_file(tmp_path / "in.json", 1000)
    done = respond(tmp_path, fake_server, *FAST, name="batch.json")
    assert done.returncode == 0, done.stderr
    assert len(fake_server.batches) == 1 and len(fake_server.batch_submitted) == 1000
    assert set(fake_server.batch_submitted.values()) == {1}
    real = respond(tmp_path, fake_server, name="real.json")
    assert real.returncode == 0, real.stderr
    batch_out, real_out = (json.loads((tmp_path / name).read_text()) for name in ("batch.json", "real.json"))
    assert batch_out == real_out and [r["output"] for r in batch_out] == [expected_output(r) for r in records]
    batch_stage, real_stage = (stage_of(tmp_path / name) for name in ("batch.json", "real.json"))
    assert batch_stage.sent == real_stage.sent == 1000 and batch_stage.notes["batched"] == 1000
    assert batch_stage.prompt_tokens == real_stage.prompt_tokens
    assert batch_stage.cost_usd == pytest.approx(real_stage.cost_usd / 2)
    assert batch_stage.notes["batch_saved_usd"] == pytest.approx(real_stage.cost_usd / 2)

    sent = len(fake_server.requests)
    again = respond(tmp_path, fake_server, name="batch.json")  # real time after a batch run: all cached
    assert again.returncode == 0 and len(fake_server.requests) == sent
    assert stage_of(tmp_path / "batch.json").cached == 1000
    reused = respond(tmp_path, fake_server, *FAST, name="real.json")  # a batch run after a real-time run
    assert reused.returncode == 0 and len(fake_server.batches) == 1 and len(fake_server.requests) == sent


@pytest.mark.parametrize("rerun", [FAST, ()], ids=["batch", "real-time"])
def test_kill_9_after_submission_then_rerun_collects_without_submitting_again(fake_server, tmp_path, rerun):
    """Re-run with --batch or without it: the journaled batch is collected, none of its requests sent again."""
    records = alpaca_file(tmp_path / "in.json", 300)
    fake_server.batch_hold = True
    out = tmp_path / "out.json"
    args = ["respond", str(tmp_path / "in.json"), "-o", str(out), *PRICES]
    victim = subprocess.Popen([cli_exe(), *args, *FAST], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert fake_server.batch_created.wait(60)
    deadline = time.monotonic() + 60
    while fake_server.batches["batch_1"]["polls"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not out.exists()
    fake_server.batch_hold = False
    done = run_cli(*args, *rerun, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert len(fake_server.batches) == 1 and set(fake_server.batch_submitted.values()) == {1}
    assert len(fake_server.requests) == 300  # the batch's lines only: nothing was sent in real time
    assert [r["output"] for r in json.loads(out.read_text())] == [expected_output(r) for r in records]
    assert stage_of(out).notes["batched"] == 300


def test_kill_9_before_create_returned_finds_the_batch_by_its_file(fake_server, tmp_path):
    """A batch the provider made but whose id never reached the journal is found again, not paid twice."""
    alpaca_file(tmp_path / "in.json", 50)
    fake_server.batch_hold = True
    out = tmp_path / "out.json"
    args = ["respond", str(tmp_path / "in.json"), "-o", str(out), *PRICES, *FAST]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fake_server.batches.get("batch_1", {}).get("polls", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    with sqlite3.connect(tmp_path / "out.json.cache.sqlite") as db:  # as if killed before create answered
        db.execute("UPDATE batches SET id = NULL, state = 'uploaded'")
    fake_server.batch_hold = False
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert len(fake_server.batches) == 1 and set(fake_server.batch_submitted.values()) == {1}


def test_expired_batch_keeps_its_answers_and_resubmits_only_the_rest(fake_server, tmp_path):
    records = alpaca_file(tmp_path / "in.json", 100)
    fake_server.batch_outcomes = {1: ("expired", 0.6)}
    done = respond(tmp_path, fake_server, *FAST)
    assert done.returncode == 0, done.stderr
    first, second = (fake_server.batch_lines[f"batch_{n}"] for n in (1, 2))
    assert len(first) == 100 and len(second) == 40
    assert {line["custom_id"] for line in second} == {line["custom_id"] for line in first[60:]}
    assert stage_of(tmp_path / "out.json").notes["resubmitted"] == 40
    assert [r["output"] for r in json.loads((tmp_path / "out.json").read_text())] == [
        expected_output(r) for r in records]


def test_expired_batch_without_retries_fails_the_rest_and_a_rerun_submits_only_them(fake_server, tmp_path):
    alpaca_file(tmp_path / "in.json", 100)
    fake_server.batch_outcomes = {1: ("expired", 0.6)}
    done = respond(tmp_path, fake_server, *FAST, "--max-retries", "0")
    assert done.returncode == 3
    failed = (tmp_path / "out.json.failed.jsonl").read_text().splitlines()
    assert len(failed) == 40 and "expired" in json.loads(failed[0])["detail"]
    assert len(json.loads((tmp_path / "out.json").read_text())) == 60
    again = respond(tmp_path, fake_server, *FAST, "--max-retries", "0")
    assert again.returncode == 0, again.stderr
    assert len(fake_server.batch_lines["batch_2"]) == 40 and len(fake_server.batches) == 2
    assert sorted(fake_server.batch_submitted.values()) == [1] * 60 + [2] * 40  # the unanswered 40 only
    assert len(json.loads((tmp_path / "out.json").read_text())) == 100


def test_request_errors_inside_a_batch_go_to_the_failed_file(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=400, error="bad prompt") if "number 3" in user_text(body) \
        else "fine"
    alpaca_file(tmp_path / "in.json", 6)
    done = respond(tmp_path, fake_server, *FAST)
    assert done.returncode == 3
    assert [r["id"] for r in json.loads((tmp_path / "out.json").read_text())] == [0, 1, 2, 4, 5]
    failed = [json.loads(line) for line in (tmp_path / "out.json.failed.jsonl").read_text().splitlines()]
    assert failed[0]["record"]["id"] == 3 and "bad prompt" in failed[0]["detail"]
    stage = stage_of(tmp_path / "out.json")
    assert stage.failed == 1 and stage.notes["failed_batch_request"] == 1


def test_endpoint_without_a_batch_api_is_one_clear_line(fake_server, tmp_path):
    alpaca_file(tmp_path / "in.json", 3)
    fake_server.batch_api = False
    done = respond(tmp_path, fake_server, *FAST)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "HTTP 404" in done.stderr and "drop --batch" in done.stderr


def test_batches_lists_and_cancels_a_running_batch(fake_server, tmp_path):
    alpaca_file(tmp_path / "in.json", 10)
    fake_server.batch_hold = True
    out = tmp_path / "out.json"
    victim = subprocess.Popen([cli_exe(), "respond", str(tmp_path / "in.json"), "-o", str(out), *FAST],
                              env=cli_env(fake_server), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while fake_server.batches.get("batch_1", {}).get("polls", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the first poll's state is journaled before the second poll
    listed = run_cli("batches", str(out), env=cli_env(fake_server, COLUMNS="200"))
    assert listed.returncode == 0 and "batch_1" in listed.stdout and "in_progress" in listed.stdout
    cancelled = run_cli("batches", str(out), "--cancel", env=cli_env(fake_server))
    assert cancelled.returncode == 0 and "batch_1: cancelled" in cancelled.stdout
    assert fake_server.batches["batch_1"]["status"] == "cancelled"
    _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 3 and "10 record(s) failed" in stderr
    assert len(fake_server.batches) == 1
    missing = run_cli("batches", str(tmp_path / "nothing.json"), env=cli_env(fake_server))
    assert missing.returncode == 2 and "no run state" in missing.stderr


def test_alpaca_pipeline_runs_in_waves(fake_server, tmp_path):
    fake_server.script = Teacher("en")
    run = tmp_path / "run"
    args = ["run", "alpaca", "-o", str(run), "--set", "self_instruct.num=12", "--concurrency", "4", *FAST, *NO_LANG,
            *PRICES]
    plan = run_cli(*args, "--dry-run", env=cli_env(fake_server))
    assert plan.returncode == 0 and "submitted in waves of --concurrency 4 requests" in plan.stdout
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    check_run(run, "alpaca", fake_server.script, "builtin:en", 12)
    made = json.loads((run / "summary.json").read_text())["stages"][0]
    assert made["notes"]["batched"] == made["requests"]["sent"] and made["notes"]["batch_saved_usd"] > 0
    assert len(fake_server.batches) > 1 and all(len(lines) <= 4 for lines in fake_server.batch_lines.values())
    assert set(fake_server.batch_submitted.values()) == {1}


def test_evol_submits_a_wave_per_stage_and_writes_what_real_time_writes(fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds_file(tmp_path / "seeds.json", 12)
    base = ["evol", str(tmp_path / "seeds.json"), "--rounds", "2", "--seed", str(SEED)]
    real = run_cli(*base, "-o", str(tmp_path / "real.jsonl"), env=cli_env(fake_server))
    assert real.returncode == 0, real.stderr
    done = run_cli(*base, "-o", str(tmp_path / "batch.jsonl"), *FAST, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "batch.jsonl").read_text() == (tmp_path / "real.jsonl").read_text()
    # evolve, judge, answer per round: each stage of every lineage waits for the one before
    assert 2 <= len(fake_server.batches) <= 6 and set(fake_server.batch_submitted.values()) == {1}


def test_batch_size_splits_one_wave_into_batches_submitted_together(fake_server, tmp_path):
    records = alpaca_file(tmp_path / "in.json", 25)
    fake_server.batch_hold = True
    out = tmp_path / "out.json"
    run = subprocess.Popen([cli_exe(), "respond", str(tmp_path / "in.json"), "-o", str(out), *FAST,
                            "--batch-size", "10"], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fake_server.batches) < 3 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    held = sorted(len(lines) for lines in fake_server.batch_lines.values())
    fake_server.batch_hold = False
    _, stderr = run.communicate(timeout=60)
    assert held == [5, 10, 10], "every batch of the wave is submitted before the first one ends"
    assert run.returncode == 0, stderr
    assert [r["output"] for r in json.loads(out.read_text())] == [expected_output(r) for r in records]
