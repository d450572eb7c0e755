"""`distillery evol`: templates, the four elimination rules, lineage, the Chinese path and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import Reply

from distillery.errors import UserError
from distillery.evol import (
    DATA_FORMATS,
    IN_DEPTH,
    METHODS,
    Templates,
    choose,
    copies_prompt_markers,
    is_only_punctuation_stopwords,
    is_sorry_short,
    is_unchanged,
    judged_equal,
    parse_methods,
    seed_instruction,
    strip_leaked_header,
    word_count,
)
from distillery.summary import Summary

SEED = 11
EVOLVE_MARKERS = {
    "en": ("#The Given Prompt#:", "#Rewritten Prompt#:", "#Given Prompt#:", "#Created Prompt#:"),
    "zh": ("#给定提示#：", "#改写后提示#：", "#给定提示#：", "#新创提示#："),
}
POISON = ("SORRYBAIT", "DOTSBAIT", "SAMEBAIT", "given prompt", "Rewritten Prompt", "给定提示", "改写后提示")


# --- templates -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_renders_with_its_markers_and_the_instruction(method, lang):
    instruction = "Sort {second} these numbers: 3, 1, 2\n[3, 1, 2]"
    prompt = Templates(lang).prompt(method, instruction, DATA_FORMATS[lang][0])
    given, rewritten, given_breadth, created = EVOLVE_MARKERS[lang]
    opening, closing = (given_breadth, created) if method == "breadth" else (given, rewritten)
    assert prompt.endswith(closing)
    assert prompt.count(instruction) == 1
    assert prompt.index(opening) < prompt.index(instruction) < prompt.rindex(closing)
    assert prompt[prompt.rindex(opening) + len(opening):prompt.rindex(closing)].strip() == instruction
    assert not re.search(r"\{(instruction|data_format|first)\}", prompt)
    if method in IN_DEPTH:
        assert "10" in prompt and "20" in prompt, "the added-words rule"
        assert ("Prompt Rewriter" in prompt) and (lang == "en" or "改写" in prompt)
    else:
        assert "Prompt Creator" in prompt


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_method_has_its_own_method_line(lang):
    rendered = {Templates(lang).prompt(m, "X", DATA_FORMATS[lang][0]) for m in METHODS}
    assert len(rendered) == len(METHODS)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_complicate_input_asks_for_structured_input_data(lang):
    drawn = {choose(seed, index, 1, ("complicate-input",), lang)[1] for seed in range(3) for index in range(40)}
    assert drawn == set(DATA_FORMATS[lang]), "every data format gets drawn"
    for data_format in drawn:
        prompt = Templates(lang).prompt("complicate-input", "Summarise the report.", data_format)
        assert data_format in prompt
        assert all(kind in prompt for kind in ("JSON", "XML", "代码" if lang == "zh" else "code"))
    assert "JSON" not in Templates(lang).prompt("constraints", "Summarise the report.", "JSON data")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_judge_prompt_holds_both_instructions_and_asks_for_equal(lang):
    prompt = Templates(lang).judge("First {second} one", "Second one")
    assert prompt.index("First {second} one") < prompt.index("Second one")
    assert ("Equal or Not Equal" in prompt) if lang == "en" else ("“相同”或“不相同”" in prompt)


def test_replacement_templates_are_used_and_checked(tmp_path):
    (tmp_path / "deepening.txt").write_text("Go deeper: {instruction}\nNEW:")
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "breadth.txt").write_text("换个话题：{instruction}")
    assert Templates("en", tmp_path).prompt("deepening", "Why?") == "Go deeper: Why?\nNEW:"
    assert Templates("en", tmp_path).prompt("breadth", "Why?").endswith("#Created Prompt#:")
    assert Templates("zh", tmp_path).prompt("breadth", "为什么？") == "换个话题：为什么？"
    (tmp_path / "judge.txt").write_text("Same? {first}")
    with pytest.raises(UserError, match=r"judge\.txt: template lacks the placeholder \{second\}"):
        Templates("en", tmp_path)
    (tmp_path / "judge.txt").write_bytes("Same? {first} {second} é".encode("latin-1"))
    with pytest.raises(UserError, match=r"judge\.txt: not UTF-8 text at byte 23"):
        Templates("en", tmp_path)


# --- method choice -----------------------------------------------------------------------------------------


def test_method_choice_is_seeded_per_record_and_round_and_covers_all_methods():
    draws = [choose(7, index, round_, METHODS, "en")[0] for index in range(200) for round_ in (1, 2, 3)]
    assert draws == [choose(7, index, round_, METHODS, "en")[0] for index in range(200) for round_ in (1, 2, 3)]
    counts = Counter(draws)
    assert set(counts) == set(METHODS) and min(counts.values()) > 60
    assert draws != [choose(8, index, round_, METHODS, "en")[0] for index in range(200) for round_ in (1, 2, 3)]
    assert choose(7, 0, 1, ("breadth",), "en")[0] == "breadth"


def test_methods_accept_commas_groups_and_reject_unknown_names():
    assert parse_methods(["breadth,constraints", "breadth"]) == ("breadth", "constraints")
    assert parse_methods(["in-depth"]) == IN_DEPTH
    assert parse_methods(["all"]) == METHODS
    with pytest.raises(UserError, match="unknown evolution method 'deepen'"):
        parse_methods(["deepen"])
    with pytest.raises(UserError, match="names no method"):
        parse_methods([","])


def test_seed_instruction_appends_input_on_a_new_line():
    assert seed_instruction({"instruction": " Translate. ", "input": "Bonjour"}) == "Translate.\nBonjour"
    assert seed_instruction({"instruction": "Translate.", "input": "  "}) == "Translate."


# --- reply cleanup and the elimination rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("#Rewritten Prompt#: Sort the list.", "Sort the list."),
        ("#Rewritten Prompt#:\nSort the list.", "Sort the list."),
        ("  #The Rewritten Prompt#\nSort the list.", "Sort the list."),
        ("#Created Prompt#: Sort the list.", "Sort the list."),
        ("Rewritten Prompt: Sort the list.", "Sort the list."),
        ("**Rewritten Prompt:** Sort the list.", "Sort the list."),
        ("#改写后提示#：给列表排序。", "给列表排序。"),
        ("改写后的提示：给列表排序。", "给列表排序。"),
        ("#新创提示#:\n给列表排序。", "给列表排序。"),
        ("New prompt engineering tricks, explained.", "New prompt engineering tricks, explained."),
        ("Rewritten prompts are shorter. Explain why.", "Rewritten prompts are shorter. Explain why."),
    ],
)
def test_a_leaked_leading_header_is_stripped(reply, expected):
    assert strip_leaked_header(reply) == expected


@pytest.mark.parametrize(
    ("reply", "equal"),
    [("Equal", True), ("Equal.", True), ("Not Equal", False), ("not equal.", False), ("NOT EQUAL", False),
     ("Unequal", False), ("Judgement: Not Equal", False), ("相同", True), ("不相同", False), ("不相等。", False),
     ("I cannot tell.", None), ("", None),
     ("Equal? No, the second instruction adds a constraint.", False), ("Equal? Yes.", True),
     ("Are they equal? No.", False), ("Equal or Not Equal: Equal", True), ("Equal or Not Equal: Not Equal", False),
     ("Not equal. Why? The second one is deeper.", False), ("No, they are not equal.", False),
     ("**Not Equal**", False), ("They are the same.", True), ("相同吗？不，不相同。", False),
     ("“相同”还是“不相同”：相同", True), ("Equal?", None)],
)
def test_judge_replies_are_read_for_their_verdict(reply, equal):
    assert judged_equal(reply) is equal


def test_rule_1_unchanged_after_normalisation():
    assert is_unchanged("Write a poem about the sea.", "  write a POEM about the sea")
    assert is_unchanged("写一首关于大海的诗。", "写一首关于大海的诗")
    assert is_unchanged("Ｗｒｉｔｅ ａ ｐｏｅｍ", "Write a poem")
    assert not is_unchanged("Write a poem about the sea.", "Write a sonnet about the sea.")


def test_rule_2_sorry_and_short():
    assert is_sorry_short("Sorry, I can't help with that.")
    assert is_sorry_short("I'm SORRY, but the question is unclear.")
    assert is_sorry_short("抱歉，我无法回答这个问题。")
    assert is_sorry_short("对不起，这个问题信息不足。")
    assert not is_sorry_short("The capital of France is Paris.")
    assert is_sorry_short("sorry " + "word " * 78)
    assert not is_sorry_short("sorry " + "word " * 79), "80 words is long enough"
    assert not is_sorry_short("抱歉" + "字" * 158), "160 characters count as 80 words"
    assert is_sorry_short("抱歉" + "字" * 156)


def test_word_count_counts_each_cjk_character_as_half_a_word():
    assert word_count("one two, three!") == 3
    assert word_count("写一首诗") == 2
    assert word_count("用 Python 写一首诗") == 3.5


def test_rule_3_only_punctuation_and_stop_words():
    for poison in ("...", "", "   ", "……", "?!", "The, and of it!", "的了吗？", "我们的。", "Oh well... it is.",
                   "No, it isn't.", "I didn't."):
        assert is_only_punctuation_stopwords(poison), poison
    for fine in ("42", "The answer is 42.", "Paris.", "答案是巴黎。", "这是一个苹果", "No, it is Paris."):
        assert not is_only_punctuation_stopwords(fine), fine


def test_rule_3_is_linear_on_long_chinese_answers():
    """Ten times the text costs about ten times the CPU (a quadratic check would cost a hundred times)."""
    def cpu_for(length: int) -> float:
        started = time.process_time()
        for _ in range(3):
            assert is_only_punctuation_stopwords("的" * length)
            assert not is_only_punctuation_stopwords("的" * length + "猫")
        return time.process_time() - started

    small, large = cpu_for(20_000), cpu_for(200_000)
    assert large < 40 * max(small, 1e-3)


def test_rule_4_copied_prompt_markers():
    for leak in ("Rewrite the given prompt so it is harder.", "#REWRITTEN PROMPT# Sort it.",
                 "The created\n prompt asks for a poem.", "#The Given Prompt#: sort", "请根据给定提示写诗。",
                 "改写后的提示：写诗"):
        assert copies_prompt_markers(leak), leak
    for fine in ("Given a prompt from a user, classify it.", "给定一个数组，求最大值。", "Write a prompt for a story."):
        assert not copies_prompt_markers(fine), fine


# --- end to end against the scripted server -------------------------------------------------------------------


def seeds_file(path, count: int, lang: str = "en"):
    if lang == "en":
        records = [{"instruction": f"Item {i}: describe topic {i}.", "input": "in detail" if i % 4 == 0 else "",
                    "output": f"original {i}"} for i in range(count)]
    else:
        records = [{"instruction": f"第{i}项：介绍主题{i}。", "input": "", "output": f"原始答案{i}"}
                   for i in range(count)]
    path.write_text(json.dumps(records, ensure_ascii=False))
    return records


def classify(body) -> tuple[str, str]:
    """What a request is (evolve, judge or answer) and the text it is about."""
    text = body["messages"][-1]["content"]
    evolve = re.search(r"(?:#The Given Prompt#:|#Given Prompt#:|#给定提示#：)\n(.*)\n#(?:Rewritten Prompt|Created "
                       r"Prompt|改写后提示|新创提示)#[:：]$", text, re.S)
    if evolve:
        return "evolve", evolve.group(1)
    judge = re.search(r"(?:The Second Instruction: |第二条指令：)(.*)\n", text, re.S)
    if judge:
        return "judge", judge.group(1)
    return "answer", text


def poison_script(zh: bool = False):
    """Round 1 of each seed gets one failure kind by its number; later rounds and other seeds pass."""
    sorry, dots, equal, differ = ("抱歉，我做不到。", "……", "相同", "不相同") if zh else (
        "Sorry, I cannot do that.", "...", "Equal", "Not Equal")

    def script(body, number):
        kind, text = classify(body)
        if kind == "judge":
            return equal if "SAMEBAIT" in text else differ
        if kind == "answer":
            if "SORRYBAIT" in text:
                return sorry
            return dots if "DOTSBAIT" in text else f"A full answer, with real content, to: {text}"
        round_ = body["seed"] - SEED
        item = int(re.search(r"\d+", text).group())
        if round_ > 1 or item % 6 == 5:
            header = ("#改写后提示#：" if zh else "#Rewritten Prompt#: ") if item % 6 == 5 else ""
            return f"{header}{text} +r{round_}"
        return [
            text.upper() + ("。" if zh else "."),
            (f"请把给定的提示改写：{text}" if zh else f"Here is the given prompt, reworded: {text} more"),
            f"{text} SORRYBAIT",
            f"{text} DOTSBAIT",
            f"{text} SAMEBAIT",
        ][item % 6]

    return script


def read_out(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_lineage(records, rounds: int):
    """round in 1..M, round-1 parents are roots, later parents are the lineage's latest earlier evolution."""
    latest: dict[str, tuple[int, str]] = {}
    evolved = [r for r in records if r["evol"]["round"] > 0]
    assert evolved == sorted(evolved, key=lambda r: r["evol"]["round"])
    for record in evolved:
        lineage = record["evol"]
        assert 1 <= lineage["round"] <= rounds and lineage["method"] in METHODS
        assert record["input"] == ""
        previous_round, previous = latest.get(lineage["root"], (0, lineage["root"]))
        assert previous_round < lineage["round"]
        assert lineage["parent"] == previous
        latest[lineage["root"]] = (lineage["round"], record["instruction"])


