"""Endpoint settings shared by every LLM command, kept apart from the client so that the CLI (and
`--help`) can build them without importing the OpenAI SDK."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from distillery.errors import UserError

OPENAI_BASE_URL = "https://api.openai.com/v1"


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

    def resolve(self) -> EndpointOptions:
        """Fill model and URL from the environment and reject impossible settings with a clear message."""
        model = self.model or os.environ.get("DISTILLERY_MODEL")
        if not model:
            raise UserError(
                "no teacher model configured: pass --model NAME or set DISTILLERY_MODEL, and point --base-url "
                "(or OPENAI_BASE_URL) at an OpenAI-compatible endpoint, e.g. "
                "--base-url http://localhost:11434/v1 --model qwen2.5:7b for Ollama"
            )
        base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        if self.concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        if self.max_retries < 0:
            raise UserError("--max-retries cannot be negative")
        for name in ("rpm", "tpm", "timeout", "max_cost"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive")
        return replace(self, model=model, base_url=base_url)

    def api_key(self) -> str | None:
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
