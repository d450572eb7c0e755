"""The `distillery` command (also `python -m distillery`).

The CLI's own handler turns Ctrl-C into one line, but importing the CLI takes a moment; an interrupt in
that moment is caught here, so a user never sees a traceback for pressing Ctrl-C.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from distillery.cli import main as run_cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted by SIGINT while starting: nothing was done.\n")
        sys.exit(130)
    run_cli()


if __name__ == "__main__":
    main()
