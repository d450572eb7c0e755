"""Throughput of the local teacher: the embedded SmolLM2-135M GGUF served in-process by llama.cpp.

One server (16 slots, continuous batching) answers distinct prompts through distillery's own client at
concurrency 1, 4 and 16; concurrency 1 (one request after another, as a plain loop would send them) is the
baseline each row is compared with. Completion tokens are fixed by --max-tokens, and the CPU seconds are
the whole process's, llama.cpp's threads included. The machine's load changes wall-clock figures; say how
busy it was beside them.

    python benchmarks/local_teacher.py [--model builtin:smollm2] [--threads 1] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from distillery.cost import RunStats
from distillery.endpoint import EndpointOptions
from distillery.llm import LLM, ChatRequest, run_bounded

SUBJECTS = ["rain", "rivers", "bread", "clocks", "bees", "maps", "salt", "bridges", "owls", "glass", "tea", "snow"]


async def measure(options: EndpointOptions, cache: Path, requests: int, offset: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, completion tokens) for `requests` distinct prompts."""
    stats = RunStats()
    async with LLM(options, cache, stats) as llm:

        async def ask(number: int) -> None:
            subject = SUBJECTS[number % len(SUBJECTS)]
            result = await llm.chat(ChatRequest([{"role": "user", "content": f"Write a sentence about {subject}."}],
                                                sample=offset + number))
            if not result.ok:
                raise RuntimeError(result.error)

        started, cpu = time.monotonic(), time.process_time()
        await run_bounded(range(requests), ask, options.concurrency)
        return time.monotonic() - started, time.process_time() - cpu, stats.completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    base = EndpointOptions(local_model=args.model, local_threads=args.threads, local_parallel=16,
                           max_tokens=args.max_tokens, temperature=0.8, timeout=600)
    load_started = time.monotonic()
    base.resolve().local_server()
    print(f"model {args.model}: loaded in {time.monotonic() - load_started:.1f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'concurrency':>11} {'requests':>8} {'wall s':>7} {'CPU s':>6} {'tokens/s':>9} {'req/s':>6} "
          f"{'tokens/CPU s':>12} {'vs c=1':>7}")
    baseline = None
    offset = 0
    with tempfile.TemporaryDirectory() as scratch:
        for concurrency, requests in ((1, 8), (4, 16), (16, 32)):
            options = EndpointOptions(**{**base.__dict__, "concurrency": concurrency})
            wall, cpu, tokens = asyncio.run(measure(options, Path(scratch) / "cache.sqlite", requests, offset))
            offset += requests
            rate = tokens / wall
            baseline = baseline or rate
            print(f"{concurrency:>11} {requests:>8} {wall:>7.1f} {cpu:>6.1f} {rate:>9.1f} {requests / wall:>6.2f} "
                  f"{tokens / cpu:>12.1f} {rate / baseline:>6.1f}×")


if __name__ == "__main__":
    main()
