"""The recipes as steps: thin wrappers, each recipe's logic stays in its own module.

Step names are the names pipeline files and `--set` use: `read`, `respond`, `evol`, `clean`, `dedup`, `convert`,
`export`, `stats`, `report`. Recipes whose module works on files (clean, export, stats, report) read the
previous step's output file, which the executor has just written, rather than a second copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.chat import Chat
from distillery.decontaminate import Decontaminate
from distillery.errors import InputError, UserError
from distillery.evol import Evol
from distillery.executor import stored_records
from distillery.io import iter_located, write_json, write_records
from distillery.llm import ChatRequest
from distillery.llm_step import LLMSource
from distillery.respond import Respond
from distillery.score import Score
from distillery.selection import Select
from distillery.step import GlobalStep, Map, Record, Source, option


def file_identity(path: str | Path) -> list[Any]:
    """A file by resolved name, size and modification time: editing an input reruns what reads it."""
    try:
        info = os.stat(path)
    except OSError:
        raise InputError(path, "no such file") from None
    return [str(Path(path).resolve()), info.st_size, info.st_mtime_ns]


# --- read --------------------------------------------------------------------------------------------------


@dataclass
class ReadOptions:
    files: list[str] = option([], "Record files to read (JSON, JSONL or Parquet); default: the run's --input files.")
    builtin: str | None = option(None, "Built-in seed set (en, zh, sql) read as Alpaca records, or topic set "
                                       "(topics-en, topics-zh) for `chat`, when no file is given, so a pipeline "
                                       "over seeds runs without --input.")


class Read(Source):
    """Records from files: the pipeline's own `files`, else the run's `--input` files, else the built-in
    seed set named by `builtin`."""

    name = "read"
    Options = ReadOptions

    def paths(self) -> list[Path]:
        given = [Path(p) for p in self.options.files]
        if not given and self.context is not None:
            given = list(self.context.inputs)
        if not given and not self.options.builtin:
            raise UserError(f"step {self.name!r} has no files to read: give --input FILE (repeatable)")
        return given

    def identity(self) -> Any:
        """Files by name, size and modification time: an edited input reruns everything after it."""
        return [file_identity(path) for path in self.paths()]

    def records(self) -> Iterator[Record]:
        paths = self.paths()
        if not paths and str(self.options.builtin).startswith("topics-"):
            from distillery.chat import load_topics

            yield from load_topics(str(self.options.builtin))
        elif not paths:
            from distillery.self_instruct import load_seeds

            yield from load_seeds(f"builtin:{self.options.builtin}")
        for path in paths:
            count = 0
            for _, record in iter_located(path):
                count += 1
                yield record
            if not count:
                raise InputError(path, "holds no records")


SEEDS = "seeds.jsonl"  # a generating step's seed tasks, in its folder

# --- self-instruct -----------------------------------------------------------------------------------------


@dataclass
class SelfInstructStepOptions:
    num: int = option(100, "Accepted tasks to produce.")
    seeds: str | None = option(None, "Seed tasks: builtin:en, builtin:zh, builtin:sql, or a file of Alpaca seed "
                                     "tasks or records; default: the run's --input file, else builtin:LANG "
                                     "(builtin:sql for text-to-sql).")
    lang: str = option("en", "Language every kept instruction (and output) must be in.")
    task_type: str = option("general", "general, or text-to-sql (every query run on its schema).")
    template: Path | None = option(None, "Prompt template file with an {examples} slot.")
    prompt_examples: int = option(3, "Seed tasks shown in each prompt.")
    machine_examples: int = option(0, "Already accepted tasks shown in each prompt.")
    tasks_per_request: int = option(20, "Length of the task list each prompt asks for, examples included.")
    constraint: list[str] = option([], "Extra requirements added to the prompt.")
    rouge_threshold: float = option(0.7, "Drop a task whose ROUGE-L against a seed or a kept task is above this.")
    min_length: int | None = option(None, "Shortest instruction kept, in words (characters for zh/ja/ko).")
    max_length: int | None = option(None, "Longest instruction kept, in words (characters for zh/ja/ko).")
    block: list[str] = option([], "More blocklisted words.")
    default_blocklist: bool = option(True, "Use Alpaca's blocklist (the Chinese list for zh).")
    with_meta: bool = option(False, "Add most_similar_instructions, avg_similarity_score and source_request.")
    endpoint: dict[str, Any] = option({}, "Endpoint options for this step only.")


class SelfInstruct(LLMSource):
    """Self-Instruct / Alpaca generation (`self_instruct`): tasks made from seed tasks by the teacher, its
    request/answer loop run on the run state, so a killed run resumes without re-sending answered requests."""

    name = "self_instruct"
    Options = SelfInstructStepOptions

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        from distillery.self_instruct import RECIPE_DEFAULTS

        self.recipe_defaults = RECIPE_DEFAULTS
        self.recipe().validate()  # impossible settings fail before anything is read or sent

    def recipe(self) -> Any:
        """The recipe's own options, with the step's endpoint resolved when the step is bound to a run."""
        from distillery.self_instruct import SelfInstructOptions

        o = self.options
        seeds = o.seeds
        if seeds is None and self.context is not None and self.context.inputs:
            if len(self.context.inputs) > 1:
                raise UserError(f"step {self.name!r} reads one seed file; got {len(self.context.inputs)} --input files")
            seeds = str(self.context.inputs[0])
        return SelfInstructOptions(
            num=o.num, seeds=seeds, lang=o.lang, task_type=o.task_type, template=o.template,
            prompt_examples=o.prompt_examples, machine_examples=o.machine_examples,
            tasks_per_request=o.tasks_per_request, constraints=list(o.constraint), rouge_threshold=o.rouge_threshold,
            min_length=o.min_length, max_length=o.max_length, block=list(o.block),
            default_blocklist=o.default_blocklist, with_meta=o.with_meta)

    def identity(self) -> Any:
        """A seed or template file by name, size and time: editing one makes new tasks."""
        given = (self.recipe().seeds, self.options.template)
        return [file_identity(path) for path in given if path is not None and not str(path).startswith("builtin:")]

    def estimate_requests(self) -> tuple[list[Any], int]:
        """Prompts as the first requests would be, and the requests `num` tasks take at Alpaca's usual yield
        (about half the new tasks a prompt asks for)."""
        from distillery.self_instruct import PromptTemplate, _requirements, examples_pool, load_seeds

        recipe = self.recipe()
        seeds = examples_pool(load_seeds(recipe.seed_spec), recipe.lang, recipe.prompt_examples)
        template = PromptTemplate.load(recipe)
        per_answer = max(1.0, (recipe.tasks_per_request - recipe.prompt_examples - recipe.machine_examples) / 2)
        expected = -(-recipe.num // int(per_answer))
        text = template.render(seeds[: recipe.prompt_examples], _requirements(recipe), recipe.tasks_per_request)
        return [ChatRequest([{"role": "user", "content": text}])], expected

    def records(self) -> Iterator[Record]:
        from distillery.self_instruct import Generated, PromptTemplate, final_records, generate_with, load_seeds

        assert self.context is not None
        recipe = self.recipe()
        seeds = load_seeds(recipe.seed_spec)
        template = PromptTemplate.load(recipe)
        self.context.step_dir.mkdir(parents=True, exist_ok=True)
        write_records(self.context.step_dir / SEEDS, seeds, layout="jsonl")  # for `dedup.against_seeds`
        made = Generated(stats=self.llm_stats)
        progress = self.context.progress
        self.ask(lambda llm, state, stream: generate_with(llm, state, recipe, seeds, template, stream, made, progress))
        for record in made.rejected:
            reason, stage = record.pop("reason"), record.pop("stage")
            self.drop(record, reason, {"stage": stage, "detail": record.pop("detail", None)})
        for failure in made.failed:
            self.drop(failure, "request_failed", failure.get("error"))
        for name in ("parsed", "parse_failures", "unused"):
            self.stats.notes[name] += sum(entry[name] for entry in made.processed)
        self.stats.notes["responses"] += len(made.processed)
        if made.stopped and not self.context.stopped:
            self.context.stopped = None
            self.context.unfinished = made.stopped
            self.context.incomplete = True
            self.complete = False
            self.stats.notes["stopped_early"] += 1
        yield from final_records(recipe, seeds, made)


# --- clean -------------------------------------------------------------------------------------------------


class FileStep(GlobalStep):
    """A barrier whose recipe reads a file: it gets the upstream step's output file, already complete."""

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        for _ in records:  # counted by the base class; the recipe reads the same records from the file
            pass
        assert self.context is not None, "a file step runs inside an executor"
        if self.context.upstream is None:
            raise UserError(f"step {self.name!r} needs records before it: put a `read` step first")
        if not self.stats.seen:  # every record was dropped upstream: nothing to clean, export or describe
            self.stats.notes["nothing_to_do"] += 1
            self.discard_outputs(self.context.run_dir)
            return
        yield from self.run_file(self.context.upstream, self.context.step_dir)

    def run_file(self, upstream: Path, folder: Path) -> Iterator[Record]:
        raise NotImplementedError

    def discard_outputs(self, run_dir: Path) -> None:
        """Remove what this step left in the run directory on an earlier run, so that an export or a
        report of other records never passes for this run's (empty) result; steps that write only into
        their own folder have nothing to remove."""


