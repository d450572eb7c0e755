"""distillery: instruction-tuning data for LLMs, made reproducibly and without silent loss."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`__version__` is read from the installed metadata only when asked: importlib.metadata costs start-up
    time that `--help` and every other command would otherwise pay."""
    if name != "__version__":
        raise AttributeError(f"module 'distillery' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distillery")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0+unknown"
