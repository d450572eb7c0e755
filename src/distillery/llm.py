"""The one way distillery talks to a teacher model: OpenAI-compatible Chat Completions, done carefully.

Every request goes through the response cache first and is sent only on a miss, with at most
`concurrency` in flight, optional RPM/TPM pacing, retries with exponential backoff and jitter that honour
Retry-After, and a budget check before each send. A request that still fails after its retries comes
back as a failed ChatResult and is counted; it is never turned into an empty answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import openai

from distillery.cache import CachedResponse, ResponseCache, canonical_request, connect, request_key
from distillery.cost import Pricing, RunStats
from distillery.errors import INTERRUPTED, UserError
from distillery.io import valid_unicode
from distillery.tokens import estimate_tokens

OPENAI_BASE_URL = "https://api.openai.com/v1"
_RETRY_AFTER_CAP = 300.0
_FATAL_STATUS = {401: "the API key was rejected", 403: "access was refused", 404: "model or URL not found"}
T = TypeVar("T")


EXIT_INCOMPLETE = 3
EXIT_BUDGET = 4


class BudgetReached(Exception):
    """Raised before a send once --max-cost is spent; what was received so far is already cached."""


def run_within_budget(recipe: Coroutine[Any, Any, None]) -> str | None:
    """Run a recipe's event loop; --max-cost, Ctrl-C and SIGTERM end it cleanly (asyncio cancels the run)
    and the reason is returned, not raised, so the recipe still writes what it has and its summary."""
    try:
        asyncio.run(recipe)
    except BudgetReached as exc:
        return str(exc)
    except KeyboardInterrupt:
        return INTERRUPTED
    return None


def exit_status(incomplete: bool, budget_stopped: bool) -> int:
    """0 done, 3 something is missing (failed requests, a run that stopped short), 4 --max-cost reached."""
    if budget_stopped:
        return EXIT_BUDGET
    return EXIT_INCOMPLETE if incomplete else 0


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


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to complete; `sample` keeps several samples of the same prompt distinct."""

    messages: list[dict[str, str]]
    sample: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatResult:
    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Pacer:
    """Spaces sends for --rpm and holds them while the last minute's tokens exceed --tpm."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self.tpm = tpm
        self.next_send = 0.0
        self.recent_tokens: deque[tuple[float, int]] = deque()
        self.lock = asyncio.Lock()

    async def wait_turn(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.interval:
                delay = self.next_send - now
                self.next_send = max(now, self.next_send) + self.interval
                if delay > 0:
                    await asyncio.sleep(delay)
            while self.tpm and self._tokens_last_minute() >= self.tpm:
                await asyncio.sleep(max(0.05, self.recent_tokens[0][0] + 60.0 - time.monotonic()))

    def record(self, tokens: int) -> None:
        if self.tpm:
            self.recent_tokens.append((time.monotonic(), tokens))

    def _tokens_last_minute(self) -> int:
        horizon = time.monotonic() - 60.0
        while self.recent_tokens and self.recent_tokens[0][0] < horizon:
            self.recent_tokens.popleft()
        return sum(tokens for _, tokens in self.recent_tokens)


def retry_after_seconds(headers: Any) -> float | None:
    """Honour retry-after-ms (OpenAI, vLLM) and Retry-After in seconds or as an HTTP date."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return min(float(millis) / 1000.0, _RETRY_AFTER_CAP)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), _RETRY_AFTER_CAP)
    except ValueError:
        try:
            return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), _RETRY_AFTER_CAP)
        except (TypeError, ValueError):
            return None


