"""Provider batch APIs (`--batch`): the same answers at half the price, within 24 hours, paid for once.

A `Batcher` sits behind one `LLM` client, so every recipe (respond's requests, evol's staged sessions,
self-instruct's generate loop) runs unchanged: `LLM.chat` consults the cache, and on a miss hands the
request here, where it waits for a future. Queued requests are submitted as one batch (a JSONL file
uploaded with `files.create`, then `batches.create`, each line's `custom_id` the request's cache key) as
soon as the queue holds `--batch-size` requests, or when every coroutine of the run is waiting on an
answer: that is one **wave**. Recipes whose next request depends on an answer (evol's stages,
self-instruct's pool) therefore submit a wave per stage or per round of `--concurrency` requests.

Never paying twice rests on the run state (tables `batches` and `batch_requests`): a batch's input file
and request keys are committed before `create` is sent, and its id in the same step as `create`
returns, with no await in between. A run started again polls every batch not yet collected, finds one
whose `create` it never heard back from by its input file, and sends none of their requests again; a
`create` that failed in transit is looked for the same way before it is retried.
Answers land in the same response cache as real-time answers. Expired or failed batches keep what they
answered and resubmit only the rest (`resubmitted`); per-request errors are failures like real-time ones.

The provider's side is one small class: `OpenAIBatches` here (OpenAI, Azure OpenAI, DashScope), and
`anthropic_batch.AnthropicBatches` for Anthropic's Message Batches (`--provider anthropic`), which takes the
requests inline instead of as an uploaded file and reports per request why one went unanswered.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import openai

from distillery.cache import CachedResponse, connect, state_path
from distillery.endpoint import strip_credentials
from distillery.errors import UserError
from distillery.progress import plain_console

if TYPE_CHECKING:
    from distillery.anthropic_batch import AnthropicBatches
    from distillery.llm import LLM, ChatResult

T = TypeVar("T")

ENDPOINT = "/v1/chat/completions"
PROVIDER_MAX_REQUESTS = 50_000  # OpenAI and DashScope: requests per batch file
PROVIDER_MAX_BYTES = 190 * 1024 * 1024  # OpenAI's 200 MB per file, with room for the upload's envelope
ANTHROPIC_MAX_REQUESTS = 100_000  # Anthropic's Message Batches: requests per batch
ANTHROPIC_MAX_BYTES = 240 * 1024 * 1024  # of its 256 MB per batch, with room for the request's envelope
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled", "ended"})  # "ended": Anthropic's
_STOPPING = frozenset({"cancelling", "canceling"})
CLOCK_SKEW = 600.0  # seconds a provider's clock may differ from ours when a batch is looked for by time
_QUIET_TICKS = 5  # event-loop turns without a new request before a wave is submitted
_POLL_BACKOFF = 1.5
_POLL_CAP = 10  # the poll interval grows to at most this many times --batch-poll


@dataclass
class BatchRow:
    """One journaled batch, as `distillery batches` lists it."""

    seq: int
    id: str | None
    state: str
    requests: int
    answered: int
    failed: int
    collected: bool
    model: str
    base_url: str
    api_key_env: str
    created: float
    provider: str


@dataclass
class Polled:
    """One look at a batch, in the journal's terms."""

    id: str
    state: str  # as the provider says it
    ended: bool
    answered: int
    failed: int
    total: int
    why: str = ""  # why the whole batch stopped, where the provider says
    raw: Any = None  # the provider's own object, for its `results`


@dataclass
class Results:
    """What an ended batch holds: answers (shaped as Chat Completions bodies), per-request errors, and for
    the requests it never ran, why (`expired`, `failed`, `cancelled`); a request in none of them was never
    run either, for the batch's own reason."""

    answers: dict[str, dict[str, Any]]
    errors: dict[str, str]
    lost: dict[str, str]


