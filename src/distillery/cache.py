"""The SQLite response cache: every answer received is stored the moment it arrives.

Like simonw/llm's log, one table holds every prompt and response with its token usage, keyed by a hash
of the canonical request. That makes re-runs free (a cached request is never sent again), makes a
crash cost nothing twice, and turns "what did this run cost?" into a query. It never holds an API key
or any header: only the model name, the messages and the generation parameters.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.errors import UserError
from distillery.io import check_output, sidecar
from distillery.lock import lock_output

_MIGRATIONS = [
    """
    CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        text TEXT NOT NULL,
        finish_reason TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    )
    """,
    """
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        record TEXT NOT NULL,
        created REAL NOT NULL
    )
    """,
    """
    CREATE TABLE steps (
        position INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        stats TEXT,
        updated REAL NOT NULL
    )
    """,
    # Provider batches (`--batch`), journaled before `create` is even sent: `id` stays NULL until the
    # provider named the batch, so a run killed in between finds it again by its input file.
    """
    CREATE TABLE batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT,
        input_file TEXT NOT NULL,
        base_url TEXT NOT NULL,
        api_key_env TEXT NOT NULL,
        model TEXT NOT NULL,
        state TEXT NOT NULL,
        requests INTEGER NOT NULL,
        answered INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        collected INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        updated REAL NOT NULL
    )
    """,
    "CREATE TABLE batch_requests (batch INTEGER NOT NULL, key TEXT NOT NULL, request TEXT NOT NULL, "
    "PRIMARY KEY (batch, key))",
    # Which batch API holds the batch (`openai` or `anthropic`), so `distillery batches --cancel` asks the right one.
    "ALTER TABLE batches ADD COLUMN provider TEXT NOT NULL DEFAULT 'openai'",
]


def canonical_request(
    model: str, messages: list[dict[str, Any]], params: dict[str, Any], sample: int, prompt: str | None = None
) -> str:
    """The exact identity of a request; parameters left unset are omitted so defaults don't split keys. A raw
    completion (`prompt`, for Magpie) carries its prompt, so it never shares a key with a chat request."""
    body = {
        "model": model,
        "messages": messages,
        "params": {name: value for name, value in sorted(params.items()) if value is not None},
        "sample": sample,
    }
    if prompt is not None:
        body["prompt"] = prompt
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def request_key(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


_DISK_PROBLEMS = ("disk is full", "readonly database", "unable to open database", "disk I/O error")


def storage_error(connection: sqlite3.Connection, exc: sqlite3.OperationalError) -> Exception:
    """A full or read-only disk under the state database is the user's to fix: one line naming the file.
    Anything else stays the bug it is."""
    if not any(problem in str(exc) for problem in _DISK_PROBLEMS):
        return exc
    try:
        name = connection.execute("PRAGMA database_list").fetchone()[2]
    except sqlite3.Error:
        name = "the run's state database"
    return UserError(f"{name}: cannot store the run's state: {exc}")


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (and migrate) a state database in WAL mode, safe against kill -9 between commits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _connect(path)
    except sqlite3.OperationalError as exc:
        if any(problem in str(exc) for problem in _DISK_PROBLEMS):
            raise UserError(f"{path}: cannot store the run's state: {exc}") from None
        raise


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=10000")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    for number, statement in enumerate(_MIGRATIONS[version:], start=version + 1):
        with connection:
            connection.execute("BEGIN")
            connection.execute(statement)
            connection.execute(f"PRAGMA user_version={number}")
    return connection


def state_path(output: str | Path) -> Path:
    """Where a run keeps its cache and journal: beside OUTPUT, so each output resumes on its own."""
    return sidecar(output, ".cache.sqlite")


def prepare_state(output: str | Path, fresh: bool) -> None:
    """Called before a run opens its state (so before its first request): OUTPUT must be writable, and the
    run takes OUTPUT's lock for the rest of the process, so a second run on the same output stops at once.
    With --fresh, everything stored for OUTPUT (WAL side files too) is forgotten, so the run starts over."""
    check_output(output)
    lock_output(output)
    if fresh:
        path = state_path(output)
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


class ResponseCache:
    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def get(self, key: str) -> CachedResponse | None:
        row = self.connection.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM responses WHERE key = ?", (key,)
        ).fetchone()
        return CachedResponse(*row) if row else None

    def put(self, key: str, model: str, canonical: str, response: CachedResponse) -> None:
        try:
            self._insert(key, model, canonical, response)
        except sqlite3.OperationalError as exc:
            raise storage_error(self.connection, exc) from None

    def _insert(self, key: str, model: str, canonical: str, response: CachedResponse) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                canonical,
                response.text,
                response.finish_reason,
                response.prompt_tokens,
                response.completion_tokens,
                time.time(),
            ),
        )
