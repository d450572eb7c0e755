"""`distillery magpie`: raw completions that carry the model family's pre-query template (checked in the request
bodies at the fake server, and in the token counts of the embedded llama.cpp teacher), multi-turn, the cache,
and the refusal of endpoints that cannot take a raw prompt."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import cli_env, reported, run_cli
from fake_openai import Reply
from test_local import needs_model

from distillery.formats import to_messages
from distillery.summary import Summary

LLAMA3_USER = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_TO_ASSISTANT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def magpie_script(body: dict, number: int) -> Reply:
    """A query when the prompt ends in an open user turn, an answer when it ends in the assistant's header."""
    prompt = body["prompt"]
    if prompt.endswith(("<|end_header_id|>\n\n", "<|im_start|>assistant\n")) and not prompt.endswith(
            "user<|end_header_id|>\n\n"):
        return Reply(text=f" Answer number {len(prompt)}.")
    return Reply(text=f"Question number {len(prompt)} (sample {body.get('seed')})?\n")


def test_llama3_bodies_carry_the_pre_query_template_and_turns_continue_it(fake_server, tmp_path):
    fake_server.completion_script = magpie_script
    out = tmp_path / "magpie.jsonl"
    args = ["magpie", "-o", str(out), "--num", "3", "--turns", "2", "--model", "my-model",
            "--template-family", "llama3", "--seed", "11"]
    done = run_cli(*args, env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert fake_server.requests == [], "everything goes to /completions"
    bodies = fake_server.completions
    assert len(bodies) == 3 * 2 * 2
    queries = [b for b in bodies if b["prompt"].endswith("user<|end_header_id|>\n\n")]
    answers = [b for b in bodies if b["prompt"].endswith(LLAMA3_TO_ASSISTANT)]
    assert len(queries) == len(answers) == 6
    assert sum(b["prompt"] == LLAMA3_USER for b in queries) == 3, "each conversation opens with the bare template"
    assert all(b["prompt"].startswith(LLAMA3_USER) for b in bodies)
    assert all((b["temperature"], b["top_p"], b["max_tokens"]) == (1.0, 1.0, 256) for b in queries)
    assert all((b["temperature"], b["max_tokens"]) == (0.0, 2048) for b in answers), "Magpie answers greedily"
    assert all(b["stop"] == ["<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"] for b in bodies)
    assert len({b["seed"] for b in queries}) == 6, "every query is sampled with its own seed"

    records = read_jsonl(out)
    assert len(records) == 3
    for record in records:
        messages = to_messages(record)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        assert messages[0]["content"].startswith("Question number") and messages[1]["content"].startswith("Answer")
        assert record["magpie"] == {"family": "llama3", "rounds": 2, "target": 2, "ended": None}
    second = [b for b in queries if b["prompt"] != LLAMA3_USER]
    assert all(LLAMA3_TO_ASSISTANT + " Answer" not in b["prompt"] for b in second), "turns are written back stripped"
    assert all(b["prompt"].count("<|start_header_id|>user") == 2 for b in second)
    summary = Summary.read(tmp_path / "magpie.jsonl.summary.json")
    assert summary.meta["pre_query_template"] == LLAMA3_USER and summary.stages[0].kept == 3

    fake_server.completions.clear()
    again = run_cli(*args, env=cli_env(fake_server))
    assert again.returncode == 0 and fake_server.completions == [], "the cache answers a re-run"
    assert read_jsonl(out) == records


def test_the_family_is_told_from_the_model_name_with_its_default_system(fake_server, tmp_path):
    fake_server.completion_script = lambda body, number: Reply(text="What is 2 + 2?")
    done = run_cli("magpie", "-o", str(tmp_path / "q.jsonl"), "--num", "1", "--model", "Qwen2-7B-Instruct",
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert fake_server.completions[0]["prompt"] == \
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    fake_server.completions.clear()
    done = run_cli("magpie", "-o", str(tmp_path / "s.jsonl"), "--num", "1", "--model", "SmolLM2-1.7B-Instruct",
                   "--system", "Be terse.", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert fake_server.completions[0]["prompt"] == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n"
    assert read_jsonl(tmp_path / "s.jsonl")[0]["system"] == "Be terse."


def cut_script(body: dict, number: int) -> Reply:
    """Conversation 0 is fine, 1 has its answer cut off, 2 has an empty query."""
    if body["prompt"].endswith("<|im_start|>assistant\n"):
        return Reply(text="cut", finish_reason="length") if "second" in body["prompt"] else Reply(text="Fine.")
    return Reply(text=["first?", "second?", "  "][body["seed"] // 100 % 3])


def test_empty_or_cut_off_turns_are_rejected_with_their_reason(fake_server, tmp_path):
    fake_server.completion_script = cut_script
    out = tmp_path / "out.jsonl"
    done = run_cli("magpie", "-o", str(out), "--num", "3", "--template-family", "chatml", "--model", "m",
                   "--seed", "0", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert [r["conversations"][0]["value"] for r in read_jsonl(out)] == ["first?"]
    rejected = read_jsonl(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["stage"], r["reason"]) for r in rejected] == [("magpie", "truncated_answer"), ("magpie", "empty_query")]


def test_magpie_writes_the_one_summary_and_rejection_schema_that_report_reads(fake_server, tmp_path):
    fake_server.completion_script = cut_script
    out = tmp_path / "out.jsonl"
    done = run_cli("magpie", "-o", str(out), "--num", "3", "--template-family", "chatml", "--model", "m",
                   "--seed", "0", env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    summary = Summary.read(tmp_path / "out.jsonl.summary.json")
    assert summary.meta["command"] == "magpie" and summary.meta["template_family"] == "chatml"
    (stage,) = summary.stages
    assert (stage.stage, stage.seen, stage.kept) == ("magpie", 3, 1) and stage.sent == len(fake_server.completions)
    assert stage.dropped == {"truncated_answer": 1, "empty_query": 1}
    rejections = reported(out, tmp_path)
    assert [(s.name, s.seen, s.kept) for s in rejections.stages] == [("magpie", 3, 1)]
    assert set(rejections.examples) == {"truncated_answer", "empty_query"}


def test_chat_only_endpoints_and_unknown_templates_are_refused_in_one_line(fake_server, tmp_path):
    out = tmp_path / "out.jsonl"
    hosted = run_cli("magpie", "-o", str(out), "--model", "Qwen2-7B-Instruct", "--base-url",
                     "https://api.deepseek.com/v1", env=cli_env())
    assert hosted.returncode == 2 and "api.deepseek.com is a chat-only API" in hosted.stderr
    assert len(hosted.stderr.strip().splitlines()) == 1

    fake_server.completion_script = lambda body, number: Reply(status=404, error="Not Found")
    missing = run_cli("magpie", "-o", str(out), "--model", "Qwen2-7B-Instruct", env=cli_env(fake_server))
    assert missing.returncode == 2, missing.stderr
    assert "takes no raw prompt (/completions answered HTTP 404" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr

    unknown = run_cli("magpie", "-o", str(out), "--model", "gpt-4o", env=cli_env(fake_server))
    assert unknown.returncode == 2 and "--template-family llama3|qwen2|chatml" in unknown.stderr
    bad = run_cli("magpie", "-o", str(out), "--model", "m", "--template-family", "gemma", env=cli_env(fake_server))
    assert bad.returncode == 2 and "--template-family must be one of" in bad.stderr
    assert not out.exists()


@needs_model
def test_magpie_on_the_embedded_teacher_sends_its_chatml_template(tmp_path):
    """SmolLM2 speaks ChatML: the server counts the bare pre-query template as 3 tokens (<|im_start|>, user, a
    newline), which it does only if it read the raw prompt's special tokens; the records parse."""
    out = tmp_path / "local.jsonl"
    done = run_cli("magpie", "-o", str(out), "--local-model", "builtin:smollm2", "--num", "3", "--max-tokens", "96",
                   "--instruction-tokens", "48", "--seed", "1", "--system",
                   "Answer every question in one short sentence.", env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    summary = Summary.read(tmp_path / "local.jsonl.summary.json")
    assert summary.meta["template_family"] == "chatml"
    records = read_jsonl(out)
    rejected = read_jsonl(tmp_path / "local.jsonl.rejected.jsonl") if summary.stages[0].dropped else []
    assert records and len(records) + len(rejected) == 3
    for record in records:
        assert [m["role"] for m in to_messages(record)] == ["system", "user", "assistant"]
    with sqlite3.connect(tmp_path / "local.jsonl.cache.sqlite") as db:
        rows = [(json.loads(request), tokens) for request, tokens in
                db.execute("SELECT request, prompt_tokens FROM responses")]
    pre_query = "<|im_start|>system\nAnswer every question in one short sentence.<|im_end|>\n<|im_start|>user\n"
    queries = [tokens for request, tokens in rows if request["prompt"] == pre_query]
    assert len(queries) == 3
    bare = run_cli("magpie", "-o", str(tmp_path / "bare.jsonl"), "--local-model", "builtin:smollm2", "--num", "1",
                   "--max-tokens", "8", "--instruction-tokens", "8", env=cli_env(), timeout=300)
    assert bare.returncode == 0, bare.stderr
    with sqlite3.connect(tmp_path / "bare.jsonl.cache.sqlite") as db:
        counted = [tokens for request, tokens in db.execute("SELECT request, prompt_tokens FROM responses")
                   if json.loads(request)["prompt"] == "<|im_start|>user\n"]
    assert counted == [3]
