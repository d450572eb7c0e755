"""Records flow through small steps; filters say why they drop something.

Modelled on datatrove: a step maps an iterator of records to an iterator of records, and the shared base
counts what went in, what came out and what was dropped for which reason, and hands every dropped record
to one rejection sink. Recipes are lists of steps, so they read top to bottom and stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
Rejector = Callable[[Record, str, str], None]


@dataclass
class StageStats:
    name: str
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "in": self.seen, "out": self.kept, "dropped": dict(self.dropped)}


class Step:
    """A named transformation of a record stream; subclasses override `run`."""

    name = "step"

    def __init__(self) -> None:
        self.stats = StageStats(self.name)
        self.reject: Rejector = lambda record, stage, reason: None

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        yield from records

    def __call__(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in self.run(self._count_in(records)):
            self.stats.kept += 1
            yield record

    def _count_in(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            self.stats.seen += 1
            yield record

    def drop(self, record: Record, reason: str) -> None:
        self.stats.dropped[reason] += 1
        self.reject(record, self.name, reason)


class Filter(Step):
    """Subclasses implement `keep`, returning True, or False / (False, reason) to drop."""

    name = "filter"

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            verdict = self.keep(record)
            kept, reason = (verdict, self.name) if isinstance(verdict, bool) else verdict
            if kept:
                yield record
            else:
                self.drop(record, reason)


def run_pipeline(records: Iterable[Record], steps: list[Step], reject: Rejector | None = None) -> Iterator[Record]:
    """Chain steps lazily; every step shares the same rejection sink."""
    stream: Iterable[Record] = records
    for step in steps:
        if reject is not None:
            step.reject = reject
        stream = step(stream)
    yield from stream
