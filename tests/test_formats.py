"""Record formats: lossless round trips on real trainer data, and clear refusals where a direction loses data."""

from __future__ import annotations

import json

import pytest
from conftest import ANCHORS

from distillery.errors import InputError
from distillery.formats import SPLIT_KEY, convert_record, detect_format, first_user_turn, to_messages

ALPACA_FILES = ["llamafactory_alpaca_en_demo.json", "llamafactory_alpaca_zh_demo.json", "llamafactory_identity.json"]
SHAREGPT_FILES = ["llamafactory_glaive_toolcall_zh_demo.json", "fastchat_dummy_conversation.json"]


def load(name: str) -> list[dict]:
    return json.loads((ANCHORS / name).read_text(encoding="utf-8"))


@pytest.mark.anchors
@pytest.mark.parametrize("name", ALPACA_FILES)
def test_alpaca_to_sharegpt_to_openai_to_alpaca_reproduces_every_record(name):
    records = load(name)
    for number, record in enumerate(records, start=1):
        sharegpt = convert_record(record, "sharegpt", f"record {number}")
        openai = convert_record(sharegpt, "openai")
        back = convert_record(openai, "alpaca")
        assert back == record, number
        assert list(back) == list(record), "key order is kept too"
        assert detect_format(sharegpt) == "sharegpt" and detect_format(openai) == "openai"


@pytest.mark.anchors
@pytest.mark.parametrize("name", SHAREGPT_FILES)
def test_sharegpt_to_openai_to_sharegpt_reproduces_every_record(name):
    records = load(name)
    for number, record in enumerate(records, start=1):
        openai = convert_record(record, "openai")
        assert "conversations" not in openai
        back = convert_record(openai, "sharegpt")
        assert back == record, number
        assert list(back) == list(record)


@pytest.mark.anchors
def test_the_demo_data_has_the_hard_cases_the_round_trip_must_survive():
    """Blank lines inside instructions and inputs are what make a naive split on the join ambiguous."""
    records = load("llamafactory_alpaca_en_demo.json")
    assert sum("\n\n" in r["instruction"] for r in records) >= 5
    assert sum("\n\n" in r["input"] for r in records) >= 5
    assert sum(r["input"] == "" for r in records) >= 100


def test_input_is_joined_with_a_blank_line_and_the_split_is_remembered():
    record = {"instruction": "Summarise.\n\nBe brief.", "input": "Line one.\n\nLine two.", "output": "Short."}
    sharegpt = convert_record(record, "sharegpt")
    joined = "Summarise.\n\nBe brief.\n\nLine one.\n\nLine two."
    assert sharegpt["conversations"][0] == {"from": "human", "value": joined}
    assert sharegpt[SPLIT_KEY] == len("Summarise.\n\nBe brief.")
    assert convert_record(sharegpt, "alpaca") == record


def test_a_stale_split_falls_back_to_the_whole_turn_as_instruction():
    turns = [{"from": "human", "value": "Edited text, no blank line"}, {"from": "gpt", "value": "A"}]
    edited = {"conversations": turns, SPLIT_KEY: 6}
    assert convert_record(edited, "alpaca") == {"instruction": "Edited text, no blank line", "input": "", "output": "A"}


def test_input_without_instruction_round_trips():
    record = {"instruction": "", "input": "只有输入", "output": "好的"}
    sharegpt = convert_record(record, "sharegpt")
    assert sharegpt["conversations"][0]["value"] == "只有输入"
    assert convert_record(sharegpt, "alpaca") == record


def test_system_and_history_become_turns_and_come_back():
    record = {
        "instruction": "第三个问题", "input": "", "output": "第三个回答", "system": "你是一个助手。",
        "history": [["first question", "first answer"], ["第二个问题", "第二个回答 😀"]],
    }
    messages = to_messages(record)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "你是一个助手。"
    sharegpt = convert_record(record, "sharegpt")
    assert [t["from"] for t in sharegpt["conversations"]][:2] == ["system", "human"]
    assert convert_record(convert_record(sharegpt, "openai"), "alpaca") == record


