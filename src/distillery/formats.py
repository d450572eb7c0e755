"""The three record shapes distillery reads, told apart by their fields rather than by file names.

Every conversion goes through OpenAI-style messages, so each direction is two small functions. Keys a
format does not own (`id`, `tools`, per-turn extras) ride along unchanged. Anything that would be dropped
or changed in meaning raises an InputError naming the record instead.

Alpaca's `input` is joined to the instruction with a blank line ("\\n\\n"). To make the way back exact,
a converted record keeps `instruction_chars`: how many leading characters of the last user turn were the
instruction. It is only trusted when a blank line sits right there; otherwise the whole turn becomes the
instruction. Function-call JSON in ShareGPT is re-serialised with `json.dumps(..., ensure_ascii=False)`,
which is how LLaMA-Factory's demo data is written.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from distillery.errors import InputError

ALPACA, SHAREGPT, OPENAI = "alpaca", "sharegpt", "openai"
FORMATS = (ALPACA, SHAREGPT, OPENAI)
PREFERENCE = "preference"  # LLaMA-Factory's ranking (DPO) data in Alpaca layout, from pairwise-scored records
SPLIT_KEY = "instruction_chars"
INPUT_JOIN = "\n\n"

_ALPACA_KEYS = ("instruction", "input", "output", "system", "history")
_OWN_KEYS = {ALPACA: set(_ALPACA_KEYS), SHAREGPT: {"conversations", "system"}, OPENAI: {"messages"}}
# ShareGPT speaker names, matched case-insensitively. Raw share-page dumps (before `clean`) name the
# assistant after the product that answered (chatgpt, bard, bing); the name carries no meaning a trainer
# reads, so it is read as the assistant here, once, for every command.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
}
_OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_CALL_KEYS = {"name", "arguments"}
_MESSAGE_KEYS = {"role", "content", "tool_calls", "tool_call_id"}


def detect_format(record: dict[str, Any], where: str = "record") -> str:
    if "conversations" in record:
        return SHAREGPT
    if "messages" in record:
        return OPENAI
    if "instruction" in record:
        return ALPACA
    raise InputError(
        where, "not an Alpaca (instruction), ShareGPT (conversations) or OpenAI (messages) record"
    )


def first_user_turn(record: dict[str, Any], where: str = "record") -> str:
    """The text a conversation is 'about': what dedup compares. Lenient: it reads, never validates."""
    layout = detect_format(record, where)
    if layout == ALPACA:
        return str(record.get("instruction") or "")
    turns = record["conversations"] if layout == SHAREGPT else record["messages"]
    role_key, text_key = ("from", "value") if layout == SHAREGPT else ("role", "content")
    if not isinstance(turns, list):
        raise InputError(where, f"'{'conversations' if layout == SHAREGPT else 'messages'}' is not a list")
    for turn in turns:
        speaker = turn.get(role_key) if isinstance(turn, dict) else None
        if isinstance(speaker, str) and SHAREGPT_ROLES.get(speaker.lower()) == "user":
            return str(turn.get(text_key) or "")
    return ""


def to_messages(record: dict[str, Any], where: str = "record") -> list[dict[str, Any]]:
    """OpenAI-style messages for any of the three formats, system first; every message has a str content.

    An assistant turn that calls tools has content "" and `tool_calls`; a tool result has role "tool".
    """
    layout = detect_format(record, where)
    if layout == ALPACA:
        return _alpaca_messages(record, where)[0]
    if layout == SHAREGPT:
        return _sharegpt_messages(record, where)
    return _openai_messages(record, where)


def convert_record(record: dict[str, Any], to: str, where: str = "record") -> dict[str, Any]:
    """The same record in format `to`; a record already in that format is checked and returned as is."""
    if to == PREFERENCE:
        return preference_record(record, where)
    if to not in FORMATS:
        raise ValueError(f"unknown format {to!r}; expected one of {', '.join(FORMATS)}")
    layout = detect_format(record, where)
    split = record.get(SPLIT_KEY)
    if layout == ALPACA:
        messages, split = _alpaca_messages(record, where)
    else:
        messages = to_messages(record, where)
    if layout == to:
        return dict(record)
    if to == ALPACA:
        body = _alpaca_from_messages(messages, split, where)
    elif to == SHAREGPT:
        body = {"conversations": _sharegpt_from_messages(messages, where)}
    else:
        body = {"messages": messages}
    if to != ALPACA and split is not None:
        body[SPLIT_KEY] = split
    return _merge(record, layout, body, where)


def _merge(record: dict[str, Any], layout: str, body: dict[str, Any], where: str) -> dict[str, Any]:
    """Put the new format's keys where the old ones were, keeping every other key and the key order."""
    own = _OWN_KEYS[layout] | {SPLIT_KEY}
    merged: dict[str, Any] = {}
    for key, value in record.items():
        if key in own:
            if not merged.keys() & body.keys():
                merged.update(body)
        else:
            if key in body:
                raise InputError(where, f"field {key!r} would be overwritten by the converted record")
            merged[key] = value
    merged.update({key: value for key, value in body.items() if key not in merged})
    return merged


