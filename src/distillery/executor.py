"""The local executor: runs a list of steps over a run directory, streaming, resumable, in parallel.

Consecutive streaming steps run as one chain of generators (records flow through without being held);
a barrier step (a GlobalStep or an LLM step) runs alone once everything upstream is done. CPU-bound
steps (`cpu_bound = True`) run in `workers` processes over chunks of records, consumed in input order
through a bounded window, so memory stays flat and the output order never depends on timing.

Each step gets a folder `RUN/steps/NN-name/` with its output (`records.jsonl`, written atomically: it
exists only once the step finished) and its rejections (`rejected.jsonl`). A step's fingerprint chains
its own (kind and options, input files for a source, the endpoint for an LLM step) with its upstream's,
so a re-run reuses every leading step that finished with the same fingerprint and reruns the rest:
changing an option of a later step reruns only that step and what follows it. After every step the run
directory gets its current `dataset.jsonl` (the last step's records), `summary.json` (the one summary
schema) and `rejected.jsonl` (every step's rejections, in step order).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from distillery.errors import UserError
from distillery.io import iter_records, open_writer
from distillery.llm import EndpointOptions, exit_status
from distillery.progress import RunView
from distillery.state import RunState
from distillery.step import Context, Record, Step
from distillery.summary import StageStats, Summary, rejection

RECORDS = "records.jsonl"
REJECTED = "rejected.jsonl"
T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


Mapper = Callable[[Callable[[Any], Any], Iterable[Any], int, Callable[..., None] | None, tuple[Any, ...]],
                  Iterator[Any]]
_mapper: list[Mapper] = []  # an executor's own pool (Ray's tasks), used by every ordered_map while it runs


@contextmanager
def mapping_with(mapper: Mapper) -> Iterator[None]:
    """Inside, `ordered_map` with more than one worker runs on `mapper` (a cluster) instead of local
    processes: how the Ray executor spreads CPU-bound steps and `clean`'s per-record stages."""
    _mapper.append(mapper)
    try:
        yield
    finally:
        _mapper.pop()


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[R]:
    """`map(function, items)` over `workers` processes, results in input order, with at most two items per
    worker in flight (so a huge input never piles up in memory). One worker runs in this process."""
    if workers > 1 and _mapper:
        yield from _mapper[-1](function, items, workers, initializer, initargs)
        return
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    pool = ProcessPoolExecutor(workers, initializer=initializer, initargs=initargs)
    try:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(function, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- a step in worker processes ---------------------------------------------------------------------------

_worker_step: Step | None = None


def _start_step_worker(pickled: bytes) -> None:
    global _worker_step
    _worker_step = pickle.loads(pickled)


def _run_step_chunk(chunk: list[Record]) -> tuple[list[Record], list[tuple[Record, str, Any]], StageStats]:
    """One chunk through the worker's copy of the step: what it kept, what it dropped, its counts."""
    step = _worker_step
    assert step is not None, "worker process started without its step"
    step.stats = StageStats(step.name)
    drops: list[tuple[Record, str, Any]] = []
    step.reject = lambda record, stage, reason, detail=None: drops.append((record, reason, detail))
    kept = list(step(chunk))
    return kept, drops, step.stats


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- the executor -----------------------------------------------------------------------------------------


@dataclass
class RunResult:
    run_dir: Path
    summary: Summary
    records: int
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    stopped: str | None = None
    incomplete: bool = False
    unfinished: str | None = None  # why a step stopped short on its own (self-instruct's format stop)

    @property
    def exit_code(self) -> int:
        return exit_status(self.incomplete, bool(self.stopped))


def stored_records(path: Path) -> Iterator[Record]:
    """Records a step wrote (JSONL, possibly none at all: every record may have been dropped)."""
    if path.stat().st_size:
        yield from iter_records(path)


def step_dir(run_dir: Path, position: int, step: Step) -> Path:
    return run_dir / "steps" / f"{position:02d}-{step.name}"


class LocalExecutor:
    """Runs steps in this machine's processes; see the module docstring for the run directory."""

    def __init__(self, workers: int = 1, chunk_size: int = 256, progress: bool = False):
        self.workers = workers if workers > 0 else cpu_count()
        self.chunk_size = chunk_size
        self.progress = progress
        self.fingerprints: list[str] = []

    def bind(
        self, steps: list[Step], run_dir: Path, inputs: list[Path], endpoint: EndpointOptions | None,
        state: RunState | None = None,
    ) -> list[str]:
        """Give every step its context and return the chained fingerprints."""
        fingerprints, upstream = [], ""
        for position, step in enumerate(steps):
            stream = RunState.journal_stream(position, step.name)
            upstream_file = step_dir(run_dir, position - 1, steps[position - 1]) / RECORDS if position else None
            step.bind(Context(run_dir, step_dir(run_dir, position, step), list(inputs), state, stream, endpoint,
                              self.progress, self.workers, upstream_file))
            upstream = hashlib.sha256(f"{upstream}/{step.fingerprint()}".encode()).hexdigest()[:16]
            fingerprints.append(upstream)
        self.fingerprints = fingerprints
        return fingerprints

    def run(
        self,
        steps: list[Step],
        run_dir: str | Path,
        inputs: Iterable[str | Path] = (),
        endpoint: EndpointOptions | None = None,
        meta: dict[str, Any] | None = None,
    ) -> RunResult:
        """Run (or resume) the steps into RUN; returns what happened, with the exit status to use."""
        run_dir, inputs = Path(run_dir), [Path(p) for p in inputs]
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir} is a file; the run's output is a directory (-o DIR)")
        self.bind(steps, run_dir, inputs, endpoint)  # missing inputs or endpoint fail before RUN is made
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunState.for_run(run_dir) as state, RunView([step.name for step in steps], self.progress) as view:
            if endpoint is not None and endpoint.fresh:
                state.forget()
            fingerprints = self.bind(steps, run_dir, inputs, endpoint, state)
            if self.progress:
                for step, line in zip(steps, view.lines, strict=True):
                    assert step.context is not None
                    step.context.progress = line
            stats: list[StageStats | None] = [None] * len(steps)
            result = RunResult(run_dir, Summary(), 0)
            start = 0
            for position, step in enumerate(steps):
                done = state.done_stats(position, step.name, fingerprints[position])
                if done is None or not (step_dir(run_dir, position, step) / RECORDS).is_file():
                    break
                stats[position], start = done, position + 1
                result.reused.append(step.name)
                view.lines[position].reuse()
            position = start
            while position < len(steps):
                group = [position]
                if not steps[position].barrier:
                    while group[-1] + 1 < len(steps) and not steps[group[-1] + 1].barrier:
                        group.append(group[-1] + 1)
                for index in group:
                    state.start(index, steps[index].name, fingerprints[index])
                    view.lines[index].start(_handled(steps[index]))
                upstream = step_dir(run_dir, position - 1, steps[position - 1]) / RECORDS if position else None
                self._run_group(steps, group, upstream, run_dir)
                for index in group:
                    step = steps[index]
                    stats[index] = step.stats
                    result.ran.append(step.name)
                    if step.complete:
                        state.finish(index, step.stats)
                    view.lines[index].finish(step.complete)
                    assert step.context is not None
                    result.incomplete = result.incomplete or step.context.incomplete
                    result.stopped = result.stopped or step.context.stopped
                    result.unfinished = result.unfinished or step.context.unfinished
                self._publish(steps, stats, run_dir, result, meta or {})
                if result.stopped:
                    break
                position = group[-1] + 1
            if not result.ran:
                self._publish(steps, stats, run_dir, result, meta or {})
        return result

    def _run_group(self, steps: list[Step], group: list[int], upstream: Path | None, run_dir: Path) -> None:
        """Stream the upstream records through the group's steps, teeing each step's output to its folder."""
        stream: Iterable[Record] = stored_records(upstream) if upstream is not None else iter(())
        spent: list[float] = []
        with ExitStack() as stack:
            for index in group:
                step = steps[index]
                folder = step_dir(run_dir, index, step)
                folder.mkdir(parents=True, exist_ok=True)
                step.stats, step.complete = StageStats(step.name), True
                rejects = stack.enter_context(open_writer(folder / REJECTED, "jsonl"))
                step.reject = _sink(rejects)
                out = stack.enter_context(open_writer(folder / RECORDS, "jsonl"))
                spent.append(0.0)
                stream = _tee(_timed(self._apply(step, stream), spent, len(spent) - 1), out)
            for _ in stream:
                pass
        for offset, index in enumerate(group):
            steps[index].stats.seconds = spent[offset] - (spent[offset - 1] if offset else 0.0)

    def _apply(self, step: Step, records: Iterable[Record]) -> Iterator[Record]:
        if not (step.cpu_bound and self.workers > 1):
            yield from step(records)
            return
        chunks = _chunks(records, self.chunk_size)
        for kept, drops, stats in ordered_map(_run_step_chunk, chunks, self.workers, _start_step_worker,
                                              (pickle.dumps(step),)):
            step.stats = step.stats + stats
            for record, reason, detail in drops:
                if step.reject is not None:
                    step.reject(record, step.name, reason, detail)
            yield from kept

    def _publish(
        self, steps: list[Step], stats: list[StageStats | None], run_dir: Path, result: RunResult,
        meta: dict[str, Any],
    ) -> None:
        """The run directory's current dataset, one summary and all rejections, each replaced atomically."""
        done = [index for index, stage in enumerate(stats) if stage is not None]
        result.summary = Summary(
            [stats[index] for index in done],  # type: ignore[misc]
            {**meta, "run_dir": str(run_dir), "reused": result.reused, "stopped": result.stopped,
             "incomplete": result.incomplete, "unfinished": result.unfinished},
        )
        if done:
            last = step_dir(run_dir, done[-1], steps[done[-1]]) / RECORDS
            if last.is_file():
                _concatenate([last], run_dir / "dataset.jsonl")
                result.records = stats[done[-1]].kept  # type: ignore[union-attr]
        sources = [step_dir(run_dir, index, steps[index]) / REJECTED for index in done]
        _concatenate([path for path in sources if path.is_file()], run_dir / "rejected.jsonl")
        result.summary.write(run_dir / "summary.json")


def _handled(step: Step) -> Callable[[], int]:
    """How many records a step has handled so far: those it read, or, for a source, those it made."""
    return lambda: step.stats.seen or step.stats.kept


def _sink(writer: Any) -> Callable[..., None]:
    def reject(record: Record, stage: str, reason: str, detail: Any = None) -> None:
        writer.write(rejection(stage, reason, record, detail))

    return reject


def _tee(records: Iterable[Record], writer: Any) -> Iterator[Record]:
    for record in records:
        writer.write(record)
        yield record


def _timed(records: Iterable[Record], spent: list[float], slot: int) -> Iterator[Record]:
    """Seconds spent producing this stream, upstream included (the executor subtracts upstream's)."""
    iterator = iter(records)
    while True:
        started = time.perf_counter()
        try:
            record = next(iterator)
        except StopIteration:
            spent[slot] += time.perf_counter() - started
            return
        spent[slot] += time.perf_counter() - started
        yield record


def _concatenate(parts: list[Path], target: Path) -> None:
    """Byte-for-byte concatenation into TARGET, replaced atomically."""
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
