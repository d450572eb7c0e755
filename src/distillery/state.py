"""One run state per run directory: the response cache, each step's journal and the run's metadata.

Everything a run must remember across a kill -9 lives in one SQLite file (WAL, committed per write), in
the schema of `cache.py`: `responses` (every answer received), `journal` (records accepted, one stream per
step) and `steps` (each step's fingerprint, done marker and statistics). The file is
`RUN/state/{shard}.sqlite`, so a shard of a distributed run can own its own file and nothing is shared
between writers. The run holds the state file's exclusive lock (`lock.lock_output`, released when the
process ends however it ends) for its whole life, so a second run on the same directory stops at once
instead of paying for the same requests twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distillery.cache import ResponseCache, connect
from distillery.journal import Journal
from distillery.lock import lock_output
from distillery.summary import StageStats

LOCAL_SHARD = "local"


def state_file(run_dir: str | Path, shard: str = LOCAL_SHARD) -> Path:
    return Path(run_dir) / "state" / f"{shard}.sqlite"


class RunState:
    """A run's memory; steps reach it only through the executor and the LLM step, never directly."""

    def __init__(self, path: str | Path, lock: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if lock:
            lock_output(self.path)
        self.connection: sqlite3.Connection = connect(self.path)
        self.cache = ResponseCache(self.connection)

    @classmethod
    def for_run(cls, run_dir: str | Path, shard: str = LOCAL_SHARD) -> RunState:
        return cls(state_file(run_dir, shard))

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def forget(self) -> None:
        """--fresh: every answer, journal entry and finished step of this run is forgotten."""
        with self.connection:
            self.connection.execute("BEGIN")
            for table in ("responses", "journal", "steps", "batches", "batch_requests"):
                self.connection.execute(f"DELETE FROM {table}")

    # --- journal: records a step accepted, committed one by one -----------------------------------------

    def append(self, stream: str, record: Any) -> None:
        Journal(self.connection, stream).append(record)

    def replay(self, stream: str) -> list[Any]:
        return list(Journal(self.connection, stream))

    def journal(self, stream: str) -> Journal:
        """One stream of the journal, for a recipe that appends to several in one `atomically` block."""
        return Journal(self.connection, stream)

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """Every journal write inside is committed together or not at all (one answer's whole outcome)."""
        self.connection.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    # --- steps: fingerprints and done markers ------------------------------------------------------------

    def done_stats(self, position: int, name: str, fingerprint: str) -> StageStats | None:
        """The statistics of step `position` if it finished with this very fingerprint, else None."""
        row = self.connection.execute(
            "SELECT name, fingerprint, done, stats FROM steps WHERE position = ?", (position,)
        ).fetchone()
        if row is None or tuple(row[:3]) != (name, fingerprint, 1):
            return None
        return StageStats.from_dict(json.loads(row[3]))

    def start(self, position: int, name: str, fingerprint: str) -> None:
        """Step `position` is about to run: it and every later step are no longer done. A changed
        fingerprint also drops the step's journal, which belonged to other options."""
        with self.connection:
            self.connection.execute("BEGIN")
            row = self.connection.execute("SELECT fingerprint FROM steps WHERE position = ?", (position,)).fetchone()
            if row is not None and row[0] != fingerprint:
                stream = _stream(position, name)  # the step's stream, and those it named after it
                self.connection.execute("DELETE FROM journal WHERE stream = ? OR substr(stream, 1, ?) = ?",
                                        (stream, len(stream) + 1, f"{stream}:"))
            self.connection.execute("UPDATE steps SET done = 0 WHERE position >= ?", (position,))
            self.connection.execute(
                "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, 0, NULL, ?)", (position, name, fingerprint, time.time())
            )

    def finish(self, position: int, stats: StageStats) -> None:
        self.connection.execute(
            "UPDATE steps SET done = 1, stats = ?, updated = ? WHERE position = ?",
            (json.dumps(stats.as_dict(), ensure_ascii=False), time.time(), position),
        )

    @staticmethod
    def journal_stream(position: int, name: str) -> str:
        return _stream(position, name)


def _stream(position: int, name: str) -> str:
    return f"step:{position}:{name}"
