from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
from conftest import ANCHORS, run_cli
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from distillery import dedup
from distillery.cli import app
from distillery.dedup import (
    DedupOptions,
    ExactIndex,
    MinHashIndex,
    RougeIndex,
    dedup_file,
    dedup_records,
    pool_texts,
    record_text,
    rouge_l,
    tokenize,
)
from distillery.errors import InputError, UserError
from distillery.summary import Summary

SEEDS = ANCHORS / "alpaca_seed_tasks.jsonl"
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def instructions(name: str) -> list[str]:
    path = ANCHORS / name
    text = path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()] if text[0] == "{" else json.loads(text)
    return [record["instruction"] for record in records]


def reference_score(candidate: str, kept: str) -> float:
    """Alpaca's call: rouge_score's _score_lcs(target=new instruction, prediction=kept instruction)."""
    tokenizer = SCORER._tokenizer
    return rouge_scorer._score_lcs(tokenizer.tokenize(candidate), tokenizer.tokenize(kept)).fmeasure


def lcs_score(candidate: str, kept: str) -> float:
    """rouge_score's LCS and F on distillery's tokens, which include CJK ideographs."""
    return rouge_scorer._score_lcs(tokenize(candidate), tokenize(kept)).fmeasure


def alpaca_kept(candidates: list[str], seeds: list[str], threshold: float = 0.7) -> list[int]:
    """The decision loop of Alpaca's generate_instruction.py, with rouge_score doing the scoring."""
    tokenizer = SCORER._tokenizer
    pool = [tokenizer.tokenize(seed) for seed in seeds]
    kept = []
    for number, text in enumerate(candidates):
        tokens = tokenizer.tokenize(text)
        if max((rouge_scorer._score_lcs(tokens, other).fmeasure for other in pool), default=0.0) > threshold:
            continue
        kept.append(number)
        pool.append(tokens)
    return kept


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(words))
        action = rng.randrange(3)
        if action == 0 and len(words) > 1:
            del words[at]
        elif action == 1:
            words.insert(at, rng.choice(["please", "briefly", "now", "the"]))
        else:
            words[at] = rng.choice(["story", "list", "poem", "summary"])
    return " ".join(words)


@pytest.mark.anchors
def test_tokenize_is_rouge_score_tokenizer_on_english_and_adds_one_token_per_ideograph():
    texts = instructions("llamafactory_alpaca_en_demo.json") + instructions("gpteacher_roleplay.json")[:500]
    texts += ["İstanbul KELVIN ×2 naïve café_au-lait 3.14", ""]
    for text in texts:
        assert tokenize(text) == SCORER._tokenizer.tokenize(text)
    assert tokenize("用Python写一个函数, 计算GPT-4的价格㐀豈") == [
        "用", "python", "写", "一", "个", "函", "数", "计", "算", "gpt", "4", "的", "价", "格", "㐀", "豈"]
    assert SCORER._tokenizer.tokenize("写一个函数") == []


@pytest.mark.anchors
def test_rouge_l_is_bit_identical_to_rouge_score_on_real_pairs():
    texts = instructions("alpaca_seed_tasks.jsonl") + instructions("llamafactory_alpaca_en_demo.json")[:250]
    rng = random.Random(3)
    pairs = [(a, b) for a in texts for b in rng.sample(texts, 8)]
    pairs += [(a, perturb(a, rng)) for a in texts]
    for candidate, kept in pairs:
        assert rouge_l(tokenize(candidate), tokenize(kept)) == reference_score(candidate, kept)
        assert rouge_l(tokenize(candidate), tokenize(kept)) == SCORER.score(candidate, kept)["rougeL"].fmeasure
    assert rouge_l([], ["a"]) == 0.0


