"""Offline language identification with lingua, shared by every recipe and the report.

Two detectors, each built once per process on first use: lingua's low-accuracy mode for texts of at
least 120 characters (lingua documents it as reliable from that length; it loads in 0.2 s and ~70 MB
and runs about twice as fast), and its high-accuracy mode for shorter texts, where it matters (6 s and
~1 GB to load, so a run that only sees long texts never pays for it). Only spoken languages are
candidates: Latin would otherwise claim some English maths text.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

SAMPLE_CHARS = 500
LOW_ACCURACY_MIN_CHARS = 120


@lru_cache(maxsize=2)
def _detector(low_accuracy: bool) -> LanguageDetector:
    builder = LanguageDetectorBuilder.from_all_spoken_languages()
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


def _code(language: Language | None) -> str | None:
    return None if language is None else language.iso_code_639_1.name.lower()


def _prepare(text: str) -> str | None:
    """The part of a text worth classifying, or None when it holds no letters at all."""
    text = text.strip()[:SAMPLE_CHARS]
    return text if any(ch.isalpha() for ch in text) else None


def detect_language(text: str) -> str | None:
    """ISO 639-1 code (``en``, ``zh``, ``ko``…) of the text, or None when it carries no language."""
    sample = _prepare(text)
    if sample is None:
        return None
    return _code(_detector(len(sample) >= LOW_ACCURACY_MIN_CHARS).detect_language_of(sample))


def is_language(text: str, code: str, tolerance: float = 0.5) -> bool:
    """Whether `text` can pass as language `code`: lingua's top guess, or a runner-up whose confidence is at
    least `tolerance` times the top one. Markdown tables and terse lists score nearly flat across related
    languages, and a filter that must not reject genuine text should not bet on a coin toss; a sentence
    in another language scores far below the top (German text as English: 0.002 against 0.93)."""
    sample = _prepare(text)
    if sample is None:
        return True
    detector = _detector(len(sample) >= LOW_ACCURACY_MIN_CHARS)
    values = detector.compute_language_confidence_values(sample)
    if not values or values[0].value == 0:
        return False
    wanted = next((item.value for item in values if item.language.iso_code_639_1.name.lower() == code), 0.0)
    return wanted >= tolerance * values[0].value


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """Batch detection; lingua spreads each batch over its own threads."""
    samples = [_prepare(text) for text in texts]
    found: list[str | None] = [None] * len(samples)
    for low_accuracy in (True, False):
        picked = [
            i for i, s in enumerate(samples) if s is not None and (len(s) >= LOW_ACCURACY_MIN_CHARS) == low_accuracy
        ]
        if picked:
            languages = _detector(low_accuracy).detect_languages_in_parallel_of([samples[i] for i in picked])
            for index, language in zip(picked, languages, strict=True):
                found[index] = _code(language)
    return found


def known_code(code: str) -> bool:
    """Whether a user-given code names a language lingua can detect."""
    return hasattr(IsoCode639_1, code.upper())
