"""`distillery clean`: the hand-made raw sample end to end, the FastChat anchors, bad input, and each stage."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ANCHORS, run_cli
from tiny_tokenizer import build_tiny_tokenizer
from typer.testing import CliRunner

from distillery.clean import (
    GPT,
    HUMAN,
    NEUTRALIZER,
    CleanOptions,
    Content,
    Dedup,
    Language,
    Neutralize,
    Piece,
    Split,
    Splitter,
    Structure,
    add_language,
    clean,
    normalize_record,
    parse_block,
    restarted_numbering,
)
from distillery.cli import app
from distillery.errors import UserError
from distillery.html2md import clean_turn
from distillery.summary import Summary
from distillery.tokens import TokenCounter, load_tokenizer

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sharegpt_raw.json"
TAG = re.compile(r"</?(?:div|p|span|pre|code|ol|ul|li|table|thead|tbody|tr|td|th|button|svg|path|h\d|em|strong)\b")
FENCED = re.compile(r"^(`{3,})([^\n]*)\n.*?^\1$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]+`")


def read_any(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def conv(cid, *turns, **extra):
    return {"id": cid, "conversations": [{"from": role, "value": value} for role, value in turns], **extra}


def source_id(piece_id: str, input_ids: set[str]) -> str:
    if piece_id in input_ids:
        return piece_id
    base, _, k = piece_id.rpartition("_")
    assert k.isdigit() and base in input_ids, piece_id
    return base


def fits(record: dict, max_tokens: int, counter: TokenCounter, per_turn: int = 6) -> bool:
    system = record.get("system")
    total = counter.count(system) + per_turn if system else 0
    return total + sum(counter.count(t["value"]) + per_turn for t in record["conversations"]) <= max_tokens


# --- the raw sample through the real CLI, two worker processes, small chunks --------------------------

@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "clean.jsonl"
    done = run_cli("clean", str(SAMPLE), "-o", str(out), "--workers", "2", "--chunk-size", "4",
                   "--skip-lang", "ko", "--max-tokens", "1024", timeout=300)
    assert done.returncode == 0, done.stderr
    rejected = read_any(Path(f"{out}.rejected.jsonl"))
    summary = Summary.read(Path(f"{out}.summary.json")).as_dict()
    return {"stdout": done.stdout, "out": read_any(out), "rejected": rejected, "summary": summary}


def test_sample_output_has_no_markup_and_fenced_code_with_language(sample_run):
    fences = 0
    for record in sample_run["out"]:
        for turn in record["conversations"]:
            text = turn["value"]
            assert "Copy code" not in text
            assert not re.search(r"Copy\d+ chars|^\d+ / \d+", text)
            for block in FENCED.finditer(text):
                fences += 1
                assert block.group(2) in {"python", "sql", "bash", "javascript", "rust"}, block.group(0)
            prose = INLINE_CODE.sub("", FENCED.sub("", text))
            assert TAG.search(prose) is None, prose
            assert "```" not in prose
    assert fences >= 15


def test_sample_rounds_alternate_strictly(sample_run):
    for record in sample_run["out"]:
        roles = [t["from"] for t in record["conversations"]]
        assert len(roles) >= 2 and len(roles) % 2 == 0
        assert roles == [HUMAN, GPT] * (len(roles) // 2)
        assert all(t["value"].strip() for t in record["conversations"])


def test_sample_every_conversation_accounted_for_with_its_reason(sample_run):
    raw = json.loads(SAMPLE.read_text(encoding="utf-8"))
    input_ids = [r["id"] for r in raw]
    out_sources = [source_id(r["id"], set(input_ids)) for r in sample_run["out"]]
    reasons = {(r["record"]["id"], r["stage"], r["reason"]) for r in sample_run["rejected"]}
    assert reasons == {
        ("Rf5uA8k", "content", "refusal"),
        ("Mr4lQ8u", "content", "refusal"),
        ("Er1tM4q", "content", "error_page"),
        ("Rl2oB7j", "content", "restarted_numbering"),
        ("Sh0rT1x", "structure", "too_short"),
        ("Bd2xY5w", "structure", "no_full_round"),
        ("Ko2sN7e", "language", "language_skipped"),
        ("Ko9fH3d", "language", "language_skipped"),
        ("Wn2hD8f", "dedup", "duplicate_first_round"),
        ("Lm3dQ9z", "dedup", "duplicate_id"),
    }
    assert next(r for r in sample_run["rejected"] if r["record"]["id"] == "Wn2hD8f")["record"]["duplicate_of"] == \
        "q7XkP2a"
    accounted = set(out_sources) | {r["record"]["id"] for r in sample_run["rejected"]}
    assert accounted == set(input_ids)
    # output keeps input order, also across chunks finished by different workers
    assert out_sources == sorted(out_sources, key=input_ids.index)


def test_sample_long_conversation_split_into_fitting_pieces_losing_no_round(sample_run):
    raw = next(r for r in json.loads(SAMPLE.read_text(encoding="utf-8")) if r["id"] == "Lg9wE2z")
    pieces = [r for r in sample_run["out"] if r["id"].startswith("Lg9wE2z")]
    assert [p["id"] for p in pieces] == [f"Lg9wE2z_{k}" for k in range(len(pieces))]
    assert len(pieces) >= 3
    counter = TokenCounter()
    assert all(fits(record, 1024, counter) for record in sample_run["out"])
    joined = [t["value"] for p in pieces for t in p["conversations"]]
    assert joined == [clean_turn(t["value"]) for t in raw["conversations"]]  # the last round is there too


def test_sample_keeps_system_prompt_fields_and_adds_lang(sample_run):
    by_id = {r["id"]: r for r in sample_run["out"]}
    assert by_id["Ol5nM3c"]["system"] == "You are a patient math tutor for middle-school students."
    assert by_id["Us1rR5t"]["model"] == "gpt-3.5-turbo"
    assert {by_id[i]["lang"] for i in ("Zh4rT6y", "Zh8pK2m", "Zh3tB5n")} == {"zh"}
    assert by_id["q7XkP2a"]["lang"] == "en" and by_id["Es6mC9p"]["lang"] == "es"
    assert all("lang" in r for r in sample_run["out"]) and "ko" not in {r["lang"] for r in sample_run["out"]}


def test_sample_summary_counts_every_stage(sample_run):
    stages = {s["stage"]: s for s in sample_run["summary"]["stages"]}
    assert list(stages) == ["read", "markdown", "special_tokens", "structure", "content", "language", "dedup",
                            "split"]
    assert stages["read"]["in"] == 27 and stages["split"]["out"] == len(sample_run["out"])
    flow = list(stages.values())
    for before, after in zip(flow, flow[1:], strict=False):
        assert after["in"] == before["out"]
        if after["stage"] != "split":
            assert after["in"] - after["out"] == sum(after["dropped"].values())
    assert sum(sum(s["dropped"].values()) for s in flow) == len(sample_run["rejected"])
    assert sample_run["summary"]["command"] == "clean" and sample_run["summary"]["workers"] == 2
    assert "duplicate_first_round" in sample_run["stdout"] and "language_skipped" in sample_run["stdout"]


def test_parallel_run_equals_in_process_run(sample_run, tmp_path):
    out = tmp_path / "one.jsonl"
    clean(SAMPLE, out, CleanOptions(workers=1, skip_langs=("ko",), max_tokens=1024))
    assert read_any(out) == sample_run["out"]


def test_lang_keeps_only_the_listed_languages(tmp_path):
    out = tmp_path / "enzh.json"
    report = clean(SAMPLE, out, CleanOptions(workers=1, langs=("en", "zh")))
    kept = read_any(out)
    assert {r["lang"] for r in kept} == {"en", "zh"}
    dropped = {r["record"]["id"]: r["record"] for r in read_any(Path(report.rejected))
               if r["reason"] == "language_not_kept"}
    assert {"Ko2sN7e", "Ko9fH3d", "Es6mC9p"} <= set(dropped)
    assert all(r["lang"] not in ("en", "zh") for r in dropped.values())


# --- the FastChat anchor: already clean, so only duplicates go --------------------------------------------

@pytest.mark.anchors
def test_fastchat_dummy_conversations_come_through_unchanged(tmp_path):
    source = ANCHORS / "fastchat_dummy_conversation.json"
    original = json.loads(source.read_text(encoding="utf-8"))
    out = tmp_path / "dummy.json"
    report = clean(source, out, CleanOptions(workers=1, openai_filter=False))
    kept, rejected = read_any(out), read_any(Path(report.rejected))
    assert len(kept) == 334 and len(rejected) == 166
    assert {(r["stage"], r["reason"]) for r in rejected} == {("dedup", "duplicate_first_round")}
    by_id = {r["id"]: r for r in original}
    for record in kept:
        assert record["conversations"] == by_id[record["id"]]["conversations"]
        assert isinstance(record["lang"], str)
    assert [r["id"] for r in kept] == [r["id"] for r in original if r["id"] in {k["id"] for k in kept}]
    first_rounds = set()
    for record in kept:
        first = tuple(t["value"] for t in record["conversations"][:2])
        assert first not in first_rounds
        first_rounds.add(first)


@pytest.mark.anchors
def test_language_detection_can_be_left_out(tmp_path):
    out = tmp_path / "nolang.jsonl"
    report = clean(ANCHORS / "fastchat_dummy_conversation.json", out,
                   CleanOptions(detect_lang=False, openai_filter=False))
    kept = read_any(out)
    assert len(kept) == 334 and not any("lang" in r for r in kept)
    assert "language" not in [s["stage"] for s in report.stages]


# --- malformed input: one clear line, exit 2, nothing written ----------------------------------------------

GOOD = {"id": "z1", "conversations": [{"from": "human", "value": "请介绍一下长城的历史。"},
                                       {"from": "gpt", "value": "长城始建于春秋战国时期，秦朝统一后连接成万里长城。"}]}


@pytest.mark.parametrize(
    ("name", "content", "workers", "message"),
    [
        ("bad.json", '[\n  {"id": "a", "conversations": []},\n  {"id": "b", "conversations": [}\n]', "1",
         r"bad\.json:3: invalid JSON at byte \d+"),
        ("scalar.json", json.dumps([GOOD, 42]), "1", r"scalar\.json \(record 2\): expected a JSON object"),
        ("nokey.jsonl", json.dumps(GOOD) + "\n" + json.dumps({"id": "b", "text": "hi"}) + "\n", "1",
         r"nokey\.jsonl:2: missing 'conversations'"),
        ("inworker.json", json.dumps([GOOD, dict(GOOD, id="z2"), {"id": "c", "conversations": "oops"}]), "2",
         r"inworker\.json \(record 3\): 'conversations' is not a list"),
        ("badturn.json", json.dumps([{"id": "d", "conversations": [{"from": "human", "value": 7}]}]), "2",
         r"badturn\.json \(record 1\): turn 1 of 'conversations': 'value' is not a string"),
        ("badid.jsonl", json.dumps(GOOD) + "\n" + json.dumps(dict(GOOD, id=["z2"])) + "\n", "1",
         r"badid\.jsonl:2: 'id' is list, expected a string or a number"),
    ],
)
def test_malformed_input_fails_cleanly_without_output(tmp_path, name, content, workers, message):
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out.json"
    done = run_cli("clean", str(source), "-o", str(out), "--workers", workers, "--chunk-size", "1")
    assert done.returncode == 2, done.stderr
    assert re.search(message, " ".join(done.stderr.split())), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_failed_run_leaves_an_existing_output_untouched(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps([GOOD, {"id": "x"}]), encoding="utf-8")
    out = tmp_path / "out.json"
    out.write_text("previous", encoding="utf-8")
    with pytest.raises(UserError, match=r"\(record 2\): missing 'conversations'"):
        clean(source, out, CleanOptions(workers=1))
    assert out.read_text(encoding="utf-8") == "previous"
    assert not Path(f"{out}.rejected.jsonl").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--on-bad-roles", "skip"], "--on-bad-roles must be cut or drop"),
        (["--long-round", "keep"], "--long-round must be drop or truncate"),
        (["--lang", "en,xx"], "unknown language code 'xx'"),
        (["--near-dup", "1.5"], "--near-dup must be between 0 and 1"),
        (["--near-dup", "0.9", "--num-perm", "0"], "--num-perm must be at least 16"),
        (["--block", "no colon"], "expected human:PHRASE"),
        (["--block", "robot:hi"], "bad block rule"),
        (["--no-detect-lang", "--skip-lang", "ko"], "need language detection"),
    ],
)
def test_bad_options_are_user_errors(tmp_path, flags, message):
    result = CliRunner().invoke(app, ["clean", str(SAMPLE), "-o", str(tmp_path / "o.json"), *flags])
    assert isinstance(result.exception, UserError)
    assert message in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_rejected_file_cannot_be_the_output(tmp_path):
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(app, ["clean", str(SAMPLE), "-o", str(out), "--rejected", str(out)])
    assert isinstance(result.exception, UserError) and "same file as the output" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


# --- stages one by one ------------------------------------------------------------------------------------

def run_stage(stage, record):
    dropped = []
    stage.reject = lambda rec, name, reason: dropped.append(reason)
    kept = list(stage([record]))
    return (kept[0] if kept else None), (dropped[0] if dropped else None)


@pytest.mark.parametrize(
    ("roles", "mode", "kept_roles", "reason"),
    [
        (["gpt", "human", "gpt", "human"], "cut", ["human", "gpt"], None),
        (["human", "gpt", "human", "human", "gpt"], "cut", ["human", "gpt"], None),
        (["human", "gpt", "human", "human", "gpt"], "drop", None, "bad_roles"),
        (["human", "gpt", "gpt", "human", "gpt"], "cut", ["human", "gpt"], None),
        (["human", "human", "gpt"], "cut", None, "no_full_round"),
        (["human", "gpt", "human", "tool", "gpt"], "cut", ["human", "gpt"], None),
        (["human", "gpt", "human", "gpt"], "drop", ["human", "gpt", "human", "gpt"], None),
    ],
)
def test_structure_trims_cuts_or_drops(roles, mode, kept_roles, reason):
    record = conv("s", *[(role, f"turn number {i} with enough text") for i, role in enumerate(roles)])
    kept, why = run_stage(Structure(mode), record)
    assert why == reason
    if kept_roles is None:
        assert kept is None
    else:
        assert [t["from"] for t in kept["conversations"]] == kept_roles


def test_structure_cuts_at_first_empty_turn_and_drops_tiny_conversations():
    kept, _ = run_stage(Structure(), conv("e", (HUMAN, "What is 2+2? Explain."), (GPT, "It is 4."),
                                          (HUMAN, "Why?"), (GPT, "  "), (HUMAN, "hello?"), (GPT, "Sorry!")))
    assert [t["value"] for t in kept["conversations"]] == ["What is 2+2? Explain.", "It is 4."]
    assert run_stage(Structure(), conv("t", (HUMAN, "hi"), (GPT, "Hello!")))[1] == "too_short"
    assert run_stage(Structure(min_chars=4), conv("t", (HUMAN, "hi"), (GPT, "Hello!")))[1] is None


def test_roles_are_normalised_and_openai_messages_accepted():
    record = normalize_record({"id": "o", "source": "x", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"}]}, "f.jsonl:1", 1)
    assert record == {"id": "o", "source": "x", "conversations": [
        {"from": HUMAN, "value": "Hi there"}, {"from": GPT, "value": "Hello"}], "system": "Be brief."}
    sharegpt = normalize_record({"conversations": [
        {"from": "User", "value": "a"}, {"from": "ChatGPT", "value": "b"}, {"from": "user", "value": "c"},
        {"from": "bard", "value": "d"}, {"from": "human", "value": None}, {"from": "bing", "value": "f"}], "id": None},
        "w", 9)
    assert [t["from"] for t in sharegpt["conversations"]] == [HUMAN, GPT] * 3
    assert sharegpt["conversations"][4]["value"] == "" and sharegpt["id"] == "9"
    with pytest.raises(UserError, match="w: missing 'conversations'"):
        normalize_record({"instruction": "x", "output": "y"}, "w", 1)


def test_blocked_phrases_by_role_and_custom_blocks():
    content = Content()
    refusal = conv("r", (HUMAN, "Tell me a joke"), (GPT, "As an AI language model, I cannot tell jokes."))
    assert run_stage(content, refusal)[1] == "refusal"
    user_quotes = conv("q", (HUMAN, "Why do bots say 'As an AI language model'?"), (GPT, "It is a disclaimer."))
    assert run_stage(content, user_quotes)[1] is None
    error = conv("x", (HUMAN, "Too many requests in 1 hour. Try again later."), (GPT, "ok"))
    assert run_stage(content, error)[1] == "error_page"
    custom = Content([parse_block("human:Lorem Ipsum")], restarted_lists=False)
    assert run_stage(custom, conv("c", (HUMAN, "some lorem ipsum text"), (GPT, "x")))[1] == "blocked_phrase"
    assert run_stage(custom, refusal)[1] is None


def test_repeated_digits_only_when_asked():
    spam = conv("d", (HUMAN, "my number"), (GPT, "Call 0000000000 now"))
    assert run_stage(Content(), spam)[1] is None
    assert run_stage(Content(repeated_digits=True), spam)[1] == "repeated_digits"


@pytest.mark.parametrize(
    ("markdown", "restarted"),
    [
        ("1. Install\n\n```bash\npip x\n```\n\n1. Run it\n\n1. Done", True),
        ("Steps:\n1. a\n2. b\n\nMore:\n1. c\n2. d", False),
        ("1. a\n   1. a1\n2. b\n   1. b1", False),
        ("```\n1. not a list\n1. in code\n```\n1. real", False),
        ("- x\n  1. one\n  1. again", True),
    ],
)
def test_restarted_numbering(markdown, restarted):
    assert restarted_numbering(markdown) is restarted


def test_special_tokens_neutralized_including_the_tokenizers_own():
    stage = Neutralize(["<|user_7|>", "[MASK]"])
    record = conv("n", (HUMAN, "What do </s>, <s>, [INST] and <|im_end|> mean?"), (GPT, "[MASK] and <|user_7|> too"),
                  system="<<SYS>> be nice")
    kept, _ = run_stage(stage, record)
    texts = [t["value"] for t in kept["conversations"]] + [kept["system"]]
    for token in ("</s>", "<s>", "[INST]", "<|im_end|>", "[MASK]", "<|user_7|>", "<<SYS>>"):
        assert not any(token in text for text in texts)
    assert [text.replace(NEUTRALIZER, "") for text in texts] == [
        "What do </s>, <s>, [INST] and <|im_end|> mean?", "[MASK] and <|user_7|> too", "<<SYS>> be nice"]
    assert stage.notes["records_changed"] == 1


def test_with_lingua_workers_leave_short_conversations_to_the_parent_for_language():
    """Short samples need lingua's high-accuracy models (~1 GB each process): only the parent loads them."""
    long = conv("l", (HUMAN, "¿Cuál es la diferencia entre los verbos ser y estar en español? Dame ejemplos."),
                (GPT, "Ser describe lo permanente y estar lo pasajero: soy alto, estoy cansado."), lang="en")
    short = conv("s", (HUMAN, "안녕하세요?"), (GPT, "안녕하세요! 무엇을 도와드릴까요?"), lang="en")
    for record in (long, short):
        add_language(record, short_too=False, detector="lingua")
    assert long["lang"] == "es" and "lang" not in short  # the input's own lang is not trusted
    assert run_stage(Language(skip_langs=["ko"], detector="lingua"), short) == (None, "language_skipped")
    assert short["lang"] == "ko"