@pytest.mark.anchors
def test_kept_set_equals_alpaca_loop_on_real_english_workload():
    seeds = instructions("alpaca_seed_tasks.jsonl")
    rng = random.Random(11)
    originals = instructions("llamafactory_alpaca_en_demo.json")[:200] + instructions("gpteacher_roleplay.json")[:60]
    candidates = originals + [perturb(rng.choice(originals + seeds), rng) for _ in range(90)]
    rng.shuffle(candidates)
    reference = alpaca_kept(candidates, seeds)
    records = [{"instruction": text, "id": number} for number, text in enumerate(candidates)]
    kept = [record["id"] for record in dedup_records(records, seeds)]
    assert kept == reference
    assert 60 < len(candidates) - len(kept) < 200  # the workload really exercises both decisions


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.8, 1.0])
def test_index_pruning_never_changes_a_score_or_decision(threshold):
    """Random texts over a tiny vocabulary pile up scores near every threshold, ties included."""
    rng = random.Random(int(threshold * 10))
    vocabulary = ["a", "b", "c", "d", "e", "f", "g", "h", "水", "火"]

    def text() -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 10, 13, 20])))

    index, added = RougeIndex(threshold), []
    for _ in range(260):  # past several re-indexings (32, 64, 128, 256)
        query = text() + rng.choice(["", " zz", " 雪"])  # tokens no added text has
        scores = [lcs_score(query, other) for other in added]
        best = max(scores, default=0.0)
        best_text = added[scores.index(best)] if added else None
        assert index.query(query) == (best, best_text)
        expected = (best, best_text) if best > threshold else None
        assert index.find_duplicate(query) == expected
        if expected is None or rng.random() < 0.3:
            index.add(query)
            added.append(query)
    assert len(index) == len(added)


def test_count_sketch_is_the_bucket_counts_saturated_at_uint16():
    """The sketch must never under-count a bucket below min(count, 65535), and its bit planes must mark
    exactly the buckets counting more than k: the sketch filter's bound rests on both. Reference: numpy's
    bincount of the codes modulo the width."""
    rng = random.Random(5)
    cases = [[], [7], [rng.randrange(1, 5000) for _ in range(300)], [3] * 70_000 + [64 * 9 + 4] * 5]
    for codes in cases:
        expected = np.minimum(np.bincount(np.asarray(codes, dtype=np.int64) % dedup._BUCKETS,
                                          minlength=dedup._BUCKETS), 65535)
        sketch, planes = dedup._sketch(codes)
        assert sketch.dtype == np.uint16
        assert sketch.tolist() == expected.tolist()
        counts = np.bincount(np.asarray(codes, dtype=np.int64) % dedup._BUCKETS, minlength=dedup._BUCKETS)
        for k in range(dedup._PLANES + 1):
            assert planes[k] == sum(1 << bucket for bucket, count in enumerate(counts) if count > k)


