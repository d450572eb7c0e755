"""A live progress bar that shows rate, ETA, tokens and cost, and stays silent when not on a terminal; and
the consoles every command prints through."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from distillery.cost import RunStats


def plain_console(stderr: bool = False) -> Console:
    """A console that prints user text as is: file names and records may hold `[red]` or `[/]`, which rich
    markup would eat or choke on, and paths must not be broken across lines when output is not a terminal."""
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=stderr)


class RunProgress:
    """Wraps rich so recipes only say what was done; tokens and cost are read from the run's stats."""

    def __init__(
        self,
        description: str,
        total: int | None,
        stats: RunStats,
        enabled: bool = True,
        console: Console | None = None,
    ):
        self.console = console or Console()
        self.stats = stats
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[tokens]} tok  ${task.fields[cost]}"),
            console=self.console,
            disable=not (enabled and self.console.is_terminal),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, rate="", tokens=0, cost="0.00")

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def advance(self, amount: int = 1) -> None:
        if self._progress.disable:
            return
        self._progress.advance(self._task, amount)
        task = self._progress.tasks[self._task]
        speed = task.speed
        self._progress.update(
            self._task,
            rate=f"{speed:.1f}/s" if speed else "",
            tokens=self.stats.prompt_tokens + self.stats.completion_tokens,
            cost=f"{self.stats.cost_usd:.4f}",
        )

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)
