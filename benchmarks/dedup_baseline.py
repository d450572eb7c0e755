"""The dedup indexes as they were before issue 13 (section 4), kept as the benchmark's own baseline.

`BaselineRougeIndex` gathers candidates from one posting list per prefix element and deduplicates them
with np.unique before a row-major count sketch; `BaselineMinHashIndex` hashes every text twice (once in
`find_duplicate`, once in `add`) and keeps one LeanMinHash per text in datasketch's MinHashLSH.
benchmarks/dedup.py runs them beside distillery.dedup in the same process and checks the decisions match.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from distillery.dedup import tokenize

Match = tuple[float, str]

# Bounds are compared against threshold - _MARGIN: a float F can sit a few ulps above its exact value, so
# a pair is skipped only when even that cannot reach the threshold. Pruning never changes a decision.
_MARGIN = 1e-9
_UNKNOWN = 0  # the code of every token a query has and no added text has: it can match nothing
_SURROGATES = 0x800
_MAX_CHAR = 0x10FFFF
_OCCURRENCE = 1 << 40  # element = token code + k * _OCCURRENCE for the k-th repeat of a token in a text
_FIRST_REBUILD = 32
_BUCKETS = 64  # token-count sketch width: 128 bytes a text, prunes ~97% of what the prefix filter lets by
_SKETCH_MAX = np.iinfo(np.uint16).max


def _code(token_id: int) -> int:
    """Token ids become code points (skipping surrogates), so rapidfuzz compares whole strings in C++."""
    return token_id if token_id < 0xD800 else token_id + _SURROGATES


def _encode(codes: list[int]) -> str | list[int]:
    """A string of code points; a vocabulary past Unicode falls back to a list (rapidfuzz mixes both)."""
    if not codes or max(codes) <= _MAX_CHAR:
        return "".join(map(chr, codes))
    return codes


def _decode(seq: str | list[int]) -> list[int]:
    return list(map(ord, seq)) if isinstance(seq, str) else seq


def _sketch(codes: list[int]) -> np.ndarray:
    """Token counts per hash bucket: the sum over buckets of the smaller count bounds the multiset overlap."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64) % _BUCKETS, minlength=_BUCKETS)
    return np.minimum(counts, _SKETCH_MAX).astype(np.uint16)


def _elements(codes: list[int]) -> list[int]:
    """The token multiset as a set: the k-th repeat of a token is its own element, so overlaps add up."""
    seen: dict[int, int] = {}
    elements = []
    for code in codes:
        repeat = seen.get(code, 0)
        seen[code] = repeat + 1
        elements.append(code + repeat * _OCCURRENCE)
    return elements


