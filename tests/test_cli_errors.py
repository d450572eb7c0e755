"""Every command against hostile input and output paths: one line naming the file and what is wrong, exit
status 2, nothing written, never a traceback or a hang. Plus the run lock, Ctrl-C/SIGTERM and a full disk."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import Reply
from tiny_tokenizer import build_tiny_tokenizer

from distillery.summary import Summary

GOOD = {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."}
COMMANDS = ["respond", "self-instruct", "evol", "clean", "dedup", "convert", "export", "stats", "report"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


def command_line(command: str, source: Path, output: Path, tokenizer: Path) -> list[str]:
    """The shortest real invocation of COMMAND reading SOURCE and writing OUTPUT."""
    return {
        "respond": ["respond", str(source), "-o", str(output)],
        "self-instruct": ["self-instruct", "--seeds", str(source), "--num", "2", "-o", str(output)],
        "evol": ["evol", str(source), "-o", str(output), "--rounds", "1"],
        "clean": ["clean", str(source), "-o", str(output), "--workers", "1", "--no-detect-lang"],
        "dedup": ["dedup", str(source), "-o", str(output)],
        "convert": ["convert", str(source), "-o", str(output), "--to", "sharegpt"],
        "export": ["export", str(source), "-o", str(output), "--tokenizer", str(tokenizer), "--template", "chatml",
                   "--allow-template-mismatch"],
        "stats": ["stats", str(source), "--json", str(output)],
        "report": ["report", str(source), "-o", str(output)],
    }[command]


def output_name(command: str) -> str:
    return {"report": "out.html", "stats": "out.json"}.get(command, "out.jsonl")


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], done.stderr


def run_hostile(fake_server, command: str, source: Path, output: Path, tokenizer: Path, timeout: float = 60):
    return run_cli(*command_line(command, source, output, tokenizer), env=cli_env(fake_server), timeout=timeout)


def outputs_written(directory: Path, before: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - before


HOSTILE_RECORDS = {
    "deep_jsonl": ("in.jsonl", '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "in.jsonl:1",
                   "nested deeper than 100 levels"),
    "deep_json_list": ("in.json", "[" + '{"instruction": ' + "[" * 100_000, "in.json (record 1)",
                       "nested deeper than 100 levels"),
    "nan_jsonl": ("in.jsonl", '{"instruction": "a", "output": NaN}\n', "in.jsonl:1", "NaN is not valid JSON"),
    "infinity_json_list": ("in.json", '[{"instruction": "a", "score": -Infinity}]', "in.json (record 1)",
                           "-Infinity is not valid JSON"),
    "lone_surrogate": ("in.jsonl", '{"instruction": "bad \\ud800 text", "output": "x"}\n', "in.jsonl:1",
                       "lone surrogate"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_records_are_one_line_errors(fake_server, tmp_path, tokenizer, command, case):
    name, content, where, problem = HOSTILE_RECORDS[case]
    source = tmp_path / name
    source.write_text(content)
    before = {p.name for p in tmp_path.iterdir()}
    done = run_hostile(fake_server, command, source, tmp_path / output_name(command), tokenizer)
    assert_one_line_error(done, where, problem)
    assert outputs_written(tmp_path, before) <= {f"{output_name(command)}.lock"}
    assert fake_server.requests == []


@pytest.mark.parametrize("command", COMMANDS)
def test_output_equal_to_input_is_refused(fake_server, tmp_path, tokenizer, command):
    source = tmp_path / output_name(command)
    source.write_text(json.dumps([GOOD]))
    done = run_hostile(fake_server, command, source, source, tokenizer)
    assert_one_line_error(done, str(source), "is also an input")
    assert json.loads(source.read_text()) == [GOOD]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_input_is_refused_without_hanging(fake_server, tmp_path, tokenizer, command):
    source = tmp_path / "in.jsonl"
    os.mkfifo(source)
    done = run_hostile(fake_server, command, source, tmp_path / output_name(command), tokenizer, timeout=30)
    assert_one_line_error(done, str(source), "named pipe (FIFO)")
    assert outputs_written(tmp_path, {"in.jsonl"}) == set()


@pytest.mark.parametrize("command", COMMANDS)
def test_output_that_is_a_directory_or_under_a_file_is_refused_before_any_work(fake_server, tmp_path, tokenizer,
                                                                               command):
    source = tmp_path / "in.json"
    source.write_text(json.dumps([GOOD]))
    directory = tmp_path / output_name(command)
    directory.mkdir()
    done = run_hostile(fake_server, command, source, directory, tokenizer)
    assert_one_line_error(done, str(directory), "is a directory")
    under_file = source / output_name(command)
    done = run_hostile(fake_server, command, source, under_file, tokenizer)
    assert_one_line_error(done, str(under_file), f"{source} is not a directory")
    assert fake_server.requests == []


@pytest.mark.parametrize("command", COMMANDS)
def test_file_names_are_printed_as_they_are(fake_server, tmp_path, tokenizer, command):
    missing = tmp_path / "data[red]x[/red].jsonl"
    done = run_hostile(fake_server, command, missing, tmp_path / output_name(command), tokenizer)
    assert_one_line_error(done, f"{missing}: no such file")
    odd = tmp_path / "data[" / "].jsonl"
    done = run_hostile(fake_server, command, odd, tmp_path / output_name(command), tokenizer)
    assert_one_line_error(done, f"{odd}: no such file")


def test_long_paths_are_not_wrapped_when_stderr_is_not_a_terminal(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(status=500)
    deep = tmp_path.joinpath(*["a_rather_long_directory_name"] * 4)
    deep.mkdir(parents=True)
    source = deep / "in.json"
    source.write_text(json.dumps([GOOD]))
    done = run_cli("respond", str(source), "-o", str(deep / "out.json"), "--max-retries", "0",
                   env=cli_env(fake_server, COLUMNS="80"))
    failed = f"{deep / 'out.json'}.failed.jsonl"
    assert done.returncode == 3 and len(failed) > 80
    assert f"1 record(s) failed after retries; see {failed}\n" in done.stderr, done.stderr


def test_a_lone_surrogate_in_an_answer_is_kept_as_a_replacement_character(fake_server, tmp_path):
    fake_server.script = lambda body, n: json.loads('"broken \\udc80 answer"')
    source = tmp_path / "in.json"
    source.write_text(json.dumps([GOOD]))
    done = run_cli("respond", str(source), "-o", str(tmp_path / "out.json"), env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))[0]["output"] == "broken \ufffd answer"


def test_a_second_run_on_the_same_output_stops_at_once_naming_the_first(fake_server, tmp_path):
    fake_server.latency = 0.3
    source = tmp_path / "in.json"
    source.write_text(json.dumps([{**GOOD, "instruction": f"Task {i}"} for i in range(30)]))
    out = tmp_path / "out.json"
    args = ["respond", str(source), "-o", str(out), "--concurrency", "2"]
    first = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not fake_server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    second = run_cli(*args, env=cli_env(fake_server), timeout=30)
    assert_one_line_error(second, str(out), "another run is using this output", f"pid {first.pid} on ")
    asked = [body["messages"][-1]["content"] for body in fake_server.requests]
    assert len(asked) == len(set(asked)), "the second run sent nothing"
    first.send_signal(signal.SIGKILL)
    first.wait()
    fake_server.latency = 0
    third = run_cli(*args, env=cli_env(fake_server))
    assert third.returncode == 0, third.stderr
    assert len(json.loads(out.read_text())) == 30


def test_stale_temp_files_of_a_killed_run_are_removed_by_the_next(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps([GOOD]))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.jsonl.{dead.pid}.abc123_x.tmp"
    stale.write_text("partial")
    live = tmp_path / f".out.jsonl.{os.getpid()}.abc123_y.tmp"
    live.write_text("a live run's file")
    done = run_cli("convert", str(source), "-o", str(tmp_path / "out.jsonl"), "--to", "sharegpt")
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and live.exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 KB tmpfs: a real full disk. Mounting needs privileges CI may lack; the test is skipped then."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("command", ["convert", "respond"])
def test_a_full_disk_is_one_line(fake_server, tmp_path, tiny_disk, command):
    source = tmp_path / "in.json"
    source.write_text(json.dumps([{**GOOD, "instruction": f"Task {i} " + "x" * 2000} for i in range(200)]))
    out = tiny_disk / "out.json"
    args = {"convert": ["convert", str(source), "-o", str(out), "--to", "sharegpt"],
            "respond": ["respond", str(source), "-o", str(out)]}[command]
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and str(tiny_disk) in line, done.stderr
    assert "No space left on device" in line or "database or disk is full" in line, done.stderr
    assert not out.exists() and not [p for p in tiny_disk.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused_before_any_request(fake_server, tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps([GOOD]))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    done = run_cli("respond", str(source), "-o", str(locked / "out.json"), env=cli_env(fake_server))
    assert_one_line_error(done, str(locked / "out.json"), "Permission denied")
    assert fake_server.requests == []


@pytest.mark.parametrize(("command", "signum"), [("respond", signal.SIGINT), ("respond", signal.SIGTERM),
                                                 ("evol", signal.SIGINT), ("self-instruct", signal.SIGTERM)])
def test_interrupt_mid_run_says_what_was_kept_and_how_to_resume(fake_server, tmp_path, command, signum):
    fake_server.latency = 0.05
    source = tmp_path / "in.json"
    source.write_text(json.dumps([{**GOOD, "instruction": f"Task number {i}"} for i in range(200)]))
    out = tmp_path / "out.json"
    args = {"respond": ["respond", str(source), "-o", str(out)],
            "evol": ["evol", str(source), "-o", str(out), "--rounds", "1", "--no-judge"],
            "self-instruct": ["self-instruct", "--seeds", str(source), "--num", "50", "-o", str(out)]}[command]
    args += ["--concurrency", "4"]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fake_server.requests) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signum)
    stderr = victim.communicate(timeout=60)[1]
    assert victim.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "never retrieved" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"interrupted by {name}: ") and lines[0].endswith("Resume with: distillery "
                                                                                    + " ".join(args)), stderr
    summary = Summary.read(tmp_path / "out.json.summary.json")
    assert summary.meta["stopped"] == "interrupted"
    if command == "respond":
        sent = len(fake_server.requests)
        fake_server.latency = 0
        done = run_cli(*args, env=cli_env(fake_server))
        assert done.returncode == 0, done.stderr
        assert len(json.loads(out.read_text())) == 200
        assert len(fake_server.requests) - sent <= 200 - summary.stages[0].kept


def opened(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(link) == str(path) for link in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see when the input is open")
def test_interrupt_before_any_output_is_one_line(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({**GOOD, "instruction": f"Task {i}"}) + "\n" for i in range(300_000)))
    out = tmp_path / "stats.json"
    victim = subprocess.Popen([cli_exe(), "stats", str(source), "--json", str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.monotonic() + 60
    while not opened(victim.pid, source) and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGINT)
    stderr = victim.communicate(timeout=60)[1]
    assert victim.returncode == 130, stderr
    assert stderr.strip().count("\n") == 0, stderr
    assert stderr.startswith(f"interrupted by SIGINT: no output was written. Resume with: distillery stats {source}")
    assert not out.exists()


def test_ctrl_c_while_the_cli_is_still_starting_is_never_a_traceback(tmp_path):
    """Interrupts land at many moments of start-up (imports, argument parsing): none shows a traceback
    from distillery's code. (A Ctrl-C inside the first milliseconds, while Python itself or pip's launcher
    script is still starting, is Python's own and out of distillery's reach.)"""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(GOOD) + "\n")
    for step in range(12):
        victim = subprocess.Popen([cli_exe(), "stats", str(source)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=cli_env())
        time.sleep(0.03 * step)
        victim.send_signal(signal.SIGINT)
        stderr = victim.communicate(timeout=60)[1]
        assert not re.search(r"distillery/\w+\.py", stderr), stderr
        if "Traceback" not in stderr:
            assert victim.returncode in (0, 130, -signal.SIGINT), (victim.returncode, stderr)