@dataclass
class CleanStepOptions:
    on_bad_roles: str = option("cut", "At the first break of human/gpt alternation: cut or drop.")
    min_chars: int = option(16, "Drop conversations with fewer characters in total.")
    block: list[str] = option([], "Extra blocked phrases, gpt:PHRASE, human:PHRASE or any:PHRASE.")
    default_blocks: bool = option(True, "Block ChatGPT refusals, moralizing and error pages.")
    drop_repeated_digits: bool = option(False, "Drop turns with a digit repeated 9+ times.")
    drop_restarted_lists: bool = option(True, "Drop answers whose numbered lists restart at 1.")
    detect_lang: bool = option(True, "Detect each conversation's language into `lang`.")
    lang_detector: str = option("fasttext", "Language identifier: fasttext or lingua.")
    lang: list[str] = option([], "Keep only these languages (ISO 639-1).")
    skip_lang: list[str] = option([], "Drop these languages.")
    exact_dedup: bool = option(True, "Drop repeats of an earlier first round.")
    near_dup: float | None = option(None, "Also drop first user turns this similar (MinHash Jaccard).")
    num_perm: int = option(128, "MinHash permutations for near_dup.")
    max_tokens: int = option(2048, "Split longer conversations at round boundaries (Vicuna's split).")
    tokenizer: str | None = option(None, "Count tokens with this tokenizer; default: an estimate.")
    template_tokens: int = option(6, "Tokens allowed per turn for the chat template's role markers.")
    long_round: str = option("drop", "A single round longer than max_tokens: drop or truncate.")
    neutralize_special: bool = option(True, "Defuse literal </s>, <|im_end|> and similar strings.")
    openai_filter: bool = option(True, "Drop conversations that mention OpenAI or ChatGPT (FastChat's rule).")
    plugins_filter: bool = option(True, "Drop conversations held with ChatGPT plugins.")


