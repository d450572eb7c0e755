"""The Ray executor: the local executor's steps and run directory, with the heavy steps spread on a cluster.

What runs where:

- an LLM step (`respond`, `evol`, …) splits the records entering it into `shards` contiguous slices (by
  position, so the merged output is in input order and equals a local run's). Each slice is one Ray task
  with its own event loop, client, its share of `--concurrency`, and its own run state,
  `RUN/state/shard-K.sqlite` (response cache, journal, done marker, under its own lock) in the run
  directory, which on a cluster lives on shared storage. A worker killed mid-shard is retried by Ray
  (`max_retries`); the retry opens the same state, so its journal replays decided records and its cache
  answers every request its predecessor had answered: at most the requests in flight are sent twice. The
  driver merges the shards' answers (indices offset back to the step's) and the step reads them as it
  reads a local run's, so rejections, statistics and Evol-Instruct's round-major order come out the same;
- `--max-cost` is one `BudgetKeeper` actor per LLM step: every shard's client reserves a request's
  expected cost from it before sending (`cost.Budget.reserve`, the same rule a local client applies), so
  the limit holds for the step across the cluster, not per worker;
- CPU-bound steps and `clean`'s per-record stages run their chunks as Ray tasks (`ordered_map` through
  `executor.mapping_with`), results consumed in input order through a bounded window;
- a `dedup` with `method: minhash` computes signatures per shard as Ray tasks; the driver then groups by
  band and decides, in input order, exactly as a local run does;
- sources (`read`, and the self-instruct generating loop, whose global `num` and growing ROUGE-L pool
  make it one sequential loop) and global steps (ROUGE-L dedup, clean's dedup, export, report) run once,
  on the driver, over the merged records.

Ray is an optional extra and is imported only here, only when this executor is made.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.cost import Budget, RunStats
from distillery.dedup import MinHashIndex
from distillery.errors import UserError
from distillery.executor import LocalExecutor, RunResult, mapping_with, step_dir
from distillery.llm import EndpointOptions
from distillery.llm_step import LLMRun, LLMStep, answer_records
from distillery.lock import release_output
from distillery.state import RunState, state_file
from distillery.step import Context, Record, Step
from distillery.summary import StageStats

INSTALL = "--executor ray needs Ray, an optional extra: pip install 'distillery[ray]'"
SHARD_RETRIES = 3  # a shard whose worker died is run again this many times before the run fails


def import_ray() -> Any:
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the cluster at ADDRESS (`auto`: the one this machine belongs to), or start a local one bound
    to loopback; a process already connected (a test's session cluster, a `ray job`) keeps its own."""
    ray = import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, logging_level="ERROR")
    return ray


# --- the budget shared by every shard of a step ------------------------------------------------------------


class BudgetKeeper:
    """One step's --max-cost for the whole cluster (a Ray actor): each shard's client reserves from it
    with its own spend so far, and the limit is checked against the sum of every client's spend."""

    def __init__(self, limit: float) -> None:
        self.budget = Budget(limit)
        self.spent: dict[str, float] = {}

    def total(self) -> float:
        return sum(self.spent.values())

    async def reserve(self, client: str, expected: float | None, spent: float) -> bool:
        self.spent[client] = max(self.spent.get(client, 0.0), spent)
        return await self.budget.reserve(expected, self.total, lambda: None)

    def release(self, client: str, expected: float | None, spent: float) -> None:
        self.spent[client] = max(self.spent.get(client, 0.0), spent)
        self.budget.release(expected, self.total())


class SharedBudget(Budget):
    """A shard client's view of its step's `BudgetKeeper`: the same reservation interface, asked remotely.
    `client` is unique per attempt, so a retried shard's spend adds to its killed predecessor's."""

    def __init__(self, keeper: Any, limit: float) -> None:
        super().__init__(limit)
        self.keeper = keeper
        self.client = uuid.uuid4().hex

    async def reserve(
        self, expected: float | None, spent: Callable[[], float], stopped: Callable[[], BaseException | None],
    ) -> bool:
        allowed = await self.keeper.reserve.remote(self.client, expected, spent())
        reason = stopped()
        if reason is not None:
            if allowed:
                self.release(expected, spent())
            raise reason
        return bool(allowed)

    def release(self, expected: float | None, spent: float) -> None:
        self.keeper.release.remote(self.client, expected, spent)


# --- one shard of an LLM step, in a Ray worker -------------------------------------------------------------


@dataclass
class ShardJob:
    """Everything a shard needs besides its records and its step."""

    run_dir: Path
    position: int
    shard: int
    shards: int
    offset: int  # the index of the shard's first record in the step's input
    fingerprint: str
    stream: str
    endpoint: EndpointOptions
    secrets: dict[str, str]
    keeper: Any = None

    @property
    def name(self) -> str:
        return f"shard-{self.shard}"


