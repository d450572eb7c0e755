"""Text-to-SQL answers that actually run: build the schema in an empty in-memory SQLite database and run
the query on it.

A model asked for SQLite often answers in MySQL or PostgreSQL; such text is transpiled with sqlglot and
tried again, so a correct answer is not thrown away over AUTO_INCREMENT or `::date`. Whatever the model
wrote is untrusted: ATTACH is refused (it would create files), and every statement runs under an
instruction budget and a size limit so a runaway recursive CTE cannot hang or bloat a run.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

DIALECTS = ("mysql", "postgres")
_STEP_BUDGET = 5_000  # progress-handler calls, i.e. about five million SQLite VM instructions
_STEPS_PER_CALL = 1_000
_MAX_VALUE_BYTES = 1_000_000
_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n(.*?)\n?```\s*$", re.S)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_REFUSED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}


def strip_fence(text: str) -> str:
    """The SQL inside a Markdown code fence, or the text itself; models often fence SQL unasked."""
    match = _FENCE.match(text)
    return (match.group(1) if match else text).strip()


def _authorize(action: int, *args: object) -> int:
    return sqlite3.SQLITE_DENY if action in _REFUSED else sqlite3.SQLITE_OK


def _connect() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.set_authorizer(_authorize)
    if hasattr(connection, "setlimit"):  # Python 3.11+
        connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
    calls = 0

    def budget() -> int:
        nonlocal calls
        calls += 1
        return int(calls > _STEP_BUDGET)

    connection.set_progress_handler(budget, _STEPS_PER_CALL)
    return connection


def _drop_sizes(node: exp.Expression) -> exp.Expression:
    """INT(11) and VARCHAR(20) carry nothing for SQLite, and INTEGER(11) breaks its AUTOINCREMENT rule."""
    if isinstance(node, exp.DataType) and node.expressions:
        return exp.DataType(this=node.this)
    return node


def transpile(sql: str, dialect: str) -> str | None:
    """`sql` from `dialect` rewritten for SQLite, or None when sqlglot cannot parse it."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)  # unsupported MySQL table options (ENGINE=...) are dropped, not logged
    try:
        trees = sqlglot.parse(sql, read=dialect)
        statements = [
            tree.transform(_drop_sizes).sql(dialect="sqlite", unsupported_level=ErrorLevel.IGNORE)
            for tree in trees
            if tree is not None
        ]
    except SqlglotError:
        return None
    finally:
        logger.setLevel(level)
    return ";\n".join(statements) if statements else None


def _variants(sql: str, dialects: Sequence[str]) -> Iterator[str]:
    """The text as written first, then each distinct transpilation of it, made only if the previous failed
    (transpiling costs milliseconds, far more than running the SQL)."""
    seen = {sql}
    yield sql
    for dialect in dialects:
        rewritten = transpile(sql, dialect)
        if rewritten is not None and rewritten not in seen:
            seen.add(rewritten)
            yield rewritten


def _message(exc: sqlite3.Error) -> str:
    text = str(exc)
    return "ran too long (instruction budget exceeded)" if text == "interrupted" else text


def _build_schema(schema: str, dialects: Sequence[str]) -> tuple[sqlite3.Connection | None, str]:
    """A database holding the schema, and the text that built it; or None and the first error."""
    errors = []
    for variant in _variants(schema, dialects):
        connection = _connect()
        try:
            connection.executescript(variant)
        except sqlite3.Error as exc:
            connection.close()
            errors.append(_message(exc))
            continue
        if connection.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
            return connection, variant
        connection.close()
        errors.append("defines no table (expected CREATE TABLE statements)")
    return None, f"schema: {errors[0]}"


@dataclass(frozen=True)
class SqlCheck:
    """The verdict, and the SQLite text that ran: the original unless it had to be transpiled."""

    problem: str | None
    schema: str
    query: str

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_sql(schema: str, query: str, dialects: Sequence[str] = DIALECTS) -> SqlCheck:
    """Whether `query` is one statement that runs on `schema`.

    Both texts are tried as SQLite first, then as each of `dialects` transpiled to SQLite; the texts
    that ran are returned so that a kept record holds SQL that runs as it stands.
    """
    if not _COMMENTS.sub("", schema).strip(" \t\r\n;"):
        return SqlCheck("schema is empty", schema, query)
    if not _COMMENTS.sub("", query).strip(" \t\r\n;"):
        return SqlCheck("query is empty", schema, query)
    connection, built = _build_schema(schema, dialects)
    if connection is None:
        return SqlCheck(built, schema, query)
    errors = []
    try:
        for variant in _variants(query, dialects):
            try:
                connection.execute(variant).fetchall()
            except (sqlite3.Error, sqlite3.Warning) as exc:
                errors.append(_message(exc))
                continue
            return SqlCheck(None, built, variant)
    finally:
        connection.close()
    return SqlCheck(f"query: {errors[0]}", schema, query)
