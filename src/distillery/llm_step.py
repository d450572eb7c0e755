"""The LLM step: a recipe says which chat requests a record needs and what the answers make of it.

Everything else is here, once: the event loop, bounded concurrency, the response cache and the journal
(both in the run state), retries and the budget (in `llm.LLM`), and progress. A recipe never touches an
event loop or a database connection. Records come out in input order whatever order answers arrive in.

A record whose request fails after its retries is dropped as `request_failed` (with the error) and the
step is left unfinished, so a re-run retries just those; `--max-cost` stops the step cleanly and the
records not yet answered are pending. With a journal stream, each record's outcome is committed as it
is decided, so a re-run replays decided records without even looking at the cache.

A record that needs several rounds of requests, each depending on the answers before (Evol-Instruct's
rewrite, judge, answer, round after round), overrides `decide(record, session, index)` instead: a
coroutine that asks `session.chat` as often as it needs and may `session.remember` each decided stage
under a key, so a re-run after a kill -9 replays those stages (`session.recall`) instead of deciding
them again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from distillery.cost import Budget, RunStats
from distillery.errors import UserError
from distillery.llm import LLM, ChatRequest, ChatResult, EndpointOptions, run_bounded, run_within_budget
from distillery.progress import RunProgress, StepLine
from distillery.state import RunState
from distillery.step import Record, Source, Step, coerce

# What an endpoint option changes in the answers; the rest (concurrency, timeouts, budget) does not.
_ANSWER_SHAPING = ("model", "base_url", "temperature", "top_p", "max_tokens", "seed")


@dataclass(frozen=True)
class Rejected:
    """`parse` returns this to drop a record, with a reason and an optional detail."""

    reason: str
    detail: Any = None


@dataclass(frozen=True)
class Failed:
    """`decide` returns this when a request of the record failed after its retries: the record is not
    journalled, so a re-run decides it again, but what it did decide (`records`) still flows on now."""

    error: str
    records: list[Record] = field(default_factory=list)


@dataclass
class LLMRun:
    """What answering a list of records gave, index by index."""

    outputs: dict[int, list[Record]] = field(default_factory=dict)
    rejected: dict[int, Rejected] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    partial: dict[int, list[Record]] = field(default_factory=dict)  # what failed records decided anyway
    stats: RunStats = field(default_factory=RunStats)
    stopped: str | None = None
    replayed: int = 0
    stages_replayed: int = 0
    seconds: float = 0.0

    def pending(self, total: int) -> int:
        return total - len(self.outputs) - len(self.rejected) - len(self.failed)


class LLMStep(Step):
    """Subclasses define `requests(record)` and `parse(record, answers)`; `Options` may hold an `endpoint`
    mapping whose keys override the run's endpoint options for this step only (a cheap model evolves, a
    strong one answers)."""

    name = "llm"
    barrier = True  # answers come back in any order; records leave in input order
    asks_model = True
    recipe_defaults: dict[str, Any] = {}  # noqa: RUF012 - read only; endpoint options neither run nor step set
    # Drop reasons a command writes to OUTPUT.failed.jsonl and counts as failures (exit 3), not rejections.
    failure_reasons: tuple[str, ...] = ("request_failed",)

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        endpoint_values(getattr(self.options, "endpoint", None) or {}, f"{self.name}.endpoint")  # fail early
        self.llm_stats = RunStats()  # the endpoint's own counts (retries too), for a command's printed table

    def requests(self, record: Record) -> list[ChatRequest]:
        raise NotImplementedError

    def parse(self, record: Record, answers: list[ChatResult]) -> list[Record] | Rejected:
        raise NotImplementedError

    def estimate_requests(self, record: Record) -> list[ChatRequest]:
        """The most requests a record can need, for `--dry-run`; a multi-stage recipe says its own."""
        return self.requests(record)

    async def decide(self, record: Record, session: Session, index: int = 0) -> list[Record] | Rejected | Failed:
        """One record's outcome (`index`: its place in the step's input). By default its `requests` are
        sent at once and `parse` reads the answers; a multi-stage recipe overrides this and sends each
        stage's requests once the last stage's answers are read."""
        answers = await asyncio.gather(*(session.chat(request) for request in self.requests(record)))
        errors = [answer.error for answer in answers if not answer.ok]
        if errors:
            return Failed(errors[0] or "request failed")
        return self.parse(record, list(answers))

    def resolved_endpoint(self) -> EndpointOptions:
        """The run's endpoint with this step's own options over it, and the recipe's defaults under both."""
        return step_endpoint(self, self.recipe_defaults)

    def fingerprint(self) -> str:
        return _with_shaping(super().fingerprint(), self.resolved_endpoint())

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        items = list(records)
        result = self.answer(items)
        for index, record in enumerate(items):
            if index in result.outputs:
                yield from result.outputs[index]
            elif index in result.rejected:
                self.drop(record, result.rejected[index].reason, result.rejected[index].detail)
            elif index in result.failed:
                yield from result.partial.get(index, [])
                self.drop(record, "request_failed", result.failed[index])

    def answer(self, items: list[Record]) -> LLMRun:
        """Decide every record through the run's state; a failure or a stop leaves the step unfinished."""
        assert self.context is not None and self.context.state is not None, "an LLM step runs inside an executor"
        result = answer_records(
            self, items, self.context.state, self.resolved_endpoint(), self.context.stream, self.context.progress
        )
        return self.settle(result)

    def settle(self, result: LLMRun) -> LLMRun:
        """Take a finished answering run's statistics and outcome, however it ran (here or in Ray shards):
        a stop or a failed request leaves the step unfinished, so a re-run retries just those."""
        self.record_stats(result)
        self.llm_stats = result.stats
        if result.stopped:
            self.context.stopped = result.stopped
        if result.failed or result.stopped:
            self.complete = False
            self.context.incomplete = self.context.incomplete or bool(result.failed)
        return result

    def record_stats(self, result: LLMRun) -> None:
        stats = result.stats
        self.stats.sent += stats.sent
        self.stats.cached += stats.cached
        self.stats.failed += stats.failed
        self.stats.prompt_tokens += stats.prompt_tokens
        self.stats.completion_tokens += stats.completion_tokens
        self.stats.cost_usd += stats.cost_usd
        self.stats.notes["replayed"] += result.replayed + result.stages_replayed
        _note_endpoint(self.stats.notes, stats)
        if result.stopped:
            self.stats.notes["pending"] += result.pending(self.stats.seen)


