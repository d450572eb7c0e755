"""The one rejection schema and the one summary schema every step writes, and `report` reads.

A rejection is `{"stage", "reason", "detail", "record"}`: which step dropped the record, a short machine
reason (`near_duplicate`, `refusal`...), an optional detail (a score, the text it duplicates, an error)
and the record as the step saw it. A summary is a list of stage statistics (records in and out, drops by
reason, requests, tokens, cost and seconds) plus run metadata. Statistics add up with `a + b`, so the
counts of shards, chunks or resumed runs merge without special cases.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.errors import InputError
from distillery.io import read_text, sidecar, write_json

Record = dict[str, Any]
SCHEMA = "distillery.summary/1"


def rejection(stage: str, reason: str, record: Record, detail: Any = None) -> Record:
    """One dropped record in the one rejection shape."""
    return {"stage": stage, "reason": reason, "detail": detail, "record": record}


@dataclass
class StageStats:
    """What one stage did. `seen`/`kept` are records in/out; the rest is filled by LLM steps."""

    stage: str
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    sent: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.dropped, self.notes = Counter(self.dropped), Counter(self.notes)

    def __add__(self, other: StageStats) -> StageStats:
        if other.stage != self.stage:
            raise ValueError(f"cannot add stage {other.stage!r} to stage {self.stage!r}")
        return StageStats(
            self.stage, self.seen + other.seen, self.kept + other.kept, self.dropped + other.dropped,
            self.notes + other.notes, self.sent + other.sent, self.cached + other.cached,
            self.failed + other.failed, self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens, self.cost_usd + other.cost_usd,
            self.seconds + other.seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "in": self.seen, "out": self.kept, "dropped": dict(self.dropped),
            "notes": dict(self.notes),
            "requests": {"sent": self.sent, "cached": self.cached, "failed": self.failed},
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "cost_usd": round(self.cost_usd, 6), "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StageStats:
        requests, tokens = doc.get("requests", {}), doc.get("tokens", {})
        return cls(
            doc["stage"], doc["in"], doc["out"], Counter(doc.get("dropped", {})), Counter(doc.get("notes", {})),
            requests.get("sent", 0), requests.get("cached", 0), requests.get("failed", 0),
            tokens.get("prompt", 0), tokens.get("completion", 0), doc.get("cost_usd", 0.0), doc.get("seconds", 0.0),
        )


@dataclass
class Summary:
    """A run (or one step, or one shard): its stages in order and free-form metadata."""

    stages: list[StageStats] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __add__(self, other: Summary) -> Summary:
        """Stage-wise sum; stages only one side has are kept in order of first appearance."""
        merged: dict[str, StageStats] = {}
        for stage in (*self.stages, *other.stages):
            merged[stage.stage] = merged[stage.stage] + stage if stage.stage in merged else stage
        return Summary(list(merged.values()), {**self.meta, **other.meta})

    @property
    def cost_usd(self) -> float:
        return sum(stage.cost_usd for stage in self.stages)

    def as_dict(self) -> dict[str, Any]:
        totals = {
            "requests": sum(s.sent for s in self.stages), "cached": sum(s.cached for s in self.stages),
            "failed": sum(s.failed for s in self.stages),
            "tokens": sum(s.prompt_tokens + s.completion_tokens for s in self.stages),
            "cost_usd": round(self.cost_usd, 6),
        }
        return {"schema": SCHEMA, **self.meta, "totals": totals, "stages": [s.as_dict() for s in self.stages]}

    def write(self, path: str | Path) -> None:
        write_json(path, self.as_dict())

    @classmethod
    def from_dict(cls, doc: Any, where: str | Path = "summary") -> Summary:
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise InputError(where, f"not a distillery summary (no \"schema\": \"{SCHEMA}\")")
        if not isinstance(doc.get("stages"), list):
            raise InputError(where, "not a distillery summary (no list of \"stages\")")
        meta = {k: v for k, v in doc.items() if k not in ("schema", "totals", "stages")}
        try:
            return cls([StageStats.from_dict(stage) for stage in doc["stages"]], meta)
        except (KeyError, TypeError) as exc:
            raise InputError(where, f"malformed stage in run summary: {exc}") from None

    @classmethod
    def read(cls, path: str | Path) -> Summary:
        try:
            doc = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not a JSON run summary: {exc}") from None
        return cls.from_dict(doc, path)


def write_summary(output: str | Path, stages: list[StageStats], meta: dict[str, Any]) -> Path:
    """OUTPUT.summary.json in the one schema, so `report` reads a command's summary like a pipeline's."""
    path = sidecar(output, ".summary.json")
    Summary(stages, meta).write(path)
    return path
