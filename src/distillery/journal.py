"""An append-only journal of accepted records, committed one by one.

Recipes that accept records as answers arrive (Self-Instruct, Evol) append each one here the moment it is
accepted; a re-run replays the journal and carries on, so a kill -9 loses nothing already accepted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from distillery.cache import storage_error


class Journal:
    def __init__(self, connection: sqlite3.Connection, stream: str = "accepted"):
        self.connection = connection
        self.stream = stream

    def append(self, record: dict[str, Any]) -> None:
        try:
            self.connection.execute(
                "INSERT INTO journal (stream, record, created) VALUES (?, ?, ?)",
                (self.stream, json.dumps(record, ensure_ascii=False), time.time()),
            )
        except sqlite3.OperationalError as exc:
            raise storage_error(self.connection, exc) from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows = self.connection.execute("SELECT record FROM journal WHERE stream = ? ORDER BY seq", (self.stream,))
        for (text,) in rows:
            yield json.loads(text)