class LLMSource(Source):
    """A source that makes records by asking a model, deciding each next request from the answers so far
    (self-instruct: its ROUGE-L pool grows as tasks are accepted, and it stops at `num`). `generate(llm,
    stream)` is the recipe's coroutine; this class gives it a client over the run state (cache, journal
    streams prefixed with `stream`, retries, budget), and counts requests, tokens and cost. `recipe_defaults`
    are endpoint options the recipe wants where neither the run nor the step sets them."""

    name = "llm_source"
    asks_model = True
    recipe_defaults: dict[str, Any] = {}  # noqa: RUF012 - read only

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        endpoint_values(getattr(self.options, "endpoint", None) or {}, f"{self.name}.endpoint")  # fail early
        self.llm_stats = RunStats()

    def resolved_endpoint(self) -> EndpointOptions:
        return step_endpoint(self, self.recipe_defaults)

    def fingerprint(self) -> str:
        return _with_shaping(super().fingerprint(), self.resolved_endpoint())

    def estimate_requests(self) -> tuple[list[ChatRequest], int]:
        """Sample requests and how many requests the step expects to send: what `--dry-run` prices."""
        raise NotImplementedError

    def ask(self, generate: Callable[[LLM, RunState, str], Awaitable[None]]) -> str | None:
        """Run the recipe's coroutine with a client on the run state; returns why it stopped early (budget,
        Ctrl-C), recorded on the run so the executor stops after this step and exits 4."""
        assert self.context is not None and self.context.state is not None, "an LLM source runs inside an executor"
        stream = f"{self.context.stream}:" if self.context.stream else ""  # a command's journals keep plain names
        stopped = with_llm(self.resolved_endpoint(), self.context.state, self.llm_stats,
                           lambda llm, state: generate(llm, state, stream))
        stats = self.llm_stats
        self.stats.sent, self.stats.cached, self.stats.failed = stats.sent, stats.cached, stats.failed
        self.stats.prompt_tokens, self.stats.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        self.stats.cost_usd = stats.cost_usd
        _note_endpoint(self.stats.notes, stats)
        if stopped:
            self.context.stopped = stopped
            self.complete = False
        return stopped


def with_llm(
    endpoint: EndpointOptions, state: RunState, stats: RunStats, work: Callable[[LLM, RunState], Awaitable[None]],
) -> str | None:
    """The one place a recipe's model work gets its event loop and client: `work(llm, state)` runs with a
    client whose cache lives in the run state; --max-cost and Ctrl-C end it cleanly, and the reason is
    returned."""

    async def main() -> None:
        async with LLM(endpoint, state.path, stats) as llm:
            await work(llm, state)

    return run_within_budget(main())


def _note_endpoint(notes: Counter, stats: RunStats) -> None:
    """--batch shows in the step's summary row: answers from batches, requests resubmitted, USD saved; and
    why requests failed (`failed_http_429`, `failed_batch_request`...)."""
    for kind, count in stats.failures_by_kind.items():
        notes[f"failed_{kind}"] += count
    for name in ("batched", "resubmitted"):
        if getattr(stats, name):
            notes[name] += getattr(stats, name)
    if stats.batch_saved_usd:
        notes["batch_saved_usd"] += round(stats.batch_saved_usd, 6)


def step_endpoint(step: Step, defaults: dict[str, Any] | None = None) -> EndpointOptions:
    """The run's endpoint with the step's own options over it; `defaults` fill what neither sets."""
    base = (step.context.endpoint if step.context else None) or EndpointOptions()
    unset = {name: value for name, value in (defaults or {}).items() if getattr(base, name) is None}
    own = endpoint_values(getattr(step.options, "endpoint", None) or {}, f"{step.name}.endpoint")
    return dataclasses.replace(base, **{**unset, **own}).resolve()


