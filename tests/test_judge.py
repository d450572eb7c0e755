"""After generation: `score` (an LLM judge, pairwise too), `select` (best fraction, diversity-aware),
`decontaminate` (benchmark overlap, English and Chinese), `convert --to preference` and the `alpagasus`
pipeline, end to end through the real console script against the scripted fake endpoint."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli_env, reported, run_cli
from fake_openai import Reply, user_text

from distillery.score import parse_score, parse_verdict
from distillery.summary import Summary


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def instruction_in(prompt: str) -> str:
    """The instruction a judge prompt shows (English or Chinese layout)."""
    return re.search(r"(?:\[Instruction\]|【指令】)\n(.*?)\n\n", prompt, re.DOTALL).group(1)


# --- score ---------------------------------------------------------------------------------------------------

REPLIES = {  # instruction -> the judge's reply, in the formats real judges answer in
    "Task 0": "Score: 4\nRationale: Correct and clear.",
    "Task 1": "4/5",
    "Task 2": '{"score": 3, "rationale": "Right but thin."}',
    "任务三": "评分：4分\n理由：回答准确。",
    "Task 4": '```json\n{"rating": 5, "reason": "Complete."}\n```',
    "Task 5": "4.5\nThe answer is accurate; a worked example would make it perfect.",
    "Task 6": "I cannot judge this response.",
    "Task 7": "Score: 8",  # out of the 1-5 scale: not a score, and never clipped into one
}
EXPECTED = {"Task 0": 4.0, "Task 1": 4.0, "Task 2": 3.0, "任务三": 4.0, "Task 4": 5.0, "Task 5": 4.5}


def judge_script(body: dict, number: int) -> Reply:
    return Reply(text=REPLIES[instruction_in(user_text(body))])


def test_score_reads_every_real_world_format_and_counts_unparseable_replies(fake_server, tmp_path):
    fake_server.script = judge_script
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"instruction": name, "input": "", "output": f"answer {i}", "id": i} for i, name in enumerate(REPLIES)])
    out = tmp_path / "scored.jsonl"
    done = run_cli("score", str(source), "-o", str(out), env=cli_env(fake_server))
    assert done.returncode == 3, done.stderr  # unparseable replies leave the run incomplete
    assert "2 repl(ies) held no readable score" in done.stderr
    scored = read_jsonl(out)
    assert {r["instruction"]: r["scores"]["alpagasus"] for r in scored} == EXPECTED
    rationale = {r["instruction"]: r["rationales"]["alpagasus"] for r in scored}
    assert rationale["Task 0"] == "Correct and clear." and rationale["任务三"] == "回答准确。"
    assert rationale["Task 2"] == "Right but thin."
    failed = read_jsonl(tmp_path / "scored.jsonl.failed.jsonl")
    assert [(r["record"]["id"], r["reason"]) for r in failed] == [(6, "unparseable_score"), (7, "unparseable_score")]
    assert "cannot judge" in failed[0]["detail"]["reply"] and "scores" not in failed[0]["record"]
    (stage,) = Summary.read(tmp_path / "scored.jsonl.summary.json").stages
    assert stage.dropped == {"unparseable_score": 2} and stage.kept == 6
    prompts = {instruction_in(user_text(b)): user_text(b) for b in fake_server.requests}
    assert "【回答】" in prompts["任务三"] and "[Response]" in prompts["Task 0"]  # Chinese judged in Chinese
    assert all(b["temperature"] == 0.0 for b in fake_server.requests)


def test_a_rubric_file_is_its_own_criterion_on_its_own_scale(fake_server, tmp_path):
    fake_server.script = lambda body, n: Reply(text="Safety score: 7/10\nRationale: mild risk.")
    rubric = tmp_path / "safety.txt"
    rubric.write_text('Rate the safety of {output} for {instruction} ({input}). Reply as {"score": N}.\n')
    source = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Mix bleach?", "output": "No.", "input": ""}])
    out = tmp_path / "scored.jsonl"
    done = run_cli("score", str(source), "-o", str(out), "--rubric", str(rubric), "--scale", "0-10",
                   env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    assert read_jsonl(out)[0]["scores"] == {"safety": 7.0}
    prompt = 'Rate the safety of No. for Mix bleach? ((none)). Reply as {"score": N}.\n'
    assert user_text(fake_server.requests[0]) == prompt


@pytest.mark.parametrize(("reply", "expected"), [
    ("Score: 4", 4.0), ("**Rating:** 4.5/5", 4.5), ("评分：4分", 4.0), ("得分为 3 分", 3.0), ("4/5", 4.0),
    ("I'd give it a score of 2 out of 5.", 2.0), ('{"score": "5"}', 5.0), ("Score: 4\nRationale: a 5 would need more",
                                                                          4.0),
    ("Score: 8/10", None), ("Score: 0", None), ("somewhere between 3 and 4", None), ("", None), ("4/5 or 3/5", None),
])
def test_parse_score(reply, expected):
    assert parse_score(reply, 1, 5) == expected


@pytest.mark.parametrize(("reply", "expected"), [
    ("Better: 1", "1"), ("更好：平局", "tie"), ('{"better": 2}', "2"), ("[[1]]", "1"), ("Better: Answer 2", "2"),
    ("Both are fine.", None), ("Better: 1\nBetter: 2", None),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def biased_judge(body: dict, number: int) -> Reply:
    """Prefers an answer marked GOOD wherever it stands; between equals, always the first (position bias)."""
    prompt = user_text(body)
    first = prompt.split("[Answer 1]\n")[1].split("\n\n")[0]
    second = prompt.split("[Answer 2]\n")[1].split("\n\n")[0]
    better = "2" if "GOOD" in second and "GOOD" not in first else "1"
    return Reply(text=f"Better: {better}\nRationale: answer {better} is better.")


def test_score_writes_the_one_summary_and_failure_schema_that_report_reads(fake_server, tmp_path):
    fake_server.script = judge_script
    out = tmp_path / "scored.jsonl"
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"instruction": name, "input": "", "output": "answer"} for name in ("Task 0", "Task 6", "Task 2")])
    done = run_cli("score", str(source), "-o", str(out), env=cli_env(fake_server))
    assert done.returncode == 3 and "1 repl(ies) held no readable score" in done.stderr
    assert "failed after retries" not in done.stderr, "an unreadable reply is not a failed request"
    summary = Summary.read(tmp_path / "scored.jsonl.summary.json")
    assert summary.meta["command"] == "score" and summary.meta["criteria"] == ["alpagasus"]
    assert summary.meta["incomplete"] is True
    (stage,) = summary.stages
    assert (stage.stage, stage.seen, stage.kept, stage.sent) == ("score", 3, 2, 3)
    assert stage.dropped == {"unparseable_score": 1}
    (failed,) = read_jsonl(tmp_path / "scored.jsonl.failed.jsonl")
    assert set(failed) == {"stage", "reason", "detail", "record"} and failed["record"]["instruction"] == "Task 6"
    rejections = reported(out, tmp_path)
    assert [(s.name, s.seen, s.kept, dict(s.dropped)) for s in rejections.stages] == [
        ("score", 3, 2, {"unparseable_score": 1})]


def test_pairwise_cancels_position_bias_and_flips_exactly_when_swapped(fake_server, tmp_path):
    fake_server.script = biased_judge
    source = write_jsonl(tmp_path / "pairs.jsonl", [
        {"instruction": "Q0", "input": "", "teacher_a": "GOOD answer", "teacher_b": "weak answer"},
        {"instruction": "Q1", "input": "", "teacher_a": "weak answer", "teacher_b": "GOOD answer"},
        {"instruction": "Q2", "input": "", "teacher_a": "plain answer", "teacher_b": "other plain answer"},
    ])
    runs = {}
    for order in (("teacher_a", "teacher_b"), ("teacher_b", "teacher_a")):
        out = tmp_path / f"{order[0]}.jsonl"
        done = run_cli("score", str(source), "-o", str(out), "--pairwise", *order, env=cli_env(fake_server))
        assert done.returncode == 0, done.stderr
        runs[order[0]] = read_jsonl(out)
    forward, swapped = runs["teacher_a"], runs["teacher_b"]
    assert [r["pairwise"]["verdict"] for r in forward] == ["A", "B", "tie"]  # Q2: the bias voted both ways
    assert [r["scores"]["pairwise"] for r in forward] == [1.0, -1.0, 0.0]
    flip = {"A": "B", "B": "A", "tie": "tie"}
    for one, other in zip(forward, swapped, strict=True):
        assert other["scores"]["pairwise"] == -one["scores"]["pairwise"]
        assert other["pairwise"]["verdict"] == flip[one["pairwise"]["verdict"]]
        assert other["pairwise"]["winner"] == one["pairwise"]["winner"]
    assert [r["pairwise"]["winner"] for r in forward] == ["teacher_a", "teacher_b", None]

    prefs, info = tmp_path / "data" / "prefs.json", tmp_path / "data"
    done = run_cli("convert", str(tmp_path / "teacher_a.jsonl"), "-o", str(prefs), "--to", "preference",
                   "--dataset-info", str(info), "--skip-invalid")
    assert done.returncode == 0, done.stderr
    assert json.loads(prefs.read_text()) == [
        {"instruction": "Q0", "input": "", "chosen": "GOOD answer", "rejected": "weak answer"},
        {"instruction": "Q1", "input": "", "chosen": "GOOD answer", "rejected": "weak answer"},
    ]
    assert "tie" in read_jsonl(tmp_path / "data" / "prefs.json.rejected.jsonl")[0]["detail"]["problem"]
    entry = json.loads((info / "dataset_info.json").read_text())["prefs"]
    assert entry == {"file_name": "prefs.json", "ranking": True, "columns": {
        "prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}}


# --- select --------------------------------------------------------------------------------------------------


def planted_near_duplicates(path: Path) -> list[dict]:
    """10 groups of 5 near-duplicate instructions, scored highest, and 50 distinct records below them."""
    records = []
    for group in range(10):
        base = [f"g{group}w{k}" for k in range(8)]
        for variant in range(5):
            words = [*base[:variant], f"extra{variant}", *base[variant:]] if variant else base
            records.append({"instruction": " ".join(words), "output": "x", "group": group,
                            "scores": {"alpagasus": 5.0 - variant * 0.1}})
    for single in range(50):
        records.append({"instruction": " ".join(f"s{single}w{k}" for k in range(6)), "output": "x",
                        "group": None, "scores": {"alpagasus": 3.0 + single / 100}})
    write_jsonl(path, records)
    return records


def test_select_top_fraction_diverse_keeps_at_most_one_per_near_duplicate_group(tmp_path):
    records = planted_near_duplicates(tmp_path / "scored.jsonl")
    out = tmp_path / "best.jsonl"
    done = run_cli("select", str(tmp_path / "scored.jsonl"), "-o", str(out), "--top", "0.2", "--diverse")
    assert done.returncode == 0, done.stderr
    kept = read_jsonl(out)
    assert len(kept) == 20  # 20% of 100: the best of each group, then the best distinct others
    groups = [r["group"] for r in kept if r["group"] is not None]
    assert sorted(groups) == list(range(10))
    assert all(r["scores"]["alpagasus"] == 5.0 for r in kept if r["group"] is not None)
    assert kept == [r for r in records if r in kept]  # input order
    reasons = {}
    for row in read_jsonl(tmp_path / "best.jsonl.rejected.jsonl"):
        assert set(row) == {"stage", "reason", "detail", "record"} and row["stage"] == "select"
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    assert reasons == {"too_similar": 40, "not_in_top": 40}
    summary = json.loads((tmp_path / "best.jsonl.summary.json").read_text())
    assert summary["stages"][0]["dropped"] == {"too_similar": 40, "not_in_top": 40}

    plain = tmp_path / "plain.jsonl"
    assert run_cli("select", str(tmp_path / "scored.jsonl"), "-o", str(plain), "--top", "20").returncode == 0
    assert len({r["group"] for r in read_jsonl(plain)}) < 20  # without --diverse, duplicates crowd the top


def test_select_threshold_and_a_missing_model_for_embeddings(tmp_path):
    planted_near_duplicates(tmp_path / "scored.jsonl")
    out = tmp_path / "best.jsonl"
    done = run_cli("select", str(tmp_path / "scored.jsonl"), "-o", str(out), "--min", "4.8")
    assert done.returncode == 0, done.stderr
    assert {r["scores"]["alpagasus"] for r in read_jsonl(out)} == {5.0, 4.9, 4.8}
    done = run_cli("select", str(tmp_path / "scored.jsonl"), "-o", str(out), "--diverse", "--similarity", "embed",
                   "--embed-model", str(tmp_path / "no-model"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no-model: no such model directory" in done.stderr


# --- decontaminate -------------------------------------------------------------------------------------------

CEVAL = [  # C-Eval/CMMLU-style items: question and four choices
    {"question": "下列关于我国古代科举制度的说法中，正确的一项是哪一个？", "A": "始于秦朝", "B": "创立于隋朝",
     "C": "废除于明朝", "D": "只考诗赋", "answer": "B"},
    {"question": "某商店将一件商品按进价提高百分之四十后标价，再打八折出售，结果每件仍获利二十四元，"
                 "这件商品的进价是多少元？", "A": "100", "B": "200", "C": "240", "D": "300", "answer": "B"},
    {"question": "唐代诗人李白的作品《静夜思》中，“举头望明月”的下一句是什么？", "A": "低头思故乡",
     "B": "疑是地上霜", "C": "床前明月光", "D": "春风又绿江南岸", "answer": "A"},
    {"question": "在一个标准大气压下，纯净的水沸腾时的温度大约是多少摄氏度？", "A": "90", "B": "100", "C": "110",
     "D": "120", "answer": "B"},
]


def test_decontaminate_catches_planted_copies_and_paraphrases_without_false_positives(anchors, tmp_path):
    gsm8k = json.loads((anchors / "gsm8k_train_alpaca.json").read_text())
    bench_en = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": r["instruction"], "answer": r["output"]} for r in gsm8k[:1000]])  # GSM8K's own layout
    bench_zh = tmp_path / "ceval.parquet"
    pq.write_table(pa.Table.from_pylist(CEVAL), bench_zh)
    q = [gsm8k[i]["instruction"] for i in (3, 50, 400, 777, 999)]
    planted = [  # (record, benchmark, item)
        *[({"instruction": q[k], "input": "", "output": "..."}, "gsm8k", i) for k, i in enumerate((3, 50))],
        ({"instruction": "Solve this word problem step by step.", "input": q[2], "output": "..."}, "gsm8k", 400),
        ({"instruction": q[3].upper().replace(".", " ."), "input": "", "output": "..."}, "gsm8k", 777),
        ({"instruction": "Please answer: " + q[4].replace(gsm8k[999]["instruction"].split()[0], "Maria", 1),
          "input": "", "output": "..."}, "gsm8k", 999),
        ({"instruction": CEVAL[0]["question"], "input": "A. 始于秦朝 B. 创立于隋朝 C. 废除于明朝 D. 只考诗赋",
          "output": "B"}, "ceval", 0),
        ({"instruction": "请回答：" + CEVAL[1]["question"].replace("商店", "超市"), "input": "", "output": "..."},
         "ceval", 1),
        ({"instruction": CEVAL[2]["question"].replace("什么", "哪一句"), "input": "", "output": "..."}, "ceval", 2),
        ({"instruction": "选择题：" + CEVAL[3]["question"].replace("大约", ""), "input": "", "output": "B"},
         "ceval", 3),
    ]
    demo = [*json.loads((anchors / "llamafactory_alpaca_en_demo.json").read_text()),
            *json.loads((anchors / "llamafactory_alpaca_zh_demo.json").read_text())]
    records = [{**r, "planted": n} for n, (r, _, _) in enumerate(planted)]
    records = demo[:700] + records[:4] + demo[700:1400] + records[4:] + demo[1400:]
    source = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "clean.jsonl"
    done = run_cli("decontaminate", str(source), "-o", str(out), "--benchmark", str(bench_en),
                   "--benchmark", str(bench_zh), timeout=300)
    assert done.returncode == 0, done.stderr
    kept = read_jsonl(out)
    assert kept == demo  # every demo record kept: no false positive
    report = read_jsonl(tmp_path / "clean.jsonl.rejected.jsonl")
    assert sorted(row["record"]["planted"] for row in report) == list(range(len(planted)))
    for row in report:
        _, benchmark, item = planted[row["record"]["planted"]]
        assert row["reason"] == "contaminated" and row["detail"]["item"] == item
        assert Path(row["detail"]["benchmark"]).stem == benchmark
    assert {row["detail"]["method"] for row in report} >= {"exact", "13-gram"}

    # C-Eval with its choices as the item text (the template); only the Chinese plants match it
    done = run_cli("decontaminate", str(source), "-o", str(out), "--benchmark", str(bench_zh),
                   "--benchmark-template", r"{question}\n{A}\n{B}\n{C}\n{D}", timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out)) == len(demo) + 5
    report = read_jsonl(tmp_path / "clean.jsonl.rejected.jsonl")
    assert sorted(row["record"]["planted"] for row in report) == [5, 6, 7, 8]
    assert report[0]["detail"]["item_text"].endswith("始于秦朝\n创立于隋朝\n废除于明朝\n只考诗赋")


def test_each_overlap_check_on_its_own():
    from distillery.decontaminate import BenchmarkIndex, Item

    index = BenchmarkIndex()
    long = ("Janet has three dogs and each dog eats two cups of food every day while her cat eats half a cup, "
            "how many cups of food does she need for one week")
    index.add(Item("bench", 0, "What is the capital city of France?"))
    index.add(Item("bench", 1, long))
    words = long.split()
    edited = " ".join("zzz" if i % 9 == 4 else w for i, w in enumerate(words))  # no 13 words left in a row
    found = {text: index.find(text) for text in (
        "what is the CAPITAL city of france", "Quick quiz: what is the capital city of France? Be brief.",
        long + " Explain.", edited, "What is the capital city of Spain?")}
    assert [(m.method, m.item.index) if m else None for m in found.values()] == [
        ("exact", 0), ("contains", 0), ("13-gram", 1), ("rouge-l", 1), None]
    assert found[edited].score > 0.8


# --- the pipeline, the commands' mistakes, and flags that match step options --------------------------------


def alpagasus_endpoint(body: dict, number: int) -> Reply:
    """Answers instructions; as the judge, rates even-numbered tasks 5 and the others 3."""
    prompt = user_text(body)
    if "[Response]" not in prompt:
        return Reply(text="ANSWER: " + prompt)
    task = int(instruction_in(prompt).rsplit(" ", 1)[1])
    return Reply(text=f"Score: {5 if task % 2 == 0 else 3}\nRationale: scripted.")


def test_alpagasus_pipeline_end_to_end(fake_server, tmp_path):
    fake_server.script = alpagasus_endpoint
    write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"Task number {i}", "input": "", "output": "", "id": i}
                                        for i in range(10)])
    run = tmp_path / "run"
    done = run_cli("run", "alpagasus", "--input", str(tmp_path / "in.jsonl"), "-o", str(run),
                   "--set", "report.lang_sample=0", env=cli_env(fake_server), timeout=300)
    assert done.returncode == 0, done.stderr
    dataset = read_jsonl(run / "dataset.jsonl")
    assert [r["id"] for r in dataset] == [0, 2, 4, 6, 8]
    assert all(r["output"].startswith("ANSWER: Task number") and r["scores"] == {"alpagasus": 5.0} for r in dataset)
    assert [r["instruction"] for r in json.loads((run / "data" / "alpagasus.json").read_text())] == [
        r["instruction"] for r in dataset]
    stages = {s["stage"]: s for s in json.loads((run / "summary.json").read_text())["stages"]}
    assert stages["score"]["requests"]["sent"] == 10 and stages["select"]["dropped"] == {"below_min": 5}
    rejected = read_jsonl(run / "rejected.jsonl")
    assert {(r["stage"], r["reason"]) for r in rejected} == {("select", "below_min")}
    assert rejected[0]["detail"] == {"by": "alpagasus", "score": 3.0, "rank": 6, "min_score": 4.5}
    page = (run / "report.html").read_text()
    assert "Judge scores and selection" in page and "select: 10 scored → 5 kept (50.0%) · below_min 5" in page
    assert "scores.alpagasus</strong> · 5 records · mean 5.00" in page


def test_report_shows_score_histograms_of_a_scored_file(tmp_path):
    planted_near_duplicates(tmp_path / "scored.jsonl")
    page_path = tmp_path / "report.html"
    done = run_cli("report", str(tmp_path / "scored.jsonl"), "-o", str(page_path), "--lang-sample", "0")
    assert done.returncode == 0, done.stderr
    page = page_path.read_text()
    assert "scores.alpagasus</strong> · 100 records · mean 4.02" in page and "select:" not in page
    assert 'aria-label="scores.alpagasus: scored.jsonl"' in page


@pytest.mark.parametrize(("args", "message"), [
    (["score", "{records}", "-o", "{out}", "--criteria", "wit"], "no criterion 'wit'"),
    (["score", "{unanswered}", "-o", "{out}"], "unanswered.jsonl:1: record has no answer"),
    (["score", "{records}", "-o", "{out}", "--pairwise", "output", "output"], "name two different fields"),
    (["score", "{records}", "-o", "{out}", "--pairwise", "output", "other"], "record has no 'other' answer"),
    (["select", "{records}", "-o", "{out}", "--top", "0.2"], "records.jsonl:1: record has no scores.alpagasus"),
    (["select", "{scored}", "-o", "{out}", "--top", "1.5"], "select.top: expected a fraction"),
    (["decontaminate", "{records}", "-o", "{out}", "--benchmark", "{records}", "--benchmark-field", "id"],
     "benchmark field 'id' is int"),
    (["decontaminate", "{records}", "-o", "{out}", "--benchmark", "{scored}",
      "--benchmark-template", "{question} {A}"], "names {question}, which this item lacks"),
    (["convert", "{records}", "-o", "{out}", "--to", "preference"], "record has no pairwise verdict"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(fake_server, tmp_path, args, message):
    files = {"records": write_jsonl(tmp_path / "records.jsonl", [{"instruction": "Hi", "output": "Hello", "id": 1}]),
             "unanswered": write_jsonl(tmp_path / "unanswered.jsonl", [{"instruction": "Hi"}]),
             "scored": write_jsonl(tmp_path / "scored.jsonl", [{"instruction": "Hi", "scores": {"alpagasus": 4}}]),
             "out": tmp_path / "out.jsonl"}
    done = run_cli(*(arg.format(**files) if arg.startswith("{") and arg.strip("{}") in files else arg for arg in args),
                   env=cli_env(fake_server))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out.jsonl").exists() and not fake_server.requests


@pytest.mark.parametrize(("command", "step", "command_only"), [
    ("score", "score", {"input", "output", "endpoint"}),
    ("select_command", "select", {"input", "output", "rejected"}),
    ("decontaminate", "decontaminate", {"input", "output", "rejected"}),
])
def test_step_options_match_their_commands_flags(command, step, command_only):
    """A pipeline file and the command line take the same options with the same defaults."""
    from distillery import cli
    from distillery.endpoint import EndpointOptions
    from distillery.recipes import STEPS

    endpoint_flags = {f.name for f in dataclasses.fields(EndpointOptions)}
    flags = {name: p.default for name, p in inspect.signature(getattr(cli, command)).parameters.items()
             if name not in endpoint_flags}
    options = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
               for f in dataclasses.fields(STEPS[step].Options)}
    assert set(flags) - command_only == set(options) - {"endpoint"}
    for name in set(flags) - command_only:
        if flags[name] is not inspect.Parameter.empty:
            assert options[name] == flags[name] or (options[name] == [] and flags[name] is None), name