def answer_shard(step: LLMStep, records: list[Record], job: ShardJob) -> LLMRun:
    """One shard of an LLM step, through its own state file: decided records replay from its journal,
    answered requests from its cache, so a retry after a killed worker sends only what was never answered.
    Indices in the result are the shard's own; `decide` sees the step-wide index (Evol-Instruct seeds its
    choices with it)."""
    os.environ.update(job.secrets)
    path = state_file(job.run_dir, job.name)
    state = RunState(path)
    try:
        # The layout is part of the shard's fingerprint: another --shards forgets this shard's journal,
        # whose indices belonged to another slice.
        fingerprint = f"{job.fingerprint}:{job.shard}/{job.shards}"
        state.start(job.position, step.name, fingerprint)
        step.bind(Context(job.run_dir, step_dir(job.run_dir, job.position, step), [], state, job.stream,
                          job.endpoint))
        decide = step.decide
        step.decide = lambda record, session, index=0: decide(record, session, job.offset + index)  # type: ignore[method-assign]
        budget = SharedBudget(job.keeper, job.endpoint.max_cost or 0.0) if job.keeper is not None else None
        journal = f"{job.stream}:{job.name}"
        result = answer_records(step, records, state, job.endpoint, journal, budget=budget)
        result.stats.budget = None  # the keeper's handle stays in the worker
        if not result.failed and not result.stopped:
            state.finish(job.position, StageStats(step.name, len(records), len(result.outputs),
                                                  sent=result.stats.sent, cached=result.stats.cached,
                                                  cost_usd=result.stats.cost_usd))
        return result
    finally:
        state.close()
        release_output(path)


def merge_runs(parts: list[tuple[int, LLMRun]]) -> LLMRun:
    """The shards' results as one step's: indices offset back, statistics added."""
    merged = LLMRun()
    for offset, part in parts:
        for mine, theirs in ((merged.outputs, part.outputs), (merged.rejected, part.rejected),
                             (merged.failed, part.failed), (merged.partial, part.partial)):
            mine.update({offset + index: value for index, value in theirs.items()})
        merged.stats = add_run_stats(merged.stats, part.stats)
        merged.stopped = merged.stopped or part.stopped
        merged.replayed += part.replayed
        merged.stages_replayed += part.stages_replayed
        merged.seconds = max(merged.seconds, part.seconds)
    return merged


def add_run_stats(a: RunStats, b: RunStats) -> RunStats:
    total = RunStats()
    for item in dataclasses.fields(RunStats):
        if item.name in ("budget", "failures_by_kind"):
            continue
        setattr(total, item.name, getattr(a, item.name) + getattr(b, item.name))
    kinds = dict(a.failures_by_kind)
    for kind, count in b.failures_by_kind.items():
        kinds[kind] = kinds.get(kind, 0) + count
    total.failures_by_kind = kinds
    return total


# --- CPU work as Ray tasks ---------------------------------------------------------------------------------

_initialized: set[str] = set()  # in a Ray worker: the initializers this process already ran


def apply_in_worker(function: Callable[[Any], Any], item: Any, initializer: Callable[..., None] | None,
                    token: str, initargs: tuple[Any, ...]) -> Any:
    """`function(item)` in a pooled worker process, after the initializer (once per process and pool)."""
    if initializer is not None and token not in _initialized:
        initializer(*initargs)
        _initialized.add(token)
    return function(item)


def minhash_signatures(texts: list[str], threshold: float, num_perm: int) -> list[Any]:
    """One shard's MinHash signatures (None for a text without tokens), as the local index computes them."""
    index = MinHashIndex(threshold, num_perm)
    return [index.signature(text) for text in texts]


# --- the executor ------------------------------------------------------------------------------------------


