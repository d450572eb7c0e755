"""`distillery decontaminate`: drop records that overlap benchmark items, English and Chinese alike.

A record is contaminated when its prompt (instruction and input, or every user turn) shares with a
benchmark item: the same text once case, width, punctuation and spaces are folded (`exact`); the whole
of a short item, too short for an n-gram (`contains`); one n-gram (13 words by default, as the GPT-3
paper and open-r1 use; for CJK text, 13 characters, since Chinese has no spaces to count words by); or a
ROUGE-L F above `near` against an item at least n tokens long (`rouge-l`, light paraphrases: a name
changed, a word swapped, an instruction added around the question; on a shorter item one changed word
makes another question, so only the item contained whole counts). Every drop names the benchmark file, the item's
position in it, the method and the matching text, so the rejections are the contamination report.

Benchmark items are read from JSON, JSONL or Parquet files. The item text is a field (`question`,
`instruction`, `prompt` or `problem`, found automatically) or a template over fields such as
"{question}\\n{A}\\n{B}\\n{C}\\n{D}" for C-Eval/CMMLU, lists (MMLU's `choices`) joined one per line.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.errors import InputError, UserError
from distillery.formats import ALPACA, detect_format, to_messages
from distillery.io import iter_located
from distillery.step import Filter, Record, option

QUESTION_FIELDS = ("question", "instruction", "prompt", "problem")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")
_SLOT = re.compile(r"\{([^{}]+)\}")
_MIN_CONTAINED = 10  # characters a short item must have (folded) before containing it counts


def tokens(text: str) -> list[str]:
    """Words, and one token per CJK character; case and full-width forms folded, punctuation dropped."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def gram_size(toks: list[str], words: int, chars: int) -> int:
    """Character n-grams for mostly-CJK text, word n-grams otherwise."""
    cjk = sum(1 for t in toks if _IS_CJK.match(t))
    return chars if toks and cjk * 2 >= len(toks) else words


def ngrams(toks: list[str], n: int) -> set[int]:
    return {hash(tuple(toks[i: i + n])) for i in range(len(toks) - n + 1)}


@dataclass(frozen=True)
class Item:
    benchmark: str
    index: int
    text: str


@dataclass(frozen=True)
class Match:
    item: Item
    method: str
    evidence: str
    score: float | None = None

    def as_detail(self) -> dict[str, Any]:
        detail = {"benchmark": self.item.benchmark, "item": self.item.index, "method": self.method,
                  "evidence": self.evidence, "item_text": self.item.text[:500]}
        if self.score is not None:
            detail["score"] = round(self.score, 4)
        return detail


def item_text(record: Record, where: str, field: str | None, template: str | None) -> str:
    """A benchmark item's text: its template filled in, its field, or the first question-like field."""
    if template is not None:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in record:
                raise InputError(where, f"the benchmark template names {{{name}}}, which this item lacks")
            value = record[name]
            return "\n".join(map(str, value)) if isinstance(value, list | tuple) else str(value)

        return _SLOT.sub(fill, template)
    names = [field] if field is not None else [name for name in QUESTION_FIELDS if name in record]
    if not names or names[0] not in record:
        wanted = repr(field) if field is not None else f"any of {', '.join(QUESTION_FIELDS)}"
        raise InputError(where, f"benchmark item has no {wanted} field; give --benchmark-field or "
                                "--benchmark-template")
    value = record[names[0]]
    if not isinstance(value, str):
        raise InputError(where, f"benchmark field {names[0]!r} is {type(value).__name__}, expected text")
    return value


