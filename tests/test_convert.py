"""`distillery convert` end to end: files in, files out, LLaMA-Factory registry entries, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ANCHORS, run_cli

from distillery.convert import OPENAI_TAGS, ConvertOptions, convert_file
from distillery.errors import InputError, UserError
from distillery.io import read_records
from distillery.summary import Summary

ALPACA_ZH = ANCHORS / "llamafactory_alpaca_zh_demo.json"
GLAIVE = ANCHORS / "llamafactory_glaive_toolcall_zh_demo.json"
FASTCHAT = ANCHORS / "fastchat_dummy_conversation.json"


def sharegpt_file(tmp_path) -> Path:
    """A small ShareGPT file the test builds, for tests that only need some valid conversations."""
    source = tmp_path / "chat.json"
    turns = [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "An assistant."}]
    source.write_text(json.dumps([{"id": "c1", "conversations": turns}]), encoding="utf-8")
    return source


def without_nulls(record: dict) -> dict:
    """Parquet gives every row every column; a missing field reads back as None."""
    return {key: value for key, value in record.items() if value is not None}


@pytest.mark.anchors
def test_cli_round_trip_through_parquet_and_jsonl_is_lossless(tmp_path):
    original = json.loads(ALPACA_ZH.read_text(encoding="utf-8"))
    steps = [("sharegpt", "a.parquet"), ("openai", "b.jsonl"), ("alpaca", "c.json")]
    source = ALPACA_ZH
    for to, name in steps:
        done = run_cli("convert", str(source), "-o", str(tmp_path / name), "--to", to)
        assert done.returncode == 0, done.stderr
        source = tmp_path / name
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == original


@pytest.mark.anchors
def test_parquet_keeps_fields_that_first_appear_after_row_one(tmp_path):
    """Record 1 of the zh demo has no input, so its converted row has no instruction_chars column."""
    out = tmp_path / "zh.parquet"
    convert_file(ALPACA_ZH, out, ConvertOptions(to="sharegpt"))
    table = pq.read_table(out)
    assert table.schema.names == ["conversations", "instruction_chars"]
    rows = table.to_pylist()
    assert rows[0]["instruction_chars"] is None
    assert sum(row["instruction_chars"] is not None for row in rows) == 139
    back = tmp_path / "back.jsonl"
    convert_file(out, back, ConvertOptions(to="alpaca"))
    assert read_records(back) == json.loads(ALPACA_ZH.read_text(encoding="utf-8"))


@pytest.mark.anchors
def test_parquet_loads_with_hugging_face_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "glaive.parquet"
    convert_file(GLAIVE, out, ConvertOptions(to="openai"))
    loaded = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert len(loaded) == 300
    assert loaded[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "generate_invoice"


@pytest.mark.anchors
def test_sharegpt_parquet_round_trip_with_tools(tmp_path):
    out = tmp_path / "glaive.parquet"
    convert_file(GLAIVE, out, ConvertOptions(to="openai"))
    back = tmp_path / "back.json"
    convert_file(out, back, ConvertOptions(to="sharegpt"))
    assert [without_nulls(r) for r in read_records(back)] == json.loads(GLAIVE.read_text(encoding="utf-8"))


@pytest.mark.anchors
@pytest.mark.parametrize(
    ("source", "to", "expected"),
    [
        (ALPACA_ZH, "alpaca", {
            "file_name": "out.json", "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }),
        (GLAIVE, "sharegpt", {
            "file_name": "out.json", "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                     "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"},
        }),
        (FASTCHAT, "openai", {
            "file_name": "out.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "system_tag": "system"},
        }),
    ],
)
def test_dataset_info_entry_per_format(tmp_path, source, to, expected):
    result = convert_file(source, tmp_path / "out.json", ConvertOptions(to=to, dataset_info=tmp_path, name="mine"))
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {"mine": expected}
    assert result.entry == expected


@pytest.mark.anchors
def test_entries_follow_llamafactory_own_registry(tmp_path):
    """Our glaive entry names the same formatting and columns as LLaMA-Factory's own; tags are its defaults."""
    shipped = json.loads((ANCHORS / "llamafactory_dataset_info.json").read_text(encoding="utf-8"))
    ours = convert_file(GLAIVE, tmp_path / "glaive_toolcall_zh_demo.json",
                        ConvertOptions(to="sharegpt", dataset_info=tmp_path)).entry
    theirs = shipped["glaive_toolcall_zh_demo"]
    assert {k: ours[k] for k in theirs} == theirs
    messages_style = shipped["mllm_demo"]["tags"]
    openai = convert_file(FASTCHAT, tmp_path / "o.json", ConvertOptions(to="openai", dataset_info=tmp_path)).entry
    assert messages_style.items() <= openai["tags"].items()


def test_alpaca_entry_names_system_and_history_when_records_use_them(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"conversations": [
        {"from": "system", "value": "你是助手"}, {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}, ensure_ascii=False) + "\n")
    entry = convert_file(source, tmp_path / "data" / "x.json",
                         ConvertOptions(to="alpaca", dataset_info=tmp_path / "data")).entry
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output",
                                "system": "system", "history": "history"}
    assert entry["file_name"] == "x.json"