class OpenAIBatches:
    """The OpenAI-compatible Batch API: a JSONL input file, `batches.create`, an output and an error file."""

    name = "openai"
    max_requests = PROVIDER_MAX_REQUESTS
    max_bytes = PROVIDER_MAX_BYTES
    route = "/v1/batches"
    status_error: type[Exception] = openai.APIStatusError
    transport_errors: tuple[type[Exception], ...] = (openai.APITimeoutError, openai.APIConnectionError)

    def __init__(self, llm: LLM, client: openai.AsyncOpenAI):
        self.llm = llm
        self.client = client

    def line(self, key: str, canonical: str) -> bytes:
        request = json.loads(canonical)
        sendable = {name: value for name, value in request["params"].items() if value is not None}
        body = {"model": request["model"], "messages": request["messages"], **self.llm._wire(sendable)}
        return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                          ensure_ascii=False).encode() + b"\n"

    async def prepare(self, lines: list[bytes]) -> str:
        """Upload the input file; its id names the batch until `create` returns."""
        uploaded = await self.client.files.create(file=("distillery-batch.jsonl", b"".join(lines),
                                                        "application/jsonl"), purpose="batch")
        return uploaded.id

    async def create(self, input_file: str, lines: list[bytes]) -> Polled:
        return _polled(await self.client.batches.create(input_file_id=input_file, endpoint=ENDPOINT,
                                                        completion_window="24h"))

    async def find(self, input_file: str, keys: set[str], since: float, known: set[str]) -> Polled | None:
        """The batch made from this input file, newest first, back to shortly before it was journaled."""
        async for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == input_file:
                return _polled(batch)
            if batch.created_at < since - CLOCK_SKEW:
                return None
        return None

    async def retrieve(self, batch_id: str) -> Polled:
        return _polled(await self.client.batches.retrieve(batch_id))

    async def results(self, polled: Polled) -> Results:
        found = Results({}, {}, {})
        for file_id in (polled.raw.output_file_id, polled.raw.error_file_id):
            if file_id:
                for line in (await self.client.files.content(file_id)).text.splitlines():
                    if line.strip():
                        _read_line(json.loads(line), found.answers, found.errors)
        return found

    async def close(self) -> None:
        """The client is the LLM's own, closed with it."""


def _polled(batch: Any) -> Polled:
    counts = batch.request_counts
    answered, failed = (counts.completed, counts.failed) if counts is not None else (0, 0)
    total = counts.total if counts is not None else 0
    return Polled(batch.id, batch.status, batch.status in TERMINAL, answered, failed, total, _why(batch), batch)