class Clean(FileStep):
    """Vicuna's ShareGPT cleaning and split (`clean.clean`), its per-stage counts kept in the step folder."""

    name = "clean"
    Options = CleanStepOptions

    def clean_options(self) -> Any:
        from distillery.clean import DEFAULT_BLOCKS, CleanOptions, parse_block, parse_codes

        o = self.options
        return CleanOptions(
            workers=self.context.workers if self.context else 1, on_bad_roles=o.on_bad_roles,
            min_chars=o.min_chars,
            blocks=(DEFAULT_BLOCKS if o.default_blocks else ()) + tuple(parse_block(spec) for spec in o.block),
            repeated_digits=o.drop_repeated_digits, restarted_lists=o.drop_restarted_lists,
            detect_lang=o.detect_lang, lang_detector=o.lang_detector, langs=parse_codes(o.lang),
            skip_langs=parse_codes(o.skip_lang), exact_dedup=o.exact_dedup, near_dup=o.near_dup,
            num_perm=o.num_perm, max_tokens=o.max_tokens, tokenizer=o.tokenizer, template_tokens=o.template_tokens,
            long_round=o.long_round, neutralize_special=o.neutralize_special, openai_filter=o.openai_filter,
            plugins_filter=o.plugins_filter,
        )

    def run_file(self, upstream: Path, folder: Path) -> Iterator[Record]:
        from distillery.clean import clean

        output, rejected = folder / "clean.jsonl", folder / "clean.rejected.jsonl"
        report = clean(upstream, output, self.clean_options(), rejected)
        for stage in report.stages:
            for name, count in stage["notes"].items():
                self.stats.notes[f"{stage['stage']}.{name}"] += count
        for dropped in stored_records(rejected):
            self.drop(dropped["record"], dropped["reason"], {"stage": dropped["stage"]})
        yield from stored_records(output)


