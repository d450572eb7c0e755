"""`distillery respond`: fill in answers for Alpaca records from a teacher model (alpaca-gpt4 style).

Answers land in the response cache the moment they arrive, and OUTPUT is assembled from the cache in
input order at the end, so an interrupted run re-started with the same command re-sends nothing that was
already answered and still produces a complete, ordered file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.cache import prepare_state, state_path
from distillery.cost import RunStats
from distillery.errors import InputError
from distillery.io import file_format, iter_located, sidecar, write_json, write_records
from distillery.llm import (
    LLM,
    ChatRequest,
    ChatResult,
    EndpointOptions,
    exit_status,
    run_bounded,
    run_within_budget,
)
from distillery.progress import RunProgress


@dataclass
class RespondOptions:
    input: Path
    output: Path
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)
    system: str | None = None


@dataclass
class RespondResult:
    written: int
    failed: int
    pending: int
    stats: RunStats
    summary_path: Path
    failed_path: Path | None
    stopped: str | None = None

    @property
    def exit_code(self) -> int:
        return exit_status(bool(self.failed), bool(self.stopped))


def load_alpaca(path: Path) -> list[dict[str, Any]]:
    records = []
    for where, record in iter_located(path):
        instruction = record.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError(where, "record has no 'instruction' text")
        if not isinstance(record.get("input", ""), str):
            raise InputError(where, "'input' must be a string")
        records.append(record)
    if not records:
        raise InputError(path, "holds no records")
    return records


def user_turn(record: dict[str, Any]) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}" if extra.strip() else record["instruction"]


def build_request(record: dict[str, Any], system: str | None) -> ChatRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_turn(record)})
    return ChatRequest(messages)


def respond(options: RespondOptions, progress: bool = True) -> RespondResult:
    """Answer every record; the API behind `distillery respond`."""
    file_format(options.output)
    endpoint = options.endpoint.resolve()
    records = load_alpaca(options.input)
    prepare_state(options.output, endpoint.fresh)
    stats = RunStats()
    started = time.monotonic()
    results: dict[int, ChatResult] = {}
    stopped = run_within_budget(_answer_all(options, endpoint, records, stats, results, progress))
    return _write_outputs(options, endpoint, records, results, stats, time.monotonic() - started, stopped)


async def _answer_all(
    options: RespondOptions,
    endpoint: EndpointOptions,
    records: list[dict[str, Any]],
    stats: RunStats,
    results: dict[int, ChatResult],
    progress: bool,
) -> None:
    async with LLM(endpoint, state_path(options.output), stats) as llm:
        with RunProgress("respond", len(records), stats, enabled=progress) as bar:

            async def answer(index: int) -> None:
                results[index] = await llm.chat(build_request(records[index], options.system))
                bar.advance()

            await run_bounded(range(len(records)), answer, limit=llm.options.concurrency * 2)


def _write_outputs(
    options: RespondOptions,
    endpoint: EndpointOptions,
    records: list[dict[str, Any]],
    results: dict[int, ChatResult],
    stats: RunStats,
    seconds: float,
    stopped: str | None,
) -> RespondResult:
    answered, failed = [], []
    for index, record in enumerate(records):
        result = results.get(index)
        if result is None:
            continue
        if result.ok:
            answered.append({**record, "output": result.text})
        else:
            failed.append({**record, "error": result.error})
    failed_path = sidecar(options.output, ".failed.jsonl")
    write_records(options.output, answered)
    if failed:
        write_records(failed_path, failed, layout="jsonl")
    else:
        failed_path.unlink(missing_ok=True)
    pending = len(records) - len(results)
    summary_path = sidecar(options.output, ".summary.json")
    write_json(
        summary_path,
        {
            "command": "respond",
            "input": str(options.input),
            "output": str(options.output),
            "model": endpoint.model,
            "records_in": len(records),
            "records_written": len(answered),
            "failed": len(failed),
            "pending": pending,
            "stopped": stopped,
            "seconds": round(seconds, 3),
            "requests": stats.as_dict(),
        },
    )
    return RespondResult(
        len(answered), len(failed), pending, stats, summary_path, failed_path if failed else None, stopped
    )
