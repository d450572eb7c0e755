"""`distillery respond`: fill in answers for Alpaca records from a teacher model (alpaca-gpt4 style).

Answers land in the response cache the moment they arrive, and OUTPUT is assembled from the cache in
input order at the end, so an interrupted run re-started with the same command re-sends nothing that was
already answered and still produces a complete, ordered file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillery.errors import InputError
from distillery.io import file_format, read_checked
from distillery.llm import ChatRequest, ChatResult, EndpointOptions
from distillery.llm_step import LLMStep, Rejected
from distillery.step import Record, option

if TYPE_CHECKING:
    from distillery.one_step import StepRun


@dataclass
class RespondOptions:
    input: Path
    output: Path
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)
    system: str | None = None


def check_alpaca(record: dict[str, Any], where: str) -> None:
    """An Alpaca record respond can answer: `instruction` text, and `input` a string when present."""
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError(where, "record has no 'instruction' text")
    if not isinstance(record.get("input", ""), str):
        raise InputError(where, "'input' must be a string")


def load_alpaca(path: Path) -> list[dict[str, Any]]:
    return read_checked(path, check_alpaca)


def user_turn(record: dict[str, Any]) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}" if extra.strip() else record["instruction"]


def build_request(record: dict[str, Any], system: str | None) -> ChatRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_turn(record)})
    return ChatRequest(messages)


@dataclass
class RespondStepOptions:
    system: str | None = option(None, "System prompt sent before every instruction.")
    endpoint: dict[str, Any] = option({}, "Endpoint options for this step only (model, temperature...).")


class Respond(LLMStep):
    """The step: one request per Alpaca record, whose answer becomes `output`."""

    name = "respond"
    Options = RespondStepOptions

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        def checked() -> Iterator[Record]:
            for number, record in enumerate(records, start=1):
                check_alpaca(record, f"{self.name} input record {number}")
                yield record

        yield from super().run(checked())

    def requests(self, record: Record) -> list[ChatRequest]:
        return [build_request(record, self.options.system)]

    def parse(self, record: Record, answers: list[ChatResult]) -> list[Record] | Rejected:
        return [{**record, "output": answers[0].text}]


def respond(options: RespondOptions, progress: bool = True) -> StepRun:
    """Answer every record; the API behind `distillery respond`, a one-step pipeline over `Respond` whose
    state is the cache beside OUTPUT."""
    from distillery.one_step import run_one_step

    file_format(options.output)
    endpoint = options.endpoint.resolve()
    records = load_alpaca(options.input)
    return run_one_step(Respond(system=options.system), records, options.output,
                        {"command": "respond", "input": str(options.input)}, endpoint, progress=progress)
