"""Throughput of distillery's LLM layer against a fixed-latency endpoint, beside the ideal and Alpaca's pattern.

Alpaca's generate_instruction.py sends prompts in batches of 5 and waits for each batch before sending the
next, so its throughput is 5/L whatever the endpoint can take. distillery keeps C requests in flight.

    python benchmarks/llm_throughput.py --requests 1000 --latency 0.25 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from distillery.llm import LLM, ChatRequest, EndpointOptions, run_bounded  # noqa: E402

ALPACA_BATCH = 5


def request(i: int) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": f"Write task number {i}."}])


async def distillery_run(options: EndpointOptions, cache: Path, count: int) -> float:
    async with LLM(options, cache) as llm:
        started = time.perf_counter()

        async def one(i: int) -> None:
            assert (await llm.chat(request(i))).ok

        await run_bounded(range(count), one, limit=options.concurrency * 2)
        return time.perf_counter() - started


async def alpaca_run(options: EndpointOptions, cache: Path, count: int) -> float:
    async with LLM(options, cache) as llm:
        started = time.perf_counter()
        for start in range(0, count, ALPACA_BATCH):
            await asyncio.gather(*(llm.chat(request(i)) for i in range(start, min(start + ALPACA_BATCH, count))))
        return time.perf_counter() - started


def respond_cli_seconds(server: FakeOpenAI, scratch: Path, count: int, concurrency: int) -> float:
    """The whole `distillery respond` command, process start included, as a user runs it."""
    records = [{"instruction": f"Write task number {i}.", "input": "", "output": ""} for i in range(count)]
    (scratch / "in.json").write_text(json.dumps(records))
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "DISTILLERY_MODEL": "bench"}
    command = [
        shutil.which("distillery") or "distillery",
        "respond",
        str(scratch / "in.json"),
        "-o",
        str(scratch / "out.json"),
        "--concurrency",
        str(concurrency),
    ]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--alpaca-requests", type=int, default=100, help="the baseline is slow; time fewer")
    args = parser.parse_args()
    with FakeOpenAI(latency=args.latency) as server, tempfile.TemporaryDirectory() as scratch:
        options = EndpointOptions(model="bench", base_url=server.base_url, concurrency=args.concurrency)
        ours = asyncio.run(distillery_run(options, Path(scratch) / "ours.sqlite", args.requests))
        theirs = asyncio.run(alpaca_run(options, Path(scratch) / "alpaca.sqlite", args.alpaca_requests))
        cli = respond_cli_seconds(server, Path(scratch), args.requests, args.concurrency)
    ideal = args.concurrency / args.latency
    rows = [
        ("ideal C/L", ideal, args.requests / ideal),
        (f"distillery (C={args.concurrency})", args.requests / ours, ours),
        ("Alpaca pattern (batches of 5)", args.alpaca_requests / theirs, theirs),
        ("`distillery respond`, process incl.", args.requests / cli, cli),
    ]
    print(f"{args.requests} requests, latency {args.latency}s, concurrency {args.concurrency}")
    print(f"{'':34}{'req/s':>10}{'seconds':>10}")
    for name, rate, seconds in rows:
        print(f"{name:34}{rate:10.1f}{seconds:10.2f}")
    print(
        f"distillery reaches {100 * (args.requests / ours) / ideal:.0f}% of ideal, "
        f"{(args.requests / ours) / (args.alpaca_requests / theirs):.1f}x the Alpaca pattern; "
        f"the CLI run took {cli / (args.requests / ideal):.2f}x the ideal time (target <= 1.35x)"
    )


if __name__ == "__main__":
    main()
