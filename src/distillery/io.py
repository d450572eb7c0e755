"""Reading and writing record files: JSON lists, JSONL and Parquet.

Readers stream, so memory stays flat on raw dumps of millions of records, and every error names the file
and the line or record. Writers go to a temporary file beside the target and rename it into place, so a
failed or interrupted run never leaves a partial OUTPUT behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ijson

from distillery.errors import InputError, UserError

Record = dict[str, Any]
FORMATS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
_EXACT_ERROR_LIMIT = 256 * 1024 * 1024


def file_format(path: str | os.PathLike[str]) -> str:
    """The output layout implied by a file name; unknown extensions are a user error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unsupported extension {suffix or '(none)'!r}; use .json, .jsonl or .parquet")
    return FORMATS[suffix]


def _open_checked(path: Path):
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a JSON, JSONL or Parquet file")
    return path.open("rb")


def _first_byte(handle) -> bytes:
    """Peek at the first non-blank byte to tell a JSON list from JSONL by content, not by extension."""
    while True:
        chunk = handle.read(4096)
        if not chunk:
            return b""
        stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
        if stripped:
            return stripped[:1]


def read_text(path: str | os.PathLike[str]) -> str:
    """A user-supplied text file (a template, say), with a one-line error instead of a traceback."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a text file") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text at byte {exc.start}") from None
    except OSError as exc:
        raise InputError(path, f"cannot read it ({exc.strerror or exc})") from None


def iter_located(path: str | os.PathLike[str]) -> Iterator[tuple[str, Record]]:
    """Yield (location, record) pairs; the location is what an error about that record should cite."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        yield from _iter_parquet(path)
        return
    with _open_checked(path) as handle:
        first = _first_byte(handle)
        handle.seek(0)
        if not first:
            raise InputError(path, "file is empty, expected records")
        if first == b"[":
            yield from _iter_json_list(path, handle)
        elif first == b"{":
            yield from _iter_jsonl(path, handle)
        else:
            raise InputError(path, "expected a JSON list ('[') or JSON Lines of objects ('{')", line=1)


def iter_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    for _, record in iter_located(path):
        yield record


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """Read a whole file; an input holding no records at all is an error, never an empty success."""
    records = list(iter_records(path))
    if not records:
        raise InputError(path, "holds no records")
    return records


def _iter_jsonl(path: Path, handle) -> Iterator[tuple[str, Record]]:
    for line_number, raw in enumerate(handle, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"invalid JSON: {getattr(exc, 'msg', exc)}", line=line_number) from None
        if not isinstance(value, dict):
            raise InputError(path, f"expected a JSON object, got {type(value).__name__}", line=line_number)
        yield f"{path}:{line_number}", value


def _iter_json_list(path: Path, handle) -> Iterator[tuple[str, Record]]:
    index = 0
    try:
        for index, value in enumerate(ijson.items(handle, "item", use_float=True), start=1):
            if not isinstance(value, dict):
                raise InputError(path, f"expected a JSON object, got {type(value).__name__}", record=index)
            yield f"{path} (record {index})", value
    except ijson.JSONError as exc:
        raise _locate_json_error(path, index + 1, exc) from None


def _locate_json_error(path: Path, record: int, exc: Exception) -> InputError:
    """ijson knows something broke but not where; the stdlib parser gives line, column and byte."""
    if path.stat().st_size <= _EXACT_ERROR_LIMIT:
        try:
            json.loads(path.read_bytes())
        except json.JSONDecodeError as precise:
            return InputError(
                path,
                f"invalid JSON at byte {precise.pos} (column {precise.colno}): {precise.msg}",
                line=precise.lineno,
            )
        except UnicodeDecodeError as bad_bytes:
            return InputError(path, f"not UTF-8 text at byte {bad_bytes.start}")
    return InputError(path, f"invalid JSON near record {record}: {exc}")


def _iter_parquet(path: Path) -> Iterator[tuple[str, Record]]:
    import pyarrow.parquet as pq

    _open_checked(path).close()
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(path, f"not a readable Parquet file: {exc}") from None
    index = 0
    for batch in table.iter_batches():
        for row in batch.to_pylist():
            index += 1
            yield f"{path} (row {index})", row


def _make_temp(path: Path) -> tuple[int, str]:
    """A temp file beside the target (same filesystem, so the rename is atomic) with normal permissions."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, name


class RecordWriter:
    """Streams records into a temporary file; `commit` renames it into place."""

    def __init__(self, path: str | os.PathLike[str], layout: str | None = None):
        self.path = Path(path)
        self.layout = layout or file_format(self.path)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = _make_temp(self.path)
        self._temp = Path(temp_name)
        self._handle = os.fdopen(fd, "w", encoding="utf-8")
        self._parquet = _ParquetSink(self._temp) if self.layout == "parquet" else None
        if self.layout == "json":
            self._handle.write("[")

    def write(self, record: Record) -> None:
        if self._parquet is not None:
            self._parquet.add(record)
        elif self.layout == "jsonl":
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self._handle.write(("," if self.count else "") + "\n  " + json.dumps(record, ensure_ascii=False))
        self.count += 1

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def commit(self) -> None:
        if self.layout == "json":
            self._handle.write("\n]\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self._parquet is not None:
            self._parquet.close()
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        self._handle.close()
        if self._parquet is not None:
            self._parquet.close()
        self._temp.unlink(missing_ok=True)


class _ParquetSink:
    """Parquet in row groups, so memory stays flat however many records go out.

    Columns are the union of every row's keys (pyarrow alone would take them from the first row). A batch
    that brings a new column or a wider type rewrites what was written once, under the unified schema:
    rare, since the records of one output usually share their shape.
    """

    batch_rows = 10_000

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[Record] = []
        self.columns: dict[str, None] = {}
        self.writer: Any = None

    def add(self, row: Record) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        self.columns.update(dict.fromkeys(key for row in self.rows for key in row))
        table = pa.Table.from_pylist([{key: row.get(key) for key in self.columns} for row in self.rows])
        self.rows = []
        if self.writer is not None and not table.schema.equals(self.writer.schema):
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                self.writer.close()
                written = pq.read_table(self.path)
                schema = pa.unify_schemas([written.schema, table.schema], promote_options="permissive")
                self.writer = pq.ParquetWriter(self.path, schema)
                self.writer.write_table(_conform(written, schema))
                table = _conform(table, schema)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        if self.writer is None:
            pq.write_table(pa.table({}), self.path)
        else:
            self.writer.close()
            self.writer = None


def _conform(table: Any, schema: Any) -> Any:
    """`table` under `schema`: missing columns become nulls, present ones are cast to the wider type."""
    import pyarrow as pa

    columns = [
        table.column(field.name).cast(field.type)
        if field.name in table.column_names
        else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@contextmanager
def open_writer(path: str | os.PathLike[str], layout: str | None = None) -> Iterator[RecordWriter]:
    """Atomic streaming output: the file appears complete on success and not at all on failure."""
    writer = RecordWriter(path, layout)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def write_records(path: str | os.PathLike[str], records: Iterable[Record], layout: str | None = None) -> int:
    with open_writer(path, layout) as writer:
        writer.write_all(records)
    return writer.count


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a whole text file (a summary, a report page): complete or absent, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = _make_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Atomically write one JSON document, such as a run summary."""
    write_text(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def sidecar(path: str | os.PathLike[str], suffix: str) -> Path:
    """A file that belongs to OUTPUT, named by appending to its full name (out.json.failed.jsonl)."""
    path = Path(path)
    return path.with_name(path.name + suffix)