def bounded_pairs(index: RougeIndex, query: str, texts: list[str]) -> list[int]:
    """The filters' contract pair by pair, with no postings: the texts sharing an element within both
    pair-sized prefixes (alpha = least overlap for F above the threshold) whose count sketch passes."""
    slack = index.threshold - dedup._MARGIN
    codes = [index._vocab.get(token, dedup._UNKNOWN) for token in tokenize(query)]
    n, prefix = len(codes), index._prefix(dedup._elements(codes))
    sketch = dedup._sketch([code for code in codes if code != dedup._UNKNOWN])[0].astype(int)
    passed = []
    for number, text in enumerate(texts):
        other = [index._vocab[token] for token in tokenize(text)]
        m = len(other)
        alpha = max(math.floor(slack * (m + n) / 2) + 1, 1)
        where = {element: j for j, element in enumerate(index._prefix(dedup._elements(other)))}
        if not any(element in where and i <= n - alpha and where[element] <= m - alpha
                   for i, element in enumerate(prefix)):
            continue
        overlap = np.minimum(dedup._sketch(other)[0].astype(int), sketch).sum()
        if 2 * overlap > slack * (m + n) or m > 65535:
            passed.append(number)
    return passed


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_candidate_gathering_matches_the_pairwise_bounds_and_misses_no_duplicate(threshold):
    """Random and adversarial texts: repeats of one token, very unequal lengths, unknown tokens, Chinese."""
    rng = random.Random(100 + int(threshold * 10))
    vocabulary = ["a", "b", "c", "d", "e", "f", "水", "火"]

    def text() -> str:
        kind = rng.randrange(5)
        if kind == 0:
            return " ".join([rng.choice(vocabulary)] * rng.randint(1, 40))
        if kind == 1:
            return " ".join(rng.choice(vocabulary[:3]) for _ in range(rng.choice([1, 2, 60, 150])))
        words = [rng.choice(vocabulary) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 34]))]
        return " ".join(words) + rng.choice(["", " zz", " 雪 zz zz"])

    index, added = RougeIndex(threshold), []
    for _ in range(300):  # past several re-indexings (32, 64, 128, 256)
        query = text()
        candidates = list(index.candidates(query))
        assert candidates == bounded_pairs(index, query, added)
        above = [number for number, other in enumerate(added) if lcs_score(query, other) > threshold]
        assert set(above) <= set(candidates)
        if rng.random() < 0.6:
            index.add(query)
            added.append(query)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_length_sorted_postings_keep_every_partner_at_the_length_bounds(threshold):
    """Texts that are prefixes of one another (LCS = the shorter length) at every length from 1 to 80:
    each pair with F above the threshold, the shortest and longest partners the length run allows
    included, is a candidate both ways, whether the entry was posted at a re-index or inserted after."""
    words = [f"w{number}" for number in range(80)]
    index = RougeIndex(threshold)
    order = list(range(80, 0, -1))  # long ones first: after the re-index at 64, short ones are inserted
    for length in order:
        index.add(" ".join(words[:length]))
    for length in order:
        query = " ".join(words[:length])
        candidates = set(index.candidates(query).tolist())
        partners = {number for number, other in enumerate(order)
                    if 2 * min(length, other) / (length + other) > threshold}
        assert partners <= candidates, (length, sorted(partners - candidates))


@pytest.mark.anchors
@pytest.mark.parametrize("method", ["rouge-l", "minhash"])
def test_each_text_is_tokenized_and_hashed_once(monkeypatch, method):
    """find_duplicate and the add of the same text that follows share one tokenization and signature."""
    calls = []

    def counted(text: str) -> list[str]:
        calls.append(text)
        return tokenize(text)

    monkeypatch.setattr(dedup, "tokenize", counted)
    seeds = instructions("alpaca_seed_tasks.jsonl")[:40]
    texts = instructions("llamafactory_alpaca_en_demo.json")[:80] + instructions("belle_zh_seed_tasks.json")[:40]
    texts += [text.upper() for text in texts[:30]]  # duplicates, dropped without an add
    kept = list(dedup_records(({"instruction": text} for text in texts), seeds, DedupOptions(method=method)))
    assert 100 <= len(kept) < len(texts)
    assert len(calls) == len(seeds) + len(texts)


