"""Throughput and client CPU of distillery's LLM layer against a fixed-latency endpoint, beside a plain
`AsyncOpenAI` + semaphore script and Alpaca's pattern, all measured in the same run.

The fake endpoint runs in its own process and so does each client, so a client's CPU time is its own.
Alpaca's generate_instruction.py sends prompts in batches of 5 and waits for each batch, so its
throughput is 5/L whatever the endpoint can take.

    python benchmarks/llm_throughput.py --requests 2000 --latency 0.5 --concurrency 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPACA_BATCH = 5


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write task number {i}."}]


async def distillery_client(url: str, count: int, concurrency: int, cache: Path) -> None:
    from distillery.llm import LLM, ChatRequest, EndpointOptions, run_bounded

    async with LLM(EndpointOptions(model="bench", base_url=url, concurrency=concurrency), cache) as llm:

        async def one(i: int) -> None:
            assert (await llm.chat(ChatRequest(messages(i)))).ok

        await run_bounded(range(count), one, limit=concurrency * 2)


async def plain_client(url: str, count: int, concurrency: int, cache: Path) -> None:
    """What a user would write: the SDK's defaults, typed responses, a semaphore."""
    import openai

    client = openai.AsyncOpenAI(api_key="x", base_url=url)
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            response = await client.chat.completions.create(model="bench", messages=messages(i))
            assert response.choices[0].message.content

    await asyncio.gather(*(one(i) for i in range(count)))
    await client.close()


async def alpaca_client(url: str, count: int, concurrency: int, cache: Path) -> None:
    from distillery.llm import LLM, ChatRequest, EndpointOptions

    async with LLM(EndpointOptions(model="bench", base_url=url, concurrency=ALPACA_BATCH), cache) as llm:
        for start in range(0, count, ALPACA_BATCH):
            await asyncio.gather(*(llm.chat(ChatRequest(messages(i))) for i in range(start, min(start + 5, count))))


CLIENTS = {"distillery": distillery_client, "plain": plain_client, "alpaca": alpaca_client}


def run_client(name: str, url: str, count: int, concurrency: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one client run in a fresh process, imports excluded."""
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, __file__, "--client", name, "--url", url, "--requests", str(count),
                               "--concurrency", str(concurrency), "--cache", f"{scratch}/c.sqlite"],
                              check=True, capture_output=True, text=True)
    figures = json.loads(done.stdout)
    return figures["wall"], figures["cpu"]


def client_main(args: argparse.Namespace) -> None:
    import openai  # noqa: F401

    import distillery.llm  # noqa: F401  (imports are start-up cost, not per-request cost)

    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(CLIENTS[args.client](args.url, args.requests, args.concurrency, Path(args.cache)))
    print(json.dumps({"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--alpaca-requests", type=int, default=50, help="the Alpaca pattern is slow; time fewer")
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(args.latency)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        runs = [("distillery", args.requests), ("plain", args.requests), ("alpaca", args.alpaca_requests)]
        results = {name: (count, *run_client(name, url, count, args.concurrency)) for name, count in runs}
    finally:
        server.stdin.close()
        server.wait()
    ideal = args.concurrency / args.latency
    print(f"{args.requests} requests, latency {args.latency}s, concurrency {args.concurrency} "
          f"(ideal {ideal:.0f} req/s)")
    print(f"{'client':44}{'req/s':>9}{'wall s':>9}{'CPU ms/req':>12}")
    labels = {"distillery": "distillery (aiohttp, raw JSON)", "plain": "plain AsyncOpenAI + semaphore (httpx)",
              "alpaca": "Alpaca pattern (batches of 5)"}
    for name, (count, wall, cpu) in results.items():
        print(f"{labels[name]:44}{count / wall:9.1f}{wall:9.2f}{1000 * cpu / count:12.2f}")
    ours, plain = results["distillery"], results["plain"]
    cpu_ms = 1000 * ours[2] / ours[0]
    speedup = (ours[0] / ours[1]) / (plain[0] / plain[1])
    print(f"goal: <= 1.8 CPU ms/request: {cpu_ms:.2f} ({'met' if cpu_ms <= 1.8 else 'NOT met'}); "
          f"goal: >= 1.5x the plain script's req/s: {speedup:.2f}x ({'met' if speedup >= 1.5 else 'NOT met'}); "
          f"plain uses {1000 * plain[2] / plain[0] / cpu_ms:.2f}x distillery's CPU per request")


if __name__ == "__main__":
    main()