def _with_shaping(fingerprint: str, endpoint: EndpointOptions) -> str:
    shaping = {name: getattr(endpoint, name) for name in _ANSWER_SHAPING}
    return hashlib.sha256(json.dumps([fingerprint, shaping]).encode()).hexdigest()[:16]


def endpoint_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Endpoint options from a pipeline file or `--set` (often strings), typed as EndpointOptions says."""
    fields = {f.name: f for f in dataclasses.fields(EndpointOptions)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"{where}: no endpoint option {unknown[0]!r} (options: {', '.join(fields)})")
    return {name: coerce(value, fields[name], where) for name, value in values.items()}


def answer_records(
    step: LLMStep,
    records: list[Record],
    state: RunState,
    endpoint: EndpointOptions,
    journal: str = "",
    progress: bool | StepLine = False,
    budget: Budget | None = None,
) -> LLMRun:
    """Answer every record through `step` and the run state (a pipeline's, a shard's, or the one a command
    keeps beside its output). With `journal`, outcomes are committed per record and replayed on re-run.
    `progress`: the step's line in the run's view, or whether to show a view of its own (a command).
    `budget`: a --max-cost shared with other shards of the step (else the client makes its own)."""
    started = time.monotonic()
    result = LLMRun(stats=RunStats(budget=budget))
    if journal:
        for entry in state.replay(journal):
            _settle(result, entry["i"], entry)
        result.replayed = len(result.outputs) + len(result.rejected)
    todo = [i for i in range(len(records)) if i not in result.outputs and i not in result.rejected]
    result.stopped = run_within_budget(_answer_all(step, records, todo, state, endpoint, journal, result, progress))
    result.seconds = time.monotonic() - started
    return result


class Session:
    """What `LLMStep.decide` reaches the model and the step's memory through, for one step's run: the
    endpoint's client (and one per other model asked for, e.g. a separate answerer), and the decided stages
    of multi-stage records, committed one by one to the run state."""

    def __init__(self, llm: LLM, state: RunState, stream: str, stats: RunStats, stack: AsyncExitStack) -> None:
        self.llm = llm
        self.endpoint = llm.options
        self.stats = stats
        self.replayed = 0
        self._clients = {llm.options.model: llm}
        self._state = state
        self._stream = stream
        self._stack = stack
        self._decided = {entry["key"]: entry["value"] for entry in state.replay(stream)}

    async def chat(self, request: ChatRequest, model: str | None = None) -> ChatResult:
        """Through the cache, retries and budget of the run; `model` names another model on the same endpoint."""
        name = model or self.endpoint.model
        client = self._clients.get(name)
        if client is None:
            client = LLM(dataclasses.replace(self.endpoint, model=name), self._state.path, self.stats)
            self._clients[name] = client
            self._stack.push_async_callback(client.close)
        return await client.chat(request)

    def recall(self, key: str) -> Any:
        """A stage decided by this or an earlier run, or None; counted as replayed."""
        value = self._decided.get(key)
        if value is not None:
            self.replayed += 1
        return value

    def remember(self, key: str, value: Any) -> None:
        """Commit one decided stage now, so a kill -9 loses at most the stages in flight."""
        self._state.append(self._stream, {"key": key, "value": value})
        self._decided[key] = value


async def _answer_all(
    step: LLMStep,
    records: list[Record],
    todo: list[int],
    state: RunState,
    endpoint: EndpointOptions,
    journal: str,
    result: LLMRun,
    progress: bool | StepLine,
) -> None:
    async with AsyncExitStack() as stack:
        llm = await stack.enter_async_context(LLM(endpoint, state.path, result.stats))
        session = Session(llm, state, f"{journal or step.name}:stages", result.stats, stack)
        with RunProgress(step.name, len(records), result.stats, progress) as bar:
            bar.advance(len(records) - len(todo), earlier=True)

            async def answer(index: int) -> None:
                decided = await step.decide(records[index], session, index)
                if isinstance(decided, Failed):
                    result.failed[index] = decided.error
                    result.partial[index] = decided.records
                else:
                    entry: dict[str, Any] = (
                        {"i": index, "reason": decided.reason, "detail": decided.detail}
                        if isinstance(decided, Rejected) else {"i": index, "records": decided}
                    )
                    if journal:
                        state.append(journal, entry)
                    _settle(result, index, entry)
                bar.advance()

            try:
                # with --batch every record may wait on the same wave; --batch-size bounds what is alive at once
                limit = max(llm.options.batch_size, llm.options.concurrency * 2) if llm.options.batch \
                    else llm.options.concurrency * 2
                await run_bounded(todo, answer, limit=limit)
            finally:
                result.stages_replayed = session.replayed


def _settle(result: LLMRun, index: int, entry: dict[str, Any]) -> None:
    if "records" in entry:
        result.outputs[index] = entry["records"]
    else:
        result.rejected[index] = Rejected(entry["reason"], entry.get("detail"))
