"""`distillery chat`: multi-turn conversations between a scripted user simulator and a scripted teacher on the
fake server: roles alternate, rounds stay in range unless a recorded reason ended them, bad turns go to the
rejections, the result exports with labels on exactly the assistant turns, and kill -9 resumes mid-conversation."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import cli_env, cli_exe, reported, run_cli
from fake_openai import Reply
from tiny_tokenizer import CHATML_JINJA, build_tiny_tokenizer

from distillery.chat import (
    BROKE_CHARACTER,
    REPEATED,
    TRUNCATED_ANSWER,
    USER_ANSWERED,
    USER_ENDED,
    breaks_character,
    cleaned_user_turn,
    repeats,
)
from distillery.chat_options import parse_turns
from distillery.errors import UserError
from distillery.export import IGNORE_INDEX
from distillery.summary import Summary
from distillery.tokens import load_tokenizer

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti") for b in "abcdefghijklmnopqrstuvwxyz"]


def words(key: str, count: int) -> str:
    """Text that depends on `key` alone and shares few words with any other key's."""
    return " ".join(random.Random(key).sample(VOCAB, count))


def user_rounds(prompt: str) -> int:
    return len(re.findall(r"^User: ", prompt, re.MULTILINE))


def conversation_script(body: dict, number: int) -> Reply | str:
    """The simulator (one user message asking for a role-play) and the teacher (the conversation), with a
    topic's name saying how it misbehaves: break character, end, repeat a question, answer, or cut off."""
    messages = body["messages"]
    prompt = messages[-1]["content"]
    if len(messages) == 1 and "role-playing" in prompt:
        topic = re.search(r"^Topic(?: of the conversation)?: (.*)$", prompt, re.MULTILINE).group(1)
        asked = user_rounds(prompt)
        if topic.startswith("opens-answering") and asked == 0:
            return "Certainly! Here is a question a user might ask."
        if topic.startswith("ai-at-3") and asked == 2:
            return "As an AI language model, I do not have questions of my own."
        if topic.startswith("ends-at-3") and asked == 2:
            return "[END]"
        if topic.startswith("repeats-at-3") and asked == 2:
            return f"User: {words(topic + ':0', 10)}?"
        return f"User: {words(f'{topic}:{asked}', 10)}?"
    opened = next(m["content"] for m in messages if m["role"] == "user")
    if opened.startswith("truncated") and len(messages) > 3:
        return Reply(text=words(prompt, 6), finish_reason="length")
    return words(prompt + str(len(messages)), 20)