def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(where, f"{what} must be a string, got {type(value).__name__}")
    return value


def _alpaca_messages(record: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], int | None]:
    """Messages plus the instruction length to remember when an `input` was joined in."""
    instruction = _text(record.get("instruction"), where, "'instruction'")
    extra = _text(record.get("input") or "", where, "'input'")
    output = _text(record.get("output"), where, "'output'")
    messages: list[dict[str, Any]] = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record["system"], where, "'system'")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise InputError(where, "'history' must be a list of [instruction, response] pairs")
    for number, pair in enumerate(history, start=1):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise InputError(where, f"'history' item {number} is not an [instruction, response] pair")
        what = f"'history' item {number}"
        messages.append({"role": "user", "content": _text(pair[0], where, f"{what} prompt")})
        messages.append({"role": "assistant", "content": _text(pair[1], where, f"{what} reply")})
    if extra:
        prompt, split = (instruction + INPUT_JOIN + extra, len(instruction)) if instruction else (extra, 0)
    else:
        prompt, split = instruction, None
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return messages, split


def _alpaca_from_messages(messages: list[dict[str, Any]], split: Any, where: str) -> dict[str, Any]:
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    for index, message in enumerate(messages):
        number = index + 1 + (system is not None)
        expected, article = ("user", "a") if index % 2 == 0 else ("assistant", "an")
        if message["role"] != expected or "tool_calls" in message:
            what = "a tool call" if "tool_calls" in message else f"role {message['role']!r}"
            raise InputError(
                where, f"cannot be Alpaca: message {number} is {what} where Alpaca needs {article} {expected} turn"
            )
        extras = sorted(message.keys() - {"role", "content"})
        if extras:
            raise InputError(where, f"cannot be Alpaca: message {number} has fields Alpaca cannot keep: {extras}")
    if len(messages) < 2 or len(messages) % 2:
        raise InputError(where, "cannot be Alpaca: the conversation must end with an assistant reply")
    prompt, output = messages[-2]["content"], messages[-1]["content"]
    instruction, extra = _split_prompt(prompt, split)
    record: dict[str, Any] = {"instruction": instruction, "input": extra, "output": output}
    if system is not None:
        record["system"] = system
    if len(messages) > 2:
        rounds = range(0, len(messages) - 2, 2)
        record["history"] = [[messages[i]["content"], messages[i + 1]["content"]] for i in rounds]
    return record


def _split_prompt(prompt: str, split: Any) -> tuple[str, str]:
    """Undo the instruction/input join, but only where the remembered split still lands on the join."""
    if isinstance(split, int) and not isinstance(split, bool):
        if split == 0 and prompt:
            return "", prompt
        if split > 0 and prompt[split : split + len(INPUT_JOIN)] == INPUT_JOIN:
            return prompt[:split], prompt[split + len(INPUT_JOIN) :]
    return prompt, ""


def _sharegpt_messages(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise InputError(where, "'conversations' must be a list of {from, value} turns")
    messages: list[dict[str, Any]] = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record["system"], where, "'system'")})
    pending_ids: list[str] = []
    calls = 0
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise InputError(where, f"turn {number} is not an object with 'from' and 'value'")
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise InputError(where, f"turn {number} has unknown role {turn.get('from')!r}")
        value = _text(turn.get("value"), where, f"turn {number} 'value'")
        extras = {k: v for k, v in turn.items() if k not in ("from", "value") and v is not None}
        if extras.keys() & _MESSAGE_KEYS:
            clash = sorted(extras.keys() & _MESSAGE_KEYS)
            raise InputError(where, f"turn {number} has fields that clash with message fields: {clash}")
        if role == "system":
            if messages:
                raise InputError(where, f"turn {number} is a system turn; only the first turn may be one")
            message: dict[str, Any] = {"role": "system", "content": value}
        elif role == "function_call":
            found = _calls(value, where, number)
            tool_calls = [_tool_call(call, calls + k, where, number) for k, call in enumerate(found, start=1)]
            calls += len(tool_calls)
            pending_ids = [call["id"] for call in tool_calls]
            message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
        elif role == "tool":
            message = {"role": "tool", "content": value}
            if pending_ids:
                message["tool_call_id"] = pending_ids.pop(0)
        else:
            message = {"role": role, "content": value}
        messages.append({**message, **extras})
    return messages


