"""distillery: instruction-tuning data for LLMs, made reproducibly and without silent loss."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distillery")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
