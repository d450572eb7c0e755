"""Near-duplicate filtering: Self-Instruct's ROUGE-L rule made exact and fast, plus MinHash and exact text.

Self-Instruct keeps a new instruction only if its ROUGE-L F against every instruction kept so far is at
most 0.7. Alpaca scores every pair in pure Python. Here the longest common subsequence is bounded by the
multiset token overlap, a prefix-filtered inverted index finds every pair whose bound could pass the
threshold, and only those pairs get an LCS (rapidfuzz, C++). The score itself is rouge_score's own float
expression, so decisions are the same as Alpaca's on English, and Chinese gets one token per ideograph
instead of none at all.
"""

from __future__ import annotations

import math
import re
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha1
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from distillery.errors import InputError, UserError
from distillery.formats import first_user_turn
from distillery.io import iter_located, open_writer
from distillery.summary import StageStats, rejection, write_summary

Record = dict[str, Any]
Match = tuple[float, str]

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+")
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
# The sketch again as bit planes, one uint64 a text each: plane k marks the buckets counting more than k.
# The sum over k of popcount(plane_k & plane'_k) is the sum over buckets of the smaller count whenever
# one side counts at most _PLANES in every bucket; a query that counts more reads the uint16 sketch.
# 8 planes cover ~98% of instructions (64 bytes a text); their popcounts add up to at most 512.
_PLANES = 8
_UNBOUNDED = int(np.iinfo(np.intc).max)
_INDEX_MASK = (1 << 32) - 1  # a posting entry is one int64: reach << 32 | text index
_FEW = 8  # up to this many candidates, LCSseq.similarity one by one beats one process.cdist call


def tokenize(text: str) -> list[str]:
    """rouge_score's tokenizer (stemming off), plus one token per CJK ideograph instead of dropping it."""
    return _TOKEN.findall(text.lower())


def _f_measures(lcs: np.ndarray, n_candidate: int, n_kept: np.ndarray) -> np.ndarray:
    """rouge_score's float expression, elementwise: numpy float64 rounds exactly as Python does."""
    lcs = lcs.astype(np.float64)
    precision = np.divide(lcs, n_kept, out=np.zeros_like(lcs), where=n_kept > 0)
    recall = lcs / n_candidate
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(lcs), where=total > 0)


def _f_measure(lcs: int, n_candidate: int, n_kept: int) -> float:
    """rouge_score's exact float expression, so ties at the threshold fall the same way."""
    precision = lcs / n_kept
    recall = lcs / n_candidate
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_l(candidate: list[str], kept: list[str]) -> float:
    """ROUGE-L F of two token lists, as rouge_score's `score(target=candidate, prediction=kept)`."""
    if not candidate or not kept:
        return 0.0
    ids: dict[str, int] = {}
    left = [ids.setdefault(token, len(ids)) for token in candidate]
    right = [ids.setdefault(token, len(ids)) for token in kept]
    return _f_measure(LCSseq.similarity(left, right), len(candidate), len(kept))


def _code(token_id: int) -> int:
    """Token ids become code points (skipping surrogates), so rapidfuzz compares whole strings in C++."""
    return token_id if token_id < 0xD800 else token_id + _SURROGATES


def _encode(codes: list[int]) -> str | list[int]:
    """A string of code points; a vocabulary past Unicode falls back to a list (rapidfuzz mixes both)."""
    if not codes or max(codes) <= _MAX_CHAR:
        return "".join(map(chr, codes))
    return codes


def _sketch(codes: list[int]) -> tuple[np.ndarray, list[int]]:
    """Token counts per hash bucket: the sum over buckets of the smaller count bounds the multiset overlap.
    Also its first _PLANES bit planes, and whether some count goes past them (then the planes are short).

    Counted in a Python loop: for a text of tens of tokens that is cheaper than numpy's per-call cost."""
    counts = [0] * _BUCKETS
    planes = [0] * (_PLANES + 1)
    for code in codes:
        bucket = code % _BUCKETS
        count = counts[bucket]
        counts[bucket] = count + 1
        if count <= _PLANES:
            planes[count] |= 1 << bucket
    if len(codes) > _SKETCH_MAX:
        counts = [min(count, _SKETCH_MAX) for count in counts]
    return np.array(counts, dtype=np.uint16), planes


