"""`distillery report` on 100K Alpaca records: wall time and page size against the goals (60 s, 10 MB);
and on 1,300 records, CPU time against the goal of 3 s, beside the same command with lingua.

Workload: real Alpaca-format records from ../shared/anchors (LLaMA-Factory English and Chinese demos,
GSM8K, GPTeacher roleplay and toolformer), cycled to the requested size; every copy after the first gets
a short suffix on its instruction, so exact-duplicate counts stay realistic rather than total. Written once
as a JSON list to a temporary directory.

The floor beside it is a bare streaming read of the same file with `io.iter_records`: what any report
must pay before it looks at a record. The report is timed in-process (`build_report`) and through the
real console script, which also pays interpreter start-up and the language model's loading. Wall time
depends on what else the machine runs, so CPU time (all threads; lingua detects in parallel) and the load
average are printed too. The small run is the console script on the first 1,300 records of the same
workload, with the default detector and with `--lang-detector lingua` (the previous default), whose
short prompts load lingua's high-accuracy models. Last, the CPU time to get jieba's part-of-speech tagger
ready (the Chinese leading verbs) in a fresh interpreter: jieba's own way (its marshal cache) beside
distillery's (the prefix dictionary built from one split of the dictionary file).

    python benchmarks/report.py                    # 100,000 records, lengths in words
    python benchmarks/report.py --tokenizer tiny   # tokens of the tests' tiny BPE, built in-process
    python benchmarks/report.py --records 20000 --tokenizer path/to/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distillery.io import iter_records
from distillery.report import ReportOptions, build_report

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors"
SOURCES = ("llamafactory_alpaca_en_demo.json", "llamafactory_alpaca_zh_demo.json", "gsm8k_train_alpaca.json",
           "gpteacher_roleplay.json", "gpteacher_toolformer.json")
GOAL_SECONDS, GOAL_BYTES = 60.0, 10_000_000
SMALL_RECORDS, SMALL_GOAL_CPU = 1_300, 3.0


def workload(size: int) -> list[dict[str, str]]:
    base = [
        {key: str(record.get(key) or "") for key in ("instruction", "input", "output")}
        for name in SOURCES
        for record in json.loads((ANCHORS / name).read_text(encoding="utf-8"))
    ]
    records = []
    for number in range(size):
        record = dict(base[number % len(base)])
        copy = number // len(base)
        if copy:
            record["instruction"] = f"{record['instruction']} (variant {copy})"
        records.append(record)
    return records


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(data: Path, page: Path, *extra: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `distillery report` console-script run."""
    command = [shutil.which("distillery") or "distillery", "report", str(data), "-o", str(page), *extra]
    start, children = time.perf_counter(), _children_cpu()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start, _children_cpu() - children


_JIEBA_LOADS = {
    "stock jieba (posseg import, marshal cache)": "import logging, jieba, jieba.posseg\n"
                                                  "jieba.setLogLevel(logging.WARNING)\njieba.dt.initialize()",
    "distillery (verbs._posseg)": "from distillery.verbs import _posseg\n_posseg()",
}


def jieba_load_cpu(code: str, runs: int = 3) -> float:
    """CPU seconds to get jieba's tagger ready in a fresh interpreter, the least of `runs` (the first run
    also writes jieba's cache to the temp directory where it is missing, so it is run once unmeasured)."""
    probe = f"import time\nstart = time.process_time()\n{code}\nprint(time.process_time() - start)"
    times = [float(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
                   .stdout) for _ in range(runs + 1)]
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "alpaca.json"
        data.write_text(json.dumps(workload(args.records), ensure_ascii=False), encoding="utf-8")
        if args.tokenizer == "tiny":
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_tokenizer import build_tiny_tokenizer

            args.tokenizer = str(build_tiny_tokenizer(Path(folder) / "tokenizer"))
        load = f"{os.getloadavg()[0]:.1f}"
        print(f"workload: {args.records:,} Alpaca records, {data.stat().st_size / 1e6:.1f} MB JSON, "
              f"{os.cpu_count()} cores")

        start, cpu = time.perf_counter(), time.process_time()
        count = sum(1 for _ in iter_records(data))
        floor, floor_cpu = time.perf_counter() - start, time.process_time() - cpu

        page = Path(folder) / "report.html"
        cpu = time.process_time()
        result = build_report(ReportOptions([data], output=page, tokenizer=args.tokenizer))
        report_cpu = time.process_time() - cpu
        assert result.profiles[0].records == count == args.records

        cli_page = Path(folder) / "cli.html"
        cli_seconds, cli_cpu = run_cli(data, cli_page, *(["--tokenizer", args.tokenizer] if args.tokenizer else []))

        small = Path(folder) / "small.json"
        small.write_text(json.dumps(workload(SMALL_RECORDS), ensure_ascii=False), encoding="utf-8")
        detectors = (("default (fasttext)", ()), ("--lang-detector lingua", ("--lang-detector", "lingua")))
        small_runs = [(name, *run_cli(small, Path(folder) / "small.html", *extra)) for name, extra in detectors]
        jieba_loads = [(name, jieba_load_cpu(code)) for name, code in _JIEBA_LOADS.items()]

        print(f"load average before/after: {load} / {os.getloadavg()[0]:.1f}")
        print(f"{'':28}{'wall s':>8}{'CPU s':>8}{'MB':>8}")
        print(f"{'floor: stream-read only':28}{floor:>8.1f}{floor_cpu:>8.1f}{'':>8}")
        print(f"{'report, in-process':28}{result.seconds:>8.1f}{report_cpu:>8.1f}{result.size / 1e6:>8.2f}")
        print(f"{'report, console script':28}{cli_seconds:>8.1f}{cli_cpu:>8.1f}{cli_page.stat().st_size / 1e6:>8.2f}")
        print(f"{'goal':28}{GOAL_SECONDS:>8.0f}{'':>8}{GOAL_BYTES / 1e6:>8.0f}")
        verdict = result.seconds < GOAL_SECONDS and cli_seconds < GOAL_SECONDS and result.size < GOAL_BYTES
        print("meets the goal" if verdict else "MISSES the goal")
        print(f"\n{SMALL_RECORDS:,} records, console script{'':4}{'wall s':>8}{'CPU s':>8}")
        for name, seconds, cpu in small_runs:
            print(f"{name:34}{seconds:>8.1f}{cpu:>8.1f}")
        print(f"{'goal (default)':34}{'':>8}{SMALL_GOAL_CPU:>8.1f}")
        print(f"default {small_runs[0][2]:.2f} CPU s vs goal {SMALL_GOAL_CPU:.0f} CPU s: "
              + ("meets the goal" if small_runs[0][2] < SMALL_GOAL_CPU else "MISSES the goal"))
        print("\njieba's tagger ready (Chinese leading verbs), fresh interpreter, CPU s, least of 3")
        for name, cpu in jieba_loads:
            print(f"{name:50}{cpu:>8.2f}")


if __name__ == "__main__":
    main()
