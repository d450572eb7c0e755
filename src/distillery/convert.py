"""`distillery convert`: records into the shape a trainer reads, plus the LLaMA-Factory registry entry.

Conversion is per record (formats.convert_record), so a file may mix formats. A record that cannot be
converted without losing something stops the run with an error naming it, or, with skip_invalid, goes
to the rejected file with its reason. OUTPUT and dataset_info.json are written atomically, and
dataset_info.json only after OUTPUT is complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.errors import InputError, UserError
from distillery.formats import ALPACA, FORMATS, OPENAI, PREFERENCE, SHAREGPT, convert_record, detect_format
from distillery.io import RecordWriter, iter_located, open_writer, read_text, sidecar, write_json
from distillery.summary import StageStats, rejection

DATASET_INFO = "dataset_info.json"
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
# LLaMA-Factory reads OpenAI `messages` with its sharegpt loader and these tags (its data/README.md).
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}
_OPTIONAL_COLUMNS = {ALPACA: ("system", "history", "tools"), SHAREGPT: ("system", "tools"), OPENAI: ("tools",),
                     PREFERENCE: ("system", "history")}


@dataclass
class ConvertOptions:
    to: str
    skip_invalid: bool = False
    rejected: Path | None = None
    dataset_info: Path | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.to not in (*FORMATS, PREFERENCE):
            raise UserError(f"--to must be one of {', '.join((*FORMATS, PREFERENCE))}, not {self.to!r}")
        if self.name is not None and self.dataset_info is None:
            raise UserError("--name names the dataset_info.json entry; give --dataset-info DIR too")


UNCONVERTIBLE = "unconvertible"


@dataclass
class ConvertResult:
    output: Path
    to: str
    records: int = 0
    written: int = 0
    rejected: int = 0
    formats: Counter = field(default_factory=Counter)
    rejected_path: Path | None = None
    dataset_info: Path | None = None
    entry_name: str | None = None
    entry: dict[str, Any] | None = None

    def stage(self) -> StageStats:
        """The conversion as one stage of the one summary schema."""
        dropped = Counter({UNCONVERTIBLE: self.rejected}) if self.rejected else Counter()
        return StageStats("convert", self.records, self.written, dropped)


class RejectFile:
    """The 'why was this dropped' JSONL beside an output, written atomically.

    It is committed when the run succeeds with something in it, or when `keep` was called before a
    failure (the report that explains the failure); any other failure leaves nothing behind. A stale
    default sidecar from an earlier run is removed when this run rejects nothing.
    """

    def __init__(self, path: Path, default: bool = True):
        self.path = Path(path)
        self.default = default
        self._writer: RecordWriter | None = None
        self._keep = False

    @classmethod
    def beside(cls, output: Path, given: Path | None) -> RejectFile:
        """The user's --rejected path, else OUTPUT.rejected.jsonl (the default, cleared when unused)."""
        return cls(given or sidecar(output, ".rejected.jsonl"), default=given is None)

    @property
    def count(self) -> int:
        return self._writer.count if self._writer else 0

    def write(self, entry: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = RecordWriter(self.path, "jsonl")
        self._writer.write(entry)

    def keep(self) -> None:
        self._keep = True

    def __enter__(self) -> RejectFile:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self._writer is not None:
            if kind is None or self._keep:
                self._writer.commit()
            else:
                self._writer.abort()
        elif kind is None and self.default:
            self.path.unlink(missing_ok=True)


def convert_file(input_path: str | Path, output: str | Path, options: ConvertOptions) -> ConvertResult:
    output = Path(output)
    result = ConvertResult(output, options.to)
    rejects = RejectFile.beside(output, options.rejected)
    columns: set[str] = set()
    info = read_dataset_info(options.dataset_info) if options.dataset_info is not None else None
    with rejects, open_writer(output) as writer:
        writer.write_all(_convert_all(input_path, options, result, rejects, columns))
        if not result.records:
            raise InputError(input_path, "holds no records")
    result.written, result.rejected = writer.count, rejects.count
    result.rejected_path = rejects.path if rejects.count else None
    if info is not None:
        result.entry = dataset_info_entry(output, options.dataset_info, options.to, columns)
        result.entry_name = options.name or output.stem
        info[result.entry_name] = result.entry
        result.dataset_info = Path(options.dataset_info) / DATASET_INFO
        result.dataset_info.parent.mkdir(parents=True, exist_ok=True)
        write_json(result.dataset_info, info)
    return result


def _convert_all(
    input_path: str | Path, options: ConvertOptions, result: ConvertResult, rejects: RejectFile, columns: set[str]
) -> Iterator[dict[str, Any]]:
    """Converted records; with --dataset-info, `columns` collects the optional columns they use."""
    for where, record in iter_located(input_path):
        result.records += 1
        try:
            result.formats[detect_format(record, where)] += 1
            converted = convert_record(record, options.to, where)
            if options.dataset_info is not None:
                _register(converted, where, options.to, columns)
        except InputError as exc:
            if not options.skip_invalid:
                raise
            problem = str(exc).removeprefix(f"{where}: ")
            rejects.write(rejection("convert", UNCONVERTIBLE, record, {"where": where, "problem": problem}))
            continue
        yield converted


def _register(record: dict[str, Any], where: str, to: str, columns: set[str]) -> None:
    """Note the optional columns in use, and refuse a record LLaMA-Factory's loader would misread."""
    if to == OPENAI and any(message.get("tool_calls") for message in record["messages"]):
        raise InputError(
            where, "calls tools, and LLaMA-Factory reads OpenAI-format files with its sharegpt loader, which "
            "ignores tool_calls; use --to sharegpt for a LLaMA-Factory dataset"
        )
    columns.update(key for key in _OPTIONAL_COLUMNS[to] if record.get(key))


def dataset_info_entry(output: Path, directory: Path, to: str, columns: set[str]) -> dict[str, Any]:
    """The LLaMA-Factory registry entry for OUTPUT, naming only the columns the records use."""
    output, directory = Path(output).resolve(), Path(directory).resolve()
    file_name = os.path.relpath(output, directory) if output.is_relative_to(directory) else str(output)
    used = [key for key in _OPTIONAL_COLUMNS[to] if key in columns]
    if to == PREFERENCE:
        mapped = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
        return {"file_name": file_name, "ranking": True, "columns": {**mapped, **{k: k for k in used}}}
    if to == ALPACA:
        mapped = {"prompt": "instruction", "query": "input", "response": "output"}
        return {"file_name": file_name, "formatting": "alpaca", "columns": {**mapped, **{k: k for k in used}}}
    messages = "conversations" if to == SHAREGPT else "messages"
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": messages, **{key: key for key in used}},
        "tags": dict(SHAREGPT_TAGS if to == SHAREGPT else OPENAI_TAGS),
    }


def read_dataset_info(directory: Path) -> dict[str, Any]:
    """The registry to update, read before any work so a broken one fails the run before OUTPUT exists.

    Entries are replaced in place, so every other entry keeps its content and its position.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--dataset-info {directory}: not a directory")
    path = directory / DATASET_INFO
    if not path.exists():
        return {}
    try:
        info = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise InputError(path, "expected a JSON object of dataset entries")
    return info
