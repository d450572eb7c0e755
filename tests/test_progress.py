"""The live progress view: one line per step with its counts, rate, tokens and cost, fed by the executor and
by LLM steps, drawn on a terminal and silent anywhere else."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

from conftest import cli_env, run_cli
from rich.console import Console

from distillery.cost import RunStats
from distillery.progress import RunProgress, RunView

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NO_LANG = ("--set", "report.lang_sample=0")


def terminal() -> Console:
    return Console(file=StringIO(), force_terminal=True, width=120)


def cells(rows: list[tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    return {row[1]: row for row in rows}


def test_each_step_has_its_own_row_with_its_counts_tokens_and_cost():
    view = RunView(["read", "dedup", "respond", "export"], console=terminal())
    read, dedup, respond, export = view.lines
    read.reuse()
    seen = [0]
    dedup.start(lambda: seen[0])
    seen[0] = 1234
    stats = RunStats(prompt_tokens=1500, completion_tokens=500, cost_usd=0.0123)
    with RunProgress("respond", 40, stats, respond) as bar:
        respond.start()
        bar.advance(10, earlier=True)
        bar.advance(20)
    dedup.finish()
    rows = cells(view.rows())
    assert rows["read"][:3] == ("✓", "read", "reused")
    assert rows["dedup"][:3] == ("✓", "dedup", "1,234")
    mark, _, done, rate, eta, tokens, cost, _ = rows["respond"]
    assert (mark, done, tokens, cost) == ("…", "30/40  75%", "2,000 tok", "$0.0123")
    assert rate.endswith("/s") and eta.startswith("ETA ")
    assert rows["export"][2:] == ("",) * 6, "a step not started yet shows only its name"
    respond.finish(complete=False)
    assert cells(view.rows())["respond"][0] == "✗"


def test_the_view_draws_every_row_on_a_terminal_and_nothing_elsewhere():
    console = terminal()
    with RunView(["read", "clean"], console=console) as view:
        view.lines[0].start(lambda: 7)
        view.lines[0].finish()
    drawn = ANSI.sub("", console.file.getvalue())
    assert re.search(r"✓\s+read\s+7\b", drawn) and "clean" in drawn
    quiet = Console(file=StringIO())  # a file, not a terminal
    with RunView(["read"], console=quiet) as view:
        view.lines[0].start(lambda: 7)
    with RunProgress("respond", 5, RunStats(), True, console=quiet) as bar:
        bar.advance(5)
    assert quiet.file.getvalue() == ""


def instructions(path: Path, count: int) -> None:
    path.write_text("".join(json.dumps({"instruction": f"Task number {i}", "input": "", "output": ""}) + "\n"
                            for i in range(count)))


def test_a_run_on_a_terminal_shows_one_line_per_step_and_a_piped_run_shows_none(fake_server, tmp_path):
    instructions(tmp_path / "in.jsonl", 12)
    args = ["run", "alpaca-gpt4", "-i", str(tmp_path / "in.jsonl"), *NO_LANG]
    piped = run_cli(*args, "-o", str(tmp_path / "piped"), env=cli_env(fake_server))
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and "…" not in piped.stdout and "✓" not in piped.stdout

    shown = run_cli(*args, "-o", str(tmp_path / "shown"), env=cli_env(fake_server, TTY_COMPATIBLE="1"))
    assert shown.returncode == 0, shown.stderr
    final = ANSI.sub("", shown.stderr).split("\n")
    rows = {name: next(line for line in reversed(final) if re.search(rf"\s{name}\s", line))
            for name in ("read", "dedup", "respond", "export", "report")}
    assert re.search(r"✓\s+read\s+12\b", rows["read"])
    assert re.search(r"✓\s+respond\s+12/12\s+100%.*\d tok\s+\$0\.0000", rows["respond"])
    assert all(line.lstrip().startswith("✓") for line in rows.values())

    again = run_cli(*args, "-o", str(tmp_path / "shown"), env=cli_env(fake_server, TTY_COMPATIBLE="1"))
    assert again.returncode == 0, again.stderr
    assert re.search(r"✓\s+respond\s+reused", ANSI.sub("", again.stderr))
