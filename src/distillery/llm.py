"""The one way distillery talks to a teacher model: OpenAI-compatible Chat Completions, done carefully.

Every request goes through the response cache first and is sent only on a miss, with at most
`concurrency` in flight, optional RPM/TPM pacing, retries with exponential backoff and jitter that honour
Retry-After, and a budget that reserves the expected cost of every request in flight. A request that
still fails after its retries comes back as a failed ChatResult and is counted; it is never turned into
an empty answer. The first error that ends the run (a rejected key, a full disk, the budget) stops every
request that has not been sent yet.

The SDK talks HTTP through aiohttp: at hundreds of connections httpx's pool spends more CPU on its own
bookkeeping than on the requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import aiohttp
import openai

from distillery.batch import Batcher
from distillery.cache import CachedResponse, ResponseCache, canonical_request, connect, request_key
from distillery.cost import Budget, Pricing, RunStats
from distillery.endpoint import (
    OPENAI_BASE_URL,
    EndpointOptions,
    public_url,
    strip_credentials,
    url_credentials,
    url_secrets,
)
from distillery.errors import INTERRUPTED, UserError
from distillery.io import valid_unicode
from distillery.tokens import estimate_tokens

__all__ = ["OPENAI_BASE_URL", "EndpointOptions", "LLM", "ChatRequest", "ChatResult", "BudgetReached"]
_RETRY_AFTER_CAP = 300.0
_FATAL_STATUS = {401: "the API key was rejected", 403: "access was refused", 404: "model or URL not found"}
T = TypeVar("T")


EXIT_INCOMPLETE = 3
EXIT_BUDGET = 4


class BudgetReached(Exception):
    """Raised instead of a send once --max-cost is spent; what was received so far is already cached.

    The message reads the run's spend when it is shown, after the requests in flight have landed, so the
    stop message and the summary give the same figure.
    """

    def __init__(self, limit: float, stats: RunStats):
        super().__init__(limit)
        self.limit = limit
        self.stats = stats

    def __str__(self) -> str:
        return f"--max-cost {self.limit:g} reached (spent ${self.stats.cost_usd:.4f})"


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


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to complete; `sample` keeps several samples of the same prompt distinct. With
    `prompt`, a raw text completion instead (`/completions`, the model's chat template written by the
    caller, as Magpie needs); `messages` is then unused."""

    messages: list[dict[str, str]]
    sample: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None


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


class Redactor:
    """Masks secrets in text an endpoint sent back, before anything is cut short or written.

    Each secret is masked as written, URL-encoded, and base64-encoded at any byte alignment (an echoed
    `Authorization: Basic ...` or a whole echoed header block), and so is any echo of its first 8
    characters, for servers that cut the key short themselves.
    """

    def __init__(self, secrets: Iterable[str]):
        forms: set[str] = set()
        prefixes: set[str] = set()
        for secret in (s for s in secrets if len(s) >= 4):
            forms.update({secret, quote(secret, safe=""), quote_plus(secret)})
            prefixes.add(re.escape(secret[:8]) + r"[\w\-.~+/=%]*")
            forms.update(core for core in _base64_cores(secret.encode()) if len(core) >= 8)
        alternatives = [re.escape(form) for form in sorted(forms, key=len, reverse=True)] + sorted(prefixes)
        self.pattern = re.compile("|".join(alternatives)) if alternatives else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub("***", text) if self.pattern else text