def _calls(value: str, where: str, number: int) -> list[Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise InputError(where, f"turn {number} is a function_call but its value is not JSON") from None
    return parsed if isinstance(parsed, list) else [parsed]


def _tool_call(call: Any, index: int, where: str, number: int) -> dict[str, Any]:
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call.keys() <= _CALL_KEYS):
        raise InputError(where, f"turn {number}: a function call must be {{'name': ..., 'arguments': ...}}")
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    function = {"name": call["name"], "arguments": arguments}
    return {"id": f"call_{index}", "type": "function", "function": function}


def _openai_messages(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    raw = record.get("messages")
    if not isinstance(raw, list):
        raise InputError(where, "'messages' must be a list of {role, content} messages")
    messages = []
    for number, message in enumerate(raw, start=1):
        if not isinstance(message, dict):
            raise InputError(where, f"message {number} is not an object with 'role' and 'content'")
        role = _OPENAI_ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise InputError(where, f"message {number} has unknown role {message.get('role')!r}")
        if role == "system" and messages:
            raise InputError(where, f"message {number} is a system message; only the first may be one")
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if isinstance(content, list):
            raise InputError(where, f"message {number} has content parts (multimodal); only text works")
        if content is None and not tool_calls:
            raise InputError(where, f"message {number} has no content")
        content = _text(content if content is not None else "", where, f"message {number} 'content'")
        normal = {key: value for key, value in message.items() if value is not None}
        normal.update(role=role, content=content)
        if tool_calls:
            if role != "assistant":
                raise InputError(where, f"message {number}: only assistant messages can call tools")
            normal["tool_calls"] = [_check_call(call, where, number) for call in tool_calls]
        messages.append(normal)
    return messages


def _check_call(call: Any, where: str, number: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        raise InputError(where, f"message {number}: a tool call needs function.name")
    if call.get("type", "function") != "function":
        raise InputError(where, f"message {number}: tool call type {call.get('type')!r} is not 'function'")
    return call


def _sharegpt_from_messages(messages: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """ShareGPT turns; call ids are dropped, as results answer calls by position there."""
    names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
    turns = []
    pending_ids: list[Any] = []
    for number, message in enumerate(messages, start=1):
        extras = {key: value for key, value in message.items() if key not in _MESSAGE_KEYS}
        if message.get("tool_calls"):
            if message["content"]:
                raise InputError(
                    where, f"message {number} has both text and tool calls; a ShareGPT turn holds one of them"
                )
            pending_ids = [call.get("id") for call in message["tool_calls"]]
            turns.append({"from": "function_call", "value": _calls_value(message["tool_calls"]), **extras})
        else:
            if message["role"] == "tool":
                _check_answers_next(message.get("tool_call_id"), pending_ids, where, number)
            turns.append({"from": names[message["role"]], "value": message["content"], **extras})
    return turns


def _check_answers_next(answered: Any, pending_ids: list[Any], where: str, number: int) -> None:
    """A tool result must answer the next unanswered call, or the ShareGPT record would pair it wrongly."""
    expected = pending_ids.pop(0) if pending_ids else None
    if answered is not None and expected is not None and answered != expected:
        raise InputError(
            where, f"message {number} answers tool call {answered!r} where {expected!r} is next; ShareGPT "
            "pairs results with calls by position, so it would answer the wrong call"
        )


def _calls_value(tool_calls: list[dict[str, Any]]) -> str:
    calls = []
    for call in tool_calls:
        arguments = call["function"].get("arguments", "{}")
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        calls.append({"name": call["function"]["name"], "arguments": arguments})
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def preference_record(record: dict[str, Any], where: str = "record") -> dict[str, Any]:
    """LLaMA-Factory's Alpaca preference record (`instruction`, `input`, `chosen`, `rejected`) from one judged
    by `distillery score --pairwise A B`: the winning field's answer is chosen, the other rejected. A tie
    says nothing about which to prefer, so it is refused, as a record never judged is."""
    verdict = record.get("pairwise")
    if not isinstance(verdict, dict) or "verdict" not in verdict:
        raise InputError(where, "record has no pairwise verdict; run `distillery score --pairwise A B` first")
    if verdict.get("winner") is None:
        raise InputError(where, "the pairwise verdict is a tie: neither answer can be chosen")
    if detect_format(record, where) != ALPACA:
        raise InputError(where, "a preference record is written from an Alpaca record (instruction, input)")
    body = {"instruction": _text(record.get("instruction"), where, "'instruction'"),
            "input": _text(record.get("input", ""), where, "'input'"),
            "chosen": _text(record.get(verdict["winner"]), where, f"{verdict['winner']!r}"),
            "rejected": _text(record.get(verdict["loser"]), where, f"{verdict['loser']!r}")}
    for key in ("system", "history"):
        if record.get(key):
            body[key] = record[key]
    return body
