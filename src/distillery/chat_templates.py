"""Chat templates that render a conversation and say exactly where each message's text landed.

Export needs the character span of every message in the rendered string to find assistant tokens from
token offsets; nothing is found by splitting strings. Built-in templates record the spans while they
build the string. `auto` renders the tokenizer's own Jinja `chat_template` twice, once with placeholders
instead of message texts, and reads the spans off the real rendering by matching the template text
around the placeholders.

The built-ins follow their sources:
- `vicuna_v1.1`: FastChat's `vicuna_v1.1` conversation (SeparatorStyle.ADD_COLON_TWO, sep " ",
  sep2 "</s>"), preceded by the tokenizer's BOS as a LLaMA tokenizer adds it.
- `chatml`: `<|im_start|>{role}\\n{text}<|im_end|>\\n` per message, no default system prompt.
- `llama3`: Meta's Llama 3 format; message texts are stripped, as Meta's `ChatFormat` does.
- `alpaca`: LLaMA-Factory's `alpaca` template (`### Instruction:` / `### Response:`, EOS after each reply).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from distillery.errors import UserError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ROLES = ("system", "user", "assistant")


class RenderError(Exception):
    """A conversation this template cannot render or locate; export reports it against the record."""


@dataclass(frozen=True)
class Span:
    """Where message `index` (0-based in the conversation) sits in the rendered text."""

    index: int
    role: str
    start: int
    end: int


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: list[Span]
    eot: str | None  # the end-of-turn text that must follow each assistant span; None: read it off

    def content(self, span: Span) -> str:
        return self.text[span.start : span.end]


@dataclass(frozen=True)
class Wrap:
    before: str
    after: str


class BuiltinTemplate:
    """A template described by what goes around each role's text."""

    def __init__(
        self,
        name: str,
        wraps: dict[str, Wrap],
        eot: str,
        specials: tuple[str, ...],
        bos: str = "",
        default_system: str | None = None,
        strip: bool = False,
    ):
        self.name = name
        self.wraps = wraps
        self.eot = eot
        self.bos = bos
        self.default_system = default_system
        self.strip = strip
        self.specials = tuple(dict.fromkeys(token for token in (bos, *specials, eot) if token))

    def special_strings(self) -> tuple[str, ...]:
        """Text that must be single special tokens for this template to mean what it says."""
        return self.specials

    def render(self, messages: list[dict[str, Any]]) -> Rendered:
        _check_roles(messages)
        if messages[0]["role"] != "system" and self.default_system is not None:
            messages = [{"role": "system", "content": self.default_system}, *messages]
            offset = -1
        else:
            offset = 0
        parts = [self.bos]
        spans = []
        length = len(self.bos)
        for index, message in enumerate(messages):
            wrap = self.wraps[message["role"]]
            text = message["content"].strip() if self.strip else message["content"]
            start = length + len(wrap.before)
            parts += [wrap.before, text, wrap.after]
            length = start + len(text) + len(wrap.after)
            if index + offset >= 0:
                spans.append(Span(index + offset, message["role"], start, start + len(text)))
        return Rendered("".join(parts), spans, self.eot)


def _llama3_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def builtin(name: str, tokenizer: Any) -> BuiltinTemplate:
    """A built-in template bound to a tokenizer's BOS/EOS where the template uses them."""
    bos = tokenizer.bos_token or ""
    if name == "vicuna_v1.1":
        wraps = {"system": Wrap("", " "), "user": Wrap("USER: ", " "), "assistant": Wrap("ASSISTANT: ", "</s>")}
        return BuiltinTemplate(name, wraps, "</s>", (), bos=bos, default_system=VICUNA_SYSTEM)
    if name == "chatml":
        wraps = {role: Wrap(f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ROLES}
        return BuiltinTemplate(name, wraps, "<|im_end|>", ("<|im_start|>",))
    if name == "llama3":
        wraps = {role: Wrap(_llama3_header(role), "<|eot_id|>") for role in ROLES}
        specials = ("<|start_header_id|>", "<|end_header_id|>")
        return BuiltinTemplate(name, wraps, "<|eot_id|>", specials, bos="<|begin_of_text|>", strip=True)
    if name == "alpaca":
        eos = tokenizer.eos_token
        if not eos:
            raise UserError("template alpaca ends each reply with EOS, but the tokenizer defines no eos_token")
        wraps = {
            "system": Wrap("", "\n\n"),
            "user": Wrap("### Instruction:\n", "\n\n### Response:\n"),
            "assistant": Wrap("", eos + "\n\n"),
        }
        return BuiltinTemplate(name, wraps, eos, (), bos=bos, default_system=ALPACA_SYSTEM)
    raise UserError(f"unknown template {name!r}; choose auto, {', '.join(BUILTIN_NAMES)}")


BUILTIN_NAMES = ("vicuna_v1.1", "chatml", "llama3", "alpaca")
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


class AutoTemplate:
    """The tokenizer's own Jinja chat template, with message spans recovered from placeholders."""

    name = "auto"

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("--template auto needs a tokenizer with a chat_template; name a built-in template")
        self.tokenizer = tokenizer

    def special_strings(self) -> tuple[str, ...]:
        return ()

    def _apply(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as exc:  # Jinja raise_exception and template bugs come in many types
            raise RenderError(f"the tokenizer's chat template refused this conversation: {exc}") from None

    def render(self, messages: list[dict[str, Any]]) -> Rendered:
        _check_roles(messages)
        marked = [{"role": m["role"], "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
        skeleton = _PLACEHOLDER.split(self._apply(marked))
        literals, order = skeleton[0::2], [int(index) for index in skeleton[1::2]]
        _check_placeholders(order, messages)
        text = self._apply(messages)
        if not text.startswith(literals[0]):
            raise RenderError("the chat template renders differently for the real texts than for placeholders")
        position = len(literals[0])
        spans = []
        for index, literal in zip(order, literals[1:], strict=True):
            content = messages[index]["content"]
            for candidate in dict.fromkeys((content, content.strip())):
                end = position + len(candidate)
                if text.startswith(candidate, position) and text.startswith(literal, end):
                    spans.append(Span(index, messages[index]["role"], position, end))
                    position = end + len(literal)
                    break
            else:
                raise RenderError(f"the chat template changes the text of message {index + 1}; cannot locate it")
        return Rendered(text, spans, None)


def _check_roles(messages: list[dict[str, Any]]) -> None:
    for number, message in enumerate(messages, start=1):
        if message.get("tool_calls") or message["role"] not in ROLES:
            what = "a tool call" if message.get("tool_calls") else f"a {message['role']!r} message"
            raise RenderError(f"message {number} is {what}; export renders system, user and assistant turns")
    if not any(message["role"] == "assistant" for message in messages):
        raise RenderError("the conversation has no assistant turn to train on")


def _check_placeholders(order: list[int], messages: list[dict[str, Any]]) -> None:
    if len(set(order)) != len(order):
        raise RenderError("the chat template repeats a message text; cannot tell which copy to train on")
    for index, message in enumerate(messages):
        if index not in order and message["role"] != "system":
            raise RenderError(f"the chat template leaves out message {index + 1} ({message['role']})")


def get_template(name: str, tokenizer: Any) -> BuiltinTemplate | AutoTemplate:
    return AutoTemplate(tokenizer) if name == "auto" else builtin(name, tokenizer)
