"""Steps: every recipe is one, and a pipeline is a list of them.

Modelled on datatrove: a step maps an iterator of plain records (dicts) to an iterator of records, and
this base class counts what went in, what came out and what was dropped for which reason, and hands
every dropped record to one rejection sink in the one rejection schema (`summary.rejection`). The kinds:

- `Filter`: `keep(record)` says True, or (False, reason) / (False, reason, detail);
- `Map`: one record to zero or more;
- `Source`: makes records (a file, built-in seeds), appended after whatever flows in;
- `GlobalStep`: needs every record at once (ROUGE-L dedup, a cap); executors treat it as a barrier;
- `LLMStep` (in `llm_step.py`): defined by the requests a record needs and how to read the answers.

Each step declares its options as a dataclass (`Options`), defaults and help text in one place, which
the CLI's `--set`, the Python API and pipeline files all go through. A step's fingerprint is its name
and options, so an executor knows when a finished step can be reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from distillery.errors import UserError
from distillery.summary import StageStats

if TYPE_CHECKING:
    from distillery.llm import EndpointOptions
    from distillery.progress import StepLine
    from distillery.state import RunState

Record = dict[str, Any]
# (record, stage, reason[, detail]): where a step's drops go; the executor writes them as rejections. The
# detail is passed only when there is one, so a three-argument sink works for steps that give none.
Rejector = Callable[..., None]


@dataclass
class NoOptions:
    """A step with nothing to set."""


@dataclass
class Context:
    """What an executor hands a step that needs more than records: where it lives and what the run has."""

    run_dir: Path
    step_dir: Path
    inputs: list[Path] = field(default_factory=list)
    state: RunState | None = None
    stream: str = ""
    endpoint: EndpointOptions | None = None
    progress: bool | StepLine = False  # the step's line in the run's live view, or whether to show one
    workers: int = 1
    upstream: Path | None = None  # the previous step's output file, for steps whose recipe reads a file
    incomplete: bool = False
    stopped: str | None = None
    unfinished: str | None = None  # why an incomplete step stopped short (self-instruct's stall), for the message


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A step option with its help text, read by `--set`, `--dry-run` and the docs."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


class Step:
    """A named transformation of a record stream; subclasses override `run` (or use a kind below)."""

    name: ClassVar[str] = "step"
    Options: ClassVar[type] = NoOptions
    barrier: ClassVar[bool] = False  # needs every upstream record before it yields anything
    cpu_bound: ClassVar[bool] = False  # may run in worker processes over chunks of records
    asks_model: ClassVar[bool] = False  # sends requests through the run state's cache (LLM steps and sources)

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        if options is not None and values:
            raise TypeError("give an Options object or keyword options, not both")
        self.options = options if options is not None else make_options(self.Options, values, self.name)
        self.stats = StageStats(self.name)
        self.reject: Rejector | None = None
        self.context: Context | None = None
        self.complete = True  # False: ran, but left work for a re-run (failed requests), so not marked done

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process gets: the step without its run (state connection, rejection sink)."""
        return {**self.__dict__, "context": None, "reject": None}

    def bind(self, context: Context) -> None:
        self.context = context

    def fingerprint(self) -> str:
        """Identity of what this step does: its kind and options (not its upstream; the executor chains)."""
        body = {"step": self.name, "kind": type(self).__qualname__, "options": _jsonable(self.options)}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        yield from records

    def __call__(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in self.run(self._count_in(records)):
            self.stats.kept += 1
            yield record

    def _count_in(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            self.stats.seen += 1
            yield record

    def drop(self, record: Record, reason: str, detail: Any = None) -> None:
        self.stats.dropped[reason] += 1
        if self.reject is not None:
            self.reject(record, self.name, reason, *(() if detail is None else (detail,)))


class Filter(Step):
    """Subclasses implement `keep`, returning True, or False / (False, reason[, detail]) to drop."""

    name = "filter"

    def keep(self, record: Record) -> bool | tuple:
        raise NotImplementedError

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            verdict = self.keep(record)
            if verdict is True:
                yield record
                continue
            kept, reason, detail = (verdict, self.name, None) if isinstance(verdict, bool) else (*verdict, None)[:3]
            if kept:
                yield record
            else:
                self.drop(record, reason, detail)


class Map(Step):
    """Subclasses implement `map`: one record in, zero or more out (call `drop` to say why none)."""

    name = "map"

    def map(self, record: Record) -> Iterable[Record]:
        raise NotImplementedError

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            yield from self.map(record)


class Source(Step):
    """Makes records; whatever flows in passes first, so several sources concatenate."""

    name = "source"

    def records(self) -> Iterator[Record]:
        raise NotImplementedError

    def identity(self) -> Any:
        """What the made records depend on besides the options (input files' sizes and times)."""
        return None

    def fingerprint(self) -> str:
        own = super().fingerprint()
        return hashlib.sha256(json.dumps([own, self.identity()], default=str).encode()).hexdigest()[:16]

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        yield from records
        for record in self.records():
            self.stats.notes["made"] += 1
            yield record


class GlobalStep(Step):
    """Needs every record at once; an executor runs everything upstream to the end first (a barrier)."""

    name = "global"
    barrier = True

    def run_all(self, records: list[Record]) -> Iterable[Record]:
        raise NotImplementedError

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        yield from self.run_all(list(records))


# --- options: one typed place per step ---------------------------------------------------------------------


def make_options(cls: type, values: dict[str, Any], step: str) -> Any:
    """`cls(**values)` with each value converted to its field's type; unknown names are a user error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise UserError(f"step {step!r} has no option {unknown[0]!r} (its options: {known})")
    return cls(**{name: coerce(value, fields[name], step) for name, value in values.items()})


def coerce(value: Any, spec: dataclasses.Field, step: str) -> Any:
    """A value from YAML or `--set` as the field's type says: strings are parsed, typed values checked."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    base = kind.split(" |")[0].split("[")[0]
    if value is None:
        if "None" not in kind:
            raise UserError(f"{step}.{spec.name}: expected {base}, got nothing")
        return None
    if not isinstance(value, str):
        return _typed(value, base, spec.name, step)
    text = value.strip()
    if "None" in kind and text.lower() in ("none", "null", ""):
        return None
    try:
        if base == "bool":
            if text.lower() not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("true", "yes", "1", "on")
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
    except ValueError:
        raise UserError(f"{step}.{spec.name}: expected {base}, got {value!r}") from None
    if base in ("list", "tuple"):
        items = [item.strip() for item in text.split(",") if item.strip()]
        return tuple(items) if base == "tuple" else items
    if base == "dict":
        raise UserError(f"{step}.{spec.name}: set one entry at a time, e.g. {step}.{spec.name}.KEY=VALUE")
    return Path(text) if base == "Path" else text


def _typed(value: Any, base: str, name: str, step: str) -> Any:
    """A value YAML already typed: numbers may stand for text, anything else must fit."""
    if base == "str" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    fits = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": False, "Path": False,
        "list": isinstance(value, list | tuple), "tuple": isinstance(value, list | tuple),
        "dict": isinstance(value, dict),
    }.get(base, True)
    if not fits:
        raise UserError(f"{step}.{name}: expected {base}, got {value!r}")
    if base == "float":
        return float(value)
    return tuple(value) if base == "tuple" else list(value) if base == "list" else value


def option_rows(options: Any) -> list[tuple[str, Any, str]]:
    """(name, value in force, help) for every option: what `--dry-run` prints."""
    return [(f.name, getattr(options, f.name), f.metadata.get("help", "")) for f in dataclasses.fields(options)]


def _jsonable(options: Any) -> Any:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if not f.metadata.get("volatile")}


def run_steps(records: Iterable[Record], steps: list[Step], reject: Rejector | None = None) -> Iterator[Record]:
    """Chain steps lazily in this process; every step shares the same rejection sink."""
    stream: Iterable[Record] = records
    for step in steps:
        if reject is not None:
            step.reject = reject
        stream = step(stream)
    yield from stream
