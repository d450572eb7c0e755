"""Reading and writing record files: JSON lists, JSONL and Parquet.

Readers stream, so memory stays flat on raw dumps of millions of records, and every error names the file
and the line or record. Writers go to a temporary file beside the target and rename it into place, so a
failed or interrupted run never leaves a partial OUTPUT behind.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distillery.errors import InputError, UserError

Record = dict[str, Any]
FORMATS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
MAX_DEPTH = 100
"""Deepest nesting of lists and objects a record may have; real records use a handful of levels."""
MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Largest record (one JSONL line, one JSON list item) read; bounds memory on hostile files."""
_CHUNK = 1 << 20
_BOM = "\ufeff"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_CHAR = re.compile("[\ud800-\udfff]")
_FILE_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device"}


class _NotJSON(ValueError):
    """NaN and Infinity: Python's json accepts them, but they are not JSON and no other reader takes them."""


def _reject_constant(name: str) -> None:
    raise _NotJSON(f"{name} is not valid JSON (use null or a number)")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def file_format(path: str | os.PathLike[str]) -> str:
    """The output layout implied by a file name; unknown extensions are a user error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unsupported extension {suffix or '(none)'!r}; use .json, .jsonl or .parquet")
    return FORMATS[suffix]


def _open_checked(path: Path, expected: str = "a JSON, JSONL or Parquet file"):
    """Open a regular file for reading. A FIFO or device would block or never end, so it is refused
    (opened non-blocking, so even the check cannot hang)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, f"is a directory, expected {expected}") from None
    except OSError as exc:
        raise InputError(path, f"cannot read it ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InputError(path, f"is a directory, expected {expected}")
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise InputError(path, f"is {kind}, expected a regular file; save the data to a file first")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_input(path: str | os.PathLike[str]) -> None:
    """Fail now, with one line, if PATH is not a readable regular file (before any output is touched)."""
    _open_checked(Path(path)).close()


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
        with _open_checked(path, "a text file") as handle:
            return handle.read().decode("utf-8")
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
    line_number = 0
    while raw := handle.readline(MAX_RECORD_BYTES + 1):
        line_number += 1
        if len(raw) > MAX_RECORD_BYTES:
            raise InputError(path, f"line is longer than {MAX_RECORD_BYTES >> 20} MiB", line=line_number)
        try:
            text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8 text at byte {exc.start} of the line", line=line_number) from None
        if not text:
            continue
        try:
            value = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON at column {exc.colno}: {exc.msg}", line=line_number) from None
        except _NotJSON as exc:
            raise InputError(path, str(exc), line=line_number) from None
        except RecursionError:
            raise InputError(path, f"nested deeper than {MAX_DEPTH} levels", line=line_number) from None
        if not isinstance(value, dict):
            raise InputError(path, f"expected a JSON object, got {type(value).__name__}", line=line_number)
        problem = _record_problem(text, value)
        if problem:
            raise InputError(path, problem, line=line_number)
        yield f"{path}:{line_number}", value


def _record_problem(text: str, value: Record) -> str | None:
    """What makes a parsed record unsafe to pass on, if anything; cheap C-speed scans of its text decide
    whether the (rarely needed) walk over its values is done."""
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if _SURROGATE_ESCAPE.search(text):
        bad = _lone_surrogate(value)
        if bad is not None:
            return f"holds a lone surrogate {bad!r}, which is not valid Unicode"
    return None


def valid_unicode(text: str) -> str:
    """TEXT with any lone surrogate (JSON can escape one, UTF-8 cannot hold it) replaced by U+FFFD, for text
    we must keep but cannot reject, such as a paid answer."""
    return _SURROGATE_CHAR.sub("\ufffd", text)


def _children(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return value if isinstance(value, list) else ()


def _depth(value: Any) -> int:
    deepest, level = 0, [value]
    while level:
        deepest += 1
        level = [child for item in level for child in _children(item) if isinstance(child, (dict, list))]
    return deepest


def _lone_surrogate(value: Any) -> str | None:
    """The first string character in U+D800..U+DFFF: the JSON decoder joins valid pairs, so any left is alone."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            match = _SURROGATE_CHAR.search(item)
            if match:
                return match.group()
        else:
            stack.extend(_children(item))
    return None


class _ListReader:
    """Streams the items of a JSON list with the stdlib's C decoder, one item at a time.

    Memory holds one item (at most MAX_RECORD_BYTES) plus a read chunk, whatever the file size or nesting;
    errors carry the exact line and column, counted as the text goes by.
    """

    def __init__(self, path: Path, handle):
        self.path = path
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.line_base = 1
        self.byte_base = 0
        self.column_base = 0
        self.bytes_read = 0
        self.eof = False

    def fill(self) -> bool:
        """Read more text (at least as much again as is pending, so a huge item costs linear time)."""
        if self.eof:
            return False
        if self.pos:
            dropped = self.text[:self.pos]
            newline = dropped.rfind("\n")
            self.line_base += dropped.count("\n")
            self.column_base = len(dropped) - newline - 1 if newline >= 0 else self.column_base + len(dropped)
            self.byte_base += len(dropped.encode("utf-8", "surrogatepass"))
            self.text = self.text[self.pos:]
            self.pos = 0
        chunk = self.handle.read(max(_CHUNK, len(self.text)))
        try:
            decoded = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise InputError(self.path, f"not UTF-8 text at byte {self.bytes_read + exc.start}") from None
        if not self.bytes_read:
            decoded = decoded.removeprefix(_BOM)
        self.bytes_read += len(chunk)
        self.eof = not chunk
        self.text += decoded
        return True

    def error(self, message: str, pos: int | None = None) -> InputError:
        pos = self.pos if pos is None else pos
        line = self.line_base + self.text.count("\n", 0, pos)
        newline = self.text.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self.column_base + pos + 1
        byte = self.byte_base + len(self.text[:pos].encode("utf-8", "surrogatepass"))
        return InputError(self.path, f"invalid JSON at byte {byte} (column {column}): {message}", line=line)

    def next_char(self) -> str:
        """The next non-blank character, left unconsumed ('' at the end of the file)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""

    def item(self, index: int) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                truncated = exc.pos >= len(self.text) - 16 or exc.msg.startswith("Unterminated string")
                if not (truncated and self._grow(index)):
                    raise self.error(exc.msg, exc.pos) from None
                continue
            except _NotJSON as exc:
                raise InputError(self.path, str(exc), record=index) from None
            except RecursionError:
                raise InputError(self.path, f"nested deeper than {MAX_DEPTH} levels", record=index) from None
            if end >= len(self.text) and self._grow(index):
                continue
            if end - self.pos > MAX_RECORD_BYTES:
                self._too_large(index)
            if not isinstance(value, dict):
                raise InputError(self.path, f"expected a JSON object, got {type(value).__name__}", record=index)
            problem = _record_problem(self.text[self.pos:end], value)
            if problem:
                raise InputError(self.path, problem, record=index)
            self.pos = end
            return value

    def _grow(self, index: int) -> bool:
        if len(self.text) - self.pos > MAX_RECORD_BYTES:
            self._too_large(index)
        return self.fill()

    def _too_large(self, index: int) -> None:
        raise InputError(self.path, f"record is larger than {MAX_RECORD_BYTES >> 20} MiB", record=index)

    def __iter__(self) -> Iterator[tuple[str, Record]]:
        if self.next_char() != "[":
            raise self.error("expected '['")
        self.pos += 1
        if self.next_char() == "]":
            self.pos += 1
        else:
            index = 0
            while True:
                index += 1
                self.next_char()
                yield f"{self.path} (record {index})", self.item(index)
                separator = self.next_char()
                self.pos += 1
                if separator == "]":
                    break
                if separator != ",":
                    raise self.error("expected ',' or ']' after a record", self.pos - 1)
        if self.next_char():
            raise self.error("extra data after the list")


def _iter_json_list(path: Path, handle) -> Iterator[tuple[str, Record]]:
    yield from _ListReader(path, handle)


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
    """A temp file beside the target (same filesystem, so the rename is atomic) with normal permissions.

    Its name carries our pid, so a later run can tell the leftovers of a killed run from a live run's files.
    """
    remove_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, name


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Delete temp files of PATH left by runs that were killed mid-write (their process no longer exists)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            (path.parent / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _write_failed(path: Path, exc: Exception) -> UserError:
    if isinstance(exc, UnicodeEncodeError):
        return UserError(f"{path}: cannot write {exc.object[exc.start:exc.end]!r}, a lone surrogate that is not "
                         "valid Unicode")
    return UserError(f"{path}: cannot write it: {getattr(exc, 'strerror', None) or exc}")


def check_output(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """Fail now, with one line, if OUTPUT cannot be written (or would replace an input), before any work or
    paid request is done; stale temp files of earlier killed runs are removed on the way."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name for the output")
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise UserError(f"{path}: is also an input ({source}); writing it would destroy the input, "
                            "choose another output")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{path}: cannot be created, {ancestor} is not a directory")
    if ancestor != path.parent:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"{path}: cannot create directories in {ancestor}: permission denied")
        return
    try:
        fd, probe = _make_temp(path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{path}: cannot write in {ancestor}: {exc.strerror or exc}") from None


def check_paths(inputs: Iterable[str | os.PathLike[str] | None], outputs: Iterable[str | os.PathLike[str] | None]
                ) -> None:
    """The CLI's check before a command starts: every input a readable regular file, every output writable,
    distinct from the inputs and from each other."""
    inputs = [source for source in inputs if source is not None]
    for source in inputs:
        check_input(source)
    seen: list[Path] = []
    for target in outputs:
        if target is None:
            continue
        target = Path(target)
        check_output(target, inputs)
        clash = [other for other in seen if os.path.abspath(target) == os.path.abspath(other)]
        if clash:
            raise UserError(f"{target}: is the same file as the output {clash[0]}; give each output its own file")
        seen.append(target)


class RecordWriter:
    """Streams records into a temporary file; `commit` renames it into place.

    Any OS error (disk full, read-only directory) becomes one UserError naming OUTPUT, the temp file removed.
    """

    def __init__(self, path: str | os.PathLike[str], layout: str | None = None):
        self.path = Path(path)
        self.layout = layout or file_format(self.path)
        self.count = 0
        self._handle: Any = None
        self._parquet: _ParquetSink | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = _make_temp(self.path)
        except OSError as exc:
            raise _write_failed(self.path, exc) from None
        self._temp = Path(temp_name)
        self._handle = os.fdopen(fd, "w", encoding="utf-8")
        self._parquet = _ParquetSink(self._temp) if self.layout == "parquet" else None
        if self.layout == "json":
            self._guarded(self._handle.write, "[")

    def _guarded(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except (OSError, UnicodeEncodeError) as exc:
            self.abort()
            raise _write_failed(self.path, exc) from None

    def write(self, record: Record) -> None:
        if self._parquet is not None:
            self._guarded(self._parquet.add, record)
        elif self.layout == "jsonl":
            self._guarded(self._handle.write, json.dumps(record, ensure_ascii=False) + "\n")
        else:
            text = ("," if self.count else "") + "\n  " + json.dumps(record, ensure_ascii=False)
            self._guarded(self._handle.write, text)
        self.count += 1

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def commit(self) -> None:
        self._guarded(self._finish)

    def _finish(self) -> None:
        if self.layout == "json":
            self._handle.write("\n]\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self._parquet is not None:
            self._parquet.close()
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        """Drop the temp file; errors on the way out (a full disk refusing the flush) are beside the point."""
        parquet_writer = self._parquet.writer if self._parquet is not None else None
        self._parquet = None
        for closer in (self._handle, parquet_writer):
            try:
                if closer is not None:
                    closer.close()
            except (OSError, UnicodeEncodeError):
                pass
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = _make_temp(path)
    except OSError as exc:
        raise _write_failed(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp_name, path)
    except (OSError, UnicodeEncodeError) as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise _write_failed(path, exc) from None
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


def read_checked(path: str | Path, check: Callable[[dict[str, Any], str], None]) -> list[dict[str, Any]]:
    """Every record of a command's input file, each passed to `check(record, where)` so a mistake names its
    file and line before anything is sent or written; a file with no records is an input error too."""
    records = []
    for where, record in iter_located(path):
        check(record, where)
        records.append(record)
    if not records:
        raise InputError(path, "holds no records")
    return records
