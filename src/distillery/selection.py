"""`distillery select`: keep the best records by a judge's score, optionally diverse (deita's greedy rule).

Records are ranked by one score (`scores.alpagasus` by default), best first, ties in input order. A
record is kept when it reaches `min_score`, fits in `top` (a fraction or a count) and, with `diverse`, is
not too close to a record already chosen: ROUGE-L through dedup's exact index by default, or cosine
similarity of embeddings from a local sentence-transformers model. So with diversity on, a near-duplicate
of a better record never takes a place in the top-k; the next best distinct record does. Kept records
leave in input order; every other record is dropped with why (`below_min`, `too_similar`, `not_in_top`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.errors import InputError, UserError
from distillery.step import GlobalStep, Record, option

SIMILARITIES = ("rouge-l", "embed")
DEFAULT_THRESHOLDS = {"rouge-l": 0.7, "embed": 0.9}


@dataclass
class SelectStepOptions:
    by: str = option("alpagasus", "The score ranked on: a criterion under `scores` (alpagasus, quality, "
                                  "pairwise...) or a dotted path to any number in the record.")
    min_score: float | None = option(None, "Keep only records scoring at least this.")
    top: float | None = option(None, "Keep the best: a fraction below 1 (0.2) or a count (500).")
    diverse: bool = option(False, "Skip records too similar to one already chosen (deita-style greedy selection).")
    similarity: str = option("rouge-l", "How diversity compares texts: rouge-l, or embed (needs embed_model).")
    threshold: float | None = option(None, "Too similar above this: ROUGE-L F (default 0.7) or embedding "
                                           "cosine (default 0.9).")
    field: str = option("instruction", "Alpaca field compared for diversity; chats use their first user turn.")
    embed_model: str | None = option(None, "A local sentence-transformers model directory, for similarity embed "
                                           "(needs distillery[embed]; nothing is downloaded).")


def score_of(record: Record, by: str, where: str) -> float:
    """The number a record is ranked by; a record without it is an error naming the record."""
    value: Any = record
    path = by.split(".") if "." in by else ["scores", by]
    for key in path:
        if not isinstance(value, dict) or key not in value:
            hint = " (run `distillery score` first)" if path[0] == "scores" else ""
            raise InputError(where, f"record has no {'.'.join(path)} to select by{hint}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InputError(where, f"{'.'.join(path)} is {value!r}, not a number")
    return float(value)


class Select(GlobalStep):
    """Threshold, top-k or top fraction by a score, optionally diversity-aware; a barrier (it ranks all)."""

    name = "select"
    Options = SelectStepOptions

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        o = self.options
        if o.similarity not in SIMILARITIES:
            raise UserError(f"{self.name}.similarity: expected rouge-l or embed, got {o.similarity!r}")
        if o.top is not None and (o.top <= 0 or (o.top >= 1 and o.top != int(o.top))):
            raise UserError(f"{self.name}.top: expected a fraction between 0 and 1 or a whole count, got {o.top}")
        if o.threshold is not None and not 0 <= o.threshold <= 1:
            raise UserError(f"{self.name}.threshold: expected a number between 0 and 1, got {o.threshold}")
        if o.diverse and o.similarity == "embed" and not o.embed_model:
            raise UserError(f"{self.name}: similarity embed needs embed_model, a local sentence-transformers model")

    def check(self, record: Record, where: str) -> None:
        """A record this step can rank, or an InputError naming it (the command checks with file positions)."""
        score_of(record, self.options.by, where)
        if self.options.diverse:
            from distillery.dedup import record_text

            record_text(record, self.options.field, where)

    def limit(self, total: int) -> int:
        """How many records `top` keeps out of `total`."""
        top = self.options.top
        if top is None:
            return total
        return int(top) if top >= 1 else math.floor(top * total + 0.5)

    def run_all(self, records: list[Record]) -> Iterable[Record]:
        o = self.options
        values = [score_of(record, o.by, f"{self.name} input record {n}") for n, record in enumerate(records, 1)]
        order = sorted(range(len(records)), key=lambda i: -values[i])
        limit = self.limit(len(records))
        near = self._similarity(records) if o.diverse else None
        drops: dict[int, tuple[str, dict[str, Any]]] = {}
        kept: list[int] = []
        for rank, index in enumerate(order, start=1):
            detail: dict[str, Any] = {"by": o.by, "score": values[index], "rank": rank}
            if o.min_score is not None and values[index] < o.min_score:
                drops[index] = ("below_min", {**detail, "min_score": o.min_score})
            elif len(kept) >= limit:
                drops[index] = ("not_in_top", {**detail, "kept": limit})
            else:
                match = near(index, kept) if near is not None else None
                if match is not None:
                    drops[index] = ("too_similar", {**detail, "similarity": match[0], "most_similar": match[1]})
                else:
                    kept.append(index)
        chosen = set(kept)
        for index, record in enumerate(records):
            if index in chosen:
                yield record
            else:
                self.drop(record, *drops[index])

    def _similarity(self, records: list[Record]) -> Any:
        """near(index, kept) -> (similarity, text) of the closest chosen record above the threshold, or None."""
        from distillery.dedup import record_text

        o = self.options
        texts = [record_text(r, o.field, f"{self.name} input record {n}") for n, r in enumerate(records, 1)]
        cutoff = o.threshold if o.threshold is not None else DEFAULT_THRESHOLDS[o.similarity]
        if o.similarity == "embed":
            return _embedding_similarity(texts, o.embed_model, cutoff)
        from distillery.dedup import RougeIndex

        index = RougeIndex(cutoff)

        def near(i: int, kept: list[int]) -> tuple[float, str] | None:
            match = index.find_duplicate(texts[i])
            if match is None:
                index.add(texts[i])
            return match

        return near


def _embedding_similarity(texts: list[str], model: str, cutoff: float) -> Any:
    """Cosine similarity of a local sentence-transformers model's embeddings; imported only when used."""
    if not Path(model).is_dir():
        raise UserError(f"select.embed_model {model}: no such model directory (give a local "
                        "sentence-transformers model; nothing is downloaded)")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("similarity embed needs sentence-transformers: pip install 'distillery[embed]'") from None
    import numpy as np

    vectors = np.asarray(SentenceTransformer(model, local_files_only=True).encode(texts, normalize_embeddings=True))

    def near(i: int, kept: list[int]) -> tuple[float, str] | None:
        if not kept:
            return None
        sims = vectors[kept] @ vectors[i]
        best = int(np.argmax(sims))
        return (float(sims[best]), texts[kept[best]]) if sims[best] > cutoff else None

    return near
