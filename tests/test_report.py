"""`distillery report`: aggregates checked by hand, escaping, rejection funnels, the CLI, and a real browser."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ANCHORS, cli_env, run_cli
from tiny_tokenizer import build_tiny_tokenizer

from distillery import report
from distillery.dedup import dedup_file, rouge_l, tokenize
from distillery.errors import InputError, UserError
from distillery.report import ReportOptions, build_report, collect
from distillery.summary import StageStats, Summary, rejection
from distillery.tokens import load_tokenizer

SCRIPT = "<script>window.__pwned = 1; document.title = 'pwned';</script>"
IMG = '<img src=x onerror="window.__pwned = 2; document.title = \'pwned\'">'
BREAKOUT = "</script><script>window.__pwned = 3;</script><!-- <p>"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECTIONS = ("overview", "lengths", "languages", "diversity", "duplicates", "rejections", "examples")

ALPACA = [
    {"instruction": "Write a poem about the sea", "input": "", "output": "The sea is wide and blue and deep."},
    {"instruction": "Write a poem about the sky", "input": "", "output": "The sky is high."},
    {"instruction": "Translate the sentence into French.", "input": "I like cheese.", "output": "J'aime le fromage."},
    {"instruction": "写一首关于秋天的诗", "input": "", "output": "秋风起，落叶飞。"},
    {"instruction": "What is the capital of France?", "input": "", "output": ""},
    {"instruction": "write a poem about the   SEA", "input": "", "output": "Ok"},
    {"instruction": SCRIPT, "input": IMG, "output": BREAKOUT},
]
SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "Explain gravity to a child."},
                                  {"from": "gpt", "value": "Things fall because the Earth pulls them."},
                                  {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Mass attracts mass."}]},
    {"id": "b", "system": "Be brief.", "conversations": [{"from": "human", "value": "请介绍一下长城。"},
                                                         {"from": "gpt", "value": "长城是中国古代的防御工程。"}]},
]


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """An Alpaca file with hostile records and a ShareGPT file, both with run sidecars beside them."""
    alpaca = write_json(tmp_path / "alpaca.json", ALPACA)
    sharegpt = write_jsonl(tmp_path / "chat.jsonl", SHAREGPT)
    Summary([
        StageStats("parse", 20, 15, Counter({"unparseable": 5}), sent=40, cost_usd=0.12),
        StageStats("filter", 15, 10, Counter({"too short": 2, "blocked <b>phrase</b>": 1})),
        StageStats("dedup", 10, 7, Counter({"rouge-l > 0.7": 3})),
    ], {"command": "self-instruct"}).write(tmp_path / "alpaca.json.summary.json")
    write_jsonl(tmp_path / "alpaca.json.rejected.jsonl", [
        rejection("filter", "too short", {"instruction": "Write", "output": ""}),
        rejection("filter", "blocked <b>phrase</b>", {"instruction": "<script>window.__pwned = 4;</script>",
                                                      "output": "x"}, "blocked"),
    ])
    return alpaca, sharegpt


def test_aggregates_by_hand(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    alpaca, sharegpt = inputs
    first, second = collect(ReportOptions([alpaca, sharegpt], output=tmp_path / "r.html"))

    assert (first.records, dict(first.formats)) == (7, {"alpaca": 7})
    assert first.empty_output == 1 and first.empty_instruction == 0
    # under 5: "The sky is high." (4), "J'aime le fromage." (3), "Ok" (1), BREAKOUT (3: a lone "=" is no word);
    # "秋风起，落叶飞。" is 6 (CJK punctuation is no word either)
    assert first.short_output == 4
    assert first.exact_duplicates == 1  # the SEA poem, once case and spaces are folded
    assert first.lengths["instruction"][:4] == [6, 6, 5, 9]  # 写一首关于秋天的诗 is nine CJK characters
    assert first.lengths["input"] == [3, 6]
    assert first.verbs["write"] == 3 and first.verbs["translate"] == 1 and first.verbs["写"] == 1
    assert first.pairs["write", "poem"] == 3 and first.pairs["写", "诗"] == 1

    assert (second.records, dict(second.formats), dict(second.turns)) == (2, {"sharegpt": 2}, {4: 1, 2: 1})
    assert [row.instruction for row in sorted(second.sample, key=lambda r: r.number)] == [
        "Explain gravity to a child.", "请介绍一下长城。"]
    assert second.lengths["output"] == [7, 12]
    assert second.rejections is None

    assert {row.lang for row in first.sample if row.instruction.startswith("写")} == {"zh"}
    assert first.prompt_langs.total() == 7 and second.prompt_langs["zh"] == 1


def test_near_duplicates_match_brute_force(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    profile = collect(ReportOptions([inputs[0]], output=tmp_path / "r.html"))[0]
    texts = [row.instruction for row in profile.sample]
    for i, row in enumerate(profile.sample):
        expected = max(rouge_l(tokenize(row.instruction), tokenize(other)) for j, other in enumerate(texts) if j != i)
        assert row.max_rouge == pytest.approx(expected)
    score, a, b = profile.closest[0]
    assert score == 1.0 and {a.lower().split()[-1], b.lower().split()[-1]} == {"sea"}
    assert sorted(profile.dup_scores) == sorted(row.max_rouge for row in profile.sample)


def test_rejection_funnel_from_summary(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    rejections = collect(ReportOptions([inputs[0]], output=tmp_path / "r.html", lang_sample=0))[0].rejections
    assert [(s.name, s.seen, s.kept) for s in rejections.stages] == [
        ("parse", 20, 15), ("filter", 15, 10), ("dedup", 10, 7)]
    assert rejections.stages[1].dropped == {"too short": 2, "blocked <b>phrase</b>": 1}
    assert rejections.total == 11
    assert rejections.examples == {"too short": ["Write"], "blocked <b>phrase</b>": [
        "<script>window.__pwned = 4;</script>"]}
    assert ("requests", "40") in rejections.figures and ("cost_usd", "0.12") in rejections.figures


def test_rejected_file_alone_gives_examples_and_a_count(tmp_path: Path) -> None:
    """No summary: no funnel is made up; the rejects give the count dropped and the examples."""
    data = write_json(tmp_path / "kept.json", ALPACA[:3])
    named = write_jsonl(tmp_path / "dropped.jsonl", [
        rejection("clean", "too short", {"conversations": [{"from": "human", "value": "hi"}]}, {"stage": "structure"}),
        rejection("evol", "copied the prompt", {"instruction": "Say hello"}),
        rejection("clean", "too short", {"instruction": "x"}),
    ])
    options = ReportOptions([data], output=tmp_path / "r.html", rejected=[named], lang_sample=0)
    rejections = collect(options)[0].rejections
    assert rejections.stages == [] and rejections.figures == [] and rejections.total == 3
    assert rejections.examples == {"too short": ["hi", "x"], "copied the prompt": ["Say hello"]}


def test_old_shapes_are_refused_with_one_line(tmp_path: Path) -> None:
    """A summary or rejects file not in the one schema is named, with what is wrong, and nothing is written."""
    data = write_json(tmp_path / "gen.json", ALPACA[:3])
    (tmp_path / "gen.json.summary.json").write_text(json.dumps({"accepted": 3, "rejected": {"too similar": 5}}))
    out = tmp_path / "r.html"
    done = run_cli("report", str(data), "-o", str(out), "--lang-sample", "0")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'gen.json.summary.json: not a distillery summary (no "schema": "distillery.summary/1")' in \
        " ".join(done.stderr.split())
    assert not out.exists()

    (tmp_path / "gen.json.summary.json").unlink()
    write_jsonl(tmp_path / "gen.json.rejected.jsonl", [
        rejection("dedup", "near_duplicate", {"instruction": "a"}),
        {"instruction": "Say hello", "rule": "copied the prompt", "round": 2},
    ])
    done = run_cli("report", str(data), "-o", str(out), "--lang-sample", "0")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'gen.json.rejected.jsonl:2: not a distillery rejection (expected {"stage", "reason", "detail", ' \
           '"record"})' in " ".join(done.stderr.split())
    assert not out.exists()


def test_dedup_rejected_file(tmp_path: Path) -> None:
    """`dedup --rejected` lines wrap the record and name their stage and reason like every other command."""
    raw = write_json(tmp_path / "raw.json", [*ALPACA[:3], {"instruction": "Write a poem about the seas"}])
    dedup_file(raw, tmp_path / "kept.json", rejected_path=tmp_path / "dups.jsonl")
    options = ReportOptions([tmp_path / "kept.json"], output=tmp_path / "r.html", rejected=[tmp_path / "dups.jsonl"],
                            lang_sample=0)
    rejections = collect(options)[0].rejections
    assert [(s.name, s.seen, s.kept, s.dropped) for s in rejections.stages] == [
        ("dedup", 4, 2, {"near_duplicate": 2})]
    assert rejections.examples["near_duplicate"] == ["Write a poem about the sky", "Write a poem about the seas"]


def test_a_command_summary_gives_the_funnel_and_figures(fake_server, tmp_path: Path) -> None:
    """`respond` writes the one summary beside its output; the report's funnel and figures are read from it."""
    source = write_json(tmp_path / "in.json", [{"instruction": f"Task {n}"} for n in range(4)])
    out = tmp_path / "answered.json"
    done = run_cli("respond", str(source), "-o", str(out), env=cli_env(fake_server))
    assert done.returncode == 0, done.stderr
    rejections = collect(ReportOptions([out], output=tmp_path / "r.html", lang_sample=0))[0].rejections
    assert [(s.name, s.seen, s.kept, s.dropped) for s in rejections.stages] == [("respond", 4, 4, {})]
    figures = dict(rejections.figures)
    assert figures["requests"] == "4" and figures["command"] == "respond" and "cost_usd" in figures


