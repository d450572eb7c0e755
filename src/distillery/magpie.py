"""`distillery magpie`: instructions written by the chat model itself from its template's user prefix (Magpie).

An aligned chat model given only the opening of a user turn in its own template (the *pre-query template*,
e.g. `<|im_start|>user\\n`) completes it with a plausible user query; given that query closed and the
assistant's header opened, it answers. No seeds, no prompt engineering. With `--turns N` the conversation so
far is written back into the template and the model writes the next query, and so on.

This needs an endpoint that completes a raw prompt (`/v1/completions` on vLLM, llama.cpp or --local-model);
hosted chat-only APIs apply their own template and cannot be driven this way, so they are refused up front,
and a server that answers 404 on `/completions` is refused at its first answer. Requests go through the LLM
layer's raw-completion path: the same cache (keyed on the raw prompt), retries, budget and accounting.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from distillery.chat_options import MagpieSettings
from distillery.errors import UserError
from distillery.io import file_format
from distillery.llm import ChatRequest, EndpointOptions
from distillery.llm_step import Failed, LLMStep, Rejected, Session
from distillery.one_step import StepRun, run_one_step
from distillery.step import Context, Record

__all__ = ["TEMPLATES", "Magpie", "MagpieOptions", "family_of", "magpie", "refuse_chat_only"]

# Hosted APIs that only take chat messages and apply their own template: a raw prompt cannot reach the model.
CHAT_ONLY_HOSTS = ("api.openai.com", "api.deepseek.com", "dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com",
                   "api.anthropic.com", "generativelanguage.googleapis.com", "api.mistral.ai", "api.groq.com",
                   "api.moonshot.cn", "open.bigmodel.cn", "ark.cn-beijing.volces.com", "qianfan.baidubce.com")
# How an instruction is sampled (Magpie's defaults); the endpoint's sampling answers.
INSTRUCTION_PARAMS = {"temperature": 1.0, "top_p": 1.0}


@dataclass(frozen=True)
class Template:
    """One chat-template family: the pieces a conversation is written with, and where generation stops."""

    name: str
    bos: str
    system: str  # with a {system} slot
    user: str  # the pre-query template: what opens a user turn
    to_assistant: str  # closes a user turn and opens the assistant's
    end_assistant: str
    stops: tuple[str, ...]
    default_system: str | None = None  # what the family's own template writes when no system prompt is given

    def render(self, system: str | None, rounds: list[tuple[str, str]]) -> str:
        """The conversation so far, ending in an open user turn: the prompt a query is generated from."""
        system = system if system is not None else self.default_system
        text = self.bos + (self.system.format(system=system) if system else "")
        for query, answer in rounds:
            text += self.user + query + self.to_assistant + answer + self.end_assistant
        return text + self.user


_CHATML = {"bos": "", "system": "<|im_start|>system\n{system}<|im_end|>\n", "user": "<|im_start|>user\n",
           "to_assistant": "<|im_end|>\n<|im_start|>assistant\n", "end_assistant": "<|im_end|>\n",
           "stops": ("<|im_end|>", "<|im_start|>", "<|endoftext|>")}
TEMPLATES = {
    "llama3": Template(
        "llama3", "<|begin_of_text|>", "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>", ("<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>")),
    "qwen2": Template("qwen2", **_CHATML, default_system="You are a helpful assistant."),
    "chatml": Template("chatml", **_CHATML),
}
_FAMILY_HINTS = (("llama3", ("llama-3", "llama3", "llama_3")), ("qwen2", ("qwen",)),
                 ("chatml", ("smollm", "chatml", "hermes", "dolphin", "yi-", "internlm")))


def family_of(endpoint: EndpointOptions, given: str | None) -> Template:
    """The template family: `given`, else told from the model's (or the local file's) name."""
    if given is not None:
        return TEMPLATES[given]
    name = f"{endpoint.local_model or ''} {endpoint.model or ''}".lower()
    for family, hints in _FAMILY_HINTS:
        if any(hint in name for hint in hints):
            return TEMPLATES[family]
    raise UserError(f"cannot tell the chat template of model {endpoint.model!r} from its name; pass "
                    f"--template-family {'|'.join(TEMPLATES)}")


def refuse_chat_only(endpoint: EndpointOptions) -> None:
    """A hosted chat-only API cannot take a raw prompt: say so before anything is sent."""
    if endpoint.local_model or not endpoint.base_url:
        return
    host = (urlparse(endpoint.base_url).hostname or "").lower()
    if any(host == known or host.endswith("." + known) for known in CHAT_ONLY_HOSTS):
        raise UserError(f"{host} is a chat-only API: magpie needs a server that completes a raw prompt in the "
                        "model's own chat template (vLLM, llama.cpp, or --local-model)")


class Magpie(LLMStep):
    """The step: each input record (a number) becomes one conversation of queries the model wrote itself."""

    name = "magpie"
    Options = MagpieSettings
    recipe_defaults = {"temperature": 0.0, "max_tokens": 2048}  # noqa: RUF012 - Magpie answers greedily

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        self.least, self.most = self.options.check()
        self.template: Template | None = None

    def bind(self, context: Context) -> None:
        """Fix the template family for the step's endpoint (told from the model name unless given)."""
        super().bind(context)
        self.template = family_of(self.resolved_endpoint(), self.options.template_family)

    def estimate_requests(self, record: Record) -> list[ChatRequest]:
        template = self.template or TEMPLATES[self.options.template_family or "chatml"]
        prompt = template.render(self.options.system, [])
        return [ChatRequest([], prompt=prompt), ChatRequest([], prompt=prompt + template.to_assistant)] * self.most

    def target_rounds(self, index: int, seed: int) -> int:
        return random.Random(f"magpie:{seed}:{index}").randint(self.least, self.most)

    async def decide(self, record: Record, session: Session, index: int = 0) -> list[Record] | Rejected | Failed:
        """Query, answer, and again for each round; a bad turn ends the conversation at the round before."""
        assert self.template is not None, "bind the step to its endpoint first"
        template, seed = self.template, session.endpoint.seed
        target = self.target_rounds(index, seed or 0)
        rounds: list[tuple[str, str]] = []
        ended: tuple[str, Any] | None = None
        for number in range(1, target + 1):
            prompt = template.render(self.options.system, rounds)
            params = {**INSTRUCTION_PARAMS, "max_tokens": self.options.instruction_tokens, "stop": list(template.stops)}
            if seed is not None:
                params["seed"] = seed + index * 100 + number
            query = await session.chat(ChatRequest([], sample=index, params=params, prompt=prompt))
            if not query.ok:
                return Failed(f"query: {query.error}")
            text = (query.text or "").strip()
            if not text or query.finish_reason == "length":
                ended = ("empty_query" if not text else "truncated_query", text)
                break
            answer_params: dict[str, Any] = {"stop": list(template.stops)}
            if seed is not None:
                answer_params["seed"] = seed + index * 100 + number
            answer = await session.chat(ChatRequest([], sample=index, params=answer_params,
                                                    prompt=prompt + text + template.to_assistant))
            if not answer.ok:
                return Failed(f"answer: {answer.error}")
            reply = (answer.text or "").strip()
            if not reply or answer.finish_reason == "length":
                ended = ("empty_answer" if not reply else "truncated_answer", {"query": text, "answer": reply})
                break
            rounds.append((text, reply))
        if not rounds:
            assert ended is not None
            return Rejected(ended[0], ended[1])
        conversation: Record = {"conversations": [turn for query, reply in rounds for turn in (
            {"from": "human", "value": query}, {"from": "gpt", "value": reply})]}
        if self.options.system:
            conversation["system"] = self.options.system
        conversation["magpie"] = {"family": template.name, "rounds": len(rounds), "target": target,
                                  "ended": ended[0] if ended else None}
        return [conversation]


