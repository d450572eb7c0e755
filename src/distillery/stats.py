"""`distillery stats`: how many records, how many turns, how long prompts and responses are.

Lengths (`length_counter`, which `report` uses too) are tokens of the given tokenizer, else words as
`tokens.count_words` counts them: each CJK character is one word, so Chinese and English lengths are
comparable without a tokenizer, and punctuation alone is none. Per record, the prompt is every system,
user and tool message and the response is every assistant message, tool-call arguments included.
Percentiles are nearest-rank.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.errors import InputError
from distillery.formats import detect_format, to_messages
from distillery.io import iter_located, write_json
from distillery.tokens import count_words, load_tokenizer

DISTRIBUTIONS = ("turns", "prompt", "response", "total")
LengthCounter = Callable[[list[str]], list[int]]


@dataclass
class StatsOptions:
    tokenizer: str | None = None
    json_path: Path | None = None


def summarize(values: list[int]) -> dict[str, float | int]:
    """min / mean / p50 / p90 / max / sum of a list of counts (nearest-rank percentiles)."""
    if not values:
        return {"min": 0, "mean": 0.0, "p50": 0, "p90": 0, "max": 0, "sum": 0}
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]

    total = sum(ordered)
    return {
        "min": ordered[0],
        "mean": round(total / len(ordered), 2),
        "p50": rank(0.5),
        "p90": rank(0.9),
        "max": ordered[-1],
        "sum": total,
    }


def length_counter(tokenizer: str | None) -> LengthCounter:
    """Lengths of a batch of texts: tokens of the tokenizer, else words as tokens.count_words counts them.

    A fast tokenizer encodes the whole batch in one call, spread over its threads and without the
    offsets nobody reads here: one call per text cost `report` more than everything else on 100K records.
    """
    if tokenizer is None:
        return lambda texts: [count_words(text) for text in texts]
    loaded = load_tokenizer(tokenizer)
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:  # a Python ("slow") tokenizer has no batch encoder worth calling
        return lambda texts: [len(loaded.encode(text, add_special_tokens=False)) for text in texts]
    backend.no_truncation()  # count whole texts, whatever the tokenizer.json says
    backend.no_padding()
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # the fast one is in newer tokenizers
    return lambda texts: [len(encoding.ids) for encoding in encode(texts, add_special_tokens=False)]


def _spoken(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls") or []
    arguments = [str(call["function"].get("arguments") or "") for call in calls]
    return "\n".join(text for text in (message["content"], *arguments) if text)


def collect_stats(input_path: str | Path, options: StatsOptions) -> dict[str, Any]:
    """The statistics as a JSON-ready dict; writes it to options.json_path when given."""
    lengths = length_counter(options.tokenizer)
    formats: Counter = Counter()
    values: dict[str, list[int]] = {name: [] for name in DISTRIBUTIONS}
    with_system = multi_turn = tool_calls = 0
    for where, record in iter_located(input_path):
        formats[detect_format(record, where)] += 1
        messages = to_messages(record, where)
        prompt = response = assistants = 0
        for message, size in zip(messages, lengths([_spoken(message) for message in messages]), strict=True):
            if message["role"] == "assistant":
                response += size
                assistants += 1
            else:
                prompt += size
        with_system += bool(messages) and messages[0]["role"] == "system"
        multi_turn += assistants > 1
        tool_calls += any(message.get("tool_calls") for message in messages)
        values["turns"].append(sum(message["role"] != "system" for message in messages))
        values["prompt"].append(prompt)
        values["response"].append(response)
        values["total"].append(prompt + response)
    records = len(values["turns"])
    if not records:
        raise InputError(input_path, "holds no records")
    stats = {
        "input": str(input_path),
        "records": records,
        "formats": dict(formats),
        "unit": "tokens" if options.tokenizer else "words",
        "tokenizer": options.tokenizer,
        "with_system": with_system,
        "multi_turn": multi_turn,
        "with_tool_calls": tool_calls,
        **{name: summarize(values[name]) for name in DISTRIBUTIONS},
    }
    if options.json_path is not None:
        Path(options.json_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(options.json_path, stats)
    return stats
