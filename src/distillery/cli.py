"""The `distillery` command line: a thin mapping of flags onto the Python API."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from distillery import __version__
from distillery.errors import UserError

app = typer.Typer(
    name="distillery",
    help="Make instruction-tuning data for LLMs: Self-Instruct, Evol-Instruct, ShareGPT cleaning and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


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
