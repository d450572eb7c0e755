"""`--help` of every command, rendered at 80 columns: every option name shows whole."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from distillery.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands.items())


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_name_shows_whole_at_80_columns(name, command):
    shown = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}).output
    assert max(map(len, shown.splitlines())) <= 80
    names = [flag for param in command.params for flag in (*param.opts, *param.secondary_opts) if flag.startswith("-")]
    assert names
    for flag in names:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown), f"{name} --help cuts {flag}"