@pytest.mark.anchors
def test_minhash_signatures_and_decisions_are_datasketchs():
    """Bit-identical to datasketch's MinHash (default scheme, shared permutations) in a MinHashLSH."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    texts = instructions("llamafactory_alpaca_en_demo.json")[:300] + instructions("belle_zh_seed_tasks.json")
    rng = random.Random(4)
    texts += [perturb(rng.choice(texts[:300]), rng) for _ in range(150)] + ["one", "", "写"]
    texts += [text.upper() + "!" for text in texts[:40]]
    rng.shuffle(texts)
    template = MinHash(num_perm=64)
    for threshold in (0.5, 0.8):
        index, lsh = MinHashIndex(threshold, num_perm=64), MinHashLSH(threshold, 64)
        signatures, kept, reference = [], [], []
        for text in texts:
            tokens = tokenize(text)
            pairs = zip(tokens, tokens[1:], strict=False)
            shingles = [f"{a} {b}".encode() for a, b in pairs] if len(tokens) > 1 else [t.encode() for t in tokens]
            expected = MinHash(64, permutations=template.permutations, scheme=template.scheme)
            expected.update_batch(shingles)
            signature = index.signature(text)
            assert (signature is None) == (not shingles)
            if not shingles:
                reference.append(None)
                continue
            assert np.array_equal(signature, expected.hashvalues)
            scores = [(-expected.jaccard(signatures[key]), key) for key in lsh.query(expected)]
            best = min(scores, default=(0.0, -1))
            reference.append((-best[0], kept[best[1]]) if -best[0] > threshold else None)
            if reference[-1] is None:
                lsh.insert(len(signatures), LeanMinHash(expected))
                signatures.append(expected)
                kept.append(text)
        decisions = []
        for text in texts:
            decisions.append(index.find_duplicate(text))
            if decisions[-1] is None:
                index.add(text)
        assert decisions == reference
        assert sum(decision is not None for decision in decisions) > 40


def test_query_reports_the_best_score_and_the_earliest_text_on_ties():
    index = RougeIndex()
    for text in ["cook rice", "write a short poem", "write a long poem"]:
        index.add(text)
    tie = reference_score("write a poem", "write a short poem")
    assert tie == reference_score("write a poem", "write a long poem") > 0.0
    assert index.query("write a poem") == (tie, "write a short poem")
    assert list(index.scores("cook rice")) == [1.0, 0.0, 0.0]
    assert RougeIndex().query("anything") == (0.0, None)
    with pytest.raises(ValueError):
        RougeIndex(1.5)


def test_most_similar_orders_by_score_then_insertion():
    index = RougeIndex()
    for text in ["write a poem", "write a short poem", "write a poem", "cook rice", "write code"]:
        index.add(text)
    top = index.most_similar("write a poem", k=3)
    assert top == [("write a poem", 1.0), ("write a poem", 1.0), ("write a short poem", reference_score(
        "write a poem", "write a short poem"))]
    assert [text for text, _ in index.most_similar("write a poem", k=10)][-1] == "cook rice"
    assert RougeIndex().most_similar("anything") == []


def chinese_variants(text: str, rng: random.Random) -> list[str]:
    positions = [i for i, ch in enumerate(text) if "\u4e00" <= ch <= "\u9fff"]
    one, two = sorted(rng.sample(positions, 2))
    changed = text[:one] + "很" + text[one + 1:]
    changed_two = "".join("好" if i in (one, two) else ch for i, ch in enumerate(text))
    removed = text[:one] + text[one + 1:]
    removed_two = "".join(ch for i, ch in enumerate(text) if i not in (one, two))
    added = text[:one] + "的" + text[one:]
    added_two = text[:one] + "请" + text[one:two] + "再" + text[two:]
    return [changed, changed_two, removed, removed_two, added, added_two]


@pytest.mark.anchors
def test_chinese_near_duplicates_are_dropped_and_distinct_instructions_kept():
    seeds = instructions("belle_zh_seed_tasks.json")
    assert len(list(dedup_records({"instruction": text} for text in seeds))) == len(seeds)  # all distinct
    rng = random.Random(5)
    long_enough = [text for text in seeds if len(tokenize(text)) >= 10]
    variants = [variant for text in long_enough for variant in chinese_variants(text, rng)]
    assert len(variants) > 900
    assert list(dedup_records(({"instruction": text} for text in variants), seeds)) == []
    # Alpaca's tokenizer sees no tokens in Chinese, so every score is 0 and it keeps every variant.
    assert all(reference_score(variant, text) == 0.0 for variant, text in zip(variants[:60], long_enough, strict=False))


@pytest.mark.anchors
def test_minhash_catches_near_copies_and_keeps_distinct_text():
    seeds = instructions("belle_zh_seed_tasks.json") + instructions("alpaca_seed_tasks.jsonl")
    index = MinHashIndex(threshold=0.8)
    for text in seeds:
        index.add(text)
    english = "Generate a list of five creative names for a new coffee shop near the university campus."
    chinese = "请根据下面的描述，为一家位于大学校园附近的新咖啡店想出五个有创意的名字，并说明理由。"
    index.add(english)
    index.add(chinese)
    assert index.find_duplicate(english.upper() + "!") == (1.0, english)
    score, match = index.find_duplicate(chinese.replace("理由", "原因"))
    assert match == chinese and score > 0.8
    assert index.find_duplicate("Explain how photosynthesis works in plants.") is None
    assert index.find_duplicate("") is None
    options = DedupOptions(method="minhash")
    kept = list(dedup_records([{"instruction": english}, {"instruction": english + " "}], options=options))
    assert kept == [{"instruction": english}]


def test_exact_index_folds_case_and_whitespace_only():
    index = ExactIndex()
    index.add("Write a  Poem\n about the sea.")
    assert index.find_duplicate("write a poem about the SEA.") == (1.0, "Write a  Poem\n about the sea.")
    assert index.find_duplicate("Write a poem about the sea!") is None
    assert len(index) == 1


@pytest.mark.anchors
def test_record_text_reads_each_layout_and_locates_errors():
    assert record_text({"instruction": "a", "input": "b"}, "input") == "b"
    assert record_text({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "hi"}]}) == "hi"
    assert record_text({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}) == "q"
    with pytest.raises(InputError, match=r"data.jsonl:3: record has no 'prompt' field"):
        record_text({"instruction": "a"}, "prompt", "data.jsonl:3")
    with pytest.raises(InputError, match="'instruction' is NoneType"):
        record_text({"instruction": None})
    assert pool_texts([SEEDS], "question")[:1] == [instructions("alpaca_seed_tasks.jsonl")[0]]


@pytest.mark.parametrize("options", [
    {"method": "fuzzy"}, {"threshold": 1.2}, {"threshold": -0.1}, {"method": "minhash", "threshold": 1.0},
    {"method": "exact", "threshold": 0.5},
])
def test_bad_options_are_user_errors(options):
    with pytest.raises(UserError):
        DedupOptions(**options)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


RECORDS = [
    {"instruction": "Write a poem about the sea.", "input": "", "output": "Waves...", "id": 1},
    {"instruction": "Write a poem about the sea!", "input": "", "output": "Tides...", "id": 2},
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat", "id": 3},
    {"instruction": "把这段话翻译成英文。", "input": "你好", "output": "Hello", "id": 4},
    {"instruction": "把这段话翻译成英语。", "input": "再见", "output": "Bye", "id": 5},
    {"instruction": "Summarize the following article in one sentence.", "input": "...", "output": "x", "id": 6},
]


@pytest.mark.anchors
def test_cli_keeps_records_unchanged_in_order_and_writes_rejected(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out, rejected = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    done = run_cli("dedup", str(source), "-o", str(out), "--rejected", str(rejected), "--against", str(SEEDS))
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert kept == [RECORDS[0], RECORDS[2], RECORDS[3], RECORDS[5]]
    dropped = [json.loads(line) for line in rejected.read_text(encoding="utf-8").splitlines()]
    assert [row["record"] for row in dropped] == [RECORDS[1], RECORDS[4]]
    assert dropped[0]["detail"]["most_similar"] == RECORDS[0]["instruction"] and dropped[0]["detail"]["score"] == 1.0
    assert dropped[1]["detail"]["where"] == f"{source}:5" and dropped[1]["detail"]["score"] == pytest.approx(8 / 9)
    summary = Summary.read(f"{out}.summary.json")
    assert [(s.stage, s.seen, s.kept, dict(s.dropped)) for s in summary.stages] == [
        ("dedup", 6, 4, {"near_duplicate": 2})]
    assert summary.meta["pool"] == 175 and summary.meta["rejected"] == str(rejected)
    assert {(row["stage"], row["reason"]) for row in dropped} == {("dedup", "near_duplicate")}
    assert "kept" in done.stdout and "dropped (rouge-l > 0.7)" in done.stdout and "175" in done.stdout


@pytest.mark.anchors
def test_cli_pool_drops_a_reworded_seed_and_threshold_is_strict(tmp_path):
    seed = instructions("alpaca_seed_tasks.jsonl")[0]
    source = write_jsonl(tmp_path / "in.jsonl", [{"instruction": perturb(seed, random.Random(1))}])
    score = reference_score(perturb(seed, random.Random(1)), seed)
    out = tmp_path / "out.jsonl"
    assert run_cli("dedup", str(source), "-o", str(out), "--against", str(SEEDS)).returncode == 0
    assert out.read_text() == ""
    done = run_cli("dedup", str(source), "-o", str(out), "--against", str(SEEDS), "--threshold", repr(score))
    assert done.returncode == 0 and len(out.read_text().splitlines()) == 1  # F equal to the threshold is kept


def test_cli_output_layout_follows_output_extension(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert run_cli("dedup", str(source), "-o", str(tmp_path / "out.json")).returncode == 0
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))[1] == RECORDS[2]
    listed = tmp_path / "in.json"
    listed.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    assert run_cli("dedup", str(listed), "-o", str(tmp_path / "again.json"), "--method", "exact").returncode == 0
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8")) == RECORDS


def test_cli_compares_first_user_turn_of_sharegpt_and_openai(tmp_path):
    chats = [
        {"conversations": [{"from": "human", "value": "What is the capital of France?"},
                           {"from": "gpt", "value": "Paris"}]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "what is the capital of france"}]},
        {"conversations": [{"from": "human", "value": "Name a prime number."}, {"from": "gpt", "value": "7"}]},
    ]
    source = write_jsonl(tmp_path / "chats.jsonl", chats)
    out = tmp_path / "out.jsonl"
    assert run_cli("dedup", str(source), "-o", str(out), "--field", "output").returncode == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [chats[0], chats[2]]


def test_cli_field_option_compares_another_field(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out.jsonl"
    assert run_cli("dedup", str(source), "-o", str(out), "--field", "output").returncode == 0
    assert len(out.read_text().splitlines()) == len(RECORDS)  # every output differs


BAD_INPUTS = {
    "invalid JSON": ('{"instruction": "a"}\n{"instruction": \n', r"in.jsonl:2: invalid JSON"),
    "missing field": ('{"instruction": "a"}\n{"instruction": "b"}\n{"input": "c"}\n',
                      r"in.jsonl:3: record has no 'instruction' field"),
    "wrong type": ('[{"instruction": "a"}, {"instruction": 7}]', r"in.jsonl \(record 2\): 'instruction' is int"),
    "empty file": ("", r"in.jsonl: file is empty"),
    "empty list": ("[]", r"in.jsonl: holds no records"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path, case):
    content, message = BAD_INPUTS[case]
    source = tmp_path / "in.jsonl"
    source.write_text(content, encoding="utf-8")
    out, rejected = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    out.write_text("previous run\n")
    done = run_cli("dedup", str(source), "-o", str(out), "--rejected", str(rejected))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert out.read_text() == "previous run\n" and not rejected.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temp files left


def test_cli_bad_paths_exit_2_without_output(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out.jsonl"
    for args, message in [
        ((str(tmp_path), "-o", str(out)), "is a directory"),
        ((str(source), "-o", str(out), "--against", str(tmp_path / "missing.jsonl")), "missing.jsonl: no such file"),
    ]:
        done = run_cli("dedup", *args)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--threshold", "7"], "must be between 0 and 1"),
    (["--method", "semantic"], "unknown dedup method 'semantic'"),
    (["--method", "exact", "--threshold", "0.9"], "does not apply to --method exact"),
    (["-o", "out.txt"], "unsupported extension"),
    (["--rejected", "out.jsonl"], "same file as the output"),
])
def test_cli_bad_options_are_user_errors(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", RECORDS)
    result = CliRunner().invoke(app, ["dedup", "in.jsonl", "-o", "out.jsonl", *flags])
    assert isinstance(result.exception, UserError) and message in str(result.exception)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.anchors
def test_dedup_file_returns_counts(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    summary = dedup_file(source, tmp_path / "out.parquet", DedupOptions(), against=[SEEDS])
    assert (summary.seen, summary.kept, summary.dropped, summary.pool) == (6, 4, 2, 175)
