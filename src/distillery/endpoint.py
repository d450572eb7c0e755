"""Endpoint settings shared by every LLM command, kept apart from the client so that the CLI (and
`--help`) can build them without importing the OpenAI SDK."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from distillery.errors import UserError

OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
PROVIDERS = ("openai", "anthropic")


@dataclass
class EndpointOptions:
    """How to reach the teacher and how hard to push it; shared by every LLM command."""

    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    timeout: float = 120.0
    max_retries: int = 6
    rpm: float | None = None
    tpm: float | None = None
    seed: int | None = None
    price_input: float | None = None
    price_output: float | None = None
    max_cost: float | None = None
    fresh: bool = False
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    local_model: str | None = None
    local_threads: int | None = None
    local_ctx: int = 4096
    local_parallel: int = 4
    local_engine: str = "llama.cpp"
    batch: bool = False
    batch_size: int = 50_000
    batch_poll: float = 30.0
    provider: str | None = None

    def resolve(self) -> EndpointOptions:
        """Fill model and URL from the environment and reject impossible settings with a clear message."""
        if self.local_model:
            return self._resolve_local()
        model = self.model or os.environ.get("DISTILLERY_MODEL")
        if not model:
            raise UserError(
                "no teacher model configured: pass --model NAME or set DISTILLERY_MODEL, and point --base-url "
                "(or OPENAI_BASE_URL) at an OpenAI-compatible endpoint, e.g. "
                "--base-url http://localhost:11434/v1 --model qwen2.5:7b for Ollama"
            )
        if self.provider is not None and self.provider not in PROVIDERS:
            raise UserError(f"--provider must be one of {', '.join(PROVIDERS)}, not {self.provider!r}")
        if self.provider == "anthropic":
            base_url = self.base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL
        else:
            base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        provider = self.provider or ("anthropic" if urlsplit(base_url).hostname == "api.anthropic.com" else "openai")
        api_key_env = self.api_key_env
        if provider == "anthropic" and api_key_env == "OPENAI_API_KEY":
            api_key_env = "ANTHROPIC_API_KEY"  # the default follows the provider; --api-key-env still wins
        self._check_limits()
        return replace(self, model=model, base_url=base_url, provider=provider, api_key_env=api_key_env)

    def _resolve_local(self) -> EndpointOptions:
        """A local model is its own name: the file's identity, so the cache never mixes two models. The
        URL stays unset until a client starts the server (see `local_server`). No more requests are sent
        than the server has slots: one queued inside llama.cpp would spend its --timeout waiting, and its
        retry would redo the work."""
        from distillery import local

        if self.base_url:
            raise UserError("--base-url and --local-model both name a teacher: pass one of them")
        if self.local_engine not in local.ENGINES:
            raise UserError(f"--local-engine must be one of {', '.join(local.ENGINES)}, not {self.local_engine!r}")
        if self.local_engine == "vllm":
            loads, identity = local.hf_model(self.local_model or "")
        else:
            path = local.model_path(self.local_model or "")
            loads, identity = str(path), local.model_identity(path)
        if self.model and self.model != identity:
            raise UserError(
                f"--local-model serves {Path(loads).name} only, so another model name ({self.model!r}, from --model "
                "or --answer-model) cannot be used with it"
            )
        for name in ("local_ctx", "local_parallel", "local_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        self._check_limits()
        local.require_engine(self.local_engine)
        concurrency = min(self.concurrency, self.local_parallel)
        return replace(self, model=identity, local_model=loads, concurrency=concurrency)

    def local_server(self) -> str:
        """The base URL of the in-process server for a resolved local model, started on first use."""
        from distillery import local

        settings = local.ServerSettings(
            Path(self.local_model or ""),
            self.local_threads or local.default_threads(),
            self.local_ctx,
            self.local_parallel,
            self.local_engine,
        )
        return local.serve(settings)

    def _check_limits(self) -> None:
        if self.concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        if self.max_retries < 0:
            raise UserError("--max-retries cannot be negative")
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        for name in ("rpm", "tpm", "timeout", "max_cost", "batch_poll"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive")

    def api_key(self) -> str | None:
        """The key to send; none to a local model, which must never see a hosted service's key."""
        if self.local_model:
            return None
        return os.environ.get(self.api_key_env) or None

    def generation_params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.seed}


def public_url(url: str) -> str:
    """The URL as messages may show it: `http://user:pass@host` loses its credentials."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def strip_credentials(url: str) -> str:
    """The URL without `user:pass@`, which is sent as a header instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def url_credentials(url: str) -> tuple[str | None, str | None]:
    """User and password written into a URL, decoded; (None, None) when there are none."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return None, None
    return unquote(parts.username or ""), (unquote(parts.password) if parts.password is not None else None)


def url_secrets(url: str) -> list[str]:
    """Credentials written into a base URL, as written and decoded, so that they can be masked."""
    parts = urlsplit(url)
    found = [parts.netloc.rpartition("@")[0]] if "@" in parts.netloc else []
    for value in (parts.username, parts.password):
        if value:
            found += [value, unquote(value)]
    return [secret for secret in found if secret]
