"""The one exception family for mistakes a user can fix.

The CLI turns a UserError into a single line and exit status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad options or an unreachable endpoint: something the user can act on."""

    exit_code = 2


class InputError(UserError):
    """A data file that cannot be read as records, located as precisely as we can."""

    def __init__(self, path: object, message: str, line: int | None = None, record: int | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if record is not None:
            where += f" (record {record})"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.record = record


INTERRUPTED = "interrupted"
"""The stop reason of a run ended by Ctrl-C or SIGTERM after it saved its output and summary."""