def _elements(codes: list[int]) -> list[int]:
    """The token multiset as a set: the k-th repeat of a token is its own element, so overlaps add up."""
    if len(set(codes)) == len(codes):
        return codes
    seen: dict[int, int] = {}
    elements = []
    for code in codes:
        repeat = seen.get(code, 0)
        seen[code] = repeat + 1
        elements.append(code + repeat * _OCCURRENCE)
    return elements


def _alpha(slack: float, total: int) -> int:
    """The least token overlap two texts of `total` tokens together need for F above the threshold."""
    return max(math.floor(slack * total / 2) + 1, 1)


def _reach(slack: float, length: int, room: int) -> int:
    """The longest partner of a `length`-token text for which their pair needs at most `room` overlap:
    -1 when none, _UNBOUNDED when every length qualifies (alpha grows with the partner's length)."""
    if slack <= 0:
        return _UNBOUNDED if room >= 1 else -1
    longest = int(min(max(2 * room / slack - length, -1), _UNBOUNDED))  # a float estimate, then exact steps
    while longest < _UNBOUNDED and _alpha(slack, longest + 1 + length) <= room:
        longest += 1
    while longest >= 0 and _alpha(slack, longest + length) > room:
        longest -= 1
    return longest


def _shortest(slack: float, length: int) -> int:
    """The shortest partner a `length`-token text can pair with at all: the least m with alpha(m + length)
    <= m, i.e. whose whole text could be the overlap (alpha grows by under 1 a token, so all longer can)."""
    shortest = max(int(slack * length / (2 - slack)) - 1, 0) if slack > 0 else 0  # an estimate, then exact steps
    while _alpha(slack, shortest + length) > shortest:
        shortest += 1
    while shortest > 0 and _alpha(slack, shortest - 1 + length) <= shortest - 1:
        shortest -= 1
    return shortest


@dataclass(frozen=True)
class _Limits:
    """What the positional filter allows a `length`-token text: `shortest` partner, and at each prefix
    position the longest partner that position can still pair with (see `_reach`)."""

    shortest: int
    reaches: list[int]


@dataclass(frozen=True)
class _Probe:
    """A text as a query sees it; when all its tokens are known, `add` of the same text reuses all of it."""

    text: str
    tokens: list[str]
    codes: list[int]
    seq: str | list[int]
    prefix: list[int]
    elements: list[int]
    sketch: np.ndarray
    planes: list[int]  # _PLANES bit planes of the sketch, then a plane that is non-zero when they fall short
    complete: bool


