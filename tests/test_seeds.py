"""The built-in seed sets: they set the style of everything self-instruct generates, so they must pass every
rule the recipe applies to generated tasks (length, blocklist, language, ROUGE-L diversity, SQL that runs)."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import sqlglot
from conftest import ANCHORS
from rouge_score import rouge_scorer
from sqlglot import exp

from distillery.dedup import rouge_l, tokenize
from distillery.langid import detect_languages
from distillery.self_instruct import BlocklistFilter, LengthFilter, PunctuationFilter, SelfInstructOptions
from distillery.sql_check import check_sql

SETS = ("en", "zh", "sql")
MIN_TASKS = {"en": 70, "zh": 70, "sql": 24}
INPUT_SHARE = {"en": (0.65, 0.75), "zh": (0.60, 0.70), "sql": (1.0, 1.0)}
ROUGE_LIMIT = 0.7
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def load(name: str) -> list[dict]:
    text = (resources.files("distillery") / "data" / "seeds" / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def instance(task: dict) -> tuple[str, str]:
    (only,) = task["instances"]
    return only["input"], only["output"]


def max_pair(texts: list[str], score: Callable[[str, str], float]) -> tuple[float, str, str]:
    return max((score(a, b), a, b) for a, b in itertools.combinations(texts, 2))


@pytest.mark.parametrize("name", SETS)
def test_every_line_is_an_alpaca_seed_task(name):
    tasks = load(name)
    assert len(tasks) >= MIN_TASKS[name]
    assert [t["id"] for t in tasks] == [f"{name}_seed_{i}" for i in range(len(tasks))]
    names = [t["name"] for t in tasks]
    assert len(set(names)) == len(names)
    for task in tasks:
        assert set(task) == {"id", "name", "instruction", "instances", "is_classification"}, task["id"]
        assert SNAKE_CASE.match(task["name"]), task["name"]
        assert isinstance(task["is_classification"], bool)
        assert len(task["instances"]) == 1 and set(task["instances"][0]) == {"input", "output"}, task["id"]
        text_input, output = instance(task)
        for text in (task["instruction"], text_input, output):
            assert isinstance(text, str) and text == text.strip(), (task["id"], text)
        assert task["instruction"] and output, task["id"]


@pytest.mark.parametrize("name", SETS)
def test_share_of_tasks_with_input(name):
    tasks = load(name)
    share = sum(bool(instance(t)[0]) for t in tasks) / len(tasks)
    low, high = INPUT_SHARE[name]
    assert low <= share <= high, share


def test_english_set_mixes_task_kinds():
    tasks = load("en")
    assert sum(t["is_classification"] for t in tasks) >= 5
    outputs = "\n".join(instance(t)[1] for t in tasks)
    for marker in ("```python", "```javascript", "```sql", "```sh", "```css", "|---"):
        assert marker in outputs, marker


@pytest.mark.parametrize("name", SETS)
def test_instructions_pass_the_self_instruct_filters(name):
    """The recipe's own length, blocklist and punctuation filters, with the rules of each task's language."""
    filters = {}
    for lang in ("en", "zh"):
        options = SelfInstructOptions(output=Path("unused.json"), lang=lang)
        filters[lang] = [LengthFilter(options.length_bounds, options.unit), BlocklistFilter(options.blocklist),
                         PunctuationFilter()]
    for task in load(name):
        lang = "zh" if CJK.search(task["instruction"]) else "en"
        assert lang == "zh" or name != "zh", task["instruction"]
        for step in filters[lang]:
            assert step.keep({"instruction": task["instruction"]}) is True, (step.name, task["instruction"])


@pytest.mark.parametrize("name", SETS)
def test_no_two_instructions_are_near_duplicates(name):
    """Self-instruct drops a task whose ROUGE-L against a seed exceeds 0.7; seeds must clear that bar among
    themselves, with one token per Chinese character."""
    score, a, b = max_pair([t["instruction"] for t in load(name)], lambda a, b: rouge_l(tokenize(a), tokenize(b)))
    assert score <= ROUGE_LIMIT, (score, a, b)


def test_english_diversity_matches_rouge_score():
    """The same check through rouge_score itself, which Alpaca uses, so the bar is exactly Alpaca's."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = [t["instruction"] for t in load("en") + load("sql") if not CJK.search(t["instruction"])]
    theirs = max_pair(texts, lambda a, b: scorer.score(a, b)["rougeL"].fmeasure)
    ours = max_pair(texts, lambda a, b: rouge_l(tokenize(a), tokenize(b)))
    assert theirs == ours
    assert theirs[0] <= ROUGE_LIMIT, theirs


