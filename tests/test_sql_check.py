"""The text-to-SQL validator: a query is kept only if it runs on its own schema."""

from __future__ import annotations

import time

import pytest

from distillery.sql_check import check_sql, strip_fence, transpile

SHOP = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, joined DATE);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER REFERENCES customers(id),
    total REAL,
    placed_at TEXT
);
"""


@pytest.mark.parametrize(
    "query",
    [
        "SELECT name FROM customers WHERE city = 'Lyon'",
        "SELECT c.name, SUM(o.total) AS spent FROM customers c JOIN orders o ON o.customer_id = c.id "
        "GROUP BY c.name HAVING SUM(o.total) > 100 ORDER BY spent DESC LIMIT 5;",
        "WITH ranked AS (SELECT customer_id, total, RANK() OVER (PARTITION BY customer_id ORDER BY total DESC) r "
        "FROM orders) SELECT * FROM ranked WHERE r = 1",
        "SELECT name FROM customers WHERE id IN "
        "(SELECT customer_id FROM orders WHERE placed_at >= date('now', '-30 days'))",
        "UPDATE orders SET total = total * 1.1 WHERE placed_at < '2024-01-01'",
        "SELECT name FROM customers; -- the answer",
    ],
)
def test_queries_that_run_pass_unchanged(query):
    verdict = check_sql(SHOP, query)
    assert verdict.ok and verdict.problem is None
    assert (verdict.schema, verdict.query) == (SHOP, query)


@pytest.mark.parametrize(
    ("schema", "query", "expected"),
    [
        (SHOP, "SELECT nickname FROM customers", "query: no such column: nickname"),
        (SHOP, "SELECT * FROM invoices", "query: no such table: invoices"),
        (SHOP, "SELEC name FROM customers", 'query: near "SELEC": syntax error'),
        (SHOP, "SELECT name FROM customers; SELECT total FROM orders", "one statement"),
        (SHOP, "  -- nothing here\n ;", "query is empty"),
        ("", "SELECT 1", "schema is empty"),
        ("Table customers has columns id and name.", "SELECT name FROM customers", "schema: "),
        ("CREATE VIEW v AS SELECT 1 AS x", "SELECT x FROM v", "schema: defines no table"),
        ("CREATE TABLE t (a INT,\n b INT", "SELECT a FROM t", "schema: "),
    ],
)
def test_broken_schema_or_query_gives_the_reason(schema, query, expected):
    verdict = check_sql(schema, query)
    assert not verdict.ok and expected in verdict.problem


def test_sql_that_runs_as_written_is_never_transpiled(monkeypatch):
    """Transpiling costs milliseconds per text; SQLite answers, the common case, must not pay for it."""
    monkeypatch.setattr("distillery.sql_check.transpile", lambda sql, dialect: pytest.fail("transpiled"))
    assert check_sql(SHOP, "SELECT name FROM customers WHERE city = 'Lyon'").ok


def test_mysql_schema_is_transpiled():
    schema = (
        "CREATE TABLE `users` (`id` INT(11) NOT NULL AUTO_INCREMENT, `email` VARCHAR(255) NOT NULL, "
        "PRIMARY KEY (`id`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;"
    )
    verdict = check_sql(schema, "SELECT email FROM users ORDER BY id DESC LIMIT 3")
    assert verdict.ok
    assert "AUTO_INCREMENT" not in verdict.schema and "AUTOINCREMENT" in verdict.schema
    assert verdict.query == "SELECT email FROM users ORDER BY id DESC LIMIT 3"
    assert check_sql(verdict.schema, verdict.query, dialects=()).ok, "the returned text runs as SQLite"
    assert not check_sql(schema, "SELECT email FROM users", dialects=()).ok, "plain SQLite rejects the original"


def test_postgres_query_is_transpiled():
    query = "SELECT name FROM customers WHERE name ILIKE '%an%' AND joined::date > '2020-01-01'"
    verdict = check_sql(SHOP, query)
    assert verdict.ok and "ILIKE" not in verdict.query and "::" not in verdict.query
    assert verdict.schema == SHOP
    assert not check_sql(SHOP, query, dialects=()).ok


def test_transpile_returns_none_for_unparseable_text():
    assert transpile("this is not ) SQL (", "mysql") is None


def test_schema_rows_are_available_to_the_query():
    schema = "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);"
    assert check_sql(schema, "SELECT SUM(x) FROM t").ok


def test_runaway_query_is_stopped_quickly():
    started = time.monotonic()
    verdict = check_sql(SHOP, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n")
    assert verdict.problem == "query: ran too long (instruction budget exceeded)"
    assert time.monotonic() - started < 5


def test_attach_is_refused_and_creates_no_file(tmp_path):
    target = tmp_path / "escape.db"
    assert "not authorized" in check_sql(SHOP, f"ATTACH DATABASE '{target}' AS other").problem
    assert "not authorized" in check_sql(f"ATTACH DATABASE '{target}' AS e; CREATE TABLE e.t (x);", "SELECT 1").problem
    assert not target.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```sql\nSELECT 1\n```", "SELECT 1"),
        ("```\nSELECT a\nFROM t;\n```\n", "SELECT a\nFROM t;"),
        ("SELECT 1", "SELECT 1"),
        ("  SELECT '```' AS fence  ", "SELECT '```' AS fence"),
    ],
)
def test_strip_fence(text, expected):
    assert strip_fence(text) == expected
