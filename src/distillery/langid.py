"""Offline language identification with lingua, shared by every recipe and the report.

The detector is built once per process and loads language models lazily, so a worker that only ever
sees English and Chinese pays only for those.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

_SAMPLE_CHARS = 2000


@lru_cache(maxsize=1)
def _detector() -> LanguageDetector:
    return LanguageDetectorBuilder.from_all_languages().build()


def _code(language: Language | None) -> str | None:
    return None if language is None else language.iso_code_639_1.name.lower()


def detect_language(text: str) -> str | None:
    """ISO 639-1 code (``en``, ``zh``, ``ko``…) of the text, or None when it carries no language."""
    text = text[:_SAMPLE_CHARS]
    if not any(ch.isalpha() for ch in text):
        return None
    return _code(_detector().detect_language_of(text))


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """Batch detection; lingua spreads the batch over its own threads."""
    clipped = [text[:_SAMPLE_CHARS] for text in texts]
    found = _detector().detect_languages_in_parallel_of(clipped)
    return [
        _code(lang) if any(ch.isalpha() for ch in text) else None for lang, text in zip(found, clipped, strict=True)
    ]


def known_code(code: str) -> bool:
    """Whether a user-given code names a language lingua can detect."""
    return hasattr(IsoCode639_1, code.upper())
