"""A single command is a one-step pipeline: its recipe's step run over one input into OUTPUT.

`distillery respond`, `evol`, `self-instruct`, `chat`, `magpie`, `score`, `select` and `decontaminate` run
their step here instead of a lifecycle of their own:
the state file beside OUTPUT (`cache.state_path`, so the same command resumes after a kill -9), the step
bound to it, OUTPUT written atomically, dropped records in the one rejection schema (`summary.rejection`)
in OUTPUT.rejected.jsonl (or `--rejected`), records whose requests failed (or that the step counts as
failed, `LLMStep.failure_reasons`) in OUTPUT.failed.jsonl in the same schema, and the one summary schema
in OUTPUT.summary.json. Commands whose recipe streams a file (`clean`, `dedup`,
`convert`, `export`) write their rejections in the same schema and their summary through
`summary.write_summary`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillery.cache import prepare_state, state_path
from distillery.convert import RejectFile
from distillery.endpoint import EndpointOptions
from distillery.io import file_format, read_checked, sidecar, write_records
from distillery.state import RunState
from distillery.step import Context, Record, Step
from distillery.summary import rejection, write_summary

if TYPE_CHECKING:  # the model client (openai, aiohttp) is imported only by steps that ask a model
    from distillery.cost import RunStats

REQUEST_FAILED = "request_failed"


@dataclass
class StepRun:
    """What one command's step did, and where it wrote it."""

    step: Step
    output: Path
    summary_path: Path
    rejected_path: Path | None
    failed_path: Path | None
    failed: int
    stopped: str | None
    incomplete: bool
    stats: RunStats | None  # the endpoint's counts (retries too); None for a step that asks no model
    budget: bool = False
    pending: int = 0

    @property
    def written(self) -> int:
        return self.step.stats.kept

    @property
    def rejected(self) -> int:
        return sum(self.step.stats.dropped.values()) - self.failed

    @property
    def exit_code(self) -> int:
        from distillery.llm import exit_status

        return exit_status(self.incomplete, self.budget)


def run_one_step(
    step: Step,
    records: Iterable[Record],
    output: str | Path,
    meta: dict[str, Any],
    endpoint: EndpointOptions | None = None,
    rejected: Path | None = None,
    progress: bool = True,
    figures: Callable[[], dict[str, Any]] | None = None,
    watch: Callable[[Record], None] | None = None,
) -> StepRun:
    """Run `step` over `records` into OUTPUT, with OUTPUT's state file when the step asks a model; then
    its rejections, failures and summary beside OUTPUT (`figures()`: the recipe's own, once the step ran;
    `watch(record)`: sees each record written, for a command's own tallies). A bad record or option raises
    before OUTPUT exists."""
    output = Path(output)
    file_format(output)
    asks_model = step.asks_model
    failing = set(getattr(step, "failure_reasons", (REQUEST_FAILED,)))
    started = time.perf_counter()
    failures: list[Record] = []
    with ExitStack() as stack:
        state = None
        if asks_model:
            endpoint = (endpoint or EndpointOptions()).resolve()
            prepare_state(output, endpoint.fresh)
            state = stack.enter_context(RunState(state_path(output), lock=False))
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distillery-step-")))
        context = Context(output.parent, scratch, [], state, "", endpoint, progress)
        step.bind(context)
        rejects = stack.enter_context(RejectFile.beside(output, rejected))

        def sink(record: Record, stage: str, reason: str, detail: Any = None) -> None:
            entry = rejection(stage, reason, record, detail)
            if reason in failing:
                failures.append(entry)
            else:
                rejects.write(entry)

        step.reject = sink
        written = step(records)
        write_records(output, written if watch is None else _watched(written, watch))
    step.stats.seconds = time.perf_counter() - started
    llm = getattr(step, "llm_stats", None) if asks_model else None
    if llm is not None:
        step.stats.notes.update({k: v for k, v in (("retries", llm.retries),
                                                   ("estimated_usage", llm.estimated_usage)) if v})
    failed_path = sidecar(output, ".failed.jsonl")
    if failures:
        write_records(failed_path, failures, layout="jsonl")
    else:
        failed_path.unlink(missing_ok=True)
    stopped = context.stopped or context.unfinished
    # A request failure leaves the run incomplete where the step says so (self-instruct may still reach --num);
    # a failure of the step's own kind (an unreadable score) always does.
    incomplete = context.incomplete or any(entry["reason"] != REQUEST_FAILED for entry in failures)
    model = endpoint.model if endpoint is not None else None
    path = write_summary(output, [step.stats], {
        **meta, "output": str(output), **({"model": model} if asks_model else {}), "stopped": stopped,
        "incomplete": incomplete, **(figures() if figures is not None else {}),
    })
    return StepRun(step, output, path, rejects.path if rejects.count else None, failed_path if failures else None,
                   len(failures), stopped, incomplete, llm, context.stopped is not None,
                   step.stats.notes.get("pending", 0))


def _watched(records: Iterable[Record], watch: Callable[[Record], None]) -> Iterator[Record]:
    for record in records:
        watch(record)
        yield record


def run_over_file(step: Step, input_path: str | Path, output: str | Path, meta: dict[str, Any],
                  **options: Any) -> StepRun:
    """`run_one_step` over one input file whose records the step checks first (`step.check(record, where)`):
    `score`, `select` and `decontaminate`. `options` are `run_one_step`'s."""
    file_format(Path(output))
    records = read_checked(input_path, step.check)  # type: ignore[attr-defined]
    return run_one_step(step, records, output, {**meta, "input": str(input_path)}, **options)
