"""The same LLM step on the local executor and on Ray (1 and 2 workers), in one run, against the test server.

Workload: --requests distinct Alpaca instructions answered by a `read → respond` pipeline at
--concurrency, against tests/fake_openai.py in its own process at --latency seconds a request (so the
server's Python does not share this process's interpreter lock). Each run gets a fresh run directory, so
every request is sent. Ray runs on a local cluster of --cpus CPUs on loopback, started and warmed up
(its worker processes import distillery on their first task) once before the timings, both printed
apart; "Ray, N workers" is `--executor ray --shards N`: N shard tasks,
each with its own client, event loop and state file, and --concurrency / N requests in flight.

Figures are the respond step's wall seconds from the run's summary (requests/s = requests / seconds)
and the whole run's; on a shared machine the load average printed beside them says how much to trust
them. Below the measurements, the same figures projected to N nodes: a cluster answers about
min(N x workers x one worker's rate, what the endpoint allows (total concurrency / latency, or its
rate limit)); past that point more nodes only wait on the endpoint.

    python benchmarks/ray_scale.py                         # 4,000 requests at 0.25 s
    python benchmarks/ray_scale.py --requests 1000 --latency 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distillery.pipeline import Pipeline
from distillery.recipes import Read
from distillery.respond import Respond

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    records: Path, run_dir: Path, url: str, concurrency: int, executor: str, shards: int, server: int,
) -> tuple[float, float, float]:
    """(respond step's seconds, whole run's seconds, the server's busy share) for one fresh run."""
    endpoint = {"base_url": url, "model": "fake-model", "concurrency": concurrency}
    started, server_before = time.perf_counter(), cpu_seconds(server)
    result = Pipeline([Read(), Respond()]).run(run_dir, [records], endpoint, executor=executor, shards=shards)
    total = time.perf_counter() - started
    if result.exit_code:
        raise SystemExit(f"{executor} run ended with status {result.exit_code}")
    respond = next(stage for stage in result.summary.stages if stage.stage == "respond")
    return respond.seconds, total, (cpu_seconds(server) - server_before) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster.")
    args = parser.parse_args()
    import ray

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(args.latency)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        ray_start = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as scratch:
            base = Path(scratch)
            records = base / "in.jsonl"
            records.write_text("".join(json.dumps({"instruction": f"Task number {i}: say something.",
                                                   "input": "", "output": ""}) + "\n"
                                       for i in range(args.requests)))
            # Ray's one-time costs, paid once per cluster and not per run: its worker processes start and
            # import distillery, openai and aiohttp on their first task.
            started = time.perf_counter()
            warm = base / "warm.jsonl"
            warm.write_text("".join(json.dumps({"instruction": f"Warm up {i}."}) + "\n" for i in range(4)))
            run_once(warm, base / "warm", url, args.concurrency, "ray", args.cpus, server.pid)
            warm_up = time.perf_counter() - started
            runs = {}
            for label, executor, shards in (("local executor", "local", 0), ("Ray, 1 worker", "ray", 1),
                                            ("Ray, 2 workers", "ray", 2)):
                runs[label] = run_once(records, base / label.replace(" ", "_").replace(",", ""), url,
                                       args.concurrency, executor, shards, server.pid)
    finally:
        server.stdin.close()
        server.wait()
        ray.shutdown()
    ideal = args.concurrency / args.latency
    print(f"{args.requests} requests, latency {args.latency}s, concurrency {args.concurrency} "
          f"(the endpoint allows {ideal:.0f} req/s); Ray cluster of {args.cpus} CPUs started in {ray_start:.1f}s, "
          f"its workers warmed up in {warm_up:.1f}s (both once per cluster, not timed below); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'executor':18}{'req/s':>9}{'step s':>9}{'run s':>9}{'vs local':>10}{'server busy':>13}")
    local_rate = args.requests / runs["local executor"][0]
    for label, (step, total, busy) in runs.items():
        rate = args.requests / step
        print(f"{label:18}{rate:9.1f}{step:9.2f}{total:9.2f}{rate / local_rate:9.2f}x{100 * busy:12.0f}%")
    print("server busy: the test server's CPU seconds per wall second of the run (100%: one core, its "
          "ceiling, as one Python process)")
    two = args.requests / runs["Ray, 2 workers"][0]
    print(f"goal: Ray with 2 workers no slower than the local executor: {two / local_rate:.2f}x "
          f"({'met' if two >= local_rate else 'NOT met'})")
    one = args.requests / runs["Ray, 1 worker"][0]
    print(f"on paper (one worker answers {one:.0f} req/s here; the endpoint allows {ideal:.0f} req/s at this "
          f"concurrency and latency):")
    print(f"{'nodes x 2 workers':>18}{'client-bound req/s':>20}{'expected req/s':>16}  limit")
    for nodes in (1, 2, 4, 8, 16, 32):
        client = nodes * 2 * one
        print(f"{nodes:>18}{client:20.0f}{min(client, ideal):16.0f}  {'workers' if client < ideal else 'endpoint'}")
    print("raise --concurrency (and the endpoint's rate limit) with the nodes, or they only wait on the endpoint")


if __name__ == "__main__":
    main()