def test_poison_never_reaches_output_and_every_rule_is_logged(fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds = seeds_file(tmp_path / "seeds.json", 12)
    out = tmp_path / "evolved.jsonl"
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(out), "--rounds", "3", "--seed", str(SEED),
                   "--keep-original", env=cli_env(fake_server, COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    records = read_out(out)
    originals = [r for r in records if r["evol"]["round"] == 0]
    assert [(r["instruction"], r["input"], r["output"]) for r in originals] == [
        (s["instruction"], s["input"], s["output"]) for s in seeds]
    evolved = [r for r in records if r["evol"]["round"] > 0]
    assert len(evolved) == 2 + 12 + 12
    for record in evolved:
        assert not any(p.lower() in record["instruction"].lower() for p in POISON), record
        assert record["output"].startswith("A full answer"), record
        assert record["instruction"] != record["evol"]["parent"]
        index = int(re.search(r"\d+", record["evol"]["root"]).group())
        assert record["evol"]["method"] == choose(SEED, index, record["evol"]["round"], METHODS, "en")[0]
    check_lineage(records, 3)
    retried = [r for r in evolved if r["evol"]["round"] == 2 and r["evol"]["parent"] == r["evol"]["root"]]
    assert len(retried) == 10, "a failed seed is evolved again from its parent in the next round"
    header = next(r for r in evolved if r["evol"]["root"].startswith("Item 5:") and r["evol"]["round"] == 1)
    assert header["instruction"] == "Item 5: describe topic 5. +r1"

    rejected = read_out(tmp_path / "evolved.jsonl.rejected.jsonl")
    by_item = {int(re.search(r"\d+", r["record"]["root"]).group()): r for r in rejected}
    assert len(rejected) == 10 and all(r["record"]["round"] == 1 and r["record"]["method"] in METHODS
                                       and r["stage"] == "evol" for r in rejected)
    expected = {0: "no_information_gain", 1: "copied_prompt_markers", 2: "sorry_short_answer",
                3: "answer_only_punctuation_stopwords", 4: "no_information_gain"}
    assert {item: r["reason"] for item, r in by_item.items()} == {i: expected[i % 6] for i in by_item}
    assert by_item[0]["detail"] == "same as the parent" and by_item[4]["detail"] == "judge: Equal"
    assert by_item[2]["record"]["output"] == "Sorry, I cannot do that." and by_item[3]["record"]["output"] == "..."

    summary = Summary.read(tmp_path / "evolved.jsonl.summary.json")
    meta, (stage,) = summary.meta, summary.stages
    assert [(r["round"], r["in"], r["out"], r["pass_rate"]) for r in meta["per_round"]] == [
        (1, 12, 2, round(2 / 12, 4)), (2, 12, 12, 1.0), (3, 12, 12, 1.0)]
    assert meta["per_round"][0]["dropped"] == {"no_information_gain": 4, "copied_prompt_markers": 2,
                                               "sorry_short_answer": 2, "answer_only_punctuation_stopwords": 2}
    assert stage.dropped == meta["per_round"][0]["dropped"]
    assert sum(m["in"] for m in meta["per_method"].values()) == 36
    assert sum(m["out"] for m in meta["per_method"].values()) == 26
    assert (stage.seen, stage.kept, stage.notes["evolved"]) == (12, 38, 26)
    assert stage.notes["salvaged"] == 6, "items 5 and 11 kept in each round after their leaked header was stripped"
    # evolve 36; judge for all but the 4 caught by cheap checks; answers for all the judge let through
    assert stage.sent == len(fake_server.requests) == 36 + 32 + 30
    assert stage.prompt_tokens > 0
    assert "round 1 passed" in done.stdout and "2 / 12 (17%)" in done.stdout
    assert "rejected: no_information_gain" in done.stdout
    assert "kept after stripping a leaked header" in done.stdout


def test_rewrites_and_answers_carry_wizardlm_system_message(fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds_file(tmp_path / "seeds.json", 3)
    out = tmp_path / "evolved.jsonl"
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(out), "--rounds", "1", "--seed", str(SEED),
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    system = {"role": "system", "content": "You are a helpful assistant."}
    kinds = Counter(classify(body)[0] for body in fake_server.requests)
    assert kinds["evolve"] == 3 and kinds["answer"] >= 1
    for body in fake_server.requests:
        if classify(body)[0] in ("evolve", "answer"):
            assert body["messages"] == [system, {"role": "user", "content": body["messages"][-1]["content"]}]


def test_chinese_path_uses_chinese_templates_and_rules(fake_server, tmp_path):
    fake_server.script = poison_script(zh=True)
    seeds_file(tmp_path / "seeds.json", 6, lang="zh")
    out = tmp_path / "evolved.json"
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(out), "--rounds", "2", "--seed", str(SEED),
                   "--lang", "zh", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    evolve_prompts = [b["messages"][-1]["content"] for b in fake_server.requests if classify(b)[0] == "evolve"]
    assert len(evolve_prompts) == 12
    assert all("请用中文写出" in p and ("#改写后提示#：" in p or "#新创提示#：" in p) for p in evolve_prompts)
    judges = [b["messages"][-1]["content"] for b in fake_server.requests if classify(b)[0] == "judge"]
    assert judges and all("第一条指令" in j for j in judges)
    records = json.loads(out.read_text(encoding="utf-8"))
    check_lineage(records, 2)
    for record in records:
        assert not any(p in record["instruction"] for p in POISON), record
        assert record["output"].startswith("A full answer")
    assert records[0]["instruction"] == "第5项：介绍主题5。 +r1", "the Chinese header was stripped"
    rejected = read_out(tmp_path / "evolved.json.rejected.jsonl")
    assert sorted(r["reason"] for r in rejected) == ["answer_only_punctuation_stopwords", "copied_prompt_markers",
                                                   "no_information_gain", "no_information_gain",
                                                   "sorry_short_answer"]
    assert {r["detail"] for r in rejected if r["reason"] == "no_information_gain"} == {"same as the parent",
                                                                                     "judge: 相同"}


def test_no_judge_and_no_answers_send_only_evolutions(fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds_file(tmp_path / "seeds.json", 6)
    out = tmp_path / "evolved.jsonl"
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(out), "--rounds", "1", "--seed", str(SEED),
                   "--no-judge", "--no-answers", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert [classify(b)[0] for b in fake_server.requests] == ["evolve"] * 6
    records = read_out(out)
    assert {r["output"] for r in records} == {""}
    kept = sorted(int(re.search(r"\d+", r["evol"]["root"]).group()) for r in records)
    assert kept == [2, 3, 4, 5], "without answers and judge only rules 1 (unchanged) and 4 can apply"


def test_answer_model_and_system_answer_while_the_main_model_evolves_and_judges(fake_server, tmp_path):
    fake_server.script = poison_script()
    seeds_file(tmp_path / "seeds.json", 6)
    out = tmp_path / "evolved.jsonl"
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(out), "--rounds", "2", "--seed", str(SEED),
                   "--answer-model", "answerer", "--answer-system", "Answer carefully.", "--methods",
                   "constraints,reasoning", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    for body in fake_server.requests:
        kind = classify(body)[0]
        assert body["model"] == ("answerer" if kind == "answer" else "fake-model")
        assert (body["messages"][0] == {"role": "system", "content": "Answer carefully."}) == (kind == "answer")
        if kind == "judge":
            assert body["temperature"] == 0.0
    assert {r["evol"]["method"] for r in read_out(out)} <= {"constraints", "reasoning"}
    meta = Summary.read(tmp_path / "evolved.jsonl.summary.json").meta
    assert meta["answer_model"] == "answerer" and meta["methods"] == ["constraints", "reasoning"]


def test_failed_requests_go_aside_exit_3_and_the_parent_is_tried_again(fake_server, tmp_path):
    def script(body, number):
        kind, text = classify(body)
        if kind == "evolve" and text.startswith("Item 1:") and body["seed"] == SEED + 1:
            return Reply(status=500)
        return "Not Equal" if kind == "judge" else f"{text} +{body['seed'] - SEED}" if kind == "evolve" else \
            f"A full answer to {text}"

    fake_server.script = script
    seeds_file(tmp_path / "seeds.json", 3)
    out = tmp_path / "evolved.json"
    args = ["evol", str(tmp_path / "seeds.json"), "-o", str(out), "--rounds", "2", "--seed", str(SEED),
            "--max-retries", "0"]
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 3 and "1 evolution(s) failed" in done.stderr
    failed = read_out(tmp_path / "evolved.json.failed.jsonl")
    assert [(f["record"]["round"], f["record"]["root"]) for f in failed] == [(1, "Item 1: describe topic 1.")]
    assert failed[0]["reason"] == "request_failed" and "HTTP 500" in failed[0]["detail"]
    retried = [r for r in json.loads(out.read_text()) if r["evol"]["root"].startswith("Item 1:")]
    assert [(r["evol"]["round"], r["evol"]["parent"]) for r in retried] == [(2, "Item 1: describe topic 1.")]
    assert not (tmp_path / "evolved.json.rejected.jsonl").exists()


def request_counts(bodies) -> Counter:
    return Counter(json.dumps(body, sort_keys=True, ensure_ascii=False) for body in bodies)


def judged_script(body, number):
    """Deterministic answers; about a quarter of the judgements say Equal, so replays include rejections."""
    kind, text = classify(body)
    if kind == "judge":
        return "Equal" if sum(map(ord, text)) % 4 == 0 else "Not Equal"
    if kind == "answer":
        return f"A full answer to {text}"
    return f"{text} (round {body['seed'] - SEED})"


def test_kill_9_then_rerun_sends_nothing_twice_and_writes_the_same_output(fake_server, tmp_path):
    fake_server.script = judged_script
    fake_server.latency = 0.01
    seeds_file(tmp_path / "seeds.json", 60)
    common = ["--rounds", "3", "--seed", str(SEED), "--concurrency", "8", "--keep-original"]
    clean = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(tmp_path / "clean.jsonl"), *common,
                    env=cli_env(fake_server))
    assert clean.returncode == 0, clean.stderr
    uninterrupted = request_counts(fake_server.requests)
    assert sum(uninterrupted.values()) > 400
    assert Summary.read(tmp_path / "clean.jsonl.summary.json").stages[0].dropped["no_information_gain"] > 10

    fake_server.requests.clear()
    out = tmp_path / "out.jsonl"
    args = ["evol", str(tmp_path / "seeds.json"), "-o", str(out), *common]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(fake_server.requests) < 200 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    before = len(fake_server.requests)
    assert 200 <= before < sum(uninterrupted.values()) and not out.exists()
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    twice = request_counts(fake_server.requests) - uninterrupted
    assert sum(twice.values()) <= 8, "only requests in flight at the kill are sent again"
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    rejected = tmp_path / "out.jsonl.rejected.jsonl"
    assert rejected.read_bytes() == (tmp_path / "clean.jsonl.rejected.jsonl").read_bytes()
    stage = Summary.read(tmp_path / "out.jsonl.summary.json").stages[0]
    assert stage.notes["replayed"] > 0 and stage.sent == len(fake_server.requests) - before

    fake_server.requests.clear()
    again = run_cli(*args, env=cli_env(fake_server))
    assert again.returncode == 0 and fake_server.requests == []
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    summary = Summary.read(tmp_path / "out.jsonl.summary.json")
    assert summary.stages[0].notes["replayed"] == 180 and summary.stages[0].cached == sum(uninterrupted.values())
    assert summary.meta["per_round"] == Summary.read(tmp_path / "clean.jsonl.summary.json").meta["per_round"]


def test_budget_stops_cleanly_and_a_rerun_finishes_the_same_output(fake_server, tmp_path):
    def priced(body, number):
        reply = judged_script(body, number)
        return Reply(text=reply, usage={"prompt_tokens": 0, "completion_tokens": 1000})

    fake_server.script = priced
    seeds_file(tmp_path / "seeds.json", 5)
    base = ["evol", str(tmp_path / "seeds.json"), "--rounds", "2", "--seed", str(SEED), "--concurrency", "1",
            "--price-input", "0", "--price-output", "1"]
    reference = run_cli(*base, "-o", str(tmp_path / "reference.json"), env=cli_env(fake_server))
    assert reference.returncode == 0, reference.stderr
    total = len(fake_server.requests)
    fake_server.requests.clear()
    out = tmp_path / "out.json"
    stopped = run_cli(*base, "-o", str(out), "--max-cost", "0.0055", env=cli_env(fake_server))
    assert stopped.returncode == 4 and "--max-cost" in stopped.stderr and "pending" in stopped.stderr
    summary = Summary.read(tmp_path / "out.json.summary.json")
    assert summary.meta["stopped"] and summary.meta["pending"] > 0
    assert len(json.loads(out.read_text())) == summary.stages[0].notes["evolved"] < 10
    finished = run_cli(*base, "-o", str(out), env=cli_env(fake_server))
    assert finished.returncode == 0, finished.stderr
    assert out.read_bytes() == (tmp_path / "reference.json").read_bytes()
    assert len(fake_server.requests) == total


@pytest.mark.parametrize(
    ("extra", "content", "expected"),
    [
        ([], '[{"instruction": "a"},\n  {"input": "no instruction"}]', "seeds.json (record 2): record has no"),
        ([], '{"instruction": "a"}\n{"instruction": "b"\n', "seeds.json:2"),
        ([], "", "seeds.json: file is empty"),
        (["--rounds", "0"], '[{"instruction": "a"}]', "--rounds must be at least 1"),
        (["--methods", "constraints,deepen"], '[{"instruction": "a"}]', "unknown evolution method 'deepen'"),
        (["--lang", "fr"], '[{"instruction": "a"}]', "--lang must be one of en, zh"),
        (["--no-answers", "--answer-model", "m"], '[{"instruction": "a"}]', "--answer-model and --answer-system"),
        (["--templates", "nowhere"], '[{"instruction": "a"}]', "nowhere: --templates must be a directory"),
    ],
)
def test_bad_input_or_options_is_one_line_exit_2_and_no_output(fake_server, tmp_path, extra, content, expected):
    (tmp_path / "seeds.json").write_text(content)
    out = tmp_path / "out.json"
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(out), *extra, env=cli_env(fake_server))
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and fake_server.requests == []


def test_a_broken_replacement_template_is_named_before_any_request(fake_server, tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "reasoning.txt").write_text("Make it harder.")
    seeds_file(tmp_path / "seeds.json", 2)
    done = run_cli("evol", str(tmp_path / "seeds.json"), "-o", str(tmp_path / "out.json"), "--templates",
                   str(tmp_path / "templates"), env=cli_env(fake_server))
    assert done.returncode == 2
    assert "reasoning.txt: template lacks the placeholder {instruction}" in done.stderr
    assert fake_server.requests == [] and not (tmp_path / "out.json").exists()


def test_help_lists_the_recipe_options_and_wizardlm_defaults():
    shown = run_cli("evol", "--help", env=cli_env(COLUMNS="200")).stdout
    for flag in ("--rounds", "--methods", "--lang", "--no-answers", "--answer-model", "--answer-system",
                 "--no-judge", "--keep-original", "--templates", "--seed", "--max-cost", "--fresh"):
        assert flag in shown
    assert re.search(r"--temperature\s.*1\.0", shown) and re.search(r"--max-tokens\s.*2048", shown)


def test_the_api_and_pipeline_step_default_to_the_commands_options_and_sampling(monkeypatch):
    """One typed place: `EvolOptions` (the API), the `evol` step and `distillery evol` agree on every default."""
    import dataclasses
    import inspect
    from pathlib import Path

    from distillery import cli
    from distillery.evol import EvolOptions
    from distillery.recipes import STEPS

    flags = {name: p.default for name, p in inspect.signature(cli.evol).parameters.items()}
    api = EvolOptions(input=Path("seeds.json"), output=Path("out.json"))
    for name in ("temperature", "top_p", "max_tokens"):
        assert getattr(api.endpoint, name) == flags[name], name
    step = STEPS["evol"]()
    for spec in dataclasses.fields(step.options):
        if spec.name in flags and flags[spec.name] is not None:
            assert getattr(step.options, spec.name) == getattr(api, spec.name) == flags[spec.name], spec.name
    assert tuple(step.options.methods) == tuple(api.methods) == METHODS
    monkeypatch.setenv("DISTILLERY_MODEL", "m")
    resolved = step.resolved_endpoint()
    assert (resolved.temperature, resolved.top_p, resolved.max_tokens) == (
        flags["temperature"], flags["top_p"], flags["max_tokens"])