def _base64_cores(secret: bytes) -> Iterator[str]:
    """The base64 characters that depend on the secret alone, for each of the three offsets it can sit at
    inside a longer encoded text, in both alphabets."""
    for pad in range(3):
        first = -(-pad // 3)
        last = (pad + len(secret)) // 3
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            yield encode(b"\0" * pad + secret).decode()[4 * first : 4 * last]


class LLM:
    """An async client bound to one endpoint, one cache file and one run's statistics."""

    def __init__(self, options: EndpointOptions, cache_path: str | Path, stats: RunStats | None = None):
        self.options = options.resolve()
        if self.options.local_model:
            self.options = replace(self.options, base_url=self.options.local_server())
        self.stats = stats or RunStats()
        self.pricing = Pricing.for_model(self.options.model, self.options.price_input, self.options.price_output)
        if self.options.max_cost is not None and self.stats.budget is None:
            self.stats.budget = Budget(self.options.max_cost)
        self.cache = ResponseCache(connect(cache_path))
        self._api_key = self.options.api_key()
        self.url = public_url(self.options.base_url)
        self.redact = Redactor([*([self._api_key] if self._api_key else []), *url_secrets(self.options.base_url)])
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key or "not-needed",
            base_url=strip_credentials(self.options.base_url),
            max_retries=0,
            timeout=self.options.timeout,
            http_client=openai.DefaultAioHttpClient(),
            default_headers=self._basic_auth(),
        )
        self._batcher = (
            Batcher(self, self._client)
            if self.options.batch or Batcher.has_open(self.cache.connection, self.options.base_url, self.options.model)
            else None
        )
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._pacer = _Pacer(self.options.rpm, self.options.tpm)
        self._in_flight: dict[str, asyncio.Future[ChatResult]] = {}
        self._stopped: BaseException | None = None
        self._ever_answered = False
        self._token_limit_field = "max_tokens"
        self._longest_answer: int | None = None
        self._prompt_ratio = 1.0

    async def __aenter__(self) -> LLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self._client.close()
        self.cache.connection.close()

    def _basic_auth(self) -> dict[str, str] | None:
        """Credentials in --base-url (`http://user:pass@host/v1`) become a Basic Authorization header, which
        leaves no room for an API key as well."""
        user, password = url_credentials(self.options.base_url)
        if user is None and password is None:
            return None
        if self._api_key:
            raise UserError(
                f"{self.url} carries credentials and ${self.options.api_key_env} holds an API key too; a request "
                "has one Authorization header, so drop one of them"
            )
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def stop(self, reason: BaseException) -> None:
        """Send nothing more: every request not yet sent raises `reason` (the first one given wins)."""
        if self._stopped is None:
            self._stopped = reason

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The cached answer if there is one, else one sent request (with retries); identical concurrent
        requests share a single send."""
        params = {**self.options.generation_params(), **request.params}
        canonical = canonical_request(self.options.model, request.messages, params, request.sample, request.prompt)
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
            if self._batcher is not None and request.prompt is None and self._batcher.takes(key):
                result = await self._batcher.chat(key, canonical)  # the batcher caches what its batches answer
                future.set_result(result)
                return result
            result = await self._send(request.messages, params, request.prompt)
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
            if isinstance(exc, Exception):
                self.stop(exc)
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._in_flight[key]

    async def _send(self, messages: list[dict[str, str]], params: dict[str, Any], prompt: str | None) -> ChatResult:
        sendable = {name: value for name, value in params.items() if value is not None}
        if prompt is not None:  # priced and counted as one user message of the raw text
            messages = [{"role": "user", "content": prompt}]
        async with self._slots:
            expected = await self._reserve(messages, sendable)
            try:
                return await self._attempts(messages, sendable, prompt)
            finally:
                if self.stats.budget is not None:
                    self.stats.budget.release(expected, self.stats.cost_usd)

    async def _reserve(self, messages: list[dict[str, str]], sendable: dict[str, Any]) -> float | None:
        """Wait until the budget can cover this request on top of those in flight, and hold its share."""
        budget = self.stats.budget
        if self._stopped is not None:
            raise self._stopped
        if budget is None:
            return 0.0
        expected = self._expected_cost(messages, sendable)
        if not await budget.reserve(expected, lambda: self.stats.cost_usd, lambda: self._stopped):
            raise BudgetReached(budget.limit, self.stats)
        return expected

    def _expected_cost(self, messages: list[dict[str, str]], sendable: dict[str, Any]) -> float | None:
        """Prompt tokens estimated from the text (scaled by the worst ratio the server's counts showed),
        completion tokens at --max-tokens or the longest answer so far; None before anything is known."""
        completion = sendable.get("max_tokens") or self._longest_answer
        if completion is None:
            return None
        text_tokens = sum(estimate_tokens(str(message.get("content") or "")) for message in messages)
        return self.pricing.cost(math.ceil(text_tokens * self._prompt_ratio) + 4 * len(messages), completion)

    async def _attempts(
        self, messages: list[dict[str, str]], sendable: dict[str, Any], prompt: str | None
    ) -> ChatResult:
        last_error = "no attempt"
        path, body = ("/chat/completions", {"messages": messages}) if prompt is None else (
            "/completions", {"prompt": prompt})
        kind = "error"
        for attempt in range(self.options.max_retries + 1):
            if self._stopped is not None:
                raise self._stopped
            if attempt:
                self.stats.retries += 1
            await self._pacer.wait_turn()
            try:
                answer = await asyncio.wait_for(
                    self._client.post(
                        path, cast_to=str, body={"model": self.options.model, **body, **self._wire(sendable)}
                    ),
                    self.options.timeout,
                )
                return self._accept(json.loads(answer), messages, raw=prompt is not None)
            except openai.APIStatusError as exc:
                status = exc.status_code
                message = self.redact(exc.message)
                last_error, kind = f"HTTP {status}: {_short(message)}", f"http_{status}"
                if status == 400 and self._token_limit_renamed(exc.message, sendable):
                    continue
                if prompt is not None and status in (404, 405, 501) and not self._ever_answered:
                    raise UserError(
                        f"{self.url} takes no raw prompt (/completions answered HTTP {status}: {_short(message, 120)})"
                        "; it needs a server that completes raw text in the model's chat template (vLLM, llama.cpp, "
                        "--local-model)"
                    ) from None
                if status in _FATAL_STATUS and not self._ever_answered:
                    raise UserError(
                        f"{self.url} answered HTTP {status} ({_FATAL_STATUS[status]}) for model "
                        f"{self.options.model!r}: {_short(message)}"
                    ) from None
                if status not in (408, 409, 429) and status < 500:
                    break
                wait = retry_after_seconds(exc.response.headers)
            except (asyncio.TimeoutError, openai.APITimeoutError, openai.APIConnectionError) as exc:
                kind, last_error = _transport_failure(exc, self.options.timeout)
                last_error, wait = _short(self.redact(last_error)), None
            except (openai.APIError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                last_error, kind, wait = f"malformed response: {_short(self.redact(str(exc)))}", "malformed", None
            if attempt < self.options.max_retries:
                await asyncio.sleep(self._backoff(attempt, wait))
        self.stats.failed += 1
        self.stats.failures_by_kind[kind] = self.stats.failures_by_kind.get(kind, 0) + 1
        if not self._ever_answered and kind == "connect":
            raise UserError(f"cannot reach {self.url}: {last_error}")
        if not self._ever_answered and kind == "dropped":
            raise UserError(f"{self.url} accepted the connection but {last_error}, on every attempt")
        return ChatResult(None, error=last_error)
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

    def _accept(
        self,
        response: dict[str, Any],
        messages: list[dict[str, str]],
        raw: bool = False,
        pricing: Pricing | None = None,
    ) -> ChatResult:
        """Read the answer from raw JSON: the SDK's typed models cost a millisecond of CPU per request,
        which is what caps throughput against a fast local server.

        A server that leaves out `usage` is charged estimated tokens (counted in `estimated_usage`), so it
        cannot slip past --max-cost. `pricing` is the batch price for an answer that came through a batch."""
        choice = response["choices"][0]
        text = choice.get("text") if raw else choice["message"].get("content")
        if not isinstance(text, str):
            raise ValueError(f"no message content (finish_reason={choice.get('finish_reason')})")
        text = valid_unicode(text)
        usage = response.get("usage") or {}
        prompt_estimate = sum(estimate_tokens(str(message.get("content") or "")) for message in messages)
        if isinstance(usage.get("prompt_tokens"), int):
            prompt_tokens, completion_tokens = usage["prompt_tokens"], usage.get("completion_tokens") or 0
            self._prompt_ratio = max(self._prompt_ratio, prompt_tokens / max(prompt_estimate, 1))
        else:
            prompt_tokens, completion_tokens = prompt_estimate, estimate_tokens(text)
            self.stats.estimated_usage += 1
        self._ever_answered = True
        self._longest_answer = max(self._longest_answer or 0, completion_tokens)
        self.stats.sent += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.cost_usd += (pricing or self.pricing).cost(prompt_tokens, completion_tokens)
        self._pacer.record(prompt_tokens + completion_tokens)
        return ChatResult(text, choice.get("finish_reason"), prompt_tokens, completion_tokens)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After is a floor, never shortened."""
        ceiling = min(self.options.retry_max_delay, self.options.retry_base_delay * 2**attempt)
        jittered = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(retry_after, 0.0) + random.uniform(0, 0.1) if retry_after is not None else jittered


def _transport_failure(exc: BaseException, timeout: float) -> tuple[str, str]:
    """What went wrong below HTTP, as (kind, message, not yet shortened): `connect` (nothing answered at that address),
    `timeout` (the attempt outlived --timeout) or `dropped` (the server closed or reset the connection
    before the answer was complete). The SDK's own wording ("Connection error.") says none of that, and its
    aiohttp mapping files a mid-answer disconnect under connect timeouts, so the cause chain decides."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    root = chain[-1]
    reason = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
    if any(isinstance(e, aiohttp.ClientConnectorError) for e in chain):
        return "connect", f"connection failed: {reason}"
    if any(isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                          ConnectionError)) for e in chain):
        return "dropped", f"the connection was closed before the answer was complete ({reason})"
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return "timeout", f"timed out after {timeout:g}s"
    return "connect", f"connection failed: {reason}"


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
