"""`distillery self-instruct` against a scripted teacher whose answers mix good tasks with poison."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ANCHORS, cli_env, cli_exe, run_cli
from fake_openai import Reply, user_text
from typer.testing import CliRunner

from distillery import self_instruct
from distillery.cli import app
from distillery.dedup import RougeIndex, rouge_l, tokenize
from distillery.errors import UserError
from distillery.llm import EndpointOptions
from distillery.self_instruct import (
    EN_LABELS,
    ZH_LABELS,
    BlocklistFilter,
    LanguageFilter,
    PromptTemplate,
    SelfInstructOptions,
    build_filters,
    encode_examples,
    examples_pool,
    generate,
    language_matches,
    load_seeds,
    parse_response,
)
from distillery.sql_check import check_sql
from distillery.summary import Summary

EN_SEEDS = ANCHORS / "alpaca_seed_tasks.jsonl"
ZH_SEEDS = ANCHORS / "belle_zh_seed_tasks.json"

EN_WORDS = (
    "garden river budget window teacher market winter bridge kitchen orchard lantern harbor meadow festival "
    "library mountain engine village pocket blanket ladder pencil station tunnel castle farmer doctor painter "
    "sailor baker student neighbor captain traveler pilot writer singer coffee bread apple butter cheese honey "
    "pepper lemon carrot potato tomato salad soup forest desert island valley canyon ocean lake beach cliff "
    "glacier volcano prairie swamp morning evening weekend holiday summer autumn spring midnight sunrise sunset"
).split()
EN_VERBS = "Explain Describe Compare Summarize Suggest Outline Evaluate Recommend Plan Analyze Propose".split()
ZH_WORDS = (
    "经济 学校 天气 城市 农村 历史 文化 科学 技术 医院 公园 图书馆 社区 家庭 朋友 老师 学生 工作 旅行 健康 饮食 "
    "运动 环境 交通 手机 电脑 网络 市场 银行 春节 中秋 节日 传统 现代 发展 方法 计划 经验 故事 语言 文学 诗歌 "
    "小说 电影 新闻 政策 法律 能源 森林 河流 海洋 山区 草原 沙漠 气候 农业 工业 教育 考试 作业 课程 比赛 团队 "
    "咖啡 茶叶 米饭 面条 水果 蔬菜 早餐 晚饭 厨房 超市 商店 价格 消费 储蓄 投资 保险"
).split()
EXAMPLE_LINE = re.compile(r"^(\d+)\. (?:Instruction|指令)[:：] ?(.*)$", re.M)


class Teacher:
    """A fake teacher model: for every prompt it answers with `good` distinct valid tasks and a batch of
    poison, parsing the prompt's own examples to make near-copies of them. Every text it produces is
    recorded as good or poison, so a test can check exactly what was kept."""

    def __init__(self, lang: str = "en", sql: bool = False, good: int = 4):
        self.lang, self.sql, self.good_per_answer = lang, sql, good
        self.labels = ZH_LABELS if lang == "zh" else EN_LABELS
        self.good: set[str] = set()
        self.poison: set[str] = set()
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def words(self, count: int) -> tuple[int, list[str]]:
        with self.lock:
            number = next(self.counter)
        return number, random.Random(number).sample(ZH_WORDS if self.lang == "zh" else EN_WORDS, count)

    def good_task(self) -> tuple[str, str, str]:
        number, w = self.words(6)
        if self.lang == "zh":
            patterns = (f"请说明{w[0]}和{w[1]}对{w[2]}的影响，并谈谈{w[3]}。",
                        f"结合{w[0]}与{w[1]}，为{w[2]}设计一份关于{w[3]}的建议。",
                        f"从{w[0]}的角度分析{w[1]}、{w[2]}和{w[3]}之间的联系。")
            instruction = patterns[number % 3]
            task_input = "" if number % 2 else f"{w[4]}和{w[5]}都很重要。"
            return instruction, task_input, f"{w[0]}会改变{w[2]}，{w[3]}也很关键。"
        verb = EN_VERBS[number % len(EN_VERBS)]
        instruction = f"{verb} how the {w[0]} {w[1]} affects a {w[2]} {w[3]} near the {w[4]}."
        if self.sql:
            table, column = f"t_{w[0]}_{number}", f"c_{w[1]}"
            schema = f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, {column} TEXT, amount REAL, day DATE);"
            queries = (f"SELECT {column}, SUM(amount) FROM {table} GROUP BY {column}",
                       f"```sql\nSELECT COUNT(*) FROM {table} WHERE day >= '2024-01-01'\n```",
                       f"SELECT {column} FROM {table} WHERE {column} ILIKE '%{w[2]}%'")
            return instruction, schema, queries[number % 3]
        return instruction, "" if number % 3 == 0 else f"The {w[4]} and the {w[5]}.", \
            f"The {w[0]} and the {w[3]} work together, so the {w[5]} stays useful for everyone."

    def poison_tasks(self, examples: list[str]) -> list[tuple[str, str, str]]:
        _, w = self.words(6)
        if self.lang == "zh":
            tasks = [
                (examples[0] + "吧", "", "好的。"),
                (examples[-1] + "一下", "", "好的。"),
                (f"请根据这张图片描述{w[0]}和{w[1]}的关系。", "", f"{w[0]}和{w[1]}。"),
                ("写诗。", "", "春眠不觉晓。"),
                (f"Explain the {EN_WORDS[0]} budget for a {EN_WORDS[5]} village this year.", "", "It grows."),
                (f"请概括{w[2]}与{w[3]}在{w[4]}中的作用。", "", "This answer is written entirely in English words."),
                (f"“{w[4]}”和{w[5]}有什么共同点？", "", "都很常见。"),
            ]
        else:
            tasks = [
                (examples[0] + " today", "", "Sure."),
                (examples[-1] + " again", "", "Sure."),
                (f"Draw a picture of the {w[0]} beside the {w[1]} {w[2]}.", "", "A sketch."),
                ("Summarize this.", "Some text.", "A summary."),
                (f"- List the {w[3]} and the {w[4]} near the {w[5]}.", "", "A list."),
                (f"Describe a {w[0]} {w[1]} morning for a {w[2]} traveler.", "", ""),
            ]
        if self.sql:
            tasks += [
                (f"Count every {w[0]} {w[1]} entry per {w[2]} region.",
                 "CREATE TABLE sales (id INTEGER PRIMARY KEY, region TEXT);", "SELECT area, COUNT(*) FROM sales"),
                (f"Find the {w[3]} totals of each {w[4]} {w[5]} branch.",
                 "Table branches has columns id and total.", "SELECT total FROM branches"),
            ]
        return tasks

    def render(self, tasks: list[tuple[str, str, str]], first: int, repeat_first_label: bool) -> str:
        labels, colon = self.labels, ("：" if self.lang == "zh" else ":")
        blocks = []
        for offset, (instruction, task_input, output) in enumerate(tasks):
            n = first + offset
            head = "" if offset == 0 and not repeat_first_label else f"{n}. {labels.instruction}{colon}"
            blocks.append(f"{head} {instruction}\n{n}. {labels.input}{colon}\n{task_input or labels.no_input}\n"
                          f"{n}. {labels.output}{colon}\n{output}")
        return "\n###\n".join(blocks)

    def __call__(self, body: dict, number: int) -> Reply:
        examples = EXAMPLE_LINE.findall(user_text(body))
        first = int(examples[-1][0])
        shown = [text for _, text in examples if text]
        good = [self.good_task() for _ in range(self.good_per_answer)]
        poison = self.poison_tasks(shown)
        duplicate = good[0]
        tasks = [good[0], poison[0], good[1], *poison[1:], duplicate, *good[2:]]
        cut = number % 2 == 0
        if cut:
            tail = self.good_task()
            tasks.append(tail)
        with self.lock:
            self.good.update(task[0] for task in good)
            self.poison.update(task[0] for task in poison)
            if cut:
                self.poison.add(tail[0])
        return Reply(self.render(tasks, first, repeat_first_label=number % 3 == 0),
                     finish_reason="length" if cut else "stop")


def read_output(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def assert_clean_output(records: list[dict], teacher: Teacher, seeds: list[dict], num: int) -> None:
    """Exactly `num` distinct good tasks, no poison, and no near-duplicate pair among kept and seeds."""
    instructions = [record["instruction"] for record in records]
    assert len(records) == num
    assert len(set(instructions)) == num
    assert set(instructions) <= teacher.good
    assert not set(instructions) & teacher.poison
    kept_tokens = [tokenize(text) for text in instructions]
    seed_tokens = [tokenize(seed["instruction"]) for seed in seeds]
    for position, tokens in enumerate(kept_tokens):
        for other in kept_tokens[:position] + seed_tokens:
            assert rouge_l(tokens, other) <= 0.7


def rejected_reasons(output: Path) -> set[str]:
    lines = Path(f"{output}.rejected.jsonl").read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["reason"] for line in lines}


def journal(output: Path, stream: str) -> list[dict]:
    with sqlite3.connect(f"{output}.cache.sqlite") as connection:
        rows = connection.execute("SELECT record FROM journal WHERE stream = ? ORDER BY seq", (stream,))
        return [json.loads(text) for (text,) in rows]


# End to end through the console script


def test_english_run_keeps_exactly_num_good_tasks(fake_server, tmp_path):
    teacher = Teacher("en")
    fake_server.script = teacher
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "--seeds", "builtin:en", "--num", "30", "-o", str(out), "--with-meta",
                   "--concurrency", "4", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert "tasks written" in done.stdout
    records = read_output(out)
    assert_clean_output(records, teacher, load_seeds("builtin:en"), 30)
    assert set(records[0]) == {"instruction", "input", "output", "most_similar_instructions",
                               "avg_similarity_score", "source_request"}
    assert len(records[0]["most_similar_instructions"]) == 10
    assert all(0 <= r["avg_similarity_score"] < max(r["most_similar_instructions"].values()) for r in records)
    assert any(r["input"] == "" for r in records) and any(r["input"] for r in records)
    assert {"near_duplicate", "blocklisted", "too_short", "starts_with_punctuation", "empty_output",
            "truncated"} <= rejected_reasons(out)
    summary = Summary.read(tmp_path / "tasks.json.summary.json")
    (stage,) = summary.stages
    assert summary.meta["command"] == "self-instruct" and summary.meta["stopped"] is None
    assert stage.stage == "self_instruct" and stage.kept == 30
    assert stage.sent == len(fake_server.requests)
    assert sum(stage.dropped.values()) == len(Path(f"{out}.rejected.jsonl").read_text().splitlines())
    assert stage.dropped["near_duplicate"] > 0
    body = fake_server.requests[0]
    assert body["temperature"] == 1.0 and body["top_p"] == 1.0 and body["max_tokens"] == 3072
    prompt = user_text(body)
    assert prompt.startswith("You are asked to come up with a set of 20 diverse task instructions.")
    assert prompt.endswith("###\n4. Instruction:") and prompt.count("\n###\n") == 4


@pytest.mark.anchors
def test_chinese_run_keeps_only_chinese(fake_server, tmp_path):
    teacher = Teacher("zh")
    fake_server.script = teacher
    out = tmp_path / "tasks.jsonl"
    done = run_cli("self-instruct", "--lang", "zh", "--seeds", str(ZH_SEEDS), "--num", "25", "-o", str(out),
                   "--constraint", "每个任务都与个人理财有关。", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    records = read_output(out)
    assert_clean_output(records, teacher, load_seeds(str(ZH_SEEDS)), 25)
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    assert {"near_duplicate", "blocklisted", "too_short", "wrong_language", "starts_with_punctuation",
            "truncated"} <= rejected_reasons(out)
    prompt = user_text(fake_server.requests[0])
    assert prompt.startswith("请你构思一组共 20 个多样化的任务指令") and prompt.endswith("###\n4. 指令：")
    assert "1. 输入：\n" in prompt and "\n9. 每个任务都与个人理财有关。\n\n下面是 20 个任务的列表：\n" in prompt


def test_text_to_sql_keeps_only_queries_that_run(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.base_url)
    teacher = Teacher("en", sql=True)
    fake_server.script = teacher
    out = tmp_path / "sql.json"
    result = generate(SelfInstructOptions(
        output=out, num=20, task_type="text-to-sql", prompt_examples=2,
        endpoint=EndpointOptions(model="fake", concurrency=4, temperature=1.0, top_p=1.0, max_tokens=3072),
    ), progress=False)
    assert result.exit_code == 0 and result.written == 20
    records = read_output(out)
    assert_clean_output(records, teacher, load_seeds("builtin:sql"), 20)
    for record in records:
        assert record["input"].startswith("CREATE TABLE")
        verdict = check_sql(record["input"], record["output"], dialects=())
        assert verdict.ok, (record, verdict.problem)
        assert "```" not in record["output"] and "ILIKE" not in record["output"]
    assert "sql_invalid" in rejected_reasons(out)
    rejected = [json.loads(line) for line in Path(f"{out}.rejected.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rejected} == {"self_instruct"}
    details = [r["detail"]["detail"] or "" for r in rejected]
    assert any("no such column: area" in d for d in details) and any(d.startswith("schema: ") for d in details)
    prompt = user_text(fake_server.requests[0])
    assert "10. Every task is a text-to-SQL task" in prompt and "CREATE TABLE" in prompt


def test_kill_9_mid_run_then_rerun_finishes_exactly(fake_server, tmp_path):
    teacher = Teacher("zh", good=3)
    fake_server.script = teacher
    fake_server.latency = 0.05
    out = tmp_path / "tasks.json"
    args = ["self-instruct", "--lang", "zh", "--seeds", "builtin:zh", "--num", "60", "-o", str(out),
            "--concurrency", "4", "--machine-examples", "2", "--with-meta"]
    victim = subprocess.Popen([cli_exe(), *args], env=cli_env(fake_server),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sum(fake_server.answered.values()) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not out.exists()
    kept_before = journal(out, "accepted")
    assert 0 < len(kept_before) < 60
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    records = read_output(out)
    assert_clean_output(records, teacher, load_seeds("builtin:zh"), 60)
    assert [r["instruction"] for r in records[: len(kept_before)]] == [r["instruction"] for r in kept_before]
    twice = [prompt for prompt, count in fake_server.answered.items() if count > 1]
    assert len(twice) <= 4, "only requests in flight at the kill may be sent again"
    issued = {entry["request"]: entry["messages"][-1]["content"] for entry in journal(out, "issued")}
    processed = {entry["request"] for entry in journal(out, "processed")}
    assert len(issued) == len(set(issued.values()))
    assert set(fake_server.answered) <= set(issued.values())
    wasted = [n for n, prompt in issued.items() if n not in processed and prompt in fake_server.answered]
    assert len(wasted) <= 4, "answered requests were all used, except those in flight at the end"
    unprocessed = set(issued) - processed
    assert all(n > max(issued) - 4 for n in unprocessed), "requests cut off by the kill were issued again"
    machine = [r["instruction"] for r in kept_before]
    assert any(any(text in user_text(body) for text in machine) for body in fake_server.requests)


def test_rerun_of_a_finished_run_sends_nothing_and_a_larger_num_extends_it(fake_server, tmp_path):
    teacher = Teacher("zh")
    fake_server.script = teacher
    out = tmp_path / "tasks.json"
    base = ["self-instruct", "--lang", "zh", "--seeds", "builtin:zh", "-o", str(out), "--concurrency", "2"]
    assert run_cli(*base, "--num", "10", env=cli_env(fake_server)).returncode == 0
    first = read_output(out)
    sent = len(fake_server.requests)
    assert run_cli(*base, "--num", "10", env=cli_env(fake_server)).returncode == 0
    assert read_output(out) == first and len(fake_server.requests) == sent
    assert run_cli(*base, "--num", "25", env=cli_env(fake_server)).returncode == 0
    extended = read_output(out)
    assert extended[:10] == first
    assert_clean_output(extended, teacher, load_seeds("builtin:zh"), 25)


def test_budget_stops_cleanly_with_exit_4_and_a_rerun_finishes(fake_server, tmp_path):
    teacher = Teacher("zh", good=2)

    def priced(body, number):
        reply = teacher(body, number)
        reply.usage = {"prompt_tokens": 0, "completion_tokens": 1000}
        return reply

    fake_server.script = priced
    out = tmp_path / "tasks.json"
    base = ["self-instruct", "--lang", "zh", "--seeds", "builtin:zh", "-o", str(out), "--num", "12",
            "--concurrency", "1", "--price-input", "0", "--price-output", "1"]
    stopped = run_cli(*base, "--max-cost", "0.0025", env=cli_env(fake_server))
    assert stopped.returncode == 4 and "--max-cost" in stopped.stderr
    assert len(read_output(out)) == 6
    assert Summary.read(Path(f"{out}.summary.json")).meta["stopped"].startswith("--max-cost")
    finished = run_cli(*base, env=cli_env(fake_server))
    assert finished.returncode == 0, finished.stderr
    assert_clean_output(read_output(out), teacher, load_seeds("builtin:zh"), 12)


def test_a_model_that_never_follows_the_format_stops_after_10_answers(fake_server, tmp_path):
    """It used to send 100 requests (114 with --lang zh against an English-only model) before giving up."""
    fake_server.script = lambda body, number: "I am sorry, but I can only chat."
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "--lang", "zh", "--seeds", "builtin:zh", "-o", str(out), "--num", "5",
                   "--concurrency", "1", env=cli_env(fake_server))
    assert done.returncode == 3 and "none of the first 10 answers could be parsed" in " ".join(done.stderr.split())
    assert "use a teacher model that follows the format" in " ".join(done.stderr.split())
    assert "Re-run the same command" not in done.stderr, "a re-run would replay the same answers from the cache"
    assert read_output(out) == [] and len(fake_server.requests) == 10
    stage = Summary.read(Path(f"{out}.summary.json")).stages[0]
    assert stage.notes["parse_failures"] == stage.notes["responses"] == 10 == stage.dropped["unparseable"]


def test_a_model_that_mostly_ignores_the_format_stops_after_10_answers(fake_server, tmp_path):
    """One parseable answer among chatter used to disable the format probe, leaving only the 100-answer stall
    rule: SmolLM2-135M, the demo teacher, parsed 1 of its first 11 answers (10 minutes on 2 busy cores) and
    went on towards 100 more."""
    task = ("Describe how a slow river bend shapes the daily life of a quiet harbor town.\n4. Input:\n<noinput>\n"
            "4. Output:\nThe bend slows the water, so boats moor safely and the market grows along the quay.")
    fake_server.script = lambda body, number: task if number == 3 else "Sure! Here are some ideas for you."
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "-o", str(out), "--num", "5", "--concurrency", "1", env=cli_env(fake_server))
    assert done.returncode == 3 and "only 1 of the first 10 answers could be parsed" in " ".join(done.stderr.split())
    assert len(fake_server.requests) == 10 and len(read_output(out)) == 1


def test_answers_that_parse_but_give_nothing_new_stop_after_100(fake_server, tmp_path):
    seed = load_seeds("builtin:en")[0]
    block = f"{seed['instruction']}\n4. Input:\n{seed['input'] or '<noinput>'}\n4. Output:\n{seed['output']}"
    fake_server.script = lambda body, number: block
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "-o", str(out), "--num", "5", "--concurrency", "4", env=cli_env(fake_server))
    assert done.returncode == 3 and "gave no new record" in " ".join(done.stderr.split())
    assert 100 <= len(fake_server.requests) <= 104


def test_a_refused_request_after_answered_ones_is_recorded_and_the_run_goes_on(fake_server, tmp_path):
    """A 404 (or 401) on one request among answered ones used to stop the run with no output at all. It is a
    request-level failure, recorded like respond's and named on stderr; only an endpoint that refuses everything
    is fatal. The run still reaches --num from other answers, so it exits 0."""
    teacher = Teacher("en")
    fake_server.script = lambda body, number: Reply(status=404) if number == 3 else teacher(body, number)
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "-o", str(out), "--num", "30", "--concurrency", "1", env=cli_env(fake_server))
    assert done.returncode == 0 and "1 request(s) failed after retries" in done.stderr
    assert len(read_output(out)) == 30
    (failed,) = [json.loads(line) for line in Path(f"{out}.failed.jsonl").read_text().splitlines()]
    assert failed["record"]["source_request"] == 2 and "HTTP 404" in failed["detail"]
    assert Summary.read(Path(f"{out}.summary.json")).stages[0].dropped["request_failed"] == 1


def test_an_endpoint_that_refuses_every_request_is_one_clear_error(fake_server, tmp_path):
    fake_server.script = lambda body, number: Reply(status=401, error="invalid key")
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "-o", str(out), "--num", "5", "--concurrency", "1", env=cli_env(fake_server))
    assert done.returncode == 2 and "HTTP 401" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_an_endpoint_that_keeps_failing_stops_with_exit_3(fake_server, tmp_path):
    fake_server.script = lambda body, number: Reply(status=500)
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "--lang", "zh", "--seeds", "builtin:zh", "-o", str(out), "--num", "5",
                   "--concurrency", "2", "--max-retries", "0", env=cli_env(fake_server))
    assert done.returncode == 3 and "requests in a row failed" in done.stderr
    assert 10 <= len(fake_server.requests) <= 12


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--seeds", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--seeds", "builtin:klingon"], "unknown seed set 'builtin:klingon'"),
        (["--seeds", "{empty}"], "file is empty"),
        (["--seeds", "{no_tasks}"], "holds no seed tasks"),
        (["--seeds", "{no_output}"], "no_output.jsonl:2: seed task needs a non-empty string 'output'"),
        (["--seeds", "{bad_instances}"], "bad_instances.jsonl:1: 'instances' must be a non-empty list of objects"),
        (["--seeds", "builtin:en", "--template", "missing.txt"], "missing.txt: no such file"),
        (["--seeds", "builtin:en", "--template", "{examples_only}", "--constraint", "Be kind."],
         "has no {requirements} slot"),
    ],
)
def test_bad_seeds_and_templates_exit_2_without_output(fake_server, tmp_path, extra, expected):
    files = {
        "empty": ("empty.jsonl", ""),
        "no_tasks": ("no_tasks.json", "[]"),
        "no_output": ("no_output.jsonl", '{"instruction": "a", "instances": [{"input": "", "output": "b"}]}\n'
                                         '{"instruction": "c", "instances": [{"input": "", "output": ""}]}\n'),
        "bad_instances": ("bad_instances.jsonl", '{"instruction": "a", "instances": {"input": "", "output": "b"}}\n'),
        "examples_only": ("examples_only.txt", "Write tasks.\n{examples}"),
    }
    for key, (name, content) in files.items():
        (tmp_path / name).write_text(content)
        extra = [arg.replace("{" + key + "}", str(tmp_path / name)) for arg in extra]
    out = tmp_path / "out.json"
    done = subprocess.run([cli_exe(), "self-instruct", "-o", str(out), *extra], capture_output=True, text=True,
                          env=cli_env(fake_server), cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []
    assert fake_server.requests == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--lang", "fr"], "--lang fr has no built-in template or seeds"),
        (["--lang", "xx"], "unknown --lang 'xx'"),
        (["--task-type", "poetry"], "unknown --task-type 'poetry'"),
        (["--tasks-per-request", "3"], "--tasks-per-request must exceed"),
        (["--prompt-examples", "2", "--machine-examples", "2", "--tasks-per-request", "4"],
         "--tasks-per-request must exceed"),
        (["--rouge-threshold", "1.5"], "--rouge-threshold must be between 0 and 1"),
        (["--min-length", "10", "--max-length", "5"], "--min-length must be at least 1 and at most --max-length"),
        (["--num", "0"], "--num must be at least 1"),
        (["-o", "out.parquet"], "writes a JSON list (.json) or JSON Lines (.jsonl)"),
    ],
)
def test_impossible_options_are_user_errors(fake_server, tmp_path, extra, expected):
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["self-instruct", "-o", str(out), *extra], env=cli_env(fake_server))
    assert isinstance(result.exception, UserError), result.output
    assert expected in str(result.exception)
    assert list(tmp_path.iterdir()) == [] and fake_server.requests == []


# The recipe's parts, in process


@pytest.mark.anchors
def test_seed_files_are_told_apart_by_content(tmp_path):
    belle = load_seeds(str(ZH_SEEDS))  # a .json file that really holds JSONL seed tasks
    assert len(belle) == 175 and belle[0] == {
        "instruction": "请以下面词语为主题写一首诗", "input": "夏天",
        "output": "不但春妍夏亦佳，随缘花草是生涯。\n鹿葱解插纤长柄，金凤仍开最小花。",
    }
    alpaca_json = tmp_path / "alpaca.jsonl"
    alpaca_json.write_text(json.dumps([{"instruction": "Name a color.", "output": "Blue"},
                                       {"instruction": "Add them.", "input": "2 and 3", "output": "5"}]))
    assert load_seeds(str(alpaca_json)) == [{"instruction": "Name a color.", "input": "", "output": "Blue"},
                                            {"instruction": "Add them.", "input": "2 and 3", "output": "5"}]
    assert len(load_seeds(str(EN_SEEDS))) == 175


def test_examples_are_encoded_as_alpaca_blocks():
    tasks = [{"instruction": "Name  a\ncolor:", "input": "", "output": "Blue"},
             {"instruction": "Add them.", "input": "2 and 3", "output": "5"}]
    assert encode_examples(tasks, EN_LABELS) == (
        "###\n1. Instruction: Name a color\n1. Input:\n<noinput>\n1. Output:\nBlue\n"
        "###\n2. Instruction: Add them.\n2. Input:\n2 and 3\n2. Output:\n5\n###\n3. Instruction:"
    )
    assert encode_examples(tasks[:1], ZH_LABELS) == (
        "###\n1. 指令：Name a color\n1. 输入：\n<无输入>\n1. 输出：\nBlue\n###\n2. 指令："
    )


@pytest.mark.anchors
def test_constraints_continue_the_requirement_numbers(tmp_path):
    options = SelfInstructOptions(output=tmp_path / "o.json", constraints=["Every task is about personal finance."])
    prompt = PromptTemplate.load(options).render(load_seeds(str(EN_SEEDS))[:3], ["Be concise."], 20)
    assert "\n9. The output should be an appropriate response" in prompt
    assert "\n10. Be concise.\n\nList of 20 tasks:\n###\n1. Instruction:" in prompt
    bare = PromptTemplate.load(SelfInstructOptions(output=tmp_path / "o.json")).render([], [], 7)
    assert "fewer than 100 words.\n\nList of 7 tasks:" in bare and "{" not in bare


ANSWER = """ Rewrite the sentence in the passive voice.
4. Input:
The committee approved the new budget.
4. Output:
The new budget was approved by the committee.
###
5．Instruction：Name three rivers in Africa.
5. Input:
<noinput>
5. Output:
The Nile, the Congo and the Niger.
###
**9. Instruction:** Translate the proverb into plain English.
9. Input:
Still waters run deep.
###
12. Instruction: Give a synonym for happy.
12. Input:
<No Input>
12. Output:
Joyful
###
13. Instruction: Explain why the sky"""


def test_parser_tolerates_what_models_write():
    parsed = parse_response(ANSWER, "stop")
    assert parsed.tasks == [
        {"instruction": "Rewrite the sentence in the passive voice.",
         "input": "The committee approved the new budget.", "output": "The new budget was approved by the committee."},
        {"instruction": "Name three rivers in Africa.", "input": "", "output": "The Nile, the Congo and the Niger."},
        {"instruction": "Give a synonym for happy.", "input": "", "output": "Joyful"},
    ]
    assert parsed.failures == ["instruction: Translate the proverb into plain English.\ninput: Still waters run deep."]
    assert parsed.truncated is None


def test_parser_drops_the_last_block_when_cut_off():
    text = ANSWER.rsplit("###", 1)[0]
    parsed = parse_response(text, "length")
    assert [task["instruction"] for task in parsed.tasks][-1] == "Name three rivers in Africa."
    assert parsed.truncated == {"instruction": "Give a synonym for happy.", "input": "<No Input>", "output": "Joyful"}
    assert parse_response(text, "stop").tasks[-1]["instruction"] == "Give a synonym for happy."


def test_parser_reads_chinese_labels_and_counts_prose_as_a_failure():
    answer = "3. 指令：写一首关于秋天的诗\n3. 输入：\n<无输入>\n3. 输出：\n秋风起兮白云飞。\n###\n4. 指令："
    parsed = parse_response(answer, "stop")
    assert parsed.tasks == [{"instruction": "写一首关于秋天的诗", "input": "", "output": "秋风起兮白云飞。"}]
    assert parsed.failures == []
    assert parse_response("Sorry, I can't do that.", "stop").failures == ["Sorry, I can't do that."]


def block(number: int, instruction: str, task_input: str = "<noinput>", output: str = "Done.",
          label: str = "Instruction:") -> str:
    return f"{number}. {label} {instruction}\n{number}. Input:\n{task_input}\n{number}. Output:\n{output}"


@pytest.mark.parametrize("odd_label", ["Instruction 5:", "5. Task:", "5. Instruction -"])
def test_an_unrecognised_label_costs_its_own_task_only(odd_label):
    answer = "\n###\n".join([
        " Name a primary color.\n4. Input:\n<noinput>\n4. Output:\nRed",
        f"{odd_label} Spell the word backwards.\n5. Input:\nlevel\n5. Output:\nlevel",
        block(6, "Give an antonym for cold.", output="Hot"),
    ])
    parsed = parse_response(answer, "stop")
    assert parsed.tasks == [{"instruction": "Name a primary color.", "input": "", "output": "Red"},
                            {"instruction": "Give an antonym for cold.", "input": "", "output": "Hot"}]
    assert len(parsed.failures) == 1 and "Spell the word backwards." in parsed.failures[0]


def test_a_label_with_a_no_break_space_is_a_label():
    answer = block(4, "Name a primary color.", output="Red") + "\n###\n" + block(5, "Name a planet.", output="Mars")
    parsed = parse_response(answer.replace("5. Instruction", "5.\u00a0Instruction"), "stop")
    assert [task["output"] for task in parsed.tasks] == ["Red", "Mars"] and parsed.failures == []


def test_numbered_lines_inside_an_answer_are_not_labels():
    output = "Steps:\n1. Input: the raw data\n2. Output: a cleaned table\n3. Instruction: none"
    listed = "Items:\n1. Output: pens\n2. Input: paper"
    answer = block(4, "Describe a data pipeline in three steps.", task_input=listed, output=output) + "\n###\n" + \
        block(5, "Name a planet.", output="Mars")
    parsed = parse_response(answer, "stop")
    assert parsed.tasks == [
        {"instruction": "Describe a data pipeline in three steps.", "input": listed, "output": output},
        {"instruction": "Name a planet.", "input": "", "output": "Mars"},
    ]


def test_windows_line_endings_are_normalised():
    answer = (block(4, "Name a primary color.", output="Red") + "\n###\n" + block(5, "Name a planet.", output="Mars")
              + "\n###\n").replace("\n", "\r\n")
    parsed = parse_response(answer, "stop")
    assert [task["output"] for task in parsed.tasks] == ["Red", "Mars"] and parsed.failures == []
    assert not any("\r" in value for task in parsed.tasks for value in task.values())


@pytest.mark.parametrize("tail", ["\n###\n", "\n###", "\n###\n6. Instru", "\n###\n6. Instruction: Explain why the"])
def test_an_answer_cut_at_the_next_task_keeps_every_complete_one(tail):
    answer = block(4, "Name a primary color.", output="Red") + "\n###\n" + block(5, "Name a planet.", output="Mars")
    parsed = parse_response(answer + tail, "length")
    assert [task["output"] for task in parsed.tasks] == ["Red", "Mars"] and parsed.failures == []


def test_alpaca_opening_rules_and_word_boundaries(tmp_path):
    steps = build_filters(SelfInstructOptions(output=tmp_path / "o.json"), RougeIndex(0.7))
    blocklist, opening = steps[1], steps[3]
    assert opening.keep({"instruction": "Write a program that sorts a list of numbers."}) == (False, "write_a_program")
    assert opening.keep({"instruction": "🎉 Plan a surprise party for a friend."}) == (False, "non_ascii_start")
    assert opening.keep({"instruction": "Write a poem about the sea at night."}) is True
    assert blocklist.keep({"instruction": "Rename the variable file_name to something clearer."}) is True
    assert blocklist.keep({"instruction": "Explain what save_files_to_disk does in this code."}) is True
    assert blocklist.keep({"instruction": "Open the file and count its lines."}) == (False, "blocklisted")
    chinese = build_filters(SelfInstructOptions(output=tmp_path / "o.json", lang="zh"), RougeIndex(0.7))[3]
    assert chinese.keep({"instruction": "请写一首关于秋天的诗。"}) is True


def alpaca_seed_tasks() -> list[dict]:
    if not EN_SEEDS.exists():
        pytest.skip(f"anchor {EN_SEEDS} is absent")
    return load_seeds(str(EN_SEEDS))


def test_language_check_keeps_every_alpaca_seed_and_llamafactory_demo_record():
    """6 of Alpaca's 175 seeds and 14 of LLaMA-Factory's 999 English demo records used to be dropped:
    translations, "Convert ... Celsius to Fahrenheit" (read as German), lists of names, a FEN string."""
    demo_path = ANCHORS / "llamafactory_alpaca_en_demo.json"
    if not demo_path.exists():
        pytest.skip(f"anchor {demo_path} is absent")
    demo = json.loads(demo_path.read_text(encoding="utf-8"))
    check = LanguageFilter("en", check_output=True).keep
    for task in [*alpaca_seed_tasks(), *demo]:
        assert check(dict(task)) is True, task


@pytest.mark.parametrize(
    ("instruction", "output", "lang", "wrong"),
    [
        ("Décrivez les avantages du télétravail pour les familles.", "Moins de trajets.", "en", "instruction"),
        ("Erkläre, warum der Himmel am Abend rot wird.", "Wegen der Streuung.", "en", "instruction"),
        ("Nenne drei Gruende, warum Sport gesund ist.", "Herz, Kopf, Schlaf.", "en", "instruction"),
        ("Explica por qué es importante dormir bien cada noche.", "Descansa.", "en", "instruction"),
        ("请解释一下光合作用的过程。", "Plants turn light into sugar.", "en", "instruction"),
        ("Convert the temperature from Celsius to Fahrenheit.", "Multiply by 9/5 and add 32.", "zh", "instruction"),
        ("Describe the weather in Paris in spring.",
         "Au printemps, il fait doux à Paris et les arbres fleurissent le long de la Seine.", "en", "output"),
        ("请概括经济与学校在城市中的作用。", "This answer is written entirely in English words.", "zh", "output"),
    ],
)
def test_language_check_still_drops_other_languages(instruction, output, lang, wrong):
    record = {"instruction": instruction, "input": "", "output": output}
    assert LanguageFilter(lang, check_output=True).keep(record) == (False, "wrong_language")
    assert record["detail"].startswith(f"not {lang}: {wrong}")


def test_built_in_seeds_pass_the_language_check_of_their_language():
    """Checked here once, so that a run never spends time detecting the built-in seeds' language."""
    for name, lang in (("en", "en"), ("zh", "zh"), ("sql", "en")):
        check = LanguageFilter(lang, check_output=name != "sql").keep
        seeds = load_seeds(f"builtin:{name}")
        pool = examples_pool(seeds, lang, 3)
        assert all(check(dict(seed)) is True for seed in pool), name


