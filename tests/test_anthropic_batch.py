"""`--batch --provider anthropic`: Anthropic's Message Batches through the official SDK, against the fake
server's `/v1/messages/batches`, with the same guarantees as the OpenAI path: never paid for twice."""

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
from test_batch import FAST, PRICES, expected_output
from test_respond import alpaca_file

pytest.importorskip("anthropic")

SYSTEM = "Answer like a pirate."


def anthropic_args(server) -> tuple[str, ...]:
    return ("--provider", "anthropic", "--base-url", server.base_url)


def respond(tmp_path, server, *extra: str, name: str = "out.json") -> subprocess.CompletedProcess:
    return run_cli("respond", str(tmp_path / "in.json"), "-o", str(tmp_path / name), *extra, env=cli_env(server))


def stage(path) -> dict:
    return json.loads(path.with_name(path.name + ".summary.json").read_text())["stages"][0]


def test_respond_batch_matches_the_openai_path_at_the_batch_price(fake_server, tmp_path):
    """Same outputs and tokens as OpenAI's batch path; the system prompt travels apart, and a Claude model is
    priced from the table at half its real-time price."""
    records = alpaca_file(tmp_path / "in.json", 200)
    model = ("--model", "claude-sonnet-4-5-20250929", "--system", SYSTEM)
    done = respond(tmp_path, fake_server, *FAST, *model, *anthropic_args(fake_server), name="claude.json")
    assert done.returncode == 0, done.stderr
    assert len(fake_server.message_batches) == 1 and not fake_server.batches
    assert set(fake_server.batch_submitted.values()) == {1} and len(fake_server.batch_submitted) == 200
    params = fake_server.message_batch_lines["msgbatch_1"][0]["params"]
    assert params["system"] == SYSTEM and [m["role"] for m in params["messages"]] == ["user"]
    assert params["max_tokens"] == 4096 and "seed" not in params
    openai = respond(tmp_path, fake_server, *FAST, *model, name="openai.json")
    assert openai.returncode == 0, openai.stderr
    assert len(fake_server.batches) == 1
    claude_out, openai_out = (json.loads((tmp_path / name).read_text()) for name in ("claude.json", "openai.json"))
    assert claude_out == openai_out and [r["output"] for r in claude_out] == [expected_output(r) for r in records]
    claude, via_openai = stage(tmp_path / "claude.json"), stage(tmp_path / "openai.json")
    assert claude["tokens"] == via_openai["tokens"] and claude["notes"]["batched"] == 200
    tokens = claude["tokens"]
    assert claude["cost_usd"] == pytest.approx((tokens["prompt"] * 3 + tokens["completion"] * 15) / 2 / 1e6, abs=1e-6)
    assert claude["notes"]["batch_saved_usd"] == pytest.approx(claude["cost_usd"], abs=1e-6)


@pytest.mark.parametrize("lose_id", [False, True], ids=["journaled", "id-never-journaled"])
def test_kill_9_after_create_then_rerun_submits_nothing_twice(fake_server, tmp_path, lose_id):
    """Killed while the batch runs, or (as if) before `create`'s answer was journaled: the re-run finds the
    batch (by its id, or by listing the account's recent batches) and submits none of its requests again."""
    records = alpaca_file(tmp_path / "in.json", 120)
    fake_server.batch_hold = True
    out = tmp_path / "out.json"
    args = ["respond", str(out.with_name("in.json")), "-o", str(out), *PRICES, *FAST, *anthropic_args(fake_server)]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fake_server.message_batches.get("msgbatch_1", {}).get("polls", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not out.exists()
    if lose_id:
        with sqlite3.connect(tmp_path / "out.json.cache.sqlite") as db:
            db.execute("UPDATE batches SET id = NULL, state = 'uploaded'")
    fake_server.batch_hold = False
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert len(fake_server.message_batches) == 1 and set(fake_server.batch_submitted.values()) == {1}
    assert len(fake_server.requests) == 120
    assert [r["output"] for r in json.loads(out.read_text())] == [expected_output(r) for r in records]
    assert stage(out)["notes"]["batched"] == 120


def test_expired_batch_keeps_its_answers_and_resubmits_only_the_rest(fake_server, tmp_path):
    records = alpaca_file(tmp_path / "in.json", 100)
    fake_server.batch_outcomes = {1: ("expired", 0.6)}
    done = respond(tmp_path, fake_server, *PRICES, *FAST, *anthropic_args(fake_server))
    assert done.returncode == 0, done.stderr
    first, second = (fake_server.message_batch_lines[f"msgbatch_{n}"] for n in (1, 2))
    assert len(first) == 100 and len(second) == 40
    assert {line["custom_id"] for line in second} == {line["custom_id"] for line in first[60:]}
    assert sorted(fake_server.batch_submitted.values()) == [1] * 60 + [2] * 40
    assert stage(tmp_path / "out.json")["notes"]["resubmitted"] == 40
    assert [r["output"] for r in json.loads((tmp_path / "out.json").read_text())] == [
        expected_output(r) for r in records]


def test_errored_requests_go_to_the_failed_file_with_exit_3(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=400, error="prompt is too long") \
        if "number 3" in user_text(body) else "fine"
    alpaca_file(tmp_path / "in.json", 6)
    done = respond(tmp_path, fake_server, *PRICES, *FAST, *anthropic_args(fake_server))
    assert done.returncode == 3
    assert [r["id"] for r in json.loads((tmp_path / "out.json").read_text())] == [0, 1, 2, 4, 5]
    failed = [json.loads(line) for line in (tmp_path / "out.json.failed.jsonl").read_text().splitlines()]
    assert len(failed) == 1 and failed[0]["record"]["id"] == 3
    assert failed[0]["detail"] == "batch msgbatch_1: invalid_request_error: prompt is too long"
    assert len(fake_server.message_batches) == 1  # an errored request is a failure, not resubmitted


def test_batches_cancel_cancels_a_running_anthropic_batch(fake_server, tmp_path):
    alpaca_file(tmp_path / "in.json", 10)
    fake_server.batch_hold = True
    out = tmp_path / "out.json"
    victim = subprocess.Popen([cli_exe(), "respond", str(tmp_path / "in.json"), "-o", str(out), *FAST,
                               *anthropic_args(fake_server)], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while fake_server.message_batches.get("msgbatch_1", {}).get("polls", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    listed = run_cli("batches", str(out), env=cli_env(fake_server, COLUMNS="200"))
    assert listed.returncode == 0 and "msgbatch_1" in listed.stdout and "in_progress" in listed.stdout
    cancelled = run_cli("batches", str(out), "--cancel", env=cli_env(fake_server))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "msgbatch_1: canceling" in cancelled.stdout
    _, stderr = victim.communicate(timeout=60)
    assert fake_server.message_batches["msgbatch_1"]["processing_status"] == "ended"
    assert victim.returncode == 3 and "10 record(s) failed" in stderr
    assert len(fake_server.message_batches) == 1  # cancelled requests are failures, never resubmitted


def test_unknown_provider_is_one_clear_line(fake_server, tmp_path):
    alpaca_file(tmp_path / "in.json", 2)
    done = respond(tmp_path, fake_server, "--provider", "claude")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--provider must be one of openai, anthropic, not 'claude'" in done.stderr