class RayExecutor(LocalExecutor):
    """The local executor's run directory and steps, with LLM steps, CPU-bound chunks and MinHash
    signatures spread over a Ray cluster (see the module docstring)."""

    def __init__(self, shards: int = 0, address: str | None = None, workers: int = 0, chunk_size: int = 256,
                 progress: bool = False, num_cpus: int | None = None):
        if shards < 0:
            raise UserError("--shards must be 0 (one per CPU of the cluster) or more")
        self.ray = connect(address, num_cpus)
        cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.shards = shards or cpus
        super().__init__(workers=workers or self.shards, chunk_size=chunk_size, progress=progress)
        self._answer = self.ray.remote(answer_shard).options(num_cpus=1, max_retries=SHARD_RETRIES)
        self._apply_remote = self.ray.remote(apply_in_worker).options(num_cpus=1, max_retries=SHARD_RETRIES)
        self._signatures = self.ray.remote(minhash_signatures).options(num_cpus=1, max_retries=SHARD_RETRIES)
        self._keeper = self.ray.remote(BudgetKeeper)

    def run(
        self, steps: list[Step], run_dir: str | Path, inputs: Iterable[str | Path] = (),
        endpoint: EndpointOptions | None = None, meta: dict[str, Any] | None = None,
    ) -> RunResult:
        """As `LocalExecutor.run`; `--fresh` forgets every shard's state too."""
        if endpoint is not None and endpoint.local_model:
            raise UserError("--executor ray sends requests from the cluster's workers: give them an HTTP endpoint "
                            "(--base-url), not --local-model")
        if endpoint is not None and endpoint.fresh:
            for path in sorted((Path(run_dir) / "state").glob("shard-*.sqlite")):
                with RunState(path) as shard:
                    shard.forget()
                release_output(path)
        with mapping_with(self._map):
            return super().run(steps, run_dir, inputs, endpoint, {**(meta or {}), "executor": "ray",
                                                                   "shards": self.shards})

    def _run_group(self, steps: list[Step], group: list[int], upstream: Path | None, run_dir: Path) -> None:
        step = steps[group[0]]
        if len(group) == 1 and isinstance(step, LLMStep):
            step.answer = lambda items: self._answer_sharded(step, group[0], run_dir, items)  # type: ignore[method-assign]
        elif len(group) == 1 and _is_minhash_dedup(step):
            step.make_index = self._minhash_index  # type: ignore[attr-defined]
        try:
            super()._run_group(steps, group, upstream, run_dir)
        finally:
            step.__dict__.pop("answer", None)
            step.__dict__.pop("make_index", None)

    # --- LLM steps: shards as Ray tasks ------------------------------------------------------------------

    def _answer_sharded(self, step: LLMStep, position: int, run_dir: Path, items: list[Record]) -> LLMRun:
        """What `LLMStep.answer` does, with the records answered by shards on the cluster."""
        assert step.context is not None
        endpoint = step.resolved_endpoint()
        count = max(1, min(self.shards, len(items)))
        share = dataclasses.replace(  # each shard paces its own share of the run's limits
            endpoint, concurrency=max(1, endpoint.concurrency // count),
            rpm=endpoint.rpm / count if endpoint.rpm else endpoint.rpm,
            tpm=endpoint.tpm / count if endpoint.tpm else endpoint.tpm)
        keeper = self._keeper.remote(endpoint.max_cost) if endpoint.max_cost is not None else None
        secret = os.environ.get(endpoint.api_key_env)
        bounds = [len(items) * shard // count for shard in range(count + 1)]
        jobs = [ShardJob(run_dir.resolve(), position, shard, count, bounds[shard], self.fingerprints[position],
                         step.context.stream, share, {endpoint.api_key_env: secret} if secret else {}, keeper)
                for shard in range(count)]
        refs = [self._answer.remote(step, items[job.offset:bounds[job.shard + 1]], job) for job in jobs]
        result = merge_runs(list(zip(bounds, self._gather(refs), strict=False)))
        return step.settle(result)

    def _gather(self, refs: list[Any]) -> list[Any]:
        """The tasks' results; a shard's user error (an unreachable endpoint, a rejected key) is raised as
        its own one line, not wrapped in the remote traceback."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            for ref in refs:  # read every other task's outcome, which Ray would log as an unhandled error
                with suppress(self.ray.exceptions.RayError):
                    self.ray.get(ref)
            if isinstance(exc.cause, UserError):
                raise exc.cause from None
            raise

    # --- CPU work: chunks as Ray tasks, in input order ---------------------------------------------------

    def _map(self, function: Callable[[Any], Any], items: Iterable[Any], workers: int,
             initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> Iterator[Any]:
        token, shared = uuid.uuid4().hex, self.ray.put(initargs)
        window: deque = deque()
        try:
            for item in items:
                window.append(self._apply_remote.remote(function, item, initializer, token, shared))
                if len(window) >= 2 * workers:
                    yield self._gather([window.popleft()])[0]
            while window:
                yield self._gather([window.popleft()])[0]
        finally:
            for ref in window:
                self.ray.cancel(ref)

    # --- MinHash dedup: signatures per shard, grouping by band on the driver -----------------------------

    def _minhash_index(self, options: Any, texts: list[str]) -> Any:
        """A MinHash index whose signatures the cluster computed, a shard of texts per task; the driver's
        index then groups by band and decides in input order, as a local run does."""
        count = max(1, min(self.shards, len(texts)))
        bounds = [len(texts) * shard // count for shard in range(count + 1)]
        refs = [self._signatures.remote(texts[bounds[k]:bounds[k + 1]], options.cutoff, options.num_perm)
                for k in range(count)]
        signed = {text: signature for start, part in zip(bounds, self._gather(refs), strict=False)
                  for text, signature in zip(texts[start:start + len(part)], part, strict=True)}
        return PresignedMinHash(signed, options.cutoff, options.num_perm)


class PresignedMinHash(MinHashIndex):
    """The local MinHash index, reading signatures computed elsewhere (by shard) instead of computing them."""

    def __init__(self, signatures: dict[str, Any], threshold: float, num_perm: int) -> None:
        super().__init__(threshold, num_perm)
        self.signed = signatures

    def signature(self, text: str) -> Any:
        return self.signed[text] if text in self.signed else super().signature(text)


def _is_minhash_dedup(step: Step) -> bool:
    return step.name == "dedup" and getattr(step.options, "method", None) == "minhash"