# --- dedup -------------------------------------------------------------------------------------------------


@dataclass
class DedupStepOptions:
    method: str = option("rouge-l", "rouge-l (exact Self-Instruct rule), minhash (approximate) or exact.")
    threshold: float | None = option(None, "Drop above this score (default 0.7 for rouge-l, 0.8 for minhash).")
    field: str = option("instruction", "Alpaca field compared; chats use their first user turn.")
    num_perm: int = option(128, "MinHash permutations.")
    against: list[str] = option([], "Files whose records are compared with but never written.")
    against_seeds: bool = option(False, "Also compare with the seed tasks of an earlier generating step "
                                        "(self_instruct), whichever seeds it used.")


class Dedup(GlobalStep):
    """Near-duplicate filtering (`dedup.dedup_records`): every record against all earlier kept ones."""

    name = "dedup"
    Options = DedupStepOptions
    # An executor may make the index from every text the step compares (the Ray executor signs them by shard).
    make_index: Callable[[Any, list[str]], Any] | None = None

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        from distillery.dedup import DedupOptions, dedup_records, pool_texts, record_text

        o = self.options
        options = DedupOptions(method=o.method, threshold=o.threshold, field=o.field, num_perm=o.num_perm)
        pool = pool_texts(o.against, o.field)
        if o.against_seeds:
            assert self.context is not None, "against_seeds reads the run directory"
            found = sorted(self.context.run_dir.glob(f"steps/*/{SEEDS}"))
            found = [path for path in found if path.parent.name < self.context.step_dir.name]
            if not found:
                raise UserError(f"{self.name}.against_seeds: no earlier step of this pipeline made records from seeds")
            pool += pool_texts(found, o.field)
        index = None
        if self.make_index is not None:
            records = list(records)
            texts = [*pool, *(record_text(r, o.field, f"record {n}") for n, r in enumerate(records, start=1))]
            index = self.make_index(options, texts)
        yield from dedup_records(records, pool, options, lambda dup: self.drop(
            dup.record, dup.reason, dup.detail), index)


# --- convert -----------------------------------------------------------------------------------------------


@dataclass
class ConvertStepOptions:
    to: str = option("sharegpt", "Target format: alpaca, sharegpt, openai, or preference (from pairwise scores).")
    skip_invalid: bool = option(False, "Drop records that cannot be converted losslessly instead of stopping.")


class Convert(Map):
    """Alpaca / ShareGPT / OpenAI conversion (`formats.convert_record`), lossless or not at all."""

    name = "convert"
    Options = ConvertStepOptions
    cpu_bound = True

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        from distillery.convert import ConvertOptions

        ConvertOptions(to=self.options.to)  # a bad target fails here, before any record is read
        self.number = 0

    def map(self, record: Record) -> Iterable[Record]:
        from distillery.convert import UNCONVERTIBLE
        from distillery.formats import convert_record

        self.number += 1
        where = f"{self.name} record {self.number}"
        try:
            return [convert_record(record, self.options.to, where)]
        except InputError as exc:
            if not self.options.skip_invalid:
                raise
            self.drop(record, UNCONVERTIBLE, {"where": where, "problem": str(exc).removeprefix(f"{where}: ")})
            return []


# --- export ------------------------------------------------------------------------------------------------


@dataclass
class ExportStepOptions:
    format: str = option("sharegpt", "Format of the LLaMA-Factory data file: alpaca, sharegpt or openai.")
    name: str = option("dataset", "Name of the data file and of its dataset_info.json entry.")
    tokenizer: str | None = option(None, "Also write tokenized examples with verified loss masks "
                                         "(tokenizer.json or HF directory).")
    template: str = option("auto", "Chat template for tokenized examples.")
    max_length: int | None = option(None, "Longest tokenized example.")
    overlong: str = option("truncate", "Over max_length: truncate at a turn boundary, or drop.")
    train_on: str = option("all-assistant", "all-assistant or last-assistant turns get labels.")
    skip_invalid: bool = option(False, "Leave out records that fail the label self-check instead of failing.")