def test_tokenizer_lengths(inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts are encoded a batch at a time (here 3 + 3 + 1 records), whole even if tokenizer.json truncates."""
    directory = build_tiny_tokenizer(tmp_path / "tok")
    tokenizer = load_tokenizer(str(directory))
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    spec["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setattr(report, "_BATCH", 3)
    profile = collect(ReportOptions([inputs[0]], output=tmp_path / "r.html", tokenizer=str(directory),
                                    lang_sample=0))[0]
    expected = [len(tokenizer.encode(r["output"], add_special_tokens=False)) for r in ALPACA]
    assert profile.lengths["output"] == expected
    assert max(expected) > 3 and expected != [len(r["output"].split()) for r in ALPACA]
    assert [row.lengths[2] for row in sorted(profile.sample, key=lambda row: row.number)] == expected


def test_page_is_escaped_and_self_contained(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    result = build_report(ReportOptions(list(inputs), output=tmp_path / "out" / "report.html", lang_sample=0))
    page = result.path.read_text(encoding="utf-8")
    assert result.size == len(page.encode("utf-8"))
    assert page.count("<script") == 2  # the examples data and the page's own script, nothing injected
    assert "<img" not in page and "window.__pwned = 1" in page.replace("\\u003c", "<")
    assert "&lt;script&gt;window.__pwned = 1" in page  # the closest-pairs table shows it as text
    assert "blocked &lt;b&gt;phrase&lt;/b&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "Content-Security-Policy" in page and "script-src 'sha256-" in page
    data = re.search(r'<script type="application/json" id="examples-data">(.*?)</script>', page, re.S).group(1)
    rows = json.loads(data)["rows"]
    hostile = next(row for row in rows if row["ins"] == SCRIPT)
    assert (hostile["inp"], hostile["out"]) == (IMG, BREAKOUT)
    assert {section: f'id="{section}"' in page for section in SECTIONS} == dict.fromkeys(SECTIONS, True)
    assert not list(result.path.parent.glob(".*.tmp"))


def test_sample_is_bounded_and_seeded(tmp_path: Path) -> None:
    records = [{"instruction": f"Write item number {i}", "output": f"item {i}"} for i in range(60)]
    data = write_json(tmp_path / "many.json", records)
    options = {"sample": 5, "dup_sample": 10, "lang_sample": 0}
    first = collect(ReportOptions([data], output=tmp_path / "a.html", **options))[0]
    again = collect(ReportOptions([data], output=tmp_path / "b.html", **options))[0]
    other = collect(ReportOptions([data], output=tmp_path / "c.html", seed=7, **options))[0]
    assert len(first.sample) == 10 and len(first.dup_scores) == 10
    assert [r.number for r in first.sample] == [r.number for r in again.sample]
    assert [r.number for r in first.sample] != [r.number for r in other.sample]
    page = build_report(ReportOptions([data], output=tmp_path / "p.html", **options)).path.read_text()
    assert len(json.loads(re.search(r'id="examples-data">(.*?)</script>', page).group(1))["rows"]) == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"output": "report.json"}, "name it with .html"),
        ({"sample": -1}, "--sample must be 0 or more"),
        ({"rejected": ["a", "b"]}, "give at most one per INPUT"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ReportOptions([tmp_path / "in.json"], **options)


def test_bad_record_names_its_place(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [ALPACA[0], {"instruction": "x", "output": 5}])
    with pytest.raises(InputError, match=r"bad\.jsonl:2: 'output' is int, expected a string"):
        collect(ReportOptions([data], output=tmp_path / "r.html", lang_sample=0))
    stray = {"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}]}
    data = write_jsonl(tmp_path / "chat.jsonl", [SHAREGPT[0], stray])
    with pytest.raises(InputError, match=r"chat\.jsonl:2: turn 2 is a system turn"):
        collect(ReportOptions([data], output=tmp_path / "r.html", lang_sample=0))


def test_parquet_and_openai(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "List three fruits."},
                          {"role": "assistant", "content": "Apple, pear, plum."}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    profile = collect(ReportOptions([tmp_path / "chat.parquet"], output=tmp_path / "r.html", lang_sample=0))[0]
    assert (dict(profile.formats), dict(profile.turns), profile.pairs["list", "fruit"]) == ({"openai": 1}, {2: 1}, 1)


def test_raw_sharegpt_roles(tmp_path: Path) -> None:
    """Before-clean dumps use roles such as chatgpt and bard; formats reads them as the assistant."""
    raw = write_json(tmp_path / "raw.json", [{"id": "r", "conversations": [
        {"from": "human", "value": "<p>Write a limerick</p>"}, {"from": "chatgpt", "value": "<div>There once…</div>"},
        {"from": "human", "value": "Another"}, {"from": "bard", "value": "Sure."}]}])
    profile = collect(ReportOptions([raw], output=tmp_path / "r.html", lang_sample=0))[0]
    row = profile.sample[0]
    assert dict(profile.turns) == {4: 1}
    assert (row.instruction, row.output) == ("<p>Write a limerick</p>", "<div>There once…</div>")


def test_cli_end_to_end(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "site" / "r.html"
    done = run_cli("report", str(inputs[0]), str(inputs[1]), "-o", str(out), "--sample", "50", "--lang-sample", "0")
    assert done.returncode == 0, done.stderr
    assert out.is_file() and done.stderr == ""
    # input, records, languages (none sampled), verbs, ROUGE-L > 0.7, rejected (from the summary beside it)
    assert re.search(r"alpaca\.json\W+7\W+—\W+3\W+42\.9%\W+11\W", done.stdout), done.stdout
    assert re.search(r"chat\.jsonl\W+2\W+—\W+2\W+0\.0%\W+—", done.stdout), done.stdout


def test_cli_bad_input_leaves_nothing(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ALPACA[0]) + "\n{not json\n", encoding="utf-8")
    out = tmp_path / "r.html"
    done = run_cli("report", str(inputs[0]), str(broken), "-o", str(out))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "broken.jsonl:2: invalid JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))

    summary = tmp_path / "bad-summary.json"
    summary.write_text("{oops", encoding="utf-8")
    done = run_cli("report", str(inputs[1]), "--summary", str(summary), "-o", str(out), "--lang-sample", "0")
    assert done.returncode == 2 and "bad-summary.json: not a JSON run summary" in done.stderr
    assert not out.exists()
    with pytest.raises(InputError, match="is a directory"):
        collect(ReportOptions([inputs[1]], output=out, summaries=[tmp_path], lang_sample=0))


def _open_page(path: Path, screenshot: Path) -> dict:
    """Load the page in headless Chromium; return what a user would see and what went wrong."""
    from playwright.sync_api import sync_playwright

    found: dict = {"errors": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: m.type in ("error", "warning") and found["errors"].append(m.text))
            page.on("pageerror", lambda e: found["errors"].append(str(e)))
            page.on("request", lambda r: found["requests"].append(r.url))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            found["visible"] = {s: page.locator(f"#{s}").is_visible() for s in SECTIONS}
            found["marks"] = {s: page.locator(f"#{s} svg.chart rect, #{s} svg.chart path").count() for s in SECTIONS}
            found["rows"] = page.locator("#ex-body tr").count()
            found["pwned"] = page.evaluate("typeof window.__pwned")
            found["title"] = page.title()
            page.fill("#ex-search", "window.__pwned = 1")
            found["hostile_rows"] = page.locator("#ex-body tr").all_inner_texts()
            page.fill("#ex-search", "no such text anywhere")
            found["no_rows"] = page.locator("#ex-body tr").count()
            found["status"] = page.inner_text("#ex-status")
            page.fill("#ex-search", "")
            page.select_option("#ex-size", "10")
            page.click("#ex-next")
            found["page_two"] = page.inner_text("#ex-status")
            found["pwned_after"] = page.evaluate("typeof window.__pwned")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return found


@pytest.mark.anchors
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not installed at {CHROMIUM}")
def test_browser_renders_every_section(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api")
    more = write_json(tmp_path / "en.json", json.loads((ANCHORS / "llamafactory_alpaca_en_demo.json").read_text())[:40])
    report = build_report(ReportOptions([*inputs, more], output=tmp_path / "report.html", sample=40))
    shot = tmp_path / "report.png"
    seen = _open_page(report.path, shot)

    assert seen["errors"] == []
    assert seen["requests"] == [report.path.as_uri()]
    assert seen["visible"] == dict.fromkeys(SECTIONS, True)
    assert all(seen["marks"][s] > 0 for s in SECTIONS if s != "examples"), seen["marks"]
    assert seen["rows"] == 20
    assert seen["pwned"] == "undefined" and seen["pwned_after"] == "undefined"
    assert seen["title"] == "distillery report"
    assert len(seen["hostile_rows"]) == 1 and SCRIPT in seen["hostile_rows"][0] and IMG in seen["hostile_rows"][0]
    assert seen["no_rows"] == 0 and seen["status"].startswith("0 of 49 rows")
    assert seen["page_two"] == "49 of 49 rows · page 2 of 5"
    assert shot.stat().st_size > 50_000


def test_report_and_clean_give_a_record_the_same_language(tmp_path: Path) -> None:
    """One decision: clean's `lang` and the report's prompt language come from the same function on the
    same text (markdown, code left out, replies filling in short prompts), for raw and cleaned files."""
    from distillery.clean import CleanOptions, clean

    code = "```python\nfor item in items:\n    print(item.name, item.price)\n```"
    records = [
        {"id": "de", "conversations": [
            {"from": "human", "value": f"Warum?\n{code}"},
            {"from": "gpt", "value": "<div><p>Die Schleife gibt für jedes Element den Namen und den Preis aus, "
                                     "eine Zeile pro Element.</p></div>"}]},
        {"id": "es", "conversations": [
            {"from": "human", "value": f"¿Qué hace esto?\n{code}"},
            {"from": "gpt", "value": "<p>Recorre la lista y muestra el nombre y el precio de cada artículo.</p>"}]},
        {"id": "zh", "conversations": [
            {"from": "human", "value": f"这段代码有什么问题？\n{code}"},
            {"from": "gpt", "value": "<p>代码没有问题，它会逐行打印每个商品的名称和价格。</p>"}]},
        {"id": "en", "conversations": [
            {"from": "human", "value": "<p>Explain the <code>for</code> loop below.</p><pre><code>"
                                       "for i in range(3): print(i)</code></pre>"},
            {"from": "gpt", "value": "It prints the numbers zero, one and two, one per line."}]},
    ]
    raw = write_json(tmp_path / "raw.json", records)
    cleaned = tmp_path / "clean.json"
    clean(raw, cleaned, CleanOptions(workers=1, min_chars=0))
    by_clean = {r["id"]: r["lang"] for r in json.loads(cleaned.read_text(encoding="utf-8"))}
    assert by_clean == {"de": "de", "es": "es", "zh": "zh", "en": "en"}
    for path in (raw, cleaned):
        profile = collect(ReportOptions([path], output=tmp_path / "r.html"))[0]
        by_report = {row.instruction: row.lang for row in profile.sample}
        ids = {r["conversations"][0]["value"]: r["id"] for r in json.loads(path.read_text(encoding="utf-8"))}
        assert {ids[text]: lang for text, lang in by_report.items()} == by_clean, path.name


def test_empty_rejected_file_beside_the_input_means_nothing_was_rejected(tmp_path: Path) -> None:
    data = write_json(tmp_path / "clean.json", [{"instruction": "Name a colour.", "input": "", "output": "Red."}])
    (tmp_path / "clean.json.rejected.jsonl").write_text("", encoding="utf-8")
    profile = collect(ReportOptions([data], output=tmp_path / "r.html"))[0]
    assert profile.rejections is not None and profile.rejections.total == 0