class BenchmarkIndex:
    """Every item of the benchmark files, indexed for exact, containment, n-gram and ROUGE-L lookups."""

    def __init__(self, words: int = 13, chars: int = 13, near: float = 0.8) -> None:
        from distillery.dedup import RougeIndex

        self.words, self.chars = words, chars
        self.items: list[Item] = []
        self.per_benchmark: Counter[str] = Counter()
        self._exact: dict[str, Item] = {}
        self._short: list[tuple[str, Item]] = []
        self._grams: dict[int, dict[int, Item]] = {}
        self._rouge = RougeIndex(near) if near <= 1 else None
        self._by_text: dict[str, Item] = {}

    def add_file(self, path: str | Path, field: str | None = None, template: str | None = None) -> None:
        before = len(self.items)
        for number, (where, record) in enumerate(iter_located(path)):
            self.add(Item(str(path), number, item_text(record, where, field, template)))
        if len(self.items) == before:
            raise InputError(path, "holds no benchmark items")

    def add(self, item: Item) -> None:
        toks = tokens(item.text)
        if not toks:
            return
        self.items.append(item)
        self.per_benchmark[item.benchmark] += 1
        key = "".join(toks)
        self._exact.setdefault(key, item)
        n = gram_size(toks, self.words, self.chars)
        if len(toks) < n:  # too short for an n-gram, and for a near match ("capital of Spain" is no copy
            if len(key) >= _MIN_CONTAINED:  # of "capital of France"): only containing all of it counts
                self._short.append((key, item))
            return
        table = self._grams.setdefault(n, {})
        for gram in ngrams(toks, n):
            table.setdefault(gram, item)
        if self._rouge is not None and item.text not in self._by_text:
            self._by_text[item.text] = item
            self._rouge.add(item.text)

    def find(self, text: str) -> Match | None:
        """The first way `text` overlaps an item, cheapest check first."""
        toks = tokens(text)
        if not toks:
            return None
        key = "".join(toks)
        if key in self._exact:
            return Match(self._exact[key], "exact", text[:300])
        for short, item in self._short:
            if short in key:
                return Match(item, "contains", item.text[:300])
        for n, table in self._grams.items():
            for i in range(len(toks) - n + 1):
                gram = tuple(toks[i: i + n])
                item = table.get(hash(gram))
                if item is not None:
                    joiner = "" if _IS_CJK.match(gram[0]) else " "
                    return Match(item, f"{n}-gram", joiner.join(gram))
        if self._rouge is not None:
            found = self._rouge.find_duplicate(text)
            if found is not None:
                return Match(self._by_text[found[1]], "rouge-l", text[:300], found[0])
        return None


def prompt_text(record: Record, where: str, with_answers: bool = False) -> str:
    """What a record asks: instruction and input, or every user turn; with answers too when asked."""
    layout = detect_format(record, where)
    if layout == ALPACA:
        parts = [record.get("instruction"), record.get("input")]
        if with_answers:
            parts.append(record.get("output"))
        return "\n".join(part for part in parts if isinstance(part, str) and part)
    roles = ("user", "assistant") if with_answers else ("user",)
    return "\n".join(m["content"] for m in to_messages(record, where) if m["role"] in roles and m["content"])


@dataclass
class DecontaminateStepOptions:
    benchmark: list[str] = option([], "Benchmark files (JSON, JSONL or Parquet) whose items no record may overlap.")
    benchmark_field: str | None = option(None, "The field holding each item's question; default: the first of "
                                               "question, instruction, prompt, problem.")
    benchmark_template: str | None = option(None, "Item text built from its fields, e.g. "
                                                  "'{question}\\n{A}\\n{B}\\n{C}\\n{D}'; lists are joined by lines.")
    ngram: int = option(13, "Word n-gram length that counts as overlap.")
    char_ngram: int = option(13, "Character n-gram length that counts as overlap in CJK text.")
    near: float = option(0.8, "ROUGE-L F (against a whole item) from which a light paraphrase counts; "
                              "above 1 turns this check off.")
    with_answers: bool = option(False, "Check answers too, not only prompts.")


class Decontaminate(Filter):
    """Drops records that overlap a benchmark item (`contaminated`, with the item that matched)."""

    name = "decontaminate"
    Options = DecontaminateStepOptions

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        o = self.options
        if not o.benchmark:
            raise UserError(f"{self.name}: give at least one benchmark file (--benchmark FILE)")
        if o.ngram < 1 or o.char_ngram < 1:
            raise UserError(f"{self.name}: n-gram lengths must be at least 1")
        if o.near < 0:
            raise UserError(f"{self.name}.near: expected a ROUGE-L F between 0 and 1 (above 1: off), got {o.near}")
        if o.benchmark_field is not None and o.benchmark_template is not None:
            raise UserError(f"{self.name}: give a benchmark field or a template, not both")
        self.index: BenchmarkIndex | None = None
        self.number = 0

    def identity(self) -> Any:
        """An edited benchmark file decontaminates again."""
        from distillery.recipes import file_identity

        return [file_identity(path) for path in self.options.benchmark]

    def load(self) -> BenchmarkIndex:
        """The benchmark index, built once, on first use."""
        if self.index is None:
            o = self.options
            self.index = BenchmarkIndex(o.ngram, o.char_ngram, o.near)
            for path in o.benchmark:
                self.index.add_file(path, o.benchmark_field, o.benchmark_template)
        return self.index

    def check(self, record: Record, where: str) -> None:
        """A record whose prompt can be read, or an InputError naming it."""
        prompt_text(record, where, self.options.with_answers)

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        self.load()
        yield from super().run(records)

    def keep(self, record: Record) -> bool | tuple:
        self.number += 1
        text = prompt_text(record, f"{self.name} input record {self.number}", self.options.with_answers)
        match = self.load().find(text)
        if match is None:
            return True
        self.stats.notes[f"{Path(match.item.benchmark).name}:{match.method}"] += 1
        return False, "contaminated", match.as_detail()
