"""What the pipeline engine costs over calling the recipes directly, on one machine, in one run.

Workload: GSM8K and both LLaMA-Factory Alpaca demos from ../shared/anchors, repeated to --records Alpaca
records (every repeat is an exact duplicate, so dedup has work to do), written once as JSONL.

Baseline: the commands' own functions, file to file: `dedup_file` (--method exact, with --rejected)
then `convert_file` (--to sharegpt). Engine: `Pipeline([Read(), Dedup(method="exact"),
Convert(to="sharegpt")])` into a run directory, which also tees every step's output and rejections to
its folder, keeps the run state, and writes dataset.jsonl, rejected.jsonl and summary.json. Both
produce the same records (checked). The difference is mostly JSON: the engine writes each step's
output, and reads it back after a barrier (dedup is one).

Times are CPU seconds of this process (time.process_time), which other work on a shared machine skews
less than wall time; both run in one process (workers=1).

    python benchmarks/pipeline.py                  # 100K records
    python benchmarks/pipeline.py --records 20000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from distillery.convert import ConvertOptions, convert_file
from distillery.dedup import DedupOptions, dedup_file
from distillery.pipeline import Pipeline
from distillery.recipes import Convert, Dedup, Read

ANCHORS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors"
SOURCES = ("gsm8k_train_alpaca.json", "llamafactory_alpaca_en_demo.json", "llamafactory_alpaca_zh_demo.json")


def workload(path: Path, size: int) -> None:
    records = [record for name in SOURCES for record in json.loads((ANCHORS / name).read_text(encoding="utf-8"))]
    with path.open("w", encoding="utf-8") as out:
        for index in range(size):
            out.write(json.dumps(records[index % len(records)], ensure_ascii=False) + "\n")


def cpu(function) -> float:
    started = time.process_time()
    function()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        source = base / "in.jsonl"
        workload(source, args.records)

        def direct() -> None:
            dedup_file(source, base / "kept.jsonl", DedupOptions(method="exact"), rejected_path=base / "dups.jsonl")
            convert_file(base / "kept.jsonl", base / "direct.jsonl", ConvertOptions(to="sharegpt"))

        def engine() -> None:
            Pipeline([Read(), Dedup(method="exact"), Convert(to="sharegpt")]).run(base / "run", inputs=[source])

        baseline, ours = cpu(direct), cpu(engine)
        same = (base / "direct.jsonl").read_bytes() == (base / "run" / "dataset.jsonl").read_bytes()
        kept = sum(1 for _ in (base / "direct.jsonl").open())
        print(f"{args.records:,} Alpaca records, {kept:,} unique; exact dedup then convert to ShareGPT")
        print(f"  commands' functions, file to file : {baseline:6.2f} s CPU")
        print(f"  pipeline engine (run directory)   : {ours:6.2f} s CPU  ({ours / baseline:.2f}x, "
              f"{(ours - baseline) / args.records * 1e6:.1f} µs per record)  same records: {same}")


if __name__ == "__main__":
    main()