class Export(FileStep):
    """The run's training files: `data/NAME.json` with `data/dataset_info.json` for LLaMA-Factory (via
    `convert`), and with a tokenizer `NAME.tokenized.parquet` (via `export`). Records pass through."""

    name = "export"
    Options = ExportStepOptions

    def run_file(self, upstream: Path, folder: Path) -> Iterator[Record]:
        from distillery.convert import ConvertOptions, convert_file
        from distillery.export import ExportOptions, export_file

        assert self.context is not None
        o = self.options
        data = self.context.run_dir / "data"
        converted = convert_file(upstream, data / f"{o.name}.json", ConvertOptions(
            to=o.format, rejected=folder / "convert.rejected.jsonl", dataset_info=data, name=o.name))
        self.stats.notes["data_records"] += converted.written
        if o.tokenizer:
            result = export_file(upstream, self.context.run_dir / f"{o.name}.tokenized.parquet", ExportOptions(
                tokenizer=o.tokenizer, template=o.template, max_length=o.max_length, overlong=o.overlong,
                train_on=o.train_on, skip_invalid=o.skip_invalid, rejected=folder / "export.rejected.jsonl"))
            self.stats.notes["examples"] += result.written
            self.stats.notes["truncated"] += result.truncated
            self.stats.notes["dropped_overlong"] += result.dropped_overlong
            self.stats.notes["failed_self_check"] += result.invalid
            self.stats.notes["trained_tokens"] += result.trained_tokens
        yield from stored_records(upstream)

    def discard_outputs(self, run_dir: Path) -> None:
        from distillery.convert import DATASET_INFO, read_dataset_info

        data, name = run_dir / "data", self.options.name
        for path in (data / f"{name}.json", run_dir / f"{name}.tokenized.parquet"):
            path.unlink(missing_ok=True)
        info = read_dataset_info(data)
        if info.pop(name, None) is not None:
            write_json(data / DATASET_INFO, info)


# --- stats and report --------------------------------------------------------------------------------------


@dataclass
class StatsStepOptions:
    tokenizer: str | None = option(None, "Count tokens of this tokenizer; default: words.")


class Stats(FileStep):
    """Record, turn and length statistics (`stats.collect_stats`) into the step folder's stats.json."""

    name = "stats"
    Options = StatsStepOptions

    def run_file(self, upstream: Path, folder: Path) -> Iterator[Record]:
        from distillery.stats import StatsOptions, collect_stats

        collect_stats(upstream, StatsOptions(tokenizer=self.options.tokenizer, json_path=folder / "stats.json"))
        yield from stored_records(upstream)


@dataclass
class ReportStepOptions:
    title: str = option("distillery report", "Page title.")
    tokenizer: str | None = option(None, "Count lengths in tokens of this tokenizer; default: words.")
    sample: int = option(1000, "Records in the examples table.")
    dup_sample: int = option(2000, "Instructions compared all-pairs by ROUGE-L.")
    lang_sample: int = option(2000, "Records whose language is detected.")
    lang_detector: str = option("fasttext", "Language identifier: fasttext or lingua.")
    seed: int = option(0, "Seed of the random samples.")


class Report(FileStep):
    """RUN/report.html over the run's current dataset, its summary and its rejections (`report`)."""

    name = "report"
    Options = ReportStepOptions

    def run_file(self, upstream: Path, folder: Path) -> Iterator[Record]:
        from distillery.report import ReportOptions, build_report

        assert self.context is not None
        run = self.context.run_dir
        o = self.options
        rejected = run / "rejected.jsonl"
        build_report(ReportOptions(
            inputs=[run / "dataset.jsonl"], output=run / "report.html", tokenizer=o.tokenizer, sample=o.sample,
            dup_sample=o.dup_sample, lang_sample=o.lang_sample,
            rejected=[rejected] if rejected.stat().st_size else [], summaries=[run / "summary.json"],
            title=o.title, seed=o.seed, lang_detector=o.lang_detector))
        yield from stored_records(upstream)

    def discard_outputs(self, run_dir: Path) -> None:
        (run_dir / "report.html").unlink(missing_ok=True)


STEPS: dict[str, type] = {
    step.name: step
    for step in (Read, SelfInstruct, Respond, Evol, Chat, Clean, Dedup, Convert, Export, Stats, Report, Score, Select,
                 Decontaminate)
}