def test_multi_turn_sharegpt_becomes_alpaca_with_history():
    record = {"id": "x1", "conversations": [
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"},
    ]}
    alpaca = convert_record(record, "alpaca")
    assert alpaca == {"id": "x1", "instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]]}
    assert convert_record(alpaca, "sharegpt") == record


@pytest.mark.anchors
def test_tool_calls_map_onto_openai_tool_calls_and_tool_messages():
    record = load("llamafactory_glaive_toolcall_zh_demo.json")[0]
    messages = convert_record(record, "openai")["messages"]
    call, result = messages[1], messages[2]
    assert call["role"] == "assistant" and call["content"] == ""
    function = call["tool_calls"][0]["function"]
    assert function["name"] == "generate_invoice"
    assert json.loads(function["arguments"]) == json.loads(record["conversations"][1]["value"])["arguments"]
    assert result == {"role": "tool", "content": record["conversations"][2]["value"],
                      "tool_call_id": call["tool_calls"][0]["id"]}
    assert convert_record(record, "openai")["tools"] == record["tools"]


def test_parallel_calls_and_results_round_trip():
    calls = [{"name": "w", "arguments": {"city": "Paris"}}, {"name": "w", "arguments": {"city": "北京"}}]
    record = {"conversations": [
        {"from": "human", "value": "weather in Paris and 北京?"},
        {"from": "function_call", "value": json.dumps(calls, ensure_ascii=False)},
        {"from": "observation", "value": "18C"},
        {"from": "observation", "value": "25C"},
        {"from": "gpt", "value": "Paris 18C, 北京 25C."},
    ]}
    openai = convert_record(record, "openai")
    ids = [call["id"] for call in openai["messages"][1]["tool_calls"]]
    assert [m.get("tool_call_id") for m in openai["messages"][2:4]] == ids
    assert convert_record(openai, "sharegpt") == record


def test_extra_turn_fields_ride_along():
    turns = [{"from": "human", "value": "hi", "weight": 0}, {"from": "gpt", "value": "yo", "weight": 1}]
    record = {"conversations": turns}
    openai = convert_record(record, "openai")
    assert openai["messages"][1] == {"role": "assistant", "content": "yo", "weight": 1}
    assert convert_record(openai, "sharegpt") == record


def test_parquet_nulls_count_as_absent():
    """Parquet gives every row every column; None-valued fields must not change the conversion."""
    record = {"messages": [{"role": "user", "content": "hi", "tool_calls": None, "tool_call_id": None},
                           {"role": "assistant", "content": "yo", "tool_calls": None, "tool_call_id": None}],
              SPLIT_KEY: None, "system": None}
    assert convert_record(record, "alpaca") == {"instruction": "hi", "input": "", "output": "yo", "system": None}
    assert to_messages(record) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_raw_share_page_speakers_read_as_user_and_assistant():
    """Dumps taken before `clean` name the assistant after the product and vary the case."""
    record = {"conversations": [{"from": "Human", "value": "q1"}, {"from": "chatgpt", "value": "a1"},
                                {"from": "USER", "value": "q2"}, {"from": "bard", "value": "a2"},
                                {"from": "human", "value": "q3"}, {"from": "bing", "value": "a3"}]}
    assert [m["role"] for m in to_messages(record)] == ["user", "assistant"] * 3
    assert convert_record(record, "sharegpt")["conversations"] == record["conversations"], "same format: unchanged"
    assert [t["from"] for t in convert_record(convert_record(record, "openai"), "sharegpt")["conversations"]] == [
        "human", "gpt"] * 3
    assert first_user_turn({"conversations": record["conversations"][1:]}) == "q2"


def test_openai_developer_role_reads_as_system():
    record = {"messages": [{"role": "developer", "content": "rules"}, {"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}]}
    assert convert_record(record, "alpaca") == {"instruction": "q", "input": "", "output": "a", "system": "rules"}


@pytest.mark.parametrize(
    ("record", "to", "message"),
    [
        ({"conversations": [{"from": "human", "value": "q"}]}, "alpaca", "must end with an assistant reply"),
        ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "alpaca",
         "message 1 is role 'assistant' where Alpaca needs a user turn"),
        ({"conversations": [{"from": "alien", "value": "q"}]}, "openai", "unknown role 'alien'"),
        ({"conversations": [{"from": "human", "value": None}]}, "openai", "turn 1 'value' must be a string"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}]}, "openai",
         "only the first turn may be one"),
        ({"conversations": [{"from": "function_call", "value": "not json"}]}, "openai", "value is not JSON"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "sharegpt", "content parts"),
        ({"messages": [{"role": "assistant", "content": "Let me check.",
                        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
         "sharegpt", "both text and tool calls"),
        ({"messages": [{"role": "user", "content": "q", "name": "bob"}, {"role": "assistant", "content": "a"}]},
         "alpaca", "fields Alpaca cannot keep: ['name']"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                       {"role": "tool", "content": "r"}]}, "alpaca", "message 3 is role 'tool'"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "b", "content": "g says"},
            {"role": "tool", "tool_call_id": "a", "content": "f says"}]},
         "sharegpt", "message 3 answers tool call 'b' where 'a' is next"),
        ({"instruction": "q", "output": 3}, "sharegpt", "'output' must be a string"),
        ({"instruction": "q", "output": "a", "history": [["only one"]]}, "sharegpt", "'history' item 1"),
        ({"text": "plain"}, "sharegpt", "not an Alpaca"),
    ],
)
def test_lossy_or_malformed_records_are_refused_by_name(record, to, message):
    with pytest.raises(InputError) as caught:
        convert_record(record, to, "data.json:7")
    assert str(caught.value).startswith("data.json:7: ")
    assert message in str(caught.value)


@pytest.mark.anchors
def test_a_real_tool_call_record_is_refused_for_alpaca():
    with pytest.raises(InputError, match="message 2 is a tool call"):
        convert_record(load("llamafactory_glaive_toolcall_zh_demo.json")[0], "alpaca", "data.json:7")


@pytest.mark.anchors
def test_same_format_is_returned_unchanged_but_still_checked():
    record = load("fastchat_dummy_conversation.json")[3]
    assert convert_record(record, "sharegpt") == record
    with pytest.raises(InputError):
        convert_record({"conversations": "oops"}, "sharegpt")


def test_first_user_turn_still_works_for_every_format():
    alpaca = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    for record in (alpaca, convert_record(alpaca, "sharegpt"), convert_record(alpaca, "openai")):
        assert first_user_turn(record) == "Name a colour."