def test_alpaca_prompt_txt_works_as_template(fake_server, tmp_path):
    """Alpaca's prompt.txt has no {examples} slot: its examples follow the text."""
    template = ANCHORS / "alpaca_prompt.txt"
    if not template.exists():
        pytest.skip(f"anchor {template} is absent")
    teacher = Teacher("en")
    fake_server.script = teacher
    out = tmp_path / "tasks.json"
    done = run_cli("self-instruct", "--template", str(template), "--seeds", str(EN_SEEDS), "--num", "5",
                   "-o", str(out), "--concurrency", "1", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert len(read_output(out)) == 5
    prompt = user_text(fake_server.requests[0])
    assert prompt.startswith(template.read_text(encoding="utf-8").rstrip() + "\n###\n1. Instruction: ")
    assert prompt.endswith("###\n4. Instruction:")


def test_no_language_detection_before_the_first_request_or_on_a_finished_rerun(fake_server, tmp_path, monkeypatch):
    """Detecting the built-in seeds' language took about 23 s before the first request, and a finished run
    re-run spent 10 CPU s again sending nothing."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.base_url)
    detections = []
    real = self_instruct.is_language
    monkeypatch.setattr(self_instruct, "is_language", lambda *args: detections.append(args) or real(*args))
    teacher = Teacher("en")
    seen_at_request = []
    fake_server.script = lambda body, number: seen_at_request.append(len(detections)) or teacher(body, number)
    options = SelfInstructOptions(output=tmp_path / "t.json", num=8, seeds="builtin:sql",
                                  endpoint=EndpointOptions(model="fake", concurrency=1))
    assert generate(options, progress=False).written == 8
    assert seen_at_request[0] == 0 and detections, "answers are checked, seeds are not"
    monkeypatch.setattr(self_instruct, "is_language", lambda *args: pytest.fail("a finished run detects languages"))
    sent = len(fake_server.requests)
    rerun = generate(options, progress=False)
    assert rerun.written == 8 and rerun.exit_code == 0 and len(fake_server.requests) == sent


def test_blocklist_matches_whole_words_in_any_case():
    keep = BlocklistFilter(["image", "go to", "图片"]).keep
    assert keep({"instruction": "Describe this IMAGE."}) == (False, "blocklisted")
    assert keep({"instruction": "Where should I go to study?"}) == (False, "blocklisted")
    assert keep({"instruction": "请看这张图片并回答"}) == (False, "blocklisted")
    assert keep({"instruction": "Explain what imagery means in poetry."}) is True
    assert keep({"instruction": "Is it good to go tomorrow?"}) is True
    options = SelfInstructOptions(output=Path("o.json"), block=["  ", " Crypto "], default_blocklist=False)
    assert options.blocklist == ["Crypto"]
    assert SelfInstructOptions(output=Path("o.json"), lang="zh", block=["股票"]).blocklist[-2:] == ["链接", "股票"]


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("Yes", "en", True),
        ("The answer depends on the season and the local weather.", "en", True),
        ("Le chat dort sur le canapé depuis ce matin.", "en", False),
        ("Paris", "en", True),
        ("Guten Morgen, wie geht es dir heute?", "en", False),
        ("请解释一下这句话的意思。", "zh", True),
        ("Please explain what this sentence means.", "zh", False),
        ("Yes", "zh", False),
        ("42", "zh", True),
        ("| Name | Age |\n|---|---|\n| Bob | 3 |", "en", True),
        ("Das ist ein kurzer deutscher Satz hier.", "en", False),
    ],
)
def test_language_check(text, lang, expected):
    assert language_matches(text, lang) is expected


def test_requests_in_flight_follow_what_is_still_needed(fake_server, tmp_path, monkeypatch):
    """A small --num must not pay for --concurrency answers (it used to send 16 requests to use 5), while a
    large one still keeps every slot busy."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.base_url)
    teacher = Teacher("en")
    lock = threading.Lock()
    in_flight = peak = 0

    def slow(body, number):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        with lock:
            in_flight -= 1
        return teacher(body, number)

    fake_server.script = slow

    def run(name: str, num: int, concurrency: int) -> int:
        fake_server.requests.clear()
        result = generate(SelfInstructOptions(output=tmp_path / name, num=num, endpoint=EndpointOptions(
            model="fake", concurrency=concurrency)), progress=False)
        assert result.exit_code == 0 and result.written == num
        return len(fake_server.requests)

    assert run("small.json", 20, 16) <= 7, "about 4 new tasks per answer: 5 answers are needed"
    assert peak <= 3
    peak = 0
    assert run("large.json", 200, 8) <= 60
    assert peak == 8


@pytest.mark.anchors
def test_python_api_with_alpaca_seed_file(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.base_url)
    teacher = Teacher("en")
    fake_server.script = teacher
    options = SelfInstructOptions(output=tmp_path / "api.jsonl", num=12, seeds=str(EN_SEEDS),
                                  endpoint=EndpointOptions(model="fake", concurrency=2, seed=7))
    result = generate(options, progress=False)
    assert result.exit_code == 0 and result.written == 12
    assert_clean_output(read_output(tmp_path / "api.jsonl"), teacher, load_seeds(str(EN_SEEDS)), 12)
    seeds_sent = [body["seed"] for body in fake_server.requests]
    assert sorted(seeds_sent) == list(range(7, 7 + len(seeds_sent))), "each request gets its own seed"
    alpaca_instructions = {" ".join(seed["instruction"].split()).rstrip(":") for seed in load_seeds(str(EN_SEEDS))}
    shown = EXAMPLE_LINE.findall(user_text(fake_server.requests[0]))
    assert {text for _, text in shown if text} <= alpaca_instructions


def test_builtin_seed_sets_load_and_sql_seeds_run():
    assert len(load_seeds("builtin:en")) >= 60 and len(load_seeds("builtin:zh")) >= 60
    sql = load_seeds("builtin:sql")
    assert len(sql) >= 20
    assert all(check_sql(seed["input"], seed["output"], dialects=()).ok for seed in sql)
    chinese = [seed for seed in sql if re.search(r"[\u4e00-\u9fff]", seed["instruction"])]
    assert 0 < len(chinese) < 6, "the pool rules below depend on builtin:sql mixing a few Chinese tasks in"
    english_pool = examples_pool(sql, "en", 3)
    assert len(english_pool) == len(sql) - len(chinese) and not any(seed in chinese for seed in english_pool)
    assert examples_pool(sql, "zh", 3) == sql, "too few Chinese seeds to vary the prompts: all are shown"

