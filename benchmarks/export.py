"""distillery export's cost over plain rendering + tokenizing, on one machine, in one run.

Workload: the FastChat dummy conversations (500, 1-3 rounds) and LLaMA-Factory's Alpaca demos (en + zh,
1,999 records), repeated to --records, from ../shared/anchors.

Tokenizer: a byte-level BPE trained in-process (tests/tiny_tokenizer.py, ~800 tokens), so nothing is
downloaded; a real 128K-vocabulary tokenizer costs more per token on both sides alike.

Baseline: what any trainer does at least: render each conversation with the same template
(chatml, as a Python string) and call the HF tokenizer on the batch of rendered strings, no labels.
distillery: LabelEncoder.example per record: render with spans, encode the pieces between template
special tokens, label assistant tokens from offsets, and re-decode every labelled turn for the check.

    python benchmarks/export.py                  # 20,000 records
    python benchmarks/export.py --records 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

from distillery.export import ExportOptions, LabelEncoder
from distillery.formats import to_messages
from distillery.tokens import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors"
sys.path.insert(0, str(ROOT / "tests"))
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402

FILES = ["fastchat_dummy_conversation.json", "llamafactory_alpaca_en_demo.json", "llamafactory_alpaca_zh_demo.json"]


def conversations(count: int) -> list[list[dict]]:
    records = [r for name in FILES for r in json.loads((ANCHORS / name).read_text(encoding="utf-8"))]
    return [to_messages(r) for r in islice(cycle(records), count)]


def chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    chats = conversations(args.records)
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = load_tokenizer(str(build_tiny_tokenizer(Path(directory) / "tok")))
    encoder = LabelEncoder(tokenizer, "chatml")
    options = ExportOptions(tokenizer="-", template="chatml")

    started = time.perf_counter()
    baseline = tokenizer([chatml(chat) for chat in chats], add_special_tokens=False)["input_ids"]
    baseline_s = time.perf_counter() - started

    started = time.perf_counter()
    examples = [encoder.example(chat, options) for chat in chats]
    ours_s = time.perf_counter() - started

    tokens = sum(len(ids) for ids in baseline)
    assert [e.input_ids for e in examples] == baseline, "same tokens as the whole-string tokenization"
    trained = sum(sum(label != -100 for label in e.labels) for e in examples)
    print(f"{args.records:,} conversations, {tokens:,} tokens ({trained:,} trained), chatml, tiny BPE")
    print(f"{'':34}{'seconds':>9}{'records/s':>12}{'tokens/s':>12}")
    for name, seconds in (("baseline: render + tokenize batch", baseline_s), ("distillery: + labels + check", ours_s)):
        print(f"{name:34}{seconds:9.2f}{args.records / seconds:12,.0f}{tokens / seconds:12,.0f}")
    print(f"distillery / baseline: {ours_s / baseline_s:.1f}x the time, tokens identical")


if __name__ == "__main__":
    main()
