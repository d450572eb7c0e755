"""The options of `distillery chat` and `distillery magpie`, in one typed place: the commands, the Python API and
the `chat` step of pipeline files take their defaults and help text from here. Kept apart from `chat.py` and
`magpie.py` so that the CLI can build its flags without importing the model client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distillery.errors import UserError
from distillery.step import option

LANGS = ("en", "zh")
FAMILIES = ("llama3", "qwen2", "chatml")
MAX_TURNS = 50
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_turns(value: str | int, flag: str = "--turns") -> tuple[int, int]:
    """`3` or `3-5` as (least, most) rounds; anything else is one clear error."""
    found = _RANGE.match(str(value))
    if not found:
        raise UserError(f"{flag} must be N or MIN-MAX (e.g. 3-5), not {value!r}")
    least = int(found.group(1))
    most = int(found.group(2) or least)
    if not 1 <= least <= most <= MAX_TURNS:
        raise UserError(f"{flag} {value}: rounds must satisfy 1 <= MIN <= MAX <= {MAX_TURNS}")
    return least, most


@dataclass(kw_only=True)
class ChatSettings:
    """What a `chat` run does, apart from where it reads, writes and which endpoint it asks."""

    turns: str = option("3-5", "Rounds (a user turn and its answer) per conversation: N, or MIN-MAX drawn per "
                               "conversation from --seed.")
    min_turns: int = option(1, "A conversation that ends early (the simulator stops, or a turn fails a check) "
                               "is kept when it has at least this many rounds; fewer is a rejection.")
    lang: str = option("en", "Language of the bundled user-simulator prompts: en or zh.")
    system: str | None = option(None, "System prompt of the assistant (the teacher); a seed's own `system` wins.")
    user_model: str | None = option(None, "Model that plays the user, on the same endpoint (default: --model).")
    user_temperature: float | None = option(None, "Sampling temperature of the user simulator (default: "
                                                   "--temperature).")
    user_prompt: str | None = option(None, "File replacing the simulator's follow-up prompt; slots "
                                           "{conversation}, {move} and {topic}.")
    opening_prompt: str | None = option(None, "File replacing the simulator's opening prompt for topic seeds; "
                                              "slot {topic}.")
    repeat_threshold: float = option(0.7, "A turn whose ROUGE-L against an earlier turn of the same role is "
                                          "above this ends the conversation (repeated_turn).")

    def check(self) -> tuple[int, int]:
        """Reject impossible settings before anything is read or sent; returns the turn range."""
        least, most = parse_turns(self.turns)
        if self.lang not in LANGS:
            raise UserError(f"--lang must be one of {', '.join(LANGS)}, not {self.lang!r}")
        if not 1 <= self.min_turns <= most:
            raise UserError(f"--min-turns must be between 1 and the most rounds ({most}), not {self.min_turns}")
        if not 0.0 < self.repeat_threshold <= 1.0:
            raise UserError(f"--repeat-threshold must be in (0, 1], not {self.repeat_threshold}")
        return least, most


@dataclass(kw_only=True)
class MagpieSettings:
    """What a `magpie` run does, apart from where it writes and which endpoint it asks."""

    num: int = option(100, "Conversations to make.")
    turns: str = option("1", "Rounds per conversation: N, or MIN-MAX drawn per conversation from --seed.")
    template_family: str | None = option(None, "Chat template of the model: llama3, qwen2 or chatml "
                                                "\\[default: told from the model's name].")
    system: str | None = option(None, "System prompt written into the template before the user prefix.")
    instruction_tokens: int = option(256, "Most tokens of a generated user turn.")

    def check(self) -> tuple[int, int]:
        least, most = parse_turns(self.turns)
        if self.num < 1:
            raise UserError("--num must be at least 1")
        if self.template_family is not None and self.template_family not in FAMILIES:
            raise UserError(f"--template-family must be one of {', '.join(FAMILIES)}, not {self.template_family!r}")
        if self.instruction_tokens < 1:
            raise UserError("--instruction-tokens must be at least 1")
        return least, most
