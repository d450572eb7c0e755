"""The `distillery` command line: a thin mapping of flags onto the Python API."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from distillery import __version__
from distillery.cost import RunStats
from distillery.errors import UserError
from distillery.llm import EndpointOptions

app = typer.Typer(
    name="distillery",
    help="Make instruction-tuning data for LLMs: Self-Instruct, Evol-Instruct, ShareGPT cleaning and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
out_console = Console()

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
}


def endpoint_command(**defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared endpoint flags and hand it one EndpointOptions as `endpoint`.

    Recipes pass their own defaults (Self-Instruct samples at temperature 1.0, for instance).
    """
    base = EndpointOptions(**defaults)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "endpoint"]
        added = []
        for name, (kind, flag, help_text) in _ENDPOINT_FLAGS.items():
            default = getattr(base, name)
            option = typer.Option(
                flag, help=help_text, rich_help_panel=_ENDPOINT_PANEL, show_default=default is not None
            )
            annotation = Annotated[kind if default is not None or kind is bool else kind | None, option]
            added.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            endpoint = EndpointOptions(**{**defaults, **{name: values.pop(name) for name in _ENDPOINT_FLAGS}})
            return command(endpoint=endpoint, **values)

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
        table.add_row("cost (USD)", f"{stats.cost_usd:.4f}")
    out_console.print(table)


def _show_version(value: bool) -> None:
    if value:
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
    from distillery.respond import RespondOptions
    from distillery.respond import respond as run_respond

    result = run_respond(RespondOptions(input=input, output=output, endpoint=endpoint, system=system))
    print_run_summary(
        f"respond → {output}",
        [("records written", result.written), ("failed", result.failed), ("summary", result.summary_path)],
        result.stats,
    )
    if result.failed:
        err_console.print(f"{result.failed} record(s) failed after retries; see {result.failed_path}")
    if result.stopped:
        err_console.print(f"stopped: {result.stopped}; {result.pending} record(s) pending. "
                          "Re-run with a larger --max-cost to finish; answers so far are cached.")
    raise typer.Exit(result.exit_code)


def main() -> None:
    """Entry point: user errors become one line and exit status 2, bugs keep their traceback."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to continue where it stopped")
        sys.exit(130)
