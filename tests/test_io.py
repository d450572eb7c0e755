"""Record files: reading by content, precise errors, and atomic writers that never leave partial output."""

from __future__ import annotations

import errno
import json
import os
import re
import resource

import pyarrow.parquet as pq
import pytest

import distillery.io as io_module
from distillery.errors import InputError, UserError
from distillery.io import _ParquetSink, iter_located, open_writer, read_records, write_records


def test_parquet_streams_in_row_groups_and_unifies_late_columns_and_wider_types(tmp_path, monkeypatch):
    monkeypatch.setattr(_ParquetSink, "batch_rows", 2)
    rows = [
        {"id": 1, "score": 1, "note": None},
        {"id": 2, "score": 2, "note": None},
        {"id": 3, "score": 2.5, "note": "late text"},
        {"id": 4, "score": 3, "note": None, "extra": ["only", "here"]},
        {"id": 5, "score": 4, "note": "x"},
    ]
    out = tmp_path / "rows.parquet"
    write_records(out, rows)
    assert pq.ParquetFile(out).metadata.num_row_groups >= 3
    back = read_records(out)
    assert [row["id"] for row in back] == [1, 2, 3, 4, 5]
    assert [row["score"] for row in back] == [1.0, 2.0, 2.5, 3.0, 4.0]
    assert back[2]["note"] == "late text" and back[3]["extra"] == ["only", "here"] and back[0]["extra"] is None


def test_parquet_keeps_columns_that_only_later_rows_have(tmp_path):
    out = tmp_path / "rows.parquet"
    write_records(out, [{"a": 1}, {"a": 2, "b": "x"}])
    assert read_records(out) == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


@pytest.mark.parametrize("name", ["out.json", "out.jsonl", "out.parquet"])
def test_a_failed_write_leaves_nothing_behind(tmp_path, name):
    with pytest.raises(RuntimeError), open_writer(tmp_path / name) as writer:
        writer.write({"a": 1})
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_json_list_and_jsonl_are_told_apart_by_content(tmp_path):
    (tmp_path / "really_jsonl.json").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "list.jsonl").write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert read_records(tmp_path / "really_jsonl.json") == read_records(tmp_path / "list.jsonl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "file is empty"),
        ('{"a": 1}\n[1]\n', "in.json:2: expected a JSON object"),
        ('[{"a": 1},\n {"a": }]', "in.json:2: invalid JSON at byte 18 (column 8): Expecting value"),
        ("hello", "in.json:1: expected a JSON list"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "in.json").write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        list(iter_located(tmp_path / "in.json"))


def test_a_byte_order_mark_is_accepted_in_both_layouts(tmp_path):
    (tmp_path / "list.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"a": 1}, {"a": 2}]).encode())
    (tmp_path / "lines.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n{"a": 2}\n')
    assert read_records(tmp_path / "list.json") == read_records(tmp_path / "lines.jsonl") == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 1}\n{"a": NaN}\n', "in.json:2: NaN is not valid JSON"),
        ('[{"a": 1}, {"a": Infinity}]', "in.json (record 2): Infinity is not valid JSON"),
        ('[{"a": 1}, {"a": "\\udfff"}]', "in.json (record 2): holds a lone surrogate"),
        ('{"a": "\\ud83d\\ude00 fine"}\n{"a": "x\\ud83d"}\n', "in.json:2: holds a lone surrogate"),
        ('{"a": ' + "[" * 150 + "]" * 150 + "}\n", "in.json:1: nested deeper than 100 levels"),
        ('[{"a": ' + "[" * 150 + "]" * 150 + "}]", "in.json (record 1): nested deeper than 100 levels"),
        ('[{"a": 1}, 2]', "in.json (record 2): expected a JSON object, got int"),
        ('[{"a": 1} {"a": 2}]', "in.json:1: invalid JSON at byte 10 (column 11): expected ',' or ']'"),
        ('[{"a": 1}] x', "in.json:1: invalid JSON at byte 11 (column 12): extra data after the list"),
        ('[{"a": "\xff"}]', "in.json: not UTF-8 text at byte 8"),
    ],
)
def test_records_that_are_not_json_or_not_safe_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "in.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with pytest.raises(InputError, match=re.escape(message)):
        list(iter_located(path))


def test_deep_nesting_is_rejected_in_bounded_time_and_memory(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" + '{"a": ' + "[" * 5_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"deep\.json \(record 1\): nested deeper than 100 levels"):
        list(iter_located(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_records_over_the_size_bound_are_rejected_without_reading_them_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(io_module, "MAX_RECORD_BYTES", 1000)
    monkeypatch.setattr(io_module, "_CHUNK", 64)
    (tmp_path / "big.jsonl").write_text('{"a": 1}\n{"a": "' + "x" * 5000 + '"}\n')
    with pytest.raises(InputError, match=r"big\.jsonl:2: line is longer than"):
        list(iter_located(tmp_path / "big.jsonl"))
    (tmp_path / "big.json").write_text('[{"a": 1}, {"a": "' + "x" * 5000 + '"}]')
    with pytest.raises(InputError, match=r"big\.json \(record 2\): record is larger than"):
        list(iter_located(tmp_path / "big.json"))


def test_json_lists_stream_across_small_chunks_with_exact_values(tmp_path, monkeypatch):
    monkeypatch.setattr(io_module, "_CHUNK", 7)
    records = [{"n": n, "text": "日本語 é " * n, "x": [1.5, None, True, {"deep": [n]}]} for n in range(50)]
    (tmp_path / "list.json").write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "]")
    assert read_records(tmp_path / "list.json") == records
    (tmp_path / "broken.json").write_text('[{"a": 1},\n\n  {"a": 2},\n  {"a": tru}]')
    with pytest.raises(InputError, match=re.escape("broken.json:4: invalid JSON at byte 32 (column 9)")):
        list(iter_located(tmp_path / "broken.json"))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(InputError, match=r"pipe\.jsonl: is a named pipe \(FIFO\), expected a regular file"):
        list(iter_located(tmp_path / "pipe.jsonl"))


def test_writers_turn_a_failing_disk_into_one_user_error_and_leave_no_temp_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"out\.jsonl: cannot write it: No space left on device"):
        write_records(tmp_path / "out.jsonl", [{"a": 1}])
    assert list(tmp_path.iterdir()) == []
