"""`distillery stats`: exact counts on small files, tokens or CJK-aware words, table and JSON."""

from __future__ import annotations

import json
import time

import pytest
from conftest import ANCHORS, run_cli
from tiny_tokenizer import build_tiny_tokenizer

from distillery.errors import InputError
from distillery.stats import StatsOptions, collect_stats, summarize
from distillery.tokens import count_words, load_tokenizer

RECORDS = [
    {"instruction": "Name three colours.", "input": "", "output": "Red, green and blue."},
    {"conversations": [
        {"from": "system", "value": "你是助手"},
        {"from": "human", "value": "你好"},
        {"from": "gpt", "value": "你好！有什么可以帮你？"},
        {"from": "human", "value": "What is 2 + 2?"},
        {"from": "gpt", "value": "4"},
    ]},
    {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "content": "18C sunny"},
        {"role": "assistant", "content": "It is 18C and sunny."},
    ]},
]


@pytest.fixture
def mixed(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def test_summary_uses_nearest_rank_percentiles():
    assert summarize([5, 1, 4, 2, 3, 10, 6, 7, 9, 8]) == {
        "min": 1, "mean": 5.5, "p50": 5, "p90": 9, "max": 10, "sum": 55}
    assert summarize([7]) == {"min": 7, "mean": 7.0, "p50": 7, "p90": 7, "max": 7, "sum": 7}


def test_word_counts_treat_each_cjk_character_as_a_word(mixed):
    stats = collect_stats(mixed, StatsOptions())
    assert stats["records"] == 3 and stats["unit"] == "words"
    assert stats["formats"] == {"alpaca": 1, "sharegpt": 1, "openai": 1}
    assert (stats["with_system"], stats["multi_turn"], stats["with_tool_calls"]) == (1, 2, 1)
    assert stats["turns"] == summarize([2, 4, 4])
    # prompts: 3 words; 你是助手 4 + 你好 2 + "What is 2 + 2?" 4 (a lone "+" is no word) = 10;
    # "weather?" 1 + "18C sunny" 2 = 3
    assert stats["prompt"] == summarize([3, 10, 3])
    # replies: 4 words; "你好！有什么可以帮你？" 9 CJK (its punctuation is no word) + "4" = 10;
    # '{"city": "Paris"}' 2 + "It is 18C and sunny." 5 = 7
    assert stats["response"] == summarize([4, 10, 7])
    assert stats["total"] == summarize([7, 20, 10])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Don't panic: it's 18C.", 4),
        ("你好！有什么可以帮你？", 9),
        ("日本語のテキスト and 한국어", 12),
        ("a = b + c — 👍 …", 3),
        ("snake_case ___ 3.14", 2),
        ("", 0),
    ],
)
def test_count_words_rule(text, words):
    """The rule stats and report share: CJK characters, plus runs holding a letter or digit."""
    assert count_words(text) == words


def test_count_words_stays_linear_on_long_punctuation_runs():
    """A regex that backtracks over each start of a run took seconds on a 20,000-character rule line."""
    started = time.perf_counter()
    assert count_words("=" * 200_000 + " end") == 1
    assert time.perf_counter() - started < 0.5


def test_token_counts_come_from_the_tokenizer(mixed, tmp_path):
    directory = build_tiny_tokenizer(tmp_path / "tok")
    tokenizer = load_tokenizer(str(directory))
    stats = collect_stats(mixed, StatsOptions(tokenizer=str(directory)))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    assert stats["unit"] == "tokens"
    assert stats["response"]["sum"] == sum(
        count(text) for text in ("Red, green and blue.", "你好！有什么可以帮你？", "4", '{"city": "Paris"}',
                                 "It is 18C and sunny."))


@pytest.mark.anchors
def test_cli_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "new" / "stats.json"
    done = run_cli("stats", str(ANCHORS / "fastchat_dummy_conversation.json"), "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "500 records" in done.stdout and "response" in done.stdout
    stats = json.loads(out.read_text(encoding="utf-8"))
    assert stats["records"] == 500
    assert stats["turns"]["sum"] == 2000 and (stats["turns"]["min"], stats["turns"]["max"]) == (2, 6)
    assert stats["multi_turn"] == 333


def test_bad_records_are_named_with_exit_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"conversations": [{"from": "alien"}]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: turn 1 has unknown role 'alien'"):
        collect_stats(path, StatsOptions())
    done = run_cli("stats", str(path), "--json", str(tmp_path / "s.json"))
    assert done.returncode == 2 and "bad.jsonl:2" in done.stderr
    assert not (tmp_path / "s.json").exists()
