"""Record files: reading by content, precise errors, and atomic writers that never leave partial output."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from distillery.errors import InputError
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