class RougeIndex:
    """Incremental exact ROUGE-L: `find_duplicate` decides, `query`, `most_similar` and `scores` report.

    F = 2 * LCS / (len_a + len_b) and LCS <= the multiset token overlap, so the Dice coefficient of token
    multisets bounds F from above. Exact filters use that bound before any LCS is computed:
    - a prefix filter (AllPairs/PPJoin): every text is indexed under its rarest elements, and any pair
      whose overlap could lift F above the threshold must share one of them within prefixes as long as
      that pair's lengths allow (the positional part). Rarity is a document-frequency snapshot
      refreshed, with a full re-index, each time the index doubles, so every prefix is cut in one order.
      Each posting is kept sorted by text length, so a query reads, by binary search, only the entries
      whose length its position allows, rather than every entry of a list that grows with the index;
    - a count sketch per text (tokens hashed into 64 buckets), whose bucket-wise minimum can only
      over-count the overlap. It is read as bit planes (plane k: the buckets counting more than k), so
      the sum of minimums is one popcount per plane the query reaches; a query counting more than
      _PLANES in a bucket reads the counts themselves, and only in its own buckets.
    `add` right after `find_duplicate` of the same text reuses the query's tokens, prefix and sketch.
    """

    def __init__(self, threshold: float = 0.7) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self._slack = threshold - _MARGIN
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._seqs: list[str | list[int]] = []
        self._lengths = np.zeros(_FIRST_REBUILD, dtype=np.intc)
        self._sketches = np.zeros((_FIRST_REBUILD, _BUCKETS), dtype=np.uint16)
        self._planes = np.zeros((_PLANES, _FIRST_REBUILD), dtype=np.uint64)  # one row a plane: `take` reads a row
        self._elements = array("q")  # every added text's elements, one after another: what a re-index ranks
        # element -> its prefix order key: its rank by (document frequency, element) at the last re-index;
        # one unseen then gets the next negative number when first met, so it counts as rarer than all.
        # Keys stay small ints, which `sorted` compares fastest.
        self._order: dict[int, int] = {}
        self._unseen = 0
        # element's order key -> (text lengths, ascending; reach << 32 | text index in the same order)
        self._postings: dict[int, tuple[array[int], array[int]]] = {}
        self._limits: dict[int, _Limits] = {}
        self._slot = np.zeros(_FIRST_REBUILD, dtype=np.intc)  # scratch for deduplicating candidates
        self._rebuild_at = _FIRST_REBUILD
        self._last: _Probe | None = None

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        last, self._last = self._last, None
        if last is not None and last.text == text and last.complete:
            codes, seq, elements, prefix = last.codes, last.seq, last.elements, last.prefix
            sketch, planes = last.sketch, last.planes
        else:
            tokens = last.tokens if last is not None and last.text == text else tokenize(text)
            codes = [self._intern(token) for token in tokens]
            seq = _encode(codes)
            elements = _elements(codes)
            prefix = self._prefix(elements)
            sketch, planes = _sketch(codes)
        index = len(self._texts)
        self._texts.append(text)
        self._seqs.append(seq)
        if index == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
            self._sketches = np.concatenate([self._sketches, np.zeros_like(self._sketches)])
            self._planes = np.concatenate([self._planes, np.zeros_like(self._planes)], axis=1)
            self._slot = np.zeros_like(self._lengths)
        self._lengths[index] = len(codes)
        self._sketches[index] = sketch
        self._planes[:, index] = planes[:_PLANES]
        self._elements.extend(elements)
        self._post(index, prefix)
        if len(self._texts) >= self._rebuild_at:
            self._reindex()

    def find_duplicate(self, text: str) -> Match | None:
        """The best match when its F is above the threshold; only pairs that could be are scored."""
        probe = self._probe(text)
        self._last = probe
        indices = self._candidates(probe)
        if not len(indices):
            return None
        if len(indices) <= _FEW:  # cdist's set-up costs more than a few direct calls
            lcs = np.array([LCSseq.similarity(probe.seq, self._seqs[i]) for i in indices.tolist()])
        else:
            seqs = itemgetter(*indices.tolist())(self._seqs)
            lcs = process.cdist([probe.seq], seqs, scorer=LCSseq.similarity, dtype=np.int32)[0]
        lengths = self._lengths[indices]
        # Most queries end here: no exact F reaches the threshold (less the margin for float rounding),
        # so no float F can exceed it. Those that might are scored with rouge_score's expression.
        close = 2 * lcs > self._slack * (lengths + len(probe.codes))
        if not close.any():
            return None
        indices = indices[close]
        scores = _f_measures(lcs[close], len(probe.codes), lengths[close])
        best = int(np.argmax(scores))  # indices ascend: the earliest added on a tie
        if scores[best] > self.threshold:
            return float(scores[best]), self._texts[indices[best]]
        return None

    def candidates(self, text: str) -> np.ndarray:
        """Indices (ascending) of the added texts the bounds let through: every one whose F is above the
        threshold is among them, so scoring only these decides exactly."""
        return self._candidates(self._probe(text))

    def _probe(self, text: str) -> _Probe:
        tokens = tokenize(text)
        codes = list(map(self._vocab.get, tokens, repeat(_UNKNOWN)))  # as _lookup, keeping the tokens
        complete = _UNKNOWN not in codes
        elements = _elements(codes)
        known = codes if complete else [code for code in codes if code != _UNKNOWN]
        return _Probe(text, tokens, codes, _encode(codes), self._prefix(elements), elements, *_sketch(known),
                      complete)

    def _candidates(self, probe: _Probe) -> np.ndarray:
        """Prefix-filter entries whose pair passes the positional filter, deduplicated, then the sketch.

        The positional filter needs, at probe position i and an entry of an m-token text at its position
        j: i <= n - alpha(m + n) and j <= m - alpha(m + n). alpha grows with both lengths, so the first
        is m <= reach(n, n - i), one number per probe position, and the second n <= reach(m, m - j), one
        number per entry computed when it was posted. The second implies m >= shortest(n) (j >= 0), so
        the lengths in [shortest(n), reach(n, n - i)] are one run of each length-sorted posting.
        """
        n, slack, postings = len(probe.codes), self._slack, self._postings
        limits = self._limits_of(n)
        shortest = limits.shortest
        found: list[array[int]] = []
        for element, longest in zip(probe.prefix, limits.reaches, strict=False):
            if longest < shortest:
                break  # reach falls as the position grows: no later position can pair either
            posting = postings.get(element)
            if posting is not None:
                lengths, entries = posting
                first, last = bisect_left(lengths, shortest), bisect_right(lengths, longest)
                if first < last:
                    found.append(entries[first:last])
        if not found:
            return np.zeros(0, dtype=np.int64)
        entries = np.frombuffer(b"".join(found), dtype=np.int64)  # reach << 32 | text index
        indices = entries[entries >= n << 32] & _INDEX_MASK
        # Deduplicate without sorting: of each index's entries, only the one written last keeps its slot.
        slots = np.arange(len(indices), dtype=np.intc)
        self._slot[indices] = slots
        indices = indices[self._slot[indices] == slots]
        lengths = self._lengths[indices]
        passed = self._overlap_bound(probe, indices) > slack * (lengths + n) * 0.5  # as 2 * overlap > ...: exact
        if n > _SKETCH_MAX:  # only two texts over 65,535 tokens each can saturate a bucket: no bound then
            passed |= lengths > _SKETCH_MAX
        return np.sort(indices[passed])

    def _overlap_bound(self, probe: _Probe, indices: np.ndarray) -> np.ndarray:
        """The sketch's bound on each candidate's multiset overlap with the probe: from the bit planes
        (a popcount per plane the probe uses) unless the probe counts past them in some bucket."""
        if probe.planes[_PLANES]:
            buckets = np.flatnonzero(probe.sketch)
            return np.minimum(self._sketches.take(indices, axis=0)[:, buckets], probe.sketch[buckets]).sum(axis=1)
        used = probe.planes.index(0)  # plane k + 1 is a subset of plane k: the first empty one ends them
        rows = self._planes[:used].take(indices, axis=1)  # one call for every plane the probe uses
        rows &= np.array(probe.planes[:used], dtype=np.uint64)[:, None]
        return np.bitwise_count(rows).sum(axis=0, dtype=np.uint16)

    def query(self, text: str) -> tuple[float, str | None]:
        """Exact best F over everything added, and that text (the earliest added on a tie)."""
        scores = self.scores(text)
        if not len(scores):
            return 0.0, None
        best = int(np.argmax(scores))
        return float(scores[best]), self._texts[best]

    def most_similar(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Top k by F, highest first, earliest added first on ties (Alpaca's `most_similar_instructions`)."""
        scores = self.scores(text)
        return [(self._texts[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")[:k]]

    def scores(self, text: str) -> np.ndarray:
        """F of `text` against every added text, in insertion order (one C++ pass, no pruning)."""
        return self._scores(self._lookup(text))

    def _scores(self, codes: list[int]) -> np.ndarray:
        """F against every added text, in insertion order."""
        size = len(self._texts)
        if not codes or not size:
            return np.zeros(size)
        lcs = process.cdist([_encode(codes)], self._seqs, scorer=LCSseq.similarity, dtype=np.int32)[0]
        return _f_measures(lcs, len(codes), self._lengths[:size])

    def _intern(self, token: str) -> int:
        code = self._vocab.get(token)
        if code is None:
            code = self._vocab[token] = _code(len(self._vocab) + 1)
        return code

    def _lookup(self, text: str) -> list[int]:
        return list(map(self._vocab.get, tokenize(text), repeat(_UNKNOWN)))

    def _prefix(self, elements: list[int]) -> list[int]:
        """The rarest len - alpha + 1 elements, alpha being the least overlap any duplicate pair needs.

        Rarest first: one small integer key per element (see `_order`), so the sort runs in C. The keys
        themselves are returned and the postings are keyed by them: between re-indexes an element always
        has the same key, so nothing needs to turn them back into elements.
        """
        n = len(elements)
        slack = self._slack
        alpha = max(1, math.floor(slack * n / (2 - slack)) + 1)
        order = self._order
        keys = list(map(order.get, elements))
        if None in keys:
            for at, key in enumerate(keys):
                if key is None:
                    self._unseen -= 1
                    keys[at] = order[elements[at]] = self._unseen
        keys.sort()
        return keys[: n - alpha + 1]

    def _limits_of(self, length: int) -> _Limits:
        limits = self._limits.get(length)
        if limits is None:
            slack = self._slack
            positions = length - max(1, math.floor(slack * length / (2 - slack)) + 1) + 1  # as in `_prefix`
            reaches = [_reach(slack, length, length - position) for position in range(positions)]
            limits = self._limits[length] = _Limits(_shortest(slack, length), reaches)
        return limits

    def _post(self, index: int, prefix: list[int]) -> None:
        """Enter the text under each prefix element at its place by length; an entry no query could use
        is left out."""
        postings = self._postings
        length = len(self._seqs[index])
        for element, reach in zip(prefix, self._limits_of(length).reaches, strict=False):
            if reach < 1:
                continue
            entry = reach << 32 | index  # reach <= _UNBOUNDED < 2**31: fits an int64
            posting = postings.get(element)
            if posting is None:
                postings[element] = (array("i", (length,)), array("q", (entry,)))
                continue
            lengths, entries = posting
            if lengths[-1] <= length:
                lengths.append(length)
                entries.append(entry)
            else:
                at = bisect_right(lengths, length)
                lengths.insert(at, length)
                entries.insert(at, entry)

    def _reindex(self) -> None:
        """Rank every element by (document frequency, element) and post every text anew under the prefix
        that order gives it: `_prefix` and `_post` for all texts at once, in numpy."""
        size = len(self._texts)
        lengths = self._lengths[:size].astype(np.int64)
        elements = np.frombuffer(self._elements, dtype=np.int64).copy()  # a view would pin the array's size
        distinct, element_of, frequency = np.unique(elements, return_inverse=True, return_counts=True)
        rank = np.empty(len(distinct), dtype=np.int64)
        rank[np.lexsort((distinct, frequency))] = np.arange(len(distinct))
        self._order = dict(zip(distinct.tolist(), rank.tolist(), strict=True))
        self._unseen = 0
        # Each text's keys ascending (text << 32 | key sorts by text, then key), then each one's position.
        texts = np.repeat(np.arange(size, dtype=np.int64), lengths)
        keyed = np.sort(texts << 32 | rank[element_of])
        keys = keyed & _INDEX_MASK
        starts = np.cumsum(lengths) - lengths
        positions = np.arange(len(keyed)) - np.repeat(starts, lengths)
        # The reach of each (length, position) from `_limits_of`, laid out as one table.
        distinct_lengths, length_of = np.unique(lengths, return_inverse=True)
        tables = [self._limits_of(length).reaches for length in distinct_lengths.tolist()]
        prefix_sizes = np.array([len(table) for table in tables], dtype=np.int64)
        bases = np.cumsum(prefix_sizes) - prefix_sizes
        table = np.fromiter(chain.from_iterable(tables), dtype=np.int64, count=int(prefix_sizes.sum()))
        length_of = np.repeat(length_of, lengths)
        inside = positions < prefix_sizes[length_of]
        reaches = np.full(len(keyed), -1, dtype=np.int64)
        reaches[inside] = table[bases[length_of[inside]] + positions[inside]]
        posted = reaches >= 1  # as in `_post`: an entry no query could use is left out
        keys, texts, reaches = keys[posted], texts[posted], reaches[posted]
        text_lengths = lengths[texts]
        by_key = np.lexsort((texts, text_lengths, keys))  # each posting in length order
        keys = keys[by_key]
        all_lengths = array("i")
        all_lengths.frombytes(text_lengths[by_key].astype(np.intc).tobytes())
        all_entries = array("q")
        all_entries.frombytes((reaches[by_key] << 32 | texts[by_key]).tobytes())
        starts = np.flatnonzero(np.diff(keys, prepend=-1))  # ranks are at least 0
        ends = [*starts[1:].tolist(), len(keys)] if len(keys) else []
        self._postings = {key: (all_lengths[first:last], all_entries[first:last])
                          for key, first, last in zip(keys[starts].tolist(), starts.tolist(), ends, strict=True)}
        self._rebuild_at = 2 * size


def _shingle_hashes(tokens: list[str]) -> bytes:
    """SHA-1's first 4 bytes (datasketch's sha1_hash32) of each consecutive token pair: character bigrams
    for Chinese, word bigrams for English; a single token is its own shingle."""
    encoded = [token.encode() for token in tokens]
    if len(encoded) > 1:
        encoded = [left + b" " + right for left, right in zip(encoded, encoded[1:], strict=False)]
    return b"".join([sha1(shingle).digest()[:4] for shingle in encoded])


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, datasketch's pre-mix for its default "affine32" scheme."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


class MinHashIndex:
    """Approximate near-duplicates by estimated Jaccard of token-bigram shingles, with LSH banding.

    For corpora of millions where exact all-pairs ROUGE-L is too slow; it can miss a pair or report one
    slightly under the threshold. Texts without tokens are never duplicates, as under ROUGE-L.
    Signatures and bands are bit-identical to datasketch's MinHash ("affine32", seed 1) in a MinHashLSH
    with the same threshold, but a signature is one numpy pass over the shingle hashes, it is computed
    once for `find_duplicate` and the `add` of the same text that follows, and the signatures live in one
    uint32 matrix rather than a LeanMinHash object per text.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        from datasketch import MinHash, MinHashLSH

        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"MinHash threshold must be at least 0 and below 1, got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self._a, self._b = MinHash(num_perm=num_perm, scheme="affine32").permutations
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # datasketch picks the bands
        self._bands = [slice(band * lsh.r, (band + 1) * lsh.r) for band in range(lsh.b)]
        self._tables: list[dict[bytes, list[int]]] = [{} for _ in self._bands]
        self._signatures = np.empty((_FIRST_REBUILD, num_perm), dtype=np.uint32)
        self._texts: list[str] = []
        self._last: tuple[str, np.ndarray | None] | None = None  # the latest query, for the add that follows

    def __len__(self) -> int:
        return len(self._texts)

    def signature(self, text: str) -> np.ndarray | None:
        """The MinHash of the text's shingles (None without tokens): min over shingles of a*fmix(h)+b."""
        last = self._last
        if last is not None and last[0] == text:
            return last[1]
        hashes = _shingle_hashes(tokenize(text))
        if not hashes:
            return None
        mixed = _fmix32(np.frombuffer(hashes, dtype="<u4").astype(np.uint32))
        return (mixed[:, None] * self._a + self._b).min(axis=0)

    def add(self, text: str) -> None:
        signature = self.signature(text)
        if signature is None:
            return
        index = len(self._texts)
        if index == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[index] = signature
        self._texts.append(text)
        for band, table in zip(self._bands, self._tables, strict=True):
            key = signature[band].tobytes()
            bucket = table.get(key)
            if bucket is None:
                table[key] = [index]
            else:
                bucket.append(index)

    def find_duplicate(self, text: str) -> Match | None:
        """The most similar text sharing a band, when its estimated Jaccard is above the threshold."""
        signature = self.signature(text)
        self._last = (text, signature)
        if signature is None:
            return None
        found = [bucket for band, table in zip(self._bands, self._tables, strict=True)
                 if (bucket := table.get(signature[band].tobytes())) is not None]
        if not found:
            return None
        candidates = np.unique(np.fromiter(chain.from_iterable(found), dtype=np.intp))
        matches = np.count_nonzero(self._signatures[candidates] == signature, axis=1)
        best = int(np.argmax(matches))  # the earliest added on a tie
        score = float(matches[best]) / float(self.num_perm)
        return (score, self._texts[candidates[best]]) if score > self.threshold else None


def normalize(text: str) -> str:
    """Case folded, whitespace runs collapsed to one space and trimmed."""
    return " ".join(text.casefold().split())


class ExactIndex:
    """Repeats of the same text once case and whitespace are folded."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._first)

    def add(self, text: str) -> None:
        self._first.setdefault(normalize(text), text)

    def find_duplicate(self, text: str) -> Match | None:
        first = self._first.get(normalize(text))
        return None if first is None else (1.0, first)


class Index(Protocol):
    def add(self, text: str) -> None: ...

    def find_duplicate(self, text: str) -> Match | None: ...


METHODS = ("rouge-l", "minhash", "exact")
DEFAULT_THRESHOLDS = {"rouge-l": 0.7, "minhash": 0.8}


@dataclass(frozen=True)
class DedupOptions:
    """What counts as a duplicate. `threshold` None means the method's default (0.7 F, 0.8 Jaccard)."""

    method: str = "rouge-l"
    threshold: float | None = None
    field: str = "instruction"
    num_perm: int = 128

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown dedup method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.threshold is not None:
            if self.method == "exact":
                raise UserError("--threshold does not apply to --method exact (it drops repeated text)")
            below_one = self.method == "minhash"  # datasketch's LSH cannot be tuned for Jaccard 1
            if not 0.0 <= self.threshold <= 1.0 or (below_one and self.threshold == 1.0):
                bound = "at least 0 and below 1" if below_one else "between 0 and 1"
                raise UserError(f"--threshold for {self.method} must be {bound}, got {self.threshold}")
        if self.num_perm < 16:
            raise UserError(f"num_perm must be at least 16, got {self.num_perm}")

    @property
    def cutoff(self) -> float | None:
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS.get(self.method)

    def make_index(self) -> Index:
        if self.method == "rouge-l":
            return RougeIndex(self.cutoff)
        if self.method == "minhash":
            return MinHashIndex(self.cutoff, self.num_perm)
        return ExactIndex()


def record_text(record: Record, field: str = "instruction", where: str = "record") -> str:
    """What a record is compared on: `field` for Alpaca-style records, the first user turn for chats."""
    if "conversations" in record or "messages" in record:
        return first_user_turn(record, where)
    if field not in record:
        raise InputError(where, f"record has no {field!r} field (and no 'conversations' or 'messages')")
    value = record[field]
    if not isinstance(value, str):
        raise InputError(where, f"{field!r} is {type(value).__name__}, expected a string")
    return value


def pool_texts(paths: Iterable[str | Path], field: str = "instruction") -> list[str]:
    """Texts of the `--against` files; seed tasks lacking `field` are compared on their `instruction`."""
    texts: list[str] = []
    for path in paths:
        before = len(texts)
        for where, record in iter_located(path):
            texts.append(record_text(record, field if field in record else "instruction", where))
        if len(texts) == before:
            raise InputError(path, "holds no records")
    return texts


@dataclass(frozen=True)
class Duplicate:
    record: Record
    where: str
    most_similar: str
    score: float
    reason: str = "near_duplicate"

    @property
    def detail(self) -> dict[str, Any]:
        """Where the record was, its score and the text it duplicates: the rejection's `detail`."""
        return {"where": self.where, "score": self.score, "most_similar": self.most_similar}


def _dedup_located(
    located: Iterable[tuple[str, Record]],
    pool: Iterable[str],
    options: DedupOptions,
    on_reject: Callable[[Duplicate], None] | None,
    index: Index | None = None,
) -> Iterator[Record]:
    index = index if index is not None else options.make_index()
    for text in pool:
        index.add(text)
    for where, record in located:
        text = record_text(record, options.field, where)
        match = index.find_duplicate(text)
        if match is None:
            index.add(text)
            yield record
        elif on_reject is not None:
            reason = "duplicate" if options.method == "exact" else "near_duplicate"
            on_reject(Duplicate(record, where, match[1], match[0], reason))


def dedup_records(
    records: Iterable[Record],
    pool: Iterable[str] = (),
    options: DedupOptions | None = None,
    on_reject: Callable[[Duplicate], None] | None = None,
    index: Index | None = None,
) -> Iterator[Record]:
    """Kept records in input order; each candidate is compared with the pool and with those kept before it.
    `index`: an empty one of the method's kind made elsewhere (the Ray executor's, signed by shard)."""
    located = ((f"record {number}", record) for number, record in enumerate(records, start=1))
    yield from _dedup_located(located, pool, options or DedupOptions(), on_reject, index)


@dataclass(frozen=True)
class DedupSummary:
    seen: int
    kept: int
    pool: int
    seconds: float

    @property
    def dropped(self) -> int:
        return self.seen - self.kept


def dedup_file(
    input_path: str | Path,
    output_path: str | Path,
    options: DedupOptions | None = None,
    against: Sequence[str | Path] = (),
    rejected_path: str | Path | None = None,
) -> DedupSummary:
    """Stream INPUT to OUTPUT keeping non-duplicates; OUTPUT, its rejections (OUTPUT.rejected.jsonl unless
    `rejected_path`) and its summary appear only if the whole run succeeds."""
    from distillery.convert import RejectFile

    options = options or DedupOptions()
    if rejected_path is not None and Path(rejected_path).resolve() == Path(output_path).resolve():
        raise UserError(f"--rejected {rejected_path} is the same file as the output")
    start = time.perf_counter()
    pool = pool_texts(against, options.field)
    stats = StageStats("dedup")

    def counted() -> Iterator[tuple[str, Record]]:
        for item in iter_located(input_path):
            stats.seen += 1
            yield item

    def reject(duplicate: Duplicate) -> None:
        stats.dropped[duplicate.reason] += 1
        rejects.write(rejection("dedup", duplicate.reason, duplicate.record, duplicate.detail))

    # on any error the writers remove their temporary files: no partial output
    with RejectFile.beside(Path(output_path), Path(rejected_path) if rejected_path else None) as rejects, \
            open_writer(output_path) as writer:
        writer.write_all(_dedup_located(counted(), pool, options, reject))
        if not stats.seen:
            raise InputError(input_path, "holds no records")
    stats.kept, stats.seconds = writer.count, time.perf_counter() - start
    write_summary(output_path, [stats], {
        "command": "dedup", "input": str(input_path), "output": str(output_path), "method": options.method,
        "threshold": options.cutoff, "field": options.field, "pool": len(pool),
        "rejected": str(rejects.path) if rejects.count else None})
    return DedupSummary(seen=stats.seen, kept=stats.kept, pool=len(pool), seconds=stats.seconds)
