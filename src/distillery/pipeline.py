"""Pipelines: a list of steps with their options, from Python or from a YAML file, run into a directory.

A pipeline file names its steps in order, each with its options, and may set endpoint options for every
LLM step:

    description: Re-answer an instruction file with a stronger teacher.
    endpoint: {temperature: 0.7}
    steps:
      - read
      - dedup: {threshold: 0.7}
      - respond: {system: "Answer concisely.", endpoint: {model: gpt-4o}}
      - export: {format: alpaca, name: alpaca_gpt4}
      - report

`--set step.option=value` overrides one option (`--set respond.endpoint.model=gpt-4o` one endpoint
option of one step). Endpoint options given on the command line apply to every LLM step, over the
file's `endpoint`, unless a step names its own. Bundled pipelines live in `data/pipelines/NAME.yaml`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distillery.cost import Pricing
from distillery.errors import InputError, UserError
from distillery.executor import LocalExecutor, RunResult
from distillery.llm import ChatRequest, EndpointOptions
from distillery.llm_step import LLMSource, LLMStep, endpoint_values
from distillery.step import Source, Step, option_rows
from distillery.tokens import estimate_tokens

_ASSUMED_COMPLETION_TOKENS = 512  # per request, for the dry-run estimate when max_tokens is not set


@dataclass
class Estimate:
    """What a dry run expects an LLM step to spend: an upper bound, as no upstream filter has run."""

    step: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    assumed_completion: bool
    batch: str = ""  # with --batch: how the requests are submitted (at once, or in waves)


@dataclass
class Pipeline:
    """Steps in order; `run` makes or resumes a run directory."""

    steps: list[Step]
    name: str = "pipeline"
    description: str = ""
    endpoint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UserError(f"pipeline {self.name!r} has step {repeated[0]!r} twice; `--set` could not tell them apart")
        if not self.steps:
            raise UserError(f"pipeline {self.name!r} has no steps")

    def endpoint_options(self, given: dict[str, Any] | None = None) -> EndpointOptions:
        """The run's endpoint: the file's options under those given on the command line or in code."""
        return EndpointOptions(**endpoint_values({**self.endpoint, **(given or {})}, "endpoint"))

    def run(
        self, run_dir: str | Path, inputs: Iterable[str | Path] = (), endpoint: dict[str, Any] | None = None,
        workers: int = 1, progress: bool = False, executor: str = "local", ray_address: str | None = None,
        shards: int = 0,
    ) -> RunResult:
        """Run, or resume, this pipeline into RUN_DIR (see `executor` for what it holds). `executor="ray"`
        spreads it on the Ray cluster at `ray_address` (default: a local one) in `shards` shards (default:
        one per CPU of the cluster), writing the same run directory (see `ray_executor`)."""
        runner: LocalExecutor
        if executor == "ray":
            from distillery.ray_executor import RayExecutor

            runner = RayExecutor(shards=shards, address=ray_address, workers=workers, progress=progress)
        elif executor == "local":
            runner = LocalExecutor(workers=workers, progress=progress)
        else:
            raise UserError(f"--executor {executor!r}: expected local or ray")
        return runner.run(self.steps, run_dir, inputs, self.endpoint_options(endpoint), meta={"pipeline": self.name})

    def estimate(self, inputs: Iterable[str | Path] = (), endpoint: dict[str, Any] | None = None) -> list[Estimate]:
        """Requests, tokens and cost of each LLM step, from the records its upstream sources make."""
        executor = LocalExecutor()
        executor.bind(self.steps, Path("."), [Path(p) for p in inputs], self.endpoint_options(endpoint))
        records: list[dict[str, Any]] = []
        estimates = []
        for step in self.steps:
            if isinstance(step, LLMSource):  # its records are what the model will write: none to count yet
                samples, expected = step.estimate_requests()
                estimate = _priced(step.name, step.resolved_endpoint(), samples, expected)
                estimates.append(_batched(estimate, step.resolved_endpoint(), "source", expected))
            elif isinstance(step, Source):
                records += list(step.records())
            elif isinstance(step, LLMStep):
                estimates.append(_estimate(step, records))
        return estimates


def _estimate(step: LLMStep, records: list[dict[str, Any]]) -> Estimate:
    per_record = [step.estimate_requests(record) for record in records]
    requests = [request for asked in per_record for request in asked]
    estimate = _priced(step.name, step.resolved_endpoint(), requests, len(requests))
    if type(step).decide is LLMStep.decide:
        return _batched(estimate, step.resolved_endpoint(), "single", len(requests))
    return _batched(estimate, step.resolved_endpoint(), "staged", max(map(len, per_record), default=0))


def _batched(estimate: Estimate, endpoint: EndpointOptions, kind: str, requests: int) -> Estimate:
    """With --batch, the estimate says how the requests go out and is priced at the batch price."""
    if not endpoint.batch:
        return estimate
    from distillery.batch import batch_plan
    from distillery.cost import BATCH_PRICE_FACTOR

    return replace(estimate, cost_usd=estimate.cost_usd * BATCH_PRICE_FACTOR,
                               batch=batch_plan(kind, requests, endpoint))


def _priced(step: str, endpoint: EndpointOptions, samples: list[ChatRequest], count: int) -> Estimate:
    """`count` requests like `samples` (all of them, or a few typical ones), priced at the step's model."""
    prompt_each = sum(estimate_tokens(m["content"]) for request in samples for m in request.messages)
    prompt = round(prompt_each * count / len(samples)) if samples else 0
    per_answer = endpoint.max_tokens or _ASSUMED_COMPLETION_TOKENS
    completion = per_answer * count
    pricing = Pricing.for_model(endpoint.model or "", endpoint.price_input, endpoint.price_output)
    return Estimate(step, endpoint.model or "", count, prompt, completion,
                    pricing.cost(prompt, completion), endpoint.max_tokens is None)


