"""Counting tokens: with a real tokenizer when the user gives one, else a documented estimate.

The estimate is one token per CJK character plus 1.3 tokens per other word, close to what
LLaMA-family BPE vocabularies produce on English and Chinese chat text.

`count_words` is the length unit `stats` and `report` show when there is no tokenizer, so the two
commands agree on every text.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from distillery.errors import UserError

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_WORD = re.compile(f"[^\\s{_CJK}]+")
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")
TOKENS_PER_WORD = 1.3


def estimate_tokens(text: str) -> int:
    """One per CJK character, 1.3 per whitespace-separated word, rounded up."""
    return len(_CJK_CHAR.findall(text)) + math.ceil(TOKENS_PER_WORD * len(_WORD.findall(text)))


def count_words(text: str) -> int:
    """Words, where each CJK character (Han, kana, Hangul) is one word, as Chinese and Japanese have no spaces.

    Other words are runs between whitespace and CJK characters that hold a letter or digit: "18C" and
    "don't" are one word each, while punctuation or emoji alone ("—", "！", "=", "👍") is none, so
    lengths measure text rather than layout. Each run is tested on its own, which keeps the cost linear
    even on long runs of punctuation.
    """
    return len(_CJK_CHAR.findall(text)) + sum(1 for run in _WORD.findall(text) if _LETTER_OR_DIGIT.search(run))


def load_tokenizer(name_or_path: str) -> Any:
    """A local tokenizer.json, a local HF tokenizer directory, or a hub name when online."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name_or_path).expanduser()
    if not path.exists() and (name_or_path.startswith(("/", ".", "~")) or path.suffix == ".json"):
        raise UserError(f"{name_or_path}: no such tokenizer file or directory")
    try:
        if path.is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else name_or_path)
    except Exception as exc:  # transformers raises OSError, ValueError and others for a bad tokenizer
        raise UserError(f"cannot load tokenizer {name_or_path!r}: {str(exc).splitlines()[0]}") from None


class TokenCounter:
    """Counts with the given tokenizer, or estimates when there is none."""

    def __init__(self, tokenizer: Any | None = None):
        self.tokenizer = tokenizer

    @classmethod
    def from_option(cls, name_or_path: str | None) -> TokenCounter:
        return cls(load_tokenizer(name_or_path) if name_or_path else None)

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return estimate_tokens(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False))