@pytest.mark.anchors
def test_dataset_info_update_leaves_other_entries_untouched(tmp_path):
    registry = tmp_path / "dataset_info.json"
    shutil.copy(ANCHORS / "llamafactory_dataset_info.json", registry)
    before = json.loads(registry.read_text(encoding="utf-8"))
    done = run_cli("convert", str(FASTCHAT), "-o", str(tmp_path / "sub" / "fc.jsonl"), "--to", "sharegpt",
                   "--dataset-info", str(tmp_path), "--name", "alpaca_zh_demo")
    assert done.returncode == 0, done.stderr
    after = json.loads(registry.read_text(encoding="utf-8"))
    assert list(after) == list(before), "the replaced entry keeps its place"
    assert {k: v for k, v in after.items() if k != "alpaca_zh_demo"} == {
        k: v for k, v in before.items() if k != "alpaca_zh_demo"}
    assert after["alpaca_zh_demo"]["file_name"] == "sub/fc.jsonl"


def test_output_outside_the_registry_directory_gets_an_absolute_path(tmp_path):
    entry = convert_file(sharegpt_file(tmp_path), tmp_path / "elsewhere" / "fc.json",
                         ConvertOptions(to="sharegpt", dataset_info=tmp_path / "lf")).entry
    assert entry["file_name"] == str((tmp_path / "elsewhere" / "fc.json").resolve())


@pytest.mark.anchors
def test_openai_with_tool_calls_is_refused_for_llamafactory(tmp_path):
    out = tmp_path / "o.json"
    with pytest.raises(InputError, match=r"glaive_toolcall_zh_demo.json \(record 1\): calls tools.*use --to sharegpt"):
        convert_file(GLAIVE, out, ConvertOptions(to="openai", dataset_info=tmp_path))
    assert not out.exists() and not (tmp_path / "dataset_info.json").exists()
    result = convert_file(GLAIVE, out, ConvertOptions(to="openai", dataset_info=tmp_path, skip_invalid=True))
    assert result.written + result.rejected == 300 and result.rejected > 100
    assert "tool_calls" not in json.dumps(read_records(out))
    assert result.entry == {"file_name": "o.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "tools": "tools"}, "tags": OPENAI_TAGS}


@pytest.mark.anchors
def test_unconvertible_record_stops_the_run_with_exit_2_and_no_output(tmp_path):
    out = tmp_path / "a.json"
    done = run_cli("convert", str(GLAIVE), "-o", str(out), "--to", "alpaca")
    assert done.returncode == 2
    expected = "llamafactory_glaive_toolcall_zh_demo.json (record 1): cannot be Alpaca: message 2 is a tool call"
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anchors
def test_skip_invalid_writes_the_rest_and_explains_the_rejects(tmp_path):
    out = tmp_path / "a.jsonl"
    result = convert_file(GLAIVE, out, ConvertOptions(to="alpaca", skip_invalid=True))
    written = read_records(out)
    rejected = read_records(tmp_path / "a.jsonl.rejected.jsonl")
    assert result.records == 300 and len(written) + len(rejected) == 300
    assert len(written) == result.written > 100
    assert all((r["stage"], r["reason"]) == ("convert", "unconvertible") for r in rejected)
    assert all(r["detail"]["problem"].startswith("cannot be Alpaca") for r in rejected)
    assert rejected[0]["detail"]["where"].endswith("(record 1)")
    assert rejected[0]["record"] == json.loads(GLAIVE.read_text(encoding="utf-8"))[0]
    assert all("tools" in r for r in written), "tools survive as an Alpaca column"


def test_bad_json_line_is_named_and_nothing_is_written(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": \n')
    out = tmp_path / "out.parquet"
    with pytest.raises(InputError, match=r"in.jsonl:2: invalid JSON"):
        convert_file(source, out, ConvertOptions(to="sharegpt", skip_invalid=True))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_broken_registry_fails_before_anything_is_written(tmp_path):
    (tmp_path / "dataset_info.json").write_text("{not json", encoding="utf-8")
    done = run_cli("convert", str(sharegpt_file(tmp_path)), "-o", str(tmp_path / "x.json"), "--to", "openai",
                   "--dataset-info", str(tmp_path))
    assert done.returncode == 2
    assert "dataset_info.json: not valid JSON" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_mixed_formats_in_one_file_convert_record_by_record(tmp_path):
    source = tmp_path / "mixed.jsonl"
    records = [
        {"instruction": "a", "input": "", "output": "b"},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = convert_file(source, tmp_path / "out.json", ConvertOptions(to="alpaca"))
    assert dict(result.formats) == {"alpaca": 1, "sharegpt": 1, "openai": 1}
    assert read_records(tmp_path / "out.json") == [records[0]] * 3


def test_cli_writes_the_one_summary_schema(tmp_path):
    source = tmp_path / "mixed.jsonl"
    records = [{"instruction": "a", "input": "", "output": "b"},
               {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = run_cli("convert", str(source), "-o", str(tmp_path / "out.jsonl"), "--to", "openai")
    assert done.returncode == 0, done.stderr
    summary = Summary.read(tmp_path / "out.jsonl.summary.json")
    assert [(s.stage, s.seen, s.kept, dict(s.dropped)) for s in summary.stages] == [("convert", 2, 2, {})]
    assert summary.meta["command"] == "convert" and summary.meta["formats"] == {"alpaca": 1, "sharegpt": 1}
    assert not (tmp_path / "out.jsonl.rejected.jsonl").exists()


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--to must be one of"):
        ConvertOptions(to="chatml")
    with pytest.raises(UserError, match="give --dataset-info"):
        ConvertOptions(to="alpaca", name="x")
    with pytest.raises(UserError, match="unsupported extension"):
        convert_file(sharegpt_file(tmp_path), tmp_path / "out.csv", ConvertOptions(to="openai"))
