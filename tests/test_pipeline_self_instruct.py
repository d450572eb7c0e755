"""The self-instruct pipelines (`alpaca`, `belle-zh`, `text-to-sql`) end to end against a scripted teacher,
and `distillery run alpaca` killed with SIGKILL at random moments, then finished by the same command."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import cli_env, cli_exe, run_cli
from fake_openai import FakeOpenAI, Reply, user_text
from test_self_instruct import EN_WORDS, ZH_WORDS, Teacher, assert_clean_output

from distillery.pipeline import load_pipeline
from distillery.recipes import SelfInstruct
from distillery.self_instruct import load_seeds
from distillery.sql_check import check_sql
from distillery.summary import Summary

NO_LANG = ("--set", "report.lang_sample=0")


class SeededTeacher(Teacher):
    """A Teacher whose answer depends only on the request (its prompt and seed), never on the order requests
    arrive in: a resumed run is answered exactly as an uninterrupted one."""

    def __init__(self, lang: str = "en", sql: bool = False, good: int = 4):
        super().__init__(lang, sql, good)
        self.local = threading.local()

    def __call__(self, body: dict, number: int):
        key = hashlib.sha256(f"{user_text(body)}|{body.get('seed')}".encode()).digest()
        self.local.base, self.local.count = int.from_bytes(key[:6], "big"), 0
        return super().__call__(body, int.from_bytes(key[6:8], "big"))

    def words(self, count: int) -> tuple[int, list[str]]:
        number = self.local.base + self.local.count
        self.local.count += 1
        return number, random.Random(number).sample(ZH_WORDS if self.lang == "zh" else EN_WORDS, count)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_run(run: Path, name: str, teacher: Teacher, seeds: str, num: int) -> list[dict]:
    """The run's dataset is `num` clean tasks, exported for LLaMA-Factory, summarised, reported."""
    dataset = read_jsonl(run / "dataset.jsonl")
    assert_clean_output(dataset, teacher, load_seeds(seeds), num)
    assert json.loads((run / "data" / f"{name}.json").read_text(encoding="utf-8")) == dataset
    info = json.loads((run / "data" / "dataset_info.json").read_text())
    assert info[name]["file_name"] == f"{name}.json"
    summary = Summary.read(run / "summary.json")
    assert [s.stage for s in summary.stages] == ["self_instruct", "dedup", "export", "report"]
    made = summary.stages[0]
    assert made.kept == num and made.sent > 0 and made.prompt_tokens > 0
    rejected = read_jsonl(run / "rejected.jsonl")
    assert rejected and all(set(r) == {"stage", "reason", "detail", "record"} for r in rejected)
    assert sum(made.dropped.values()) == sum(r["stage"] == "self_instruct" for r in rejected)
    assert (run / "report.html").is_file()
    return dataset


