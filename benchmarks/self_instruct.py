"""End-to-end Self-Instruct throughput: prompts, parsing, filters, language check, ROUGE-L dedup and the
resume journal, against a fake teacher with a fixed answer latency.

Alpaca's generate_instruction.py sends 5 prompts (request_batch_size) and waits for all of them before it
parses anything or sends again, so it cannot go faster than 5 answers per latency. The baseline here runs
distillery itself at concurrency 5, which is an upper bound for that lock-step loop; the last row (latency 0,
concurrency 1) shows the recipe's own CPU cost per answer, the ceiling against a very fast endpoint.

    python benchmarks/self_instruct.py --num 400 --latency 2 --concurrency 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from test_self_instruct import Teacher  # noqa: E402

from distillery.langid import detect_language  # noqa: E402
from distillery.llm import EndpointOptions  # noqa: E402
from distillery.self_instruct import SelfInstructOptions, generate  # noqa: E402


def run(num: int, latency: float, concurrency: int, lang: str, scratch: Path) -> tuple[int, int, float]:
    """(requests, accepted, seconds) for one fresh run."""
    with FakeOpenAI(Teacher(lang, good=8), latency=latency) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        options = SelfInstructOptions(
            output=scratch / f"{lang}-{latency}-{concurrency}.json", num=num, lang=lang,
            endpoint=EndpointOptions(model="bench", concurrency=concurrency, fresh=True),
        )
        started = time.perf_counter()
        result = generate(options, progress=False)
        seconds = time.perf_counter() - started
        return len(server.requests), result.written, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=400)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--lang", choices=("en", "zh"), default="en")
    args = parser.parse_args()
    detect_language("Load the language models before anything is timed.")
    rows = [
        (f"distillery, concurrency {args.concurrency}", args.latency, args.concurrency),
        ("baseline: concurrency 5 (Alpaca's batch)", args.latency, 5),
        ("recipe CPU only: latency 0, concurrency 1", 0.0, 1),
    ]
    print(f"self-instruct --lang {args.lang} --num {args.num}, fake answer latency {args.latency} s, "
          "8 good tasks + poison per answer")
    print(f"{'setting':44} {'requests':>8} {'accepted':>8} {'seconds':>8} {'records/s':>10} {'ms/answer':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        for label, latency, concurrency in rows:
            requests, accepted, seconds = run(args.num, latency, concurrency, args.lang, Path(scratch))
            print(f"{label:44} {requests:8d} {accepted:8d} {seconds:8.2f} {accepted / seconds:10.1f} "
                  f"{1000 * seconds / requests:10.1f}")


if __name__ == "__main__":
    main()