@dataclass(kw_only=True)
class MagpieOptions(MagpieSettings):
    """`distillery magpie`'s options: the recipe's settings plus where it writes and which endpoint it asks."""

    output: Path
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)


@dataclass
class MagpieResult(StepRun):
    """The magpie step's run, with the template family the command names in its table."""

    family: str = ""


def magpie(options: MagpieOptions, progress: bool = True) -> MagpieResult:
    """Make `num` conversations; the API behind `distillery magpie`, a one-step pipeline over the `magpie`
    step whose state is the cache beside OUTPUT."""
    settings = {name: getattr(options, name) for name in MagpieSettings.__dataclass_fields__}
    step = Magpie(MagpieSettings(**settings))
    file_format(options.output)
    endpoint = options.endpoint.resolve()
    refuse_chat_only(endpoint)
    template = family_of(endpoint, options.template_family)  # an unknown family fails before any state
    ended: Counter = Counter()

    def tally(record: Record) -> None:
        if record["magpie"]["ended"]:
            ended[record["magpie"]["ended"]] += 1

    meta = {"command": "magpie", "template_family": template.name,
            "pre_query_template": template.render(options.system, []), "num": options.num, "turns": options.turns,
            "seed": endpoint.seed or 0}
    numbers = [{"magpie": index} for index in range(options.num)]
    run = run_one_step(step, numbers, options.output, meta, endpoint, progress=progress,
                       figures=lambda: {"ended": dict(ended.most_common())}, watch=tally)
    return MagpieResult(**vars(run), family=template.name)
