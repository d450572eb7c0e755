"""`clean` on the local executor and on Ray, 2 workers each, in one run: wall time and the same output.

Workload: benchmarks/clean.py's generated raw ShareGPT corpus (--size conversations, default 20,000),
cleaned by a `read → clean` pipeline with clean's defaults (language ID, exact dedup, the split). Local:
`--workers 2` processes. Ray: a local cluster of 2 CPUs on loopback, started before the timings (its
start is printed apart); `--executor ray --workers 2` sends clean's chunks of 256 conversations as Ray
tasks, consumed in input order, so the output must be byte-identical (checked). The first Ray run
includes its worker processes' imports and language-model load, as the local run's pool does.
The goal printed: Ray within 1.3x of the local executor's wall time.

    python benchmarks/ray_clean.py                 # 20,000 conversations
    python benchmarks/ray_clean.py --size 4000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from distillery.pipeline import Pipeline
from distillery.recipes import Clean, Read

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clean import generate  # noqa: E402 - the corpus of benchmarks/clean.py


def timed_run(source: Path, run_dir: Path, executor: str, workers: int) -> float:
    started = time.perf_counter()
    result = Pipeline([Read(), Clean()]).run(run_dir, [source], workers=workers, executor=executor, shards=workers)
    if result.exit_code:
        raise SystemExit(f"{executor} run ended with status {result.exit_code}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        source = base / "raw.json"
        generate(source, args.size)
        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        ray_start = time.perf_counter() - started
        try:
            local = timed_run(source, base / "local", "local", args.workers)
            on_ray = timed_run(source, base / "ray", "ray", args.workers)
        finally:
            ray.shutdown()
        same = (base / "local" / "dataset.jsonl").read_bytes() == (base / "ray" / "dataset.jsonl").read_bytes()
        same = same and (base / "local" / "rejected.jsonl").read_bytes() == (
            base / "ray" / "rejected.jsonl").read_bytes()
        kept = sum(1 for _ in (base / "ray" / "dataset.jsonl").open())
    print(f"clean of {args.size:,} conversations ({kept:,} pieces kept), {args.workers} workers; Ray cluster started "
          f"in {ray_start:.1f}s (not timed); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'executor':18}{'wall s':>9}{'conv/s':>9}")
    for label, seconds in (("local executor", local), ("Ray", on_ray)):
        print(f"{label:18}{seconds:9.1f}{args.size / seconds:9.0f}")
    ratio = on_ray / local
    print(f"same dataset and rejections: {same}; goal: Ray within 1.3x of local's wall time: {ratio:.2f}x "
          f"({'met' if ratio <= 1.3 and same else 'NOT met'})")


if __name__ == "__main__":
    main()
