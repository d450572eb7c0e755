"""The three record shapes distillery reads, told apart by their fields rather than by file names."""

from __future__ import annotations

from typing import Any

from distillery.errors import InputError

ALPACA, SHAREGPT, OPENAI = "alpaca", "sharegpt", "openai"
USER_ROLES = {"human", "user"}


def detect_format(record: dict[str, Any], where: str = "record") -> str:
    if "conversations" in record:
        return SHAREGPT
    if "messages" in record:
        return OPENAI
    if "instruction" in record:
        return ALPACA
    raise InputError(where, "not an Alpaca (instruction), ShareGPT (conversations) or OpenAI (messages) record")


def first_user_turn(record: dict[str, Any], where: str = "record") -> str:
    """The text a conversation is 'about': what dedup and reports compare."""
    layout = detect_format(record, where)
    if layout == ALPACA:
        return str(record.get("instruction") or "")
    turns = record["conversations"] if layout == SHAREGPT else record["messages"]
    role_key, text_key = ("from", "value") if layout == SHAREGPT else ("role", "content")
    if not isinstance(turns, list):
        raise InputError(where, f"'{'conversations' if layout == SHAREGPT else 'messages'}' is not a list")
    for turn in turns:
        if isinstance(turn, dict) and turn.get(role_key) in USER_ROLES:
            return str(turn.get(text_key) or "")
    return ""