# --- loading -----------------------------------------------------------------------------------------------


def _bundled_dir() -> Any:
    return resources.files("distillery") / "data" / "pipelines"


def bundled() -> dict[str, str]:
    """Bundled pipeline names and their one-line descriptions."""
    found = {}
    for entry in sorted(_bundled_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text(encoding="utf-8"))
            found[entry.name.removesuffix(".yaml")] = str(doc.get("description", "")).strip()
    return found


def load_pipeline(source: str | Path, sets: Iterable[str] = ()) -> Pipeline:
    """A bundled pipeline by name, or a YAML file, with `step.option=value` overrides applied."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text, name = path.read_text(encoding="utf-8"), path.stem
        except OSError as exc:
            raise InputError(path, f"cannot read the pipeline file ({exc.strerror or exc})") from None
    else:
        entry = _bundled_dir() / f"{source}.yaml"
        if not entry.is_file():
            raise UserError(f"no pipeline named {source!r}; bundled: {', '.join(bundled())} (or give a .yaml file)")
        text, name = entry.read_text(encoding="utf-8"), str(source)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(source, f"not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_pipeline(doc, name, sets, where=str(source))


def parse_pipeline(doc: Any, name: str, sets: Iterable[str] = (), where: str = "pipeline") -> Pipeline:
    """Build a Pipeline from a parsed pipeline document."""
    from distillery.recipes import STEPS

    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise InputError(where, "a pipeline file is a mapping with a `steps` list")
    entries: list[tuple[str, dict[str, Any]]] = []
    for number, entry in enumerate(doc["steps"], start=1):
        if isinstance(entry, str):
            entries.append((entry, {}))
        elif isinstance(entry, dict) and len(entry) == 1:
            step, options = next(iter(entry.items()))
            if options is not None and not isinstance(options, dict):
                raise InputError(where, f"step {number} ({step}): options must be a mapping")
            entries.append((str(step), dict(options or {})))
        else:
            raise InputError(where, f"step {number}: write a step name, or `name: {{option: value}}`")
    endpoint = dict(doc.get("endpoint") or {})
    for assignment in sets:
        _apply_set(assignment, entries, STEPS)
    steps = []
    for step, options in entries:
        if step not in STEPS:
            raise UserError(f"{where}: unknown step {step!r}; steps: {', '.join(STEPS)}")
        steps.append(STEPS[step](**options))
    return Pipeline(steps, name, str(doc.get("description", "")).strip(), endpoint)


def _apply_set(assignment: str, entries: list[tuple[str, dict[str, Any]]], steps: dict[str, type]) -> None:
    key, sep, value = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UserError(f"--set {assignment!r}: expected STEP.OPTION=VALUE, e.g. --set dedup.threshold=0.8")
    target = next((options for step, options in entries if step == parts[0]), None)
    if target is None:
        raise UserError(f"--set {assignment!r}: this pipeline has no step {parts[0]!r} "
                        f"(its steps: {', '.join(step for step, _ in entries)})")
    if parts[1] == "endpoint" and len(parts) == 2:
        raise UserError(f"--set {assignment!r}: set one endpoint option, e.g. --set {parts[0]}.endpoint.model=NAME")
    if len(parts) == 3 and parts[1] == "endpoint":
        target["endpoint"] = {**target.get("endpoint", {}), parts[2]: value}
    elif len(parts) == 2:
        target[parts[1]] = value
    else:
        raise UserError(f"--set {assignment!r}: expected STEP.OPTION=VALUE or STEP.endpoint.OPTION=VALUE")


def describe(pipeline: Pipeline) -> list[tuple[str, list[tuple[str, Any, str]]]]:
    """Each step with its options in force: what `--dry-run` prints."""
    return [(step.name, option_rows(step.options)) for step in pipeline.steps]