def topics_file(path: Path, count: int, special: tuple[str, ...] = ()) -> Path:
    topics = [f"{name} {i}" for i, name in enumerate(special)]
    topics += [f"topic {i}" for i in range(count - len(topics))]
    path.write_text("".join(json.dumps({"topic": t}) + "\n" for t in topics))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_turns_3_to_5_alternate_stay_in_range_and_record_why_they_ended(fake_server, tmp_path):
    fake_server.script = conversation_script
    special = ("opens-answering", "ai-at-3", "ends-at-3", "repeats-at-3")
    seeds = topics_file(tmp_path / "topics.jsonl", 24, special)
    out = tmp_path / "chats.jsonl"
    done = run_cli("chat", str(seeds), "-o", str(out), "--turns", "3-5", "--seed", "7", "--system", "Be brief.",
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    chats = read_jsonl(out)
    assert len(chats) == 23, "the conversation whose opening answered instead of asking has no round to keep"
    targets = Counter()
    for chat in chats:
        roles = [turn["from"] for turn in chat["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and roles, "every conversation alternates roles"
        meta = chat["chat"]
        assert meta["rounds"] == len(roles) // 2 and chat["system"] == "Be brief."
        targets[meta["target"]] += 1
        if meta["ended"] is None:
            assert 3 <= meta["rounds"] <= 5 and meta["rounds"] == meta["target"]
        else:
            assert meta["rounds"] < meta["target"] and meta["topic"].split()[0] in special
    assert set(targets) == {3, 4, 5}, "--turns 3-5 draws every length"
    ended = {chat["chat"]["topic"].split()[0]: (chat["chat"]["ended"], chat["chat"]["rounds"]) for chat in chats
             if chat["chat"]["ended"]}
    assert ended == {"ai-at-3": (BROKE_CHARACTER, 2), "ends-at-3": (USER_ENDED, 2), "repeats-at-3": (REPEATED, 2)}

    rejected = read_jsonl(tmp_path / "chats.jsonl.rejected.jsonl")
    assert all(set(r) == {"stage", "reason", "detail", "record"} and r["stage"] == "chat" for r in rejected)
    reasons = {r["reason"]: r for r in rejected}
    assert set(reasons) == {USER_ANSWERED, BROKE_CHARACTER, REPEATED}, "a natural end is no rejection"
    assert reasons[BROKE_CHARACTER]["record"]["text"].startswith("As an AI") and \
        reasons[BROKE_CHARACTER]["record"]["turn"] == 3
    assert reasons[REPEATED]["detail"]["score"] == 1.0
    assert reasons[USER_ANSWERED]["record"] == {"topic": "opens-answering 0"}
    assert reasons[USER_ANSWERED]["detail"]["rounds"] == 0
    summary = Summary.read(tmp_path / "chats.jsonl.summary.json")
    assert summary.stages[0].kept == 23 and summary.meta["ended"][USER_ENDED] == 1

    # Each answer request carries the system prompt and the whole conversation so far.
    answers = [b for b in fake_server.requests if b["messages"][0]["role"] == "system"]
    assert answers and all([m["role"] for m in b["messages"][1:]]
                           == ["user", "assistant"] * ((len(b["messages"]) - 2) // 2) + ["user"] for b in answers)

    # ShareGPT out, ready for export: labels decode to exactly the assistant turns.
    tokenizer = build_tiny_tokenizer(tmp_path / "tok", CHATML_JINJA)
    exported = run_cli("export", str(out), "-o", str(tmp_path / "chats.parquet"), "--tokenizer", str(tokenizer))
    assert exported.returncode == 0, exported.stderr
    decode = load_tokenizer(str(tokenizer))
    rows = pq.read_table(tmp_path / "chats.parquet").to_pylist()
    assert len(rows) == len(chats)
    for row, chat in zip(rows, chats, strict=True):
        runs, current, previous = [], [], IGNORE_INDEX
        for label in row["labels"]:
            if label != IGNORE_INDEX:
                current.append(label)
            elif previous != IGNORE_INDEX:
                runs.append(current)
                current = []
            previous = label
        if current:
            runs.append(current)
        decoded = [decode.decode(run).removesuffix("<|im_end|>").strip() for run in runs]
        assert decoded == [t["value"] for t in chat["conversations"] if t["from"] == "gpt"]


def test_question_and_alpaca_seeds_are_the_first_turn_and_a_cut_answer_ends_the_conversation(fake_server, tmp_path):
    fake_server.script = conversation_script
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps([
        {"question": "How do tides work?"},
        {"instruction": "Summarise this.", "input": "The sea rises twice a day."},
        {"question": "truncated question", "system": "Own system."},
    ]))
    out = tmp_path / "out.jsonl"
    done = run_cli("chat", str(seeds), "-o", str(out), "--turns", "2", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    chats = read_jsonl(out)
    assert [c["conversations"][0]["value"] for c in chats] == [
        "How do tides work?", "Summarise this.\n\nThe sea rises twice a day.", "truncated question"]
    assert [c["chat"]["rounds"] for c in chats] == [2, 2, 1]
    assert chats[2]["chat"]["ended"] == TRUNCATED_ANSWER and chats[2]["system"] == "Own system."
    first_turns = [b for b in fake_server.requests if len(b["messages"]) == 1 and "role-playing" in
                   b["messages"][0]["content"] and user_rounds(b["messages"][0]["content"]) == 0]
    assert first_turns == [], "a question seed is the first turn: the simulator is not asked to open"


def test_chat_writes_the_one_summary_and_rejection_schema_that_report_reads(fake_server, tmp_path):
    def script(body: dict, number: int) -> Reply | str:
        if "Topic: fails" in body["messages"][-1]["content"]:
            return Reply(status=400, error="refused")
        return conversation_script(body, number)

    fake_server.script = script
    out = tmp_path / "chats.jsonl"
    done = run_cli("chat", str(topics_file(tmp_path / "topics.jsonl", 3, ("ai-at-3", "fails"))), "-o", str(out),
                   "--turns", "3", "--max-retries", "0", env=cli_env(fake_server))
    assert done.returncode == 3 and "1 conversation(s) failed after retries" in done.stderr
    summary = Summary.read(tmp_path / "chats.jsonl.summary.json")
    assert summary.meta["command"] == "chat" and summary.meta["ended"] == {BROKE_CHARACTER: 1}
    (stage,) = summary.stages
    assert (stage.stage, stage.seen, stage.kept) == ("chat", 3, 2)
    assert stage.dropped == {BROKE_CHARACTER: 1, "request_failed": 1}
    (failed,) = read_jsonl(tmp_path / "chats.jsonl.failed.jsonl")
    assert (failed["stage"], failed["reason"], failed["record"]) == ("chat", "request_failed", {"topic": "fails 1"})
    rejections = reported(out, tmp_path)
    assert [(s.name, s.seen, s.kept) for s in rejections.stages] == [("chat", 3, 2)]
    assert list(rejections.examples) == [BROKE_CHARACTER]


def test_kill_9_resumes_each_conversation_at_its_last_round_and_sends_nothing_twice(fake_server, tmp_path):
    fake_server.script = conversation_script
    fake_server.latency = 0.01
    seeds = topics_file(tmp_path / "topics.jsonl", 40)
    common = ["--turns", "3-5", "--seed", "3", "--concurrency", "4"]
    clean = run_cli("chat", str(seeds), "-o", str(tmp_path / "clean.jsonl"), *common, env=cli_env(fake_server))
    assert clean.returncode == 0, clean.stderr
    uninterrupted = Counter(json.dumps(b, sort_keys=True) for b in fake_server.requests)
    assert max(uninterrupted.values()) == 1 and sum(uninterrupted.values()) > 250

    fake_server.requests.clear()
    out = tmp_path / "out.jsonl"
    args = ["chat", str(seeds), "-o", str(out), *common]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(fake_server.requests) < 120 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    before = len(fake_server.requests)
    assert 120 <= before < sum(uninterrupted.values()) and not out.exists()
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    sent = Counter(json.dumps(b, sort_keys=True) for b in fake_server.requests)
    twice = sum(n - 1 for n in sent.values() if n > 1)
    assert twice <= 8, "only requests in flight at the kill (4 per model) are sent again"
    assert set(sent) == set(uninterrupted)
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    (stage,) = Summary.read(tmp_path / "out.jsonl.summary.json").stages
    assert stage.notes["replayed"] > 0 and stage.sent == len(fake_server.requests) - before

    fake_server.requests.clear()
    again = run_cli(*args, env=cli_env(fake_server))
    assert again.returncode == 0 and fake_server.requests == []
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()


def test_chinese_prompts_and_checks(fake_server, tmp_path):
    def script(body: dict, number: int) -> str:
        prompt = body["messages"][-1]["content"]
        if len(body["messages"]) == 1 and "扮演" in prompt:
            return "用户：" + ("作为一个AI，我没有问题。" if "目前的对话" in prompt else "黑洞是怎么形成的？")
        return "黑洞由大质量恒星坍缩形成。"

    fake_server.script = script
    seeds = tmp_path / "zh.jsonl"
    seeds.write_text(json.dumps({"topic": "黑洞"}, ensure_ascii=False) + "\n")
    out = tmp_path / "zh.out.jsonl"
    done = run_cli("chat", str(seeds), "-o", str(out), "--lang", "zh", "--turns", "3", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    [chat] = read_jsonl(out)
    assert chat["conversations"][0]["value"] == "黑洞是怎么形成的？", "the leaked label is stripped"
    assert chat["chat"]["ended"] == BROKE_CHARACTER and chat["chat"]["rounds"] == 1
    assert all("目前的对话" in b["messages"][0]["content"] or "话题：黑洞" in b["messages"][0]["content"]
               for b in fake_server.requests if len(b["messages"]) == 1 and "扮演" in b["messages"][0]["content"])


@pytest.mark.parametrize(("text", "verdict"), [
    ("As an AI language model, I can't ask that.", BROKE_CHARACTER),
    ("I'm an AI assistant, how can I help you today?", BROKE_CHARACTER),
    ("作为一个人工智能助手，我可以回答。", BROKE_CHARACTER),
    ("有什么可以帮您的吗？", BROKE_CHARACTER),
    ("Certainly! The answer is 42.", USER_ANSWERED),
    ("Here's a summary of the main points.", USER_ANSWERED),
    ("当然可以，下面是答案。", USER_ANSWERED),
    ("Can you explain what an AI accelerator is?", None),
    ("Sure, but how does that work on a phone?", None),
    ("那如果是在手机上呢？", None),
])
def test_breaking_character_is_read_in_both_languages(text, verdict):
    assert breaks_character(text) == verdict


def test_simulator_wrapping_is_stripped_and_repeats_are_found():
    assert cleaned_user_turn('User: "How big is it?"') == "How big is it?"
    assert cleaned_user_turn("**Human:** Why?\nAssistant: Because.") == "Why?"
    assert cleaned_user_turn("用户：为什么？") == "为什么？"
    assert repeats("How big is the sun?", ["how  big is the SUN?"], 0.7) == (1.0, "how  big is the SUN?")
    assert repeats("How big is the sun compared to earth?", ["How big is the sun compared to the earth?"], 0.7)
    assert repeats("What do whales eat?", ["How big is the sun?"], 0.7) is None


@pytest.mark.parametrize(("value", "expected"), [("3", (3, 3)), ("3-5", (3, 5)), (" 2 - 4 ", (2, 4))])
def test_turns_take_a_number_or_a_range(value, expected):
    assert parse_turns(value) == expected


@pytest.mark.parametrize(("extra", "content", "message"), [
    (["--turns", "5-3"], '{"topic": "x"}\n', "--turns 5-3"),
    (["--turns", "many"], '{"topic": "x"}\n', "--turns must be N or MIN-MAX"),
    (["--min-turns", "9"], '{"topic": "x"}\n', "--min-turns must be between 1"),
    (["--lang", "fr"], '{"topic": "x"}\n', "--lang must be one of"),
    ([], '{"topic": "x"}\n{"title": "y"}\n', "seeds.jsonl:2: a chat seed needs 'topic', 'question' or 'instruction'"),
    ([], '{"question": ""}\n', "'question' must be non-empty text"),
])
def test_bad_input_or_options_is_one_line_exit_2_and_no_output(fake_server, tmp_path, extra, content, message):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(content)
    out = tmp_path / "out.jsonl"
    result = run_cli("chat", str(seeds), "-o", str(out), *extra, env=cli_env(fake_server))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and fake_server.requests == []


def test_unknown_builtin_topics_and_a_prompt_without_its_slots_fail_before_any_request(fake_server, tmp_path):
    unknown = run_cli("chat", "builtin:topics-fr", "-o", str(tmp_path / "o.jsonl"), env=cli_env(fake_server))
    assert unknown.returncode == 2 and "builtin:topics-en, builtin:topics-zh" in unknown.stderr
    prompt = tmp_path / "user.txt"
    prompt.write_text("Ask something about {topic}.")
    bad = run_cli("chat", "builtin:topics-en", "-o", str(tmp_path / "o.jsonl"), "--user-prompt", str(prompt),
                  env=cli_env(fake_server))
    assert bad.returncode == 2 and "{conversation}, {move}" in bad.stderr
    assert fake_server.requests == []


def test_bundled_topic_sets_load():
    from distillery.chat import load_topics

    for name in ("topics-en", "topics-zh"):
        topics = load_topics(name)
        assert len(topics) >= 30 and all(isinstance(t["topic"], str) and t["topic"] for t in topics)
    with pytest.raises(UserError, match="unknown topic set"):
        load_topics("topics-xx")


def test_ultrachat_pipeline_topics_chat_dedup_export_report(fake_server, tmp_path):
    fake_server.script = conversation_script
    topics = topics_file(tmp_path / "topics.jsonl", 10)
    with topics.open("a") as handle:  # the same topic twice: the same opening question, dropped by dedup
        handle.write(json.dumps({"topic": "topic 3"}) + "\n")
    tokenizer = build_tiny_tokenizer(tmp_path / "tok", CHATML_JINJA)
    run = tmp_path / "run"
    done = run_cli("run", "ultrachat", "-i", str(topics), "-o", str(run), "--seed", "5", "--set", "chat.turns=2-3",
                   "--set", f"export.tokenizer={tokenizer}", "--set", "report.lang_sample=0",
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    dataset = read_jsonl(run / "dataset.jsonl")
    assert len(dataset) == 10 and all(2 <= d["chat"]["rounds"] <= 3 for d in dataset)
    assert json.loads((run / "data" / "ultrachat.json").read_text()) == dataset
    rejected = read_jsonl(run / "rejected.jsonl")
    assert [(r["stage"], r["reason"], r["record"]["chat"]["topic"]) for r in rejected] == [
        ("dedup", "near_duplicate", "topic 3")], "dedup compares the first turns"
    assert pq.read_table(run / "ultrachat.tokenized.parquet").num_rows == 10
    stages = json.loads((run / "summary.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["read", "chat", "dedup", "export", "report"]
    assert stages[1]["in"] == 11 and stages[1]["out"] == 11 and stages[2]["out"] == 10
    assert "ultrachat pipeline" in (run / "report.html").read_text()

    fake_server.requests.clear()
    again = run_cli("run", "ultrachat", "-i", str(topics), "-o", str(run), "--seed", "5", "--set", "chat.turns=2-3",
                    "--set", f"export.tokenizer={tokenizer}", "--set", "report.lang_sample=0",
                    env=cli_env(fake_server))
    assert again.returncode == 0 and fake_server.requests == []


def test_ultrachat_runs_on_the_built_in_topics_and_dry_run_estimates(fake_server, tmp_path):
    dry = run_cli("run", "ultrachat", "--dry-run", "--set", "chat.turns=2", env=cli_env(fake_server))
    assert dry.returncode == 0, dry.stderr
    assert "chat: model fake-model, at most 120 requests" in dry.stdout, "30 topics, 2 rounds, 2 requests each"
    assert fake_server.requests == []
