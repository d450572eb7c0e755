"""`distillery respond` end to end: the real console script against the fake endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import Reply, user_text

from distillery.summary import Summary


def alpaca_file(path, count: int, layout: str = "json"):
    records = [
        {"instruction": f"Task number {i}", "input": "ctx" if i % 3 == 0 else "", "output": "", "id": i}
        for i in range(count)
    ]
    if layout == "json":
        path.write_text(json.dumps(records, ensure_ascii=False))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_answers_every_record_in_order_keeping_fields(fake_server, tmp_path):
    records = alpaca_file(tmp_path / "in.jsonl", 20, layout="jsonl")
    out = tmp_path / "out.jsonl"
    done = run_cli(
        "respond", str(tmp_path / "in.jsonl"), "-o", str(out), "--system", "Be brief.", env=cli_env(fake_server)
    )
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in written] == [r["id"] for r in records]
    assert written[0]["output"] == "ANSWER: Task number 0\n\nctx"
    assert written[1]["output"] == "ANSWER: Task number 1"
    assert fake_server.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    summary = Summary.read(tmp_path / "out.jsonl.summary.json")
    assert summary.meta["command"] == "respond" and [s.stage for s in summary.stages] == ["respond"]
    assert summary.stages[0].kept == 20 and summary.stages[0].sent == 20


def test_rate_limits_and_server_errors_are_survived(fake_server, tmp_path):
    def script(body, number):
        if number % 5 == 0:
            return Reply(status=429, headers={"Retry-After": "0"})
        if number % 7 == 0:
            return Reply(status=500)
        return Reply(text="ANSWER: " + user_text(body))

    fake_server.script = script
    alpaca_file(tmp_path / "in.json", 300)
    out = tmp_path / "out.json"
    done = run_cli(
        "respond", str(tmp_path / "in.json"), "-o", str(out), "--concurrency", "32", env=cli_env(fake_server)
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert len(written) == 300
    assert all(r["output"].startswith("ANSWER: Task number") for r in written)
    assert not (tmp_path / "out.json.failed.jsonl").exists()


def test_failed_records_go_aside_with_exit_status_3(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=500) if "number 3" in user_text(body) else "fine"
    alpaca_file(tmp_path / "in.json", 6)
    out = tmp_path / "out.json"
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(out), "--max-retries", "1", env=cli_env(fake_server))
    assert done.returncode == 3
    assert "1 record(s) failed" in done.stderr
    assert [r["id"] for r in json.loads(out.read_text())] == [0, 1, 2, 4, 5]
    failed = [json.loads(line) for line in (tmp_path / "out.json.failed.jsonl").read_text().splitlines()]
    assert [(f["stage"], f["reason"], f["record"]["id"]) for f in failed] == [("respond", "request_failed", 3)]
    assert "HTTP 500" in failed[0]["detail"]
    stage = Summary.read(tmp_path / "out.json.summary.json").stages[0]
    assert stage.dropped == {"request_failed": 1} and stage.failed == 1


def test_kill_9_then_rerun_completes_without_paying_twice(fake_server, tmp_path):
    fake_server.latency = 0.02
    records = alpaca_file(tmp_path / "in.json", 600)
    out = tmp_path / "out.json"
    args = ["respond", str(tmp_path / "in.json"), "-o", str(out), "--concurrency", "8"]
    victim = subprocess.Popen(
        [cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while sum(fake_server.answered.values()) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    answered_before = sum(fake_server.answered.values())
    assert 200 <= answered_before < 600 and not out.exists()
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert [r["id"] for r in written] == [r["id"] for r in records]
    assert all(r["output"] == "ANSWER: " + r["instruction"] + ("\n\nctx" if r["input"] else "") for r in written)
    twice = [prompt for prompt, count in fake_server.answered.items() if count > 1]
    assert len(twice) <= 8
    assert set(fake_server.answered) == {r["instruction"] + ("\n\nctx" if r["input"] else "") for r in records}


def test_budget_stops_cleanly_and_a_rerun_finishes(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(text="x", usage={"prompt_tokens": 0, "completion_tokens": 1000})
    alpaca_file(tmp_path / "in.json", 10)
    out = tmp_path / "out.json"
    base = [
        "respond",
        str(tmp_path / "in.json"),
        "-o",
        str(out),
        "--concurrency",
        "1",
        "--price-input",
        "0",
        "--price-output",
        "1",
    ]
    done = run_cli(*base, "--max-cost", "0.0025", env=cli_env(fake_server))
    assert done.returncode == 4 and "--max-cost" in done.stderr
    assert len(json.loads(out.read_text())) == 3
    finished = run_cli(*base, env=cli_env(fake_server))
    assert finished.returncode == 0
    assert len(json.loads(out.read_text())) == 10
    assert len(fake_server.requests) == 10


def test_fresh_forgets_earlier_answers(fake_server, tmp_path):
    alpaca_file(tmp_path / "in.json", 3)
    out = tmp_path / "out.json"
    for extra in ([], [], ["--fresh"]):
        assert (
            run_cli("respond", str(tmp_path / "in.json"), "-o", str(out), *extra, env=cli_env(fake_server)).returncode
            == 0
        )
    assert len(fake_server.requests) == 6


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"instruction": "a"},\n  {"instruction": }]', "in.json:2"),
        ('{"instruction": "a"}\n{"input": "no instruction"}\n', "in.json:2"),
        ('{"instruction": "a"}\n{"instruction": "b"\n', "in.json:2"),
        ("", "in.json: file is empty"),
        ('[{"instruction": "a"}, 7]', "record 2"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(fake_server, tmp_path, content, expected):
    (tmp_path / "in.json").write_text(content)
    out = tmp_path / "out.json"
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(out), env=cli_env(fake_server))
    assert done.returncode == 2
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and fake_server.requests == []


def test_directory_input_is_rejected(fake_server, tmp_path):
    done = run_cli("respond", str(tmp_path), "-o", str(tmp_path / "out.json"), env=cli_env(fake_server))
    assert done.returncode == 2 and "is a directory" in done.stderr


def test_no_endpoint_configured_says_how(tmp_path):
    alpaca_file(tmp_path / "in.json", 1)
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(tmp_path / "out.json"), env=cli_env())
    assert done.returncode == 2
    assert "DISTILLERY_MODEL" in done.stderr and "--base-url" in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_unreachable_endpoint_is_one_line(tmp_path):
    alpaca_file(tmp_path / "in.json", 40)
    env = cli_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1", DISTILLERY_MODEL="m")
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(tmp_path / "out.json"), "--max-retries", "0",
                   env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "cannot reach" in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_api_key_is_never_written_anywhere(fake_server, tmp_path):
    secret = "sk-distillery-test-KEY-0123456789"
    fake_server.script = lambda body, n: Reply(status=500) if "number 1" in user_text(body) else "ok"
    alpaca_file(tmp_path / "in.json", 4)
    done = run_cli(
        "respond",
        str(tmp_path / "in.json"),
        "-o",
        str(tmp_path / "out.json"),
        "--max-retries",
        "0",
        env=cli_env(fake_server, OPENAI_API_KEY=secret),
    )
    assert done.returncode == 3
    auth = {k.lower(): v for k, v in fake_server.headers[0].items()}["authorization"]
    assert auth == f"Bearer {secret}", "the key was really used"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in done.stdout + done.stderr


def test_help_describes_every_endpoint_option():
    shown = run_cli("respond", "--help", env=cli_env(COLUMNS="200")).stdout
    for flag in (
        "--model",
        "--base-url",
        "--api-key-env",
        "--concurrency",
        "--temperature",
        "--top-p",
        "--max-tokens",
        "--timeout",
        "--max-retries",
        "--rpm",
        "--tpm",
        "--seed",
        "--fresh",
        "--price-input",
        "--price-output",
        "--max-cost",
        "--system",
        "--output",
    ):
        assert flag in shown
    assert run_cli("--version").stdout.startswith("distillery ")


def test_a_trickling_answer_is_cut_at_timeout_and_the_others_are_written(fake_server, tmp_path):
    fake_server.script = lambda body, n: (Reply(text="slow " * 40, trickle=0.5) if "number 2" in user_text(body)
                                          else "ANSWER: " + user_text(body))
    alpaca_file(tmp_path / "in.json", 5)
    out = tmp_path / "out.json"
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(out), "--timeout", "3", "--max-retries", "0",
                   env=cli_env(fake_server), timeout=60)
    assert done.returncode == 3, done.stderr
    assert [r["id"] for r in json.loads(out.read_text())] == [0, 1, 3, 4]
    failed = [json.loads(line) for line in (tmp_path / "out.json.failed.jsonl").read_text().splitlines()]
    assert failed[0]["record"]["id"] == 2 and "timed out after 3s" in failed[0]["detail"]


def test_an_error_body_that_echoes_the_key_leaks_none_of_it(fake_server, tmp_path):
    secret = "sk-SECRET-canary-12345678901234567890"
    fake_server.script = lambda body, n: Reply(status=500, error="e" * 210, echo_auth=True)
    alpaca_file(tmp_path / "in.json", 2)
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(tmp_path / "out.json"), "--max-retries", "0",
                   env=cli_env(fake_server, OPENAI_API_KEY=secret))
    assert done.returncode == 3, done.stderr
    failed = (tmp_path / "out.json.failed.jsonl").read_text()
    assert "HTTP 500" in failed and "sk-SEC" not in failed


def test_a_reset_on_every_request_is_one_line_that_says_so(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(reset_mid_body=True)
    alpaca_file(tmp_path / "in.json", 3)
    done = run_cli("respond", str(tmp_path / "in.json"), "-o", str(tmp_path / "out.json"), "--max-retries", "1",
                   env=cli_env(fake_server, COLUMNS="400"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "cannot reach" not in done.stderr and "closed before the answer was complete" in done.stderr
    assert not (tmp_path / "out.json").exists()


def evol_seeds(path, count: int):
    path.write_text(json.dumps([{"instruction": f"Describe river number {i} and its towns.", "input": "",
                                 "output": ""} for i in range(count)]))
    return path


@pytest.mark.parametrize("command", ["respond", "self-instruct", "evol"])
def test_max_cost_holds_with_requests_in_flight_and_one_figure_is_reported(fake_server, tmp_path, command):
    """Every answer costs $0.001 (1000 completion tokens at $1/M): eight in flight must not overshoot."""
    fake_server.latency = 0.05
    fake_server.script = lambda body, n: Reply(text=f"A fresh answer about lakes and hills, number {n}.",
                                               usage={"prompt_tokens": 0, "completion_tokens": 1000})
    out = tmp_path / "out.json"
    alpaca_file(tmp_path / "in.json", 60)
    inputs = {"respond": [str(tmp_path / "in.json")],
              "self-instruct": ["--num", "500"],
              "evol": [str(evol_seeds(tmp_path / "seeds.json", 40)), "--no-judge"]}[command]
    done = run_cli(command, *inputs, "-o", str(out), "--concurrency", "8", "--price-input", "0",
                   "--price-output", "1", "--max-cost", "0.0105", env=cli_env(fake_server, COLUMNS="400"))
    assert done.returncode == 4, done.stderr
    spent = Summary.read(tmp_path / "out.json.summary.json").cost_usd
    assert 0.0105 <= spent <= 0.0105 + 0.001
    assert len(fake_server.requests) == round(spent / 0.001)
    assert f"--max-cost 0.0105 reached (spent ${spent:.4f})" in " ".join(done.stderr.split())