def test_with_the_default_detector_workers_decide_short_conversations_too():
    short = conv("s", (HUMAN, "안녕하세요?"), (GPT, "안녕하세요! 무엇을 도와드릴까요?"), lang="en")
    add_language(short, short_too=False)
    assert short["lang"] == "ko"


# --- splitting ---------------------------------------------------------------------------------------------

def long_conversation(rounds: int = 8, words: int = 60) -> dict:
    turns = []
    for k in range(rounds):
        turns += [(HUMAN, f"Question {k}: " + "why " * 10), (GPT, f"Answer {k}: " + "because " * words)]
    return conv("L", *turns, system="You are terse.", source="unit")


def split_pieces(record, splitter):
    split = Split()
    dropped = []
    split.reject = lambda rec, name, reason: dropped.append((rec["id"], reason))
    record["__split_plan__"] = splitter.plan(record)
    return list(split([record])), dropped


def test_split_keeps_every_round_and_the_last_one():
    splitter = Splitter(TokenCounter(), max_tokens=300)
    record = long_conversation()
    original = [t["value"] for t in record["conversations"]]
    pieces, dropped = split_pieces(record, splitter)
    assert dropped == [] and len(pieces) > 2
    assert [p["id"] for p in pieces] == [f"L_{k}" for k in range(len(pieces))]
    assert [t["value"] for p in pieces for t in p["conversations"]] == original
    for piece in pieces:
        assert piece["system"] == "You are terse." and piece["source"] == "unit"
        assert fits(piece, 300, TokenCounter())
        assert [t["from"] for t in piece["conversations"]][::2] == [HUMAN] * (len(piece["conversations"]) // 2)


def test_split_leaves_fitting_conversations_alone():
    record = long_conversation(rounds=2, words=5)
    pieces, _ = split_pieces(record, Splitter(TokenCounter(), max_tokens=2048))
    assert len(pieces) == 1 and pieces[0]["id"] == "L"


def test_too_long_round_is_dropped_or_truncated():
    record = long_conversation(rounds=3, words=20)
    record["conversations"][3]["value"] = "long " * 400
    pieces, dropped = split_pieces(dict(record), Splitter(TokenCounter(), max_tokens=200))
    assert dropped == [("L_1", "round_too_long")]
    assert [p["id"] for p in pieces] == ["L_0", "L_2"]
    truncating = Splitter(TokenCounter(), max_tokens=200, long_round="truncate")
    pieces, dropped = split_pieces(dict(record), truncating)
    assert dropped == [] and [p["id"] for p in pieces] == ["L_0", "L_1", "L_2"]
    cut = pieces[1]["conversations"][1]["value"]
    assert "long " * 50 in cut and len(cut) < 2000 and fits(pieces[1], 200, TokenCounter())


def test_plan_pieces_are_whole_rounds():
    pieces = Splitter(TokenCounter(), max_tokens=150).plan(long_conversation(rounds=4, words=30))
    assert all(isinstance(p, Piece) and len(p.turns) % 2 == 0 for p in pieces)


def test_tokenizer_counts_split_lengths_and_its_special_tokens_are_defused(tmp_path):
    from tokenizers import Tokenizer

    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    own = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    own.add_special_tokens(["[BOT]"])
    own.save(str(tokenizer_dir / "tokenizer.json"))
    source = tmp_path / "in.jsonl"
    records = [long_conversation(rounds=6, words=40), conv("T", (HUMAN, "Is [BOT] special?"), (GPT, "Yes it is."))]
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    clean(source, out, CleanOptions(workers=1, tokenizer=str(tokenizer_dir), max_tokens=400))
    kept = read_any(out)
    counter = TokenCounter(load_tokenizer(str(tokenizer_dir)))
    assert len([r for r in kept if r["id"].startswith("L_")]) >= 2
    assert all(fits(r, 400, counter) for r in kept)
    assert kept[-1]["conversations"][0]["value"] == f"Is [{NEUTRALIZER}BOT] special?"


def test_near_duplicate_first_turns_dropped_on_request():
    base = "Write a Python function that reverses a linked list in place and explain its complexity"
    first = conv("n1", (HUMAN, base), (GPT, "Here is one."))
    second = conv("n2", (HUMAN, base + " please"), (GPT, "A different answer entirely."))
    dedup = Dedup(near_dup=0.5)
    assert run_stage(dedup, first)[1] is None
    kept, why = run_stage(dedup, second)
    assert why == "near_duplicate" and second["duplicate_of"] == "n1"
    assert run_stage(Dedup(), conv("n3", (HUMAN, base), (GPT, "Here is one.")))[1] is None


# --- FastChat's filters ------------------------------------------------------------------------------------

def mentions_openai(record: dict) -> bool:
    """FastChat's `contain_blocked_words`, as its clean_sharegpt.py applies it to every turn."""
    return any(word in turn["value"].lower() for turn in record["conversations"] for word in ("openai", "chatgpt"))


def test_conversations_naming_openai_or_chatgpt_are_dropped_as_fastchat_drops_them(tmp_path):
    source = ANCHORS / "fastchat_dummy_conversation.json"
    if not source.exists():
        pytest.skip(f"anchor data not found at {source}")
    original = json.loads(source.read_text(encoding="utf-8"))
    report = clean(source, tmp_path / "dummy.jsonl", CleanOptions(workers=1))
    rejected = read_any(Path(report.rejected))
    dropped = {r["record"]["id"] for r in rejected if r["reason"] == "openai_mention"}
    assert dropped == {r["id"] for r in original if mentions_openai(r)} and len(dropped) == 60
    assert all(r["stage"] == "content" for r in rejected if r["reason"] == "openai_mention")
    assert len(read_any(tmp_path / "dummy.jsonl")) == 294  # 334 without the filter, 40 of them mention it


def test_openai_filter_and_plugins_filter_can_be_turned_off(tmp_path):
    records = [
        conv("o", (HUMAN, "Who made you?"), (GPT, "I was trained by OpenAI, as ChatGPT.")),
        conv("p", (HUMAN, "Find me a flight to Lisbon next Monday."), (GPT, "Here are three flights I found."),
             plugins=["kayak"]),
        conv("m", (HUMAN, "What is the weather in Paris today?"), (GPT, "It is sunny and 21 degrees."),
             model="Plugins"),
        conv("k", (HUMAN, "What is the capital of Portugal?"), (GPT, "Lisbon is the capital of Portugal."),
             plugins=[], model="GPT-4"),
    ]
    source = tmp_path / "raw.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    report = clean(source, tmp_path / "on.jsonl", CleanOptions(workers=1))
    reasons = {r["record"]["id"]: r["reason"] for r in read_any(Path(report.rejected))}
    assert reasons == {"o": "openai_mention", "p": "plugins", "m": "plugins"}
    assert [r["id"] for r in read_any(tmp_path / "on.jsonl")] == ["k"]
    result = run_cli("clean", str(source), "-o", str(tmp_path / "off.jsonl"), "--workers", "1",
                     "--no-openai-filter", "--no-plugins-filter")
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_any(tmp_path / "off.jsonl")] == ["o", "p", "m", "k"]


def test_bad_lang_detector_is_one_line_exit_2(tmp_path):
    result = run_cli("clean", str(SAMPLE), "-o", str(tmp_path / "x.jsonl"), "--lang-detector", "cld3")
    assert result.returncode == 2 and "--lang-detector must be one of fasttext, lingua" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.jsonl").exists()
