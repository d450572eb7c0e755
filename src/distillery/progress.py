"""The live progress view (a line per step: done of total, rate, tokens, cost), silent when not on a
terminal; and the consoles every command prints through.

A run has one `RunView`; each step reports into its `StepLine` (the executor marks it running, done or
reused; an LLM loop counts records through `RunProgress`). Reporting only sets numbers: the view reads
them when it redraws, at most four times a second, so a step pays nothing per record for being watched.
A single command is a run of one step, with a view of one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from distillery.cost import RunStats

WAITING, RUNNING, DONE, REUSED, UNFINISHED = "waiting", "running", "done", "reused", "unfinished"
_MARKS = {WAITING: " ", RUNNING: "…", DONE: "✓", REUSED: "✓", UNFINISHED: "✗"}
_REFRESH_PER_SECOND = 4


def plain_console(stderr: bool = False) -> Console:
    """A console that prints user text as is: file names and records may hold `[red]` or `[/]`, which rich
    markup would eat or choke on, and paths must not be broken across lines when output is not a terminal."""
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=stderr)


class StepLine:
    """One step's row: its state, how many records it did (of how many, when known), and the endpoint
    statistics its tokens and cost are read from."""

    def __init__(self, name: str):
        self.name = name
        self.state = WAITING
        self.done: int | None = None  # counted by the step itself (an LLM loop); else read from `count`
        self.earlier = 0  # of `done`, those an earlier run did: shown, but not in the rate
        self.total: int | None = None
        self.count: Callable[[], int] | None = None
        self.stats: RunStats | None = None
        self.started: float | None = None
        self.ended: float | None = None

    def start(self, count: Callable[[], int] | None = None) -> None:
        """The step runs now; `count` says how many records it has handled, for a step that does not count."""
        self.state, self.count, self.started, self.ended = RUNNING, count, time.monotonic(), None

    def finish(self, complete: bool = True) -> None:
        self.state, self.ended = (DONE if complete else UNFINISHED), time.monotonic()

    def reuse(self) -> None:
        """Finished by an earlier run with the same fingerprint: nothing to do."""
        self.state = REUSED

    def track(self, stats: RunStats, total: int | None) -> None:
        """An LLM loop counts its records itself, against `total`, spending what `stats` shows."""
        self.stats, self.total, self.done, self.earlier = stats, total, 0, 0

    def advance(self, amount: int = 1, earlier: bool = False) -> None:
        self.done = (self.done or 0) + amount
        if earlier:
            self.earlier += amount

    def handled(self) -> int:
        if self.done is not None:
            return self.done
        return self.count() if self.count is not None else 0

    def row(self, now: float) -> tuple[str, ...]:
        """Mark, name, done[/total and percent], rate, ETA, tokens, cost and time, as the view shows them."""
        if self.state == REUSED:
            return (_MARKS[REUSED], self.name, "reused", "", "", "", "", "")
        if self.state == WAITING:
            return (_MARKS[WAITING], self.name, "", "", "", "", "", "")
        done = self.handled()
        progress = f"{done:,}" if self.total is None else f"{done:,}/{self.total:,} {done / max(self.total, 1):4.0%}"
        seconds = ((self.ended or now) - self.started) if self.started is not None else 0.0
        rate = (done - self.earlier) / seconds if seconds > 0 else 0.0
        eta = ""
        if self.state == RUNNING and self.total is not None and rate > 0 and done < self.total:
            eta = f"ETA {_clock((self.total - done) / rate)}"
        tokens = cost = ""
        if self.stats is not None:
            tokens = f"{self.stats.prompt_tokens + self.stats.completion_tokens:,} tok"
            cost = f"${self.stats.cost_usd:.4f}"
        return (_MARKS[self.state], self.name, progress, f"{rate:,.1f}/s" if rate else "", eta, tokens, cost,
                _clock(seconds))


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class RunView:
    """One live display for a whole run, a line per step; on anything but a terminal it shows nothing."""

    def __init__(self, names: list[str], enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.lines = [StepLine(name) for name in names]
        self._live = (
            Live(console=self.console, get_renderable=self.table, refresh_per_second=_REFRESH_PER_SECOND,
                 transient=False, redirect_stdout=False)  # stdout may be a pipe taking the command's output
            if enabled and self.console.is_terminal else None
        )

    def __enter__(self) -> RunView:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()

    def rows(self) -> list[tuple[str, ...]]:
        now = time.monotonic()
        return [line.row(now) for line in self.lines]

    def table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for justify in ("left", "left", "right", "right", "left", "right", "right", "right"):
            table.add_column(justify=justify, no_wrap=True)
        for row in self.rows():
            mark, name, *rest = row
            table.add_row(mark, Text(name, style="bold"), *rest)
        return table


class RunProgress:
    """An LLM loop's progress: records done of `total`, tokens and cost read from its `stats`. Given a
    step's line (`show`), it reports there; given True, it shows a one-line view of its own (a single
    command) while on a terminal; given False, nothing."""

    def __init__(
        self,
        description: str,
        total: int | None,
        stats: RunStats,
        show: bool | StepLine = True,
        console: Console | None = None,
    ):
        self._view: RunView | None = None
        if isinstance(show, StepLine):
            self.line = show
        else:
            self._view = RunView([description], show, console)
            self.line = self._view.lines[0]
        self.line.track(stats, total)

    def __enter__(self) -> RunProgress:
        if self._view is not None:
            self.line.start()
            self._view.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._view is not None:
            self.line.finish(exc_info[0] is None)
            self._view.__exit__(*exc_info)

    def advance(self, amount: int = 1, earlier: bool = False) -> None:
        """`amount` more records done; `earlier`: done by an earlier run (replayed), not counted in the rate."""
        self.line.advance(amount, earlier)

    def set_total(self, total: int) -> None:
        self.line.total = total