class LLM:
    """An async client bound to one endpoint, one cache file and one run's statistics."""

    def __init__(self, options: EndpointOptions, cache_path: str | Path, stats: RunStats | None = None):
        self.options = options.resolve()
        self.stats = stats or RunStats()
        self.pricing = Pricing.for_model(self.options.model, self.options.price_input, self.options.price_output)
        self.cache = ResponseCache(connect(cache_path))
        self._api_key = self.options.api_key()
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key or "not-needed",
            base_url=self.options.base_url,
            max_retries=0,
            timeout=self.options.timeout,
        )
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._pacer = _Pacer(self.options.rpm, self.options.tpm)
        self._in_flight: dict[str, asyncio.Future[ChatResult]] = {}
        self._ever_answered = False
        self._token_limit_field = "max_tokens"

    async def __aenter__(self) -> LLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()
        self.cache.connection.close()

    def redact(self, text: str) -> str:
        """Error text can echo request details; the key itself must never reach a file."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The cached answer if there is one, else one sent request (with retries); identical concurrent
        requests share a single send."""
        params = {**self.options.generation_params(), **request.params}
        canonical = canonical_request(self.options.model, request.messages, params, request.sample)
        key = request_key(canonical)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cached += 1
            self.stats.cached_prompt_tokens += hit.prompt_tokens
            self.stats.cached_completion_tokens += hit.completion_tokens
            return ChatResult(hit.text, hit.finish_reason, hit.prompt_tokens, hit.completion_tokens, cached=True)
        if key in self._in_flight:
            return await asyncio.shield(self._in_flight[key])
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._send(request.messages, params)
            if result.ok:
                self.cache.put(
                    key,
                    self.options.model,
                    canonical,
                    CachedResponse(
                        result.text or "", result.finish_reason, result.prompt_tokens, result.completion_tokens
                    ),
                )
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._in_flight[key]

    async def _send(self, messages: list[dict[str, str]], params: dict[str, Any]) -> ChatResult:
        sendable = {name: value for name, value in params.items() if value is not None}
        last_error = "no attempt"
        kind = "error"
        async with self._slots:
            if self.options.max_cost is not None and self.stats.cost_usd >= self.options.max_cost:
                raise BudgetReached(f"--max-cost {self.options.max_cost} reached (spent ${self.stats.cost_usd:.4f})")
            for attempt in range(self.options.max_retries + 1):
                if attempt:
                    self.stats.retries += 1
                await self._pacer.wait_turn()
                try:
                    body = await self._client.post(
                        "/chat/completions",
                        cast_to=str,
                        body={"model": self.options.model, "messages": messages, **self._wire(sendable)},
                    )
                    return self._accept(json.loads(body))
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    last_error, kind = f"HTTP {status}: {_short(exc.message)}", f"http_{status}"
                    if status == 400 and self._token_limit_renamed(exc.message, sendable):
                        continue
                    if status in _FATAL_STATUS:
                        raise UserError(
                            f"{self.options.base_url} answered HTTP {status} ({_FATAL_STATUS[status]}) for model "
                            f"{self.options.model!r}: {self.redact(_short(exc.message))}"
                        ) from None
                    if status not in (408, 409, 429) and status < 500:
                        break
                    wait = retry_after_seconds(exc.response.headers)
                except openai.APITimeoutError:
                    last_error, kind, wait = f"timed out after {self.options.timeout:g}s", "timeout", None
                except openai.APIConnectionError as exc:
                    reason = _short(str(exc.__cause__ or exc))
                    last_error, kind, wait = f"connection failed: {reason}", "connection", None
                except (openai.APIError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                    last_error, kind, wait = f"malformed response: {_short(str(exc))}", "malformed", None
                if attempt < self.options.max_retries:
                    await asyncio.sleep(self._backoff(attempt, wait))
        self.stats.failed += 1
        self.stats.failures_by_kind[kind] = self.stats.failures_by_kind.get(kind, 0) + 1
        if kind == "connection" and not self._ever_answered:
            raise UserError(f"cannot reach {self.options.base_url}: {self.redact(last_error)}")
        return ChatResult(None, error=self.redact(last_error))

    def _wire(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._token_limit_field != "max_tokens" and "max_tokens" in params:
            params = {**params, self._token_limit_field: params["max_tokens"]}
            del params["max_tokens"]
        return params

    def _token_limit_renamed(self, message: str, params: dict[str, Any]) -> bool:
        """OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens` and ask for
        `max_completion_tokens`; switch once for the rest of the run instead of failing every request."""
        if "max_tokens" not in params or "max_completion_tokens" not in message:
            return False
        self._token_limit_field = "max_completion_tokens"
        return True

    def _accept(self, response: dict[str, Any]) -> ChatResult:
        """Read the answer from raw JSON: the SDK's typed models cost a millisecond of CPU per request,
        which is what caps throughput against a fast local server."""
        choice = response["choices"][0]
        text = choice["message"].get("content")
        if not isinstance(text, str):
            raise ValueError(f"no message content (finish_reason={choice.get('finish_reason')})")
        text = valid_unicode(text)
        usage = response.get("usage") or {}
        if isinstance(usage.get("prompt_tokens"), int):
            prompt_tokens, completion_tokens = usage["prompt_tokens"], usage.get("completion_tokens") or 0
        else:
            prompt_tokens, completion_tokens = 0, estimate_tokens(text)
        self._ever_answered = True
        self.stats.sent += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.cost_usd += self.pricing.cost(prompt_tokens, completion_tokens)
        self._pacer.record(prompt_tokens + completion_tokens)
        return ChatResult(text, choice.get("finish_reason"), prompt_tokens, completion_tokens)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After is a floor, never shortened."""
        ceiling = min(self.options.retry_max_delay, self.options.retry_base_delay * 2**attempt)
        jittered = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(retry_after, 0.0) + random.uniform(0, 0.1) if retry_after is not None else jittered


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def run_bounded(jobs: Iterable[T], worker: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Run `worker` over a possibly huge stream of jobs with at most `limit` alive at once.

    The first exception stops new jobs from starting; jobs already running finish (so their answers
    reach the cache) and then the exception is raised. Cancelled (Ctrl-C, SIGTERM), it cancels the running
    jobs and waits for them, so none outlives the client it uses.
    """
    pending: set[asyncio.Task[None]] = set()
    failure: BaseException | None = None
    iterator = iter(jobs)
    while failure is None:
        while len(pending) < limit:
            job = next(iterator, _DONE)
            if job is _DONE:
                break
            pending.add(asyncio.ensure_future(worker(job)))
        if not pending:
            break
        try:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        failure = _first_failure(done)
    if pending:
        await asyncio.wait(pending)
        late_failure = _first_failure(pending)
        failure = failure or late_failure
    if failure is not None:
        raise failure


def _first_failure(tasks: Iterable[asyncio.Task[None]]) -> BaseException | None:
    """Collect every finished task's exception (an unread one is logged by asyncio as a traceback)."""
    failures = [failure for failure in (task.exception() for task in tasks) if failure is not None]
    return failures[0] if failures else None


_DONE = object()