@pytest.mark.anchors
@pytest.mark.parametrize(("name", "anchor"), [("en", "alpaca_seed_tasks.jsonl"), ("zh", "belle_zh_seed_tasks.json")])
def test_written_independently_of_alpaca_and_belle_seeds(name, anchor):
    theirs = [json.loads(line) for line in (ANCHORS / anchor).read_text(encoding="utf-8").splitlines()]
    their_tokens = [tokenize(t["instruction"]) for t in theirs]
    their_outputs = {t["instances"][0]["output"].strip() for t in theirs}
    for task in load(name):
        mine = tokenize(task["instruction"])
        closest = max(rouge_l(mine, other) for other in their_tokens)
        assert closest <= ROUGE_LIMIT, (task["instruction"], closest)
        assert instance(task)[1] not in their_outputs, task["id"]


def test_chinese_seeds_are_detected_as_chinese():
    """`--lang zh` drops anything not detected as Chinese, so every instruction and every output (code
    answers included) must pass the same detector."""
    tasks = load("zh")
    texts = [text for t in tasks for text in (t["instruction"], instance(t)[1])]
    found = detect_languages(texts)
    wrong = [(lang, text[:60]) for lang, text in zip(found, texts, strict=True) if lang != "zh"]
    assert not wrong


def test_english_instructions_are_detected_as_english():
    """Slowish: lingua loads its Latin-script models once per process (about 6 s)."""
    instructions = [t["instruction"] for t in load("en")]
    found = detect_languages(instructions)
    assert [text for lang, text in zip(found, instructions, strict=True) if lang != "en"] == []


def sql_tasks() -> list[tuple[str, str, str]]:
    return [(t["id"], *instance(t)) for t in load("sql")]


def compared_literals(*sql: str) -> dict[str, list[str]]:
    """Column name -> the string literals it is compared with (`=`, `<>`, `IN`, CHECK constraints)."""
    found: dict[str, list[str]] = {}
    for text in sql:
        for tree in sqlglot.parse(text, read="sqlite"):
            for node in tree.find_all(exp.EQ, exp.NEQ, exp.In):
                column = node.this
                others = node.expressions if isinstance(node, exp.In) else [node.expression]
                if isinstance(column, exp.Column):
                    found.setdefault(column.name, []).extend(o.this for o in others if o.is_string)
    return {column: values for column, values in found.items() if values}


def fill(connection: sqlite3.Connection, literals: dict[str, list[str]], rows: int = 30) -> None:
    """Rows whose foreign keys point at earlier rows (six children per parent, never a cycle), whose dates
    fall in 2024 and whose text columns take the values the query compares them with."""
    tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = connection.execute(f"PRAGMA table_info({table})").fetchall()
        single_key = sum(1 for c in columns if c[5]) == 1
        for i in range(rows):
            values: list[object] = []
            for _, column, kind, _, _, pk in columns:
                if pk and single_key:
                    values.append(i + 1 if kind == "INTEGER" else f"{column}_{i}")
                elif column in literals:
                    values.append(literals[column][i % len(literals[column])])
                elif kind == "INTEGER":
                    values.append(i // 6 + 1 if pk else i // 6)
                elif kind == "REAL":
                    values.append(10.0 * (i + 1))
                elif re.search(r"date|_at$|_on$|check_|since", column):
                    values.append(f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d} {i % 24:02d}:30:00")
                else:
                    values.append(f"{column}_{i}")
            marks = ", ".join("?" * len(values))
            connection.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", values)


@pytest.mark.parametrize(("task_id", "schema", "query"), sql_tasks(), ids=[t[0] for t in sql_tasks()])
def test_sql_seed_schema_is_create_tables_and_query_is_one_select(task_id, schema, query):
    statements = sqlglot.parse(schema, read="sqlite")
    assert 1 <= len(statements) <= 4
    assert all(isinstance(s, exp.Create) and s.kind == "TABLE" for s in statements)
    (tree,) = sqlglot.parse(query, read="sqlite")
    assert isinstance(tree, exp.Query)
    connection = sqlite3.connect(":memory:")
    connection.executescript(schema)
    connection.execute(query).fetchall()
    verdict = check_sql(schema, query)
    assert verdict.ok and verdict.query == query, verdict.problem


def test_sql_seed_queries_return_rows_on_sample_data():
    """The queries ask real questions, not ones that can only come back empty. Filters such as `HAVING
    COUNT(*) > 20` or `date('now')` need data no generic filler has, so half of the set is the floor."""
    answered = []
    for task_id, schema, query in sql_tasks():
        connection = sqlite3.connect(":memory:")
        connection.executescript(schema)
        fill(connection, compared_literals(schema, query))
        if connection.execute(query).fetchall():
            answered.append(task_id)
    assert len(answered) >= len(sql_tasks()) // 2, answered