class Batcher:
    """The batch side of one `LLM` client: queue, submit in waves, journal, poll, collect, resolve."""

    def __init__(self, llm: LLM, client: openai.AsyncOpenAI):
        self.llm = llm
        self.api: OpenAIBatches | AnthropicBatches
        if llm.options.provider == "anthropic":
            from distillery.anthropic_batch import AnthropicBatches

            self.api = AnthropicBatches(llm)
        else:
            self.api = OpenAIBatches(llm, client)
        self.connection = llm.cache.connection
        self.base_url = strip_credentials(llm.options.base_url or "")
        self.model = llm.options.model or ""
        self.pricing = llm.pricing.batched()
        self.max_requests = min(llm.options.batch_size, self.api.max_requests)
        self.queue: dict[str, str] = {}  # key -> canonical request, waiting for the next wave
        self.waiting: dict[str, asyncio.Future[ChatResult]] = {}
        self.open_keys: dict[str, int] = {}  # key -> seq of the journaled batch that holds it
        self.submissions: Counter[str] = Counter()
        self.console = plain_console(stderr=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self._enqueued = 0
        self._flushing = False
        self._started = False
        self._found = asyncio.Event()  # set once every batch journaled without an id is found or created
        self._open_rows = self.connection.execute(
            "SELECT seq, id, input_file FROM batches WHERE collected = 0 AND base_url = ? AND model = ? "
            "AND provider = ?", (self.base_url, self.model, self.api.name),
        ).fetchall()
        for seq, _, _ in self._open_rows:
            for (key,) in self.connection.execute("SELECT key FROM batch_requests WHERE batch = ?", (seq,)):
                self.open_keys[key] = seq
                self.submissions[key] += 1

    @staticmethod
    def has_open(connection: sqlite3.Connection, base_url: str, model: str) -> bool:
        """Whether an earlier run left batches of this endpoint and model uncollected."""
        row = connection.execute(
            "SELECT 1 FROM batches WHERE collected = 0 AND base_url = ? AND model = ? LIMIT 1",
            (strip_credentials(base_url), model),
        ).fetchone()
        return row is not None

    def takes(self, key: str) -> bool:
        """Whether this request is answered through a batch: always with --batch, and without it when an
        uncollected batch already holds it (it is paid for; sending it again would pay twice)."""
        return self.llm.options.batch or key in self.open_keys

    async def chat(self, key: str, canonical: str) -> ChatResult:
        """The answer of this request from a batch: one already journaled, or the next wave."""
        if not self._started:
            self._started = True
            unnamed = [row for row in self._open_rows if row[1] is None]
            for seq, batch_id, _ in self._open_rows:
                if batch_id is not None:
                    self._spawn(self._watch_or_fail(seq))
            self._spawn(self._find_unnamed(unnamed))
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        if key not in self.open_keys:
            self._enqueue(key, canonical)
        return await future

    async def close(self) -> None:
        """Stop polling; uncollected batches stay journaled for the next run to collect."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.api.close()

    # --- submitting ------------------------------------------------------------------------------------

    def _enqueue(self, key: str, canonical: str) -> None:
        self.queue[key] = canonical
        self._enqueued += 1
        if len(self.queue) >= self.max_requests:
            taken, self.queue = self.queue, {}
            self._spawn(self._submit(taken))
        elif not self._flushing:
            self._flushing = True
            self._spawn(self._flush_when_quiet())

    async def _flush_when_quiet(self) -> None:
        """Submit the queue once no coroutine has added to it for a few turns of the event loop: every
        record is then waiting on an answer, and what is queued is the whole wave."""
        seen = -1
        while seen != self._enqueued:
            seen = self._enqueued
            for _ in range(_QUIET_TICKS):
                await asyncio.sleep(0)
        self._flushing = False
        taken, self.queue = self.queue, {}
        if taken:
            await self._submit(taken)

    async def _submit(self, requests: dict[str, str]) -> None:
        await self._found.wait()  # a batch found by time must not be confused with one of this run's
        for chunk in self._chunks(requests):
            try:
                self._check_budget()
                await self._submit_chunk(chunk)
            except Exception as exc:
                self._fail(chunk, exc)

    def _chunks(self, requests: dict[str, str]) -> list[dict[str, tuple[str, bytes]]]:
        """Requests (canonical form and wire form) of at most --batch-size and the provider's size per
        batch."""
        chunks: list[dict[str, tuple[str, bytes]]] = [{}]
        size = 0
        for key, canonical in requests.items():
            line = self.api.line(key, canonical)
            if chunks[-1] and (len(chunks[-1]) >= self.max_requests or size + len(line) > self.api.max_bytes):
                chunks.append({})
                size = 0
            chunks[-1][key] = (canonical, line)
            size += len(line)
        return [chunk for chunk in chunks if chunk]

    def _check_budget(self) -> None:
        from distillery.llm import BudgetReached

        budget = self.llm.stats.budget
        if budget is not None and self.llm.stats.cost_usd >= budget.limit:
            raise BudgetReached(budget.limit, self.llm.stats)
        if self.llm._stopped is not None:
            raise self.llm._stopped

    async def _submit_chunk(self, lines: dict[str, tuple[str, bytes]]) -> None:
        """Upload, journal, create, journal: a kill -9 between any two of these leaves a trace to resume."""
        input_file = await self._call(self.api.prepare, [line for _, line in lines.values()])
        now = time.time()
        with self.connection:
            self.connection.execute("BEGIN")
            seq = self.connection.execute(
                "INSERT INTO batches (id, input_file, base_url, api_key_env, model, state, requests, created, "
                "updated, provider) VALUES (NULL, ?, ?, ?, ?, 'uploaded', ?, ?, ?, ?)",
                (input_file, self.base_url, self.llm.options.api_key_env, self.model, len(lines), now, now,
                 self.api.name),
            ).lastrowid
            self.connection.executemany(
                "INSERT INTO batch_requests VALUES (?, ?, ?)",
                ((seq, key, canonical) for key, (canonical, _) in lines.items()),
            )
        for key in lines:
            self.open_keys[key] = seq
            self.submissions[key] += 1
        try:
            await self._create(seq, input_file, [line for _, line in lines.values()])
        except self.api.status_error:
            self._forget(seq)  # the provider refused it: there is no batch to pay for
            raise
        self._spawn(self._watch_or_fail(seq))  # the next chunk is submitted while this one runs

    async def _create(self, seq: int, input_file: str, lines: list[bytes]) -> None:
        """`create`, and before any retry a look for the batch the failed attempt may have made after all."""
        batch = await self._call(self.api.create, input_file, lines, recover=lambda: self._find(seq, input_file))
        self._journal(seq, batch)  # no await since create returned: nothing else runs before this commit

    async def _find(self, seq: int, input_file: str) -> Polled | None:
        keys = {key for (key,) in self.connection.execute("SELECT key FROM batch_requests WHERE batch = ?", (seq,))}
        since = self.connection.execute("SELECT created FROM batches WHERE seq = ?", (seq,)).fetchone()[0]
        known = {batch_id for (batch_id,) in self.connection.execute("SELECT id FROM batches WHERE id IS NOT NULL")}
        return await self.api.find(input_file, keys, since, known)

    async def _find_unnamed(self, rows: list[tuple[int, None, str]]) -> None:
        """Batches an earlier run journaled but never heard `create` answer: found again, else created now;
        then polled. This run submits nothing before they are settled."""
        try:
            for seq, _, input_file in rows:
                try:
                    found = await self._call(self._find, seq, input_file)
                    if found is not None:
                        self._journal(seq, found)
                    else:
                        lines = [self.api.line(key, canonical) for key, canonical in self.connection.execute(
                            "SELECT key, request FROM batch_requests WHERE batch = ?", (seq,))]
                        await self._create(seq, input_file, lines)
                except Exception as exc:
                    self._fail({key: b"" for key, owner in self.open_keys.items() if owner == seq}, exc)
                    continue
                self._spawn(self._watch_or_fail(seq))
        finally:
            self._found.set()

    def _forget(self, seq: int) -> None:
        with self.connection:
            self.connection.execute("BEGIN")
            self.connection.execute("DELETE FROM batch_requests WHERE batch = ?", (seq,))
            self.connection.execute("DELETE FROM batches WHERE seq = ?", (seq,))
        for key in [key for key, owner in self.open_keys.items() if owner == seq]:
            del self.open_keys[key]

    # --- polling and collecting --------------------------------------------------------------------------

    async def _watch_or_fail(self, seq: int) -> None:
        """Poll and collect one batch; an error that ends polling reaches every request waiting on it."""
        try:
            await self._watch(seq)
        except Exception as exc:
            self._fail({key: b"" for key, owner in self.open_keys.items() if owner == seq}, exc)

    async def _watch(self, seq: int) -> None:
        batch_id = self.connection.execute("SELECT id FROM batches WHERE seq = ?", (seq,)).fetchone()[0]
        poll = self.llm.options.batch_poll
        delay = poll
        while True:
            batch = await self._call(self.api.retrieve, batch_id)
            self._journal(seq, batch)
            if batch.ended:
                await self._collect(seq, batch)
                return
            await asyncio.sleep(delay)
            delay = min(delay * _POLL_BACKOFF, poll * _POLL_CAP)

    def _journal(self, seq: int, batch: Polled) -> None:
        previous = self.connection.execute("SELECT state, answered FROM batches WHERE seq = ?", (seq,)).fetchone()
        self.connection.execute(
            "UPDATE batches SET id = ?, state = ?, answered = ?, failed = ?, updated = ? WHERE seq = ?",
            (batch.id, batch.state, batch.answered, batch.failed, time.time(), seq),
        )
        if previous is not None and tuple(previous) != (batch.state, batch.answered):
            self.console.print(f"batch {batch.id}: {batch.state}, {batch.answered}/{batch.total or '?'} answered, "
                               f"{batch.failed} failed")

    async def _collect(self, seq: int, batch: Polled) -> None:
        """Store every answer in the response cache, count every failed line, resubmit what an expired or
        failed batch left unanswered, and mark the batch collected: all before any waiter runs."""
        canonicals = dict(self.connection.execute("SELECT key, request FROM batch_requests WHERE batch = ?", (seq,)))
        found = await self._call(self.api.results, batch)
        results: dict[str, ChatResult] = {}
        with self.connection:
            self.connection.execute("BEGIN")
            for key, body in found.answers.items():
                if key in canonicals:
                    results[key] = self._accept(key, canonicals[key], body)
            self.connection.execute(
                "UPDATE batches SET collected = 1, answered = ?, failed = ?, updated = ? WHERE seq = ?",
                (sum(r.ok for r in results.values()), len(canonicals) - sum(r.ok for r in results.values()),
                 time.time(), seq),
            )
        resubmit: dict[str, str] = {}
        for key, canonical in canonicals.items():
            self.open_keys.pop(key, None)
            if key in results:
                continue
            state = found.lost.get(key, batch.state)
            if key in found.errors:
                results[key] = self._failure(f"batch {batch.id}: {found.errors[key]}", "batch_request")
            elif key in self.waiting and state != "cancelled" and \
                    self.submissions[key] <= self.llm.options.max_retries:
                resubmit[key] = canonical
            elif key in self.waiting:
                why = f" ({batch.why})" if batch.why else ""
                results[key] = self._failure(f"batch {batch.id} {state} before answering{why}", f"batch_{state}")
        for key, result in results.items():
            future = self.waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(result)
        if resubmit:
            self.llm.stats.resubmitted += len(resubmit)
            for key, canonical in resubmit.items():
                self._enqueue(key, canonical)

    def _accept(self, key: str, canonical: str, response: dict[str, Any]) -> ChatResult:
        try:
            result = self.llm._accept(response, json.loads(canonical)["messages"], pricing=self.pricing)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            return self._failure(f"malformed batch answer: {exc}", "malformed")
        realtime = self.llm.pricing.cost(result.prompt_tokens, result.completion_tokens)
        self.llm.stats.batched += 1
        self.llm.stats.batch_saved_usd += realtime - self.pricing.cost(result.prompt_tokens, result.completion_tokens)
        self.llm.cache.put(key, self.model, canonical, CachedResponse(
            result.text or "", result.finish_reason, result.prompt_tokens, result.completion_tokens))
        return result

    def _failure(self, error: str, kind: str) -> ChatResult:
        from distillery.llm import ChatResult

        stats = self.llm.stats
        stats.failed += 1
        stats.failures_by_kind[kind] = stats.failures_by_kind.get(kind, 0) + 1
        return ChatResult(None, error=error)

    def _fail(self, keys: dict[str, Any], exc: BaseException) -> None:
        for key in keys:
            future = self.waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_exception(exc)

    # --- plumbing --------------------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any,
                    recover: Callable[[], Awaitable[T | None]] | None = None) -> T:
        """One batch API call with the run's retries; an endpoint without the Batch API is the user's to fix.
        `recover`, before a retry, may find what the failed attempt did after all (a batch it created)."""
        options = self.llm.options
        for attempt in range(options.max_retries + 1):
            try:
                return await method(*args)
            except self.api.status_error as exc:
                status = getattr(exc, "status_code", 0)
                if status in (401, 403, 404, 405):
                    message = self.llm.redact(str(getattr(exc, "message", exc)))[:300]
                    raise UserError(
                        f"{self.llm.url} answered HTTP {status} to a Batch API call for model {self.model!r}: "
                        f"{message} (does it offer {self.api.route}? drop --batch to send requests one by one)"
                    ) from None
                if status not in (408, 409, 429) and status < 500 or attempt == options.max_retries:
                    raise
            except self.api.transport_errors:
                if attempt == options.max_retries:
                    raise
            await asyncio.sleep(self.llm._backoff(attempt, None))
            if recover is not None:
                found = await recover()
                if found is not None:
                    return found
        raise AssertionError("unreachable")


def _read_line(line: dict[str, Any], answers: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
    """One line of an output or error file: an answer, or why its request failed."""
    key = str(line.get("custom_id"))
    response = line.get("response") or {}
    error = line.get("error")
    if response.get("status_code") == 200 and isinstance(response.get("body"), dict) and not error:
        answers[key] = response["body"]
        return
    if isinstance(error, dict):
        errors[key] = f"{error.get('code') or 'error'}: {error.get('message')}"
    else:
        body = response.get("body") or {}
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        errors[key] = f"HTTP {response.get('status_code')}: {message or body}"


def _why(batch: Any) -> str:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return str(errors[0].message) if errors and getattr(errors[0], "message", None) else ""


def state_files(path: Path) -> list[Path]:
    """The state files behind a command's OUTPUT (the cache beside it) or a run directory (RUN/state/*)."""
    if path.is_dir():
        found = sorted((path / "state").glob("*.sqlite"))
        if not found:
            raise UserError(f"{path}: not a run directory (no state/*.sqlite inside)")
        return found
    beside = state_path(path)
    if not beside.is_file():
        raise UserError(f"{path}: no run state beside it ({beside.name}); give a command's OUTPUT or a run directory")
    return [beside]


def list_batches(path: Path) -> list[BatchRow]:
    """Every batch journaled in the state of OUTPUT or a run directory, oldest first."""
    rows = []
    for state in state_files(path):
        connection = connect(state)
        try:
            rows += _rows(connection)
        finally:
            connection.close()
    return rows


def _rows(connection: sqlite3.Connection) -> list[BatchRow]:
    return [BatchRow(*row[:6], bool(row[6]), *row[7:]) for row in connection.execute(
        "SELECT seq, id, state, requests, answered, failed, collected, model, base_url, api_key_env, created, "
        "provider FROM batches ORDER BY seq")]


def cancel_batches(path: Path) -> list[tuple[BatchRow, str]]:
    """Ask the provider to cancel every live batch journaled for PATH; returns each with its new state. What
    a cancelled batch answered before it stopped is collected (and paid for) by the next run."""
    cancelled = []
    for state in state_files(path):
        connection = connect(state)
        try:
            for row in _rows(connection):
                if row.id is None or row.state in TERMINAL or row.state in _STOPPING or row.collected:
                    continue
                key = os.environ.get(row.api_key_env) or "not-needed"
                if row.provider == "anthropic":
                    from distillery.anthropic_batch import cancel

                    status = cancel(row.id, row.base_url, key)
                else:
                    status = _cancel(row.id, row.base_url, key)
                connection.execute("UPDATE batches SET state = ?, updated = ? WHERE seq = ?",
                                   (status, time.time(), row.seq))
                cancelled.append((row, status))
        finally:
            connection.close()
    return cancelled


def _cancel(batch_id: str, base_url: str, key: str) -> str:
    client = openai.OpenAI(api_key=key, base_url=base_url)
    try:
        return client.batches.cancel(batch_id).status
    except openai.APIError as exc:
        raise UserError(f"{base_url}: cannot cancel batch {batch_id}: {exc}") from None
    finally:
        client.close()


def batch_plan(kind: str, requests: int, options: Any) -> str:
    """What `--dry-run` says a batch step will submit: `kind` is `single` (every request known up front),
    `staged` (each record's next stage waits for its last answer; `requests` is then the most stages a record
    takes) or `source` (self-instruct: rounds of --concurrency requests)."""
    size = min(options.batch_size, ANTHROPIC_MAX_REQUESTS if options.provider == "anthropic" else PROVIDER_MAX_REQUESTS)
    if kind == "single":
        return f"submitted at once as {-(-requests // size)} batch(es) of up to {size:,} requests"
    if kind == "staged":
        return f"submitted in waves, one per stage: at most {requests} wave(s) of up to {size:,} requests each"
    waves = -(-requests // max(1, min(options.concurrency, size)))
    return f"submitted in waves of --concurrency {options.concurrency} requests: about {waves:,} wave(s)"