class BaselineRougeIndex:
    """Incremental exact ROUGE-L: `find_duplicate` decides, `query`, `most_similar` and `scores` report.

    F = 2 * LCS / (len_a + len_b) and LCS <= the multiset token overlap, so the Dice coefficient of token
    multisets bounds F from above. Exact filters use that bound before any LCS is computed:
    - a prefix filter (AllPairs/PPJoin): every text is indexed under its rarest elements, and any pair
      whose overlap could lift F above the threshold must share one of them within prefixes as long as
      that pair's lengths allow (the positional part). Rarity is a document-frequency snapshot
      refreshed, with a full re-index, each time the index doubles, so every prefix is cut in one order;
    - a count sketch per text (tokens hashed into 64 buckets), whose bucket-wise minimum can only
      over-count the overlap.
    """

    def __init__(self, threshold: float = 0.7) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self._slack = threshold - _MARGIN
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._seqs: list[str | list[int]] = []
        self._lengths = np.zeros(_FIRST_REBUILD, dtype=np.float64)
        self._sketches = np.zeros((_FIRST_REBUILD, _BUCKETS), dtype=np.uint16)
        self._df: dict[int, int] = {}
        self._rank: dict[int, int] = {}
        self._postings: dict[int, array[int]] = {}
        self._rebuild_at = _FIRST_REBUILD

    def add(self, text: str) -> None:
        codes = [self._intern(token) for token in tokenize(text)]
        index = len(self._texts)
        self._texts.append(text)
        self._seqs.append(_encode(codes))
        if index == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
            self._sketches = np.concatenate([self._sketches, np.zeros_like(self._sketches)])
        self._lengths[index] = len(codes)
        self._sketches[index] = _sketch(codes)
        elements = _elements(codes)
        for element in elements:
            self._df[element] = self._df.get(element, 0) + 1
        self._post(index, elements)
        if len(self._texts) >= self._rebuild_at:
            self._reindex()

    def find_duplicate(self, text: str) -> Match | None:
        """The best match when its F is above the threshold; only pairs that could be are scored."""
        codes = self._lookup(text)
        n = len(codes)
        found, probes = [], []
        for position, element in enumerate(self._prefix(_elements(codes))):
            posting = self._postings.get(element)
            if posting is not None:
                found.append(posting)
                probes.append(position)
        if not found:
            return None
        entries = np.frombuffer(b"".join(found), dtype=np.intc).reshape(-1, 2)
        indices, positions = entries[:, 0], entries[:, 1]
        probe_positions = np.repeat(probes, [len(posting) // 2 for posting in found])
        lengths = self._lengths[indices]
        # The pair's own overlap requirement shortens both prefixes (PPJoin's positional filter).
        alpha = np.maximum(np.floor(self._slack * (lengths + n) / 2) + 1, 1)
        indices = np.unique(indices[(probe_positions <= n - alpha) & (positions <= lengths - alpha)])
        lengths = self._lengths[indices]
        known = [code for code in codes if code != _UNKNOWN]
        overlap = np.minimum(self._sketches[indices], _sketch(known)).sum(axis=1)
        # Only two texts over 65,535 tokens each can saturate a bucket; the sketch then bounds nothing.
        indices = indices[(2 * overlap > self._slack * (lengths + n)) | (lengths > _SKETCH_MAX)]
        if not len(indices):
            return None
        scores = self._scores(codes, indices)
        best = int(np.argmax(scores))
        if scores[best] > self.threshold:
            return float(scores[best]), self._texts[indices[best]]
        return None

    def _scores(self, codes: list[int], indices: np.ndarray | None) -> np.ndarray:
        """rouge_score's float expression, elementwise: numpy float64 rounds exactly as Python does."""
        size = len(self._texts)
        lengths = self._lengths[:size] if indices is None else self._lengths[indices]
        scores = np.zeros(len(lengths))
        if not codes or not len(lengths):
            return scores
        seqs = self._seqs if indices is None else [self._seqs[i] for i in indices]
        lcs = process.cdist([_encode(codes)], seqs, scorer=LCSseq.similarity, dtype=np.int32)[0]
        lcs = lcs.astype(np.float64)
        precision = np.divide(lcs, lengths, out=np.zeros_like(lcs), where=lengths > 0)
        recall = lcs / len(codes)
        total = precision + recall
        np.divide(2 * precision * recall, total, out=scores, where=total > 0)
        return scores

    def _intern(self, token: str) -> int:
        code = self._vocab.get(token)
        if code is None:
            code = self._vocab[token] = _code(len(self._vocab) + 1)
        return code

    def _lookup(self, text: str) -> list[int]:
        vocab = self._vocab
        return [vocab.get(token, _UNKNOWN) for token in tokenize(text)]

    def _prefix(self, elements: list[int]) -> list[int]:
        """The rarest len - alpha + 1 elements, alpha being the least overlap any duplicate pair needs."""
        n = len(elements)
        slack = self._slack
        alpha = max(1, math.floor(slack * n / (2 - slack)) + 1)
        rank = self._rank
        return sorted(elements, key=lambda element: (rank.get(element, 0), element))[: n - alpha + 1]

    def _post(self, index: int, elements: list[int]) -> None:
        """Each posting holds (text index, element's position in that text's prefix) pairs."""
        postings = self._postings
        for position, element in enumerate(self._prefix(elements)):
            posting = postings.get(element)
            if posting is None:
                posting = postings[element] = array("i")
            posting.append(index)
            posting.append(position)

    def _reindex(self) -> None:
        self._rank = dict(self._df)
        self._postings = {}
        for index, seq in enumerate(self._seqs):
            self._post(index, _elements(_decode(seq)))
        self._rebuild_at = 2 * len(self._texts)


def _shingles(text: str) -> list[bytes]:
    """Consecutive token pairs: character bigrams for Chinese, word bigrams for English."""
    tokens = tokenize(text)
    if len(tokens) < 2:
        return [token.encode() for token in tokens]
    return [f"{a} {b}".encode() for a, b in zip(tokens, tokens[1:], strict=False)]


class BaselineMinHashIndex:
    """Approximate near-duplicates by estimated Jaccard of token-bigram shingles (datasketch MinHash LSH).

    For corpora of millions where exact all-pairs ROUGE-L is too slow; it can miss a pair or report one
    slightly under the threshold. Texts without tokens are never duplicates, as under ROUGE-L.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        from datasketch import MinHash, MinHashLSH

        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"MinHash threshold must be at least 0 and below 1, got {threshold}")
        self.threshold = threshold
        self._template = MinHash(num_perm=num_perm)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures: list[Any] = []
        self._texts: list[str] = []

    def _signature(self, text: str) -> Any | None:
        from datasketch import LeanMinHash, MinHash

        shingles = _shingles(text)
        if not shingles:
            return None
        template = self._template  # reusing its permutations saves most of the cost of a MinHash
        signature = MinHash(template.num_perm, permutations=template.permutations, scheme=template.scheme)
        signature.update_batch(shingles)
        return LeanMinHash(signature)

    def add(self, text: str) -> None:
        signature = self._signature(text)
        if signature is not None:
            self._lsh.insert(len(self._signatures), signature)
            self._signatures.append(signature)
            self._texts.append(text)

    def find_duplicate(self, text: str) -> Match | None:
        signature = self._signature(text)
        if signature is None:
            return None
        best, best_index = -1.0, -1
        for index in self._lsh.query(signature):
            score = signature.jaccard(self._signatures[index])
            if score > best or (score == best and index < best_index):
                best, best_index = score, index
        if best > self.threshold:
            return best, self._texts[best_index]
        return None
