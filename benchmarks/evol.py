"""Wall time of `distillery evol` (each lineage runs its rounds on its own) beside a round-by-round barrier.

Evol-Instruct's rounds depend only within a lineage: round r of a seed needs round r-1 of the same seed and
nothing else. The obvious schedule (all seeds' round 1, wait, all seeds' round 2, ...) waits at every
round for its slowest answer, and real answers vary a lot in length. distillery instead keeps 2*C lineages
alive and lets each move on as soon as its own round is decided. Both schedules here run the very same
attempt code against a fake endpoint whose latency is a deterministic, long-tailed function of the request,
and the benchmark checks that they decide every attempt identically.

    python benchmarks/evol.py --seeds 100 --rounds 4 --concurrency 16 --tail 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI, Reply  # noqa: E402

from distillery.cost import RunStats  # noqa: E402
from distillery.evol import EvolOptions, Templates, _Run  # noqa: E402
from distillery.llm import EndpointOptions, run_bounded  # noqa: E402
from distillery.respond import load_alpaca  # noqa: E402

SEED = 5


def latency(text: str, tail: float) -> float:
    """Evolutions 20-120 ms, judges 10 ms, answers mostly short with a long tail up to `tail` seconds."""
    u = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if "#Rewritten Prompt#:" in text or "#Created Prompt#:" in text:
        return 0.02 + 0.1 * u
    if "The First Instruction:" in text:
        return 0.01
    return 0.03 + tail * u**6


def script(tail: float):
    def reply(body, number):
        text = body["messages"][-1]["content"]
        delay = latency(text + str(body.get("seed")), tail)
        if "The First Instruction:" in text:
            return Reply("Not Equal", delay=delay)
        if "#Rewritten Prompt#:" in text or "#Created Prompt#:" in text:
            parent = text.split("Prompt#:\n", 1)[1].rsplit("\n#", 1)[0]
            return Reply(f"{parent} (r{body['seed'] - SEED})", delay=delay)
        return Reply(f"A complete answer to: {text}", delay=delay)

    return reply


def prepare(scratch: Path, name: str, server: FakeOpenAI, concurrency: int, rounds: int) -> _Run:
    endpoint = EndpointOptions(model="bench", base_url=server.base_url, concurrency=concurrency, seed=SEED)
    options = EvolOptions(input=scratch / "seeds.json", output=scratch / f"{name}.jsonl", endpoint=endpoint,
                          rounds=rounds)
    options.validate()
    endpoint = endpoint.resolve()
    return _Run(options, endpoint, load_alpaca(options.input), Templates("en"), RunStats())


async def pipelined(run: _Run) -> float:
    started = time.perf_counter()
    await run.all(progress=False)
    return time.perf_counter() - started


async def round_barrier(run: _Run) -> float:
    started = time.perf_counter()
    async with run.session(progress=False):
        live = list(run.roots)
        for round_ in range(1, run.options.rounds + 1):

            async def one(index: int, round_: int = round_) -> None:
                live[index] = await run.step(index, round_, live[index])

            await run_bounded(range(len(live)), one, limit=run.endpoint.concurrency * 2)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tail", type=float, default=3.0, help="longest answer latency in seconds")
    args = parser.parse_args()
    seeds = [{"instruction": f"Explain idea number {i} to a student.", "input": ""} for i in range(args.seeds)]
    with FakeOpenAI(script(args.tail)) as server, tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "seeds.json").write_text(json.dumps(seeds))
        ours_run = prepare(scratch, "ours", server, args.concurrency, args.rounds)
        ours = asyncio.run(pipelined(ours_run))
        sent = len(server.requests)
        busy = sum(latency(b["messages"][-1]["content"] + str(b.get("seed")), args.tail) for b in server.requests)
        barrier_run = prepare(scratch, "barrier", server, args.concurrency, args.rounds)
        barrier = asyncio.run(round_barrier(barrier_run))
    same = {k: (a.instruction, a.output, a.rule) for k, a in ours_run.attempts.items()} == {
        k: (a.instruction, a.output, a.rule) for k, a in barrier_run.attempts.items()}
    ideal = busy / args.concurrency
    print(f"{args.seeds} seeds x {args.rounds} rounds = {sent} requests, concurrency {args.concurrency}, "
          f"answer latency tail {args.tail}s")
    print(f"{'':38}{'seconds':>10}{'req/s':>10}{'x ideal':>10}")
    for name, seconds in (("ideal (endpoint busy time / C)", ideal), ("distillery evol (per lineage)", ours),
                          ("round-by-round barrier", barrier)):
        print(f"{name:38}{seconds:10.2f}{sent / seconds:10.1f}{seconds / ideal:10.2f}")
    print(f"per-lineage scheduling is {barrier / ours:.2f}x faster; identical decisions: {same}")


if __name__ == "__main__":
    main()