@pytest.mark.parametrize(("pipeline", "name", "teacher", "seeds", "extra"), [
    ("alpaca", "alpaca", Teacher("en"), "builtin:en", ()),
    ("belle-zh", "belle_zh", Teacher("zh", good=3), "builtin:zh", ()),
    ("text-to-sql", "text_to_sql", Teacher("en", sql=True), "builtin:sql", ()),
])
def test_self_instruct_pipelines_end_to_end(fake_server, tmp_path, pipeline, name, teacher, seeds, extra):
    fake_server.script = teacher
    run = tmp_path / "run"
    done = run_cli("run", pipeline, "-o", str(run), "--set", "self_instruct.num=20", "--concurrency", "2",
                   *NO_LANG, *extra, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    dataset = check_run(run, name, teacher, seeds, 20)
    if pipeline == "text-to-sql":
        for record in dataset:
            assert check_sql(record["input"], record["output"]).ok
    sent = len(fake_server.requests)
    again = run_cli("run", pipeline, "-o", str(run), "--set", "self_instruct.num=20", "--concurrency", "2",
                    *NO_LANG, env=cli_env(fake_server))
    assert again.returncode == 0 and len(fake_server.requests) == sent  # a finished run sends nothing


def test_user_seeds_come_from_input_and_dedup_compares_with_them(fake_server, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    chosen = load_seeds("builtin:en")[:12]
    seeds.write_text("".join(json.dumps(seed) + "\n" for seed in chosen))
    fake_server.script = Teacher("en")
    run = tmp_path / "run"
    done = run_cli("run", "alpaca", "-i", str(seeds), "-o", str(run), "--set", "self_instruct.num=8", *NO_LANG,
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    prompts = " ".join(user_text(body) for body in fake_server.requests)
    assert all(seed["instruction"].split()[0] in prompts for seed in chosen[:1])
    assert read_jsonl(run / "steps" / "00-self_instruct" / "seeds.jsonl") == chosen
    dedup = Summary.read(run / "summary.json").stages[1]
    assert dedup.seen == dedup.kept == 8


def test_dry_run_estimates_self_instruct_without_sending(fake_server, tmp_path):
    done = run_cli("run", "alpaca", "--dry-run", "-o", str(tmp_path / "run"), "--set", "self_instruct.num=20",
                   "--max-tokens", "1000", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert "self_instruct: model fake-model, at most 3 requests" in done.stdout
    assert "num" in done.stdout and not fake_server.requests and not (tmp_path / "run").exists()


def test_bad_self_instruct_options_are_one_line(fake_server, tmp_path):
    done = run_cli("run", "alpaca", "-o", str(tmp_path / "run"), "--set", "self_instruct.num=0",
                   env=cli_env(fake_server))
    assert done.returncode == 2 and "--num must be at least 1" in done.stderr and "Traceback" not in done.stderr
    assert not fake_server.requests and not (tmp_path / "run").exists()
    with pytest.raises(Exception, match="has no option 'nope'"):
        load_pipeline("alpaca", ["self_instruct.nope=1"])
    assert SelfInstruct(num=5).options.num == 5


def test_a_teacher_that_ignores_the_format_stops_the_run_with_its_reason_in_one_line(fake_server, tmp_path):
    """It used to say "some requests failed after retries... run the same command again", which no request
    did and which would only replay the same chatter from the cache."""
    fake_server.script = lambda body, number: "I am sorry, but I can only chat."
    run = tmp_path / "run"
    done = run_cli("run", "alpaca", "-o", str(run), "--set", "self_instruct.num=5", "--concurrency", "1", *NO_LANG,
                   env=cli_env(fake_server, COLUMNS="80"))
    assert done.returncode == 3, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "stopped early:" in line]
    assert "none of the first 10 answers could be parsed" in line and "use a teacher model that follows" in line
    assert "requests failed" not in done.stderr and "run the same command again" not in done.stderr
    assert Summary.read(run / "summary.json").meta["unfinished"].startswith("none of the first 10 answers")


def test_kill_9_at_random_moments_then_same_command_gives_the_uninterrupted_dataset(tmp_path):
    teacher = SeededTeacher("en")
    args = ["run", "alpaca", "--set", "self_instruct.num=40", "--set", "self_instruct.machine_examples=1",
            "--seed", "7", "--concurrency", "1", *NO_LANG]
    rng = random.Random(14)
    with FakeOpenAI(teacher, latency=0.03) as server:
        run = tmp_path / "killed"
        for _ in range(2):  # two kills at random moments, each on the run the kill before left
            target = sum(server.answered.values()) + rng.randint(1, 4)
            victim = subprocess.Popen([cli_exe(), *args, "-o", str(run)], env=cli_env(server),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while sum(server.answered.values()) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.random() * 0.03)  # anywhere in the next request's life
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        assert not (run / "steps" / "00-self_instruct" / "records.jsonl").exists()
        answered_before = sum(server.answered.values())
        assert answered_before >= 2
        done = run_cli(*args, "-o", str(run), env=cli_env(server))
        assert done.returncode == 0, done.stderr
        twice = sum(count - 1 for count in server.answered.values())
        assert twice <= 2  # at most the one request in flight at each kill
    with FakeOpenAI(SeededTeacher("en"), latency=0.0) as server:
        done = run_cli(*args, "-o", str(tmp_path / "whole"), env=cli_env(server))
        assert done.returncode == 0, done.stderr
    for name in ("dataset.jsonl", "data/alpaca.json", "data/dataset_info.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    check_run(tmp_path / "killed", "alpaca", teacher, "builtin:en", 40)


def latent_teacher() -> Callable[[dict, int], Reply]:
    """A SeededTeacher whose every answer takes a random time (up to 80 ms, seeded by the prompt), so answers
    to concurrent requests arrive in an order that has nothing to do with the order they were sent in."""
    seeded = SeededTeacher("en")

    def answer(body: dict, number: int) -> Reply:
        reply = seeded(body, number)
        reply.delay = random.Random(user_text(body)).random() * 0.08
        return reply

    return answer


def test_concurrent_answers_in_any_order_and_a_kill_9_give_one_dataset(tmp_path):
    """At --concurrency 8, answers arrive in an order set by each request's random latency; they used to be
    processed in that order, so which tasks were kept (and in what order) changed from run to run."""
    args = ["run", "alpaca", "--set", "self_instruct.num=60", "--set", "self_instruct.machine_examples=2",
            "--seed", "7", "--concurrency", "8", *NO_LANG]

    for name in ("first", "second"):
        with FakeOpenAI(latent_teacher()) as server:
            done = run_cli(*args, "-o", str(tmp_path / name), env=cli_env(server))
            assert done.returncode == 0, done.stderr
    rng = random.Random(3)
    with FakeOpenAI(latent_teacher()) as server:
        victim = subprocess.Popen([cli_exe(), *args, "-o", str(tmp_path / "killed")], env=cli_env(server),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target, deadline = rng.randint(4, 10), time.monotonic() + 60
        while sum(server.answered.values()) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.random() * 0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert not (tmp_path / "killed" / "steps" / "00-self_instruct" / "records.jsonl").exists()
        done = run_cli(*args, "-o", str(tmp_path / "killed"), env=cli_env(server))
        assert done.returncode == 0, done.stderr
        assert sum(count - 1 for count in server.answered.values()) <= 8, "only requests in flight at the kill"
    first = (tmp_path / "first" / "dataset.jsonl").read_bytes()
    assert len(first.splitlines()) == 60
    for name in ("second", "killed"):
        assert (tmp_path / name / "dataset.jsonl").read_bytes() == first, name


def test_the_self_instruct_command_keeps_the_same_tasks_at_any_concurrency(tmp_path):
    """Without machine examples a prompt depends on its number alone and answers are processed in request
    order, so --concurrency changes how fast tasks come, never which."""
    outputs = []
    for concurrency in ("1", "8"):
        out = tmp_path / f"tasks-{concurrency}.jsonl"
        with FakeOpenAI(latent_teacher()) as server:
            done = run_cli("self-instruct", "--num", "40", "--seed", "7", "--concurrency", concurrency, "-o", str(out),
                           env=cli_env(server))
            assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert len(outputs[0].splitlines()) == 40 and outputs[0] == outputs[1]
