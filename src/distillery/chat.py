"""`distillery chat`: multi-turn conversations between a user simulator and a teacher (UltraChat, Baize).

Every seed (a topic, a question, or an Alpaca record as the first turn) becomes one conversation of N rounds
(`--turns 3-5` draws N per conversation from --seed). The user simulator is a model with its own prompt:
it opens a topic seed, and after each answer writes the next user turn, told each time which move to make
(a curious question, a follow-up, a change of sub-topic, a clarification). The assistant is the teacher,
with an optional system prompt, answering the whole conversation so far.

Each turn is checked as it arrives. The simulator may end the conversation with `[END]` (recorded as
`user_ended`); a user turn that breaks character ("As an AI…", or an answer instead of a question), a
turn that repeats an earlier turn of its role (ROUGE-L), and an empty or cut-off turn end the conversation
at the last good round, with the bad turn and its reason in the rejections. A conversation is kept with at
least `--min-turns` rounds, its early end recorded in `chat.ended`.

The recipe is the `chat` LLM step (`Chat`): one multi-stage `decide` per conversation, each decided round
remembered under a key of the settings, the seed and the round number, so a re-run after kill -9 resumes
each conversation at its last completed round and re-sends nothing answered.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from importlib.resources import files
from pathlib import Path
from typing import Any

from distillery.chat_options import ChatSettings
from distillery.errors import InputError, UserError
from distillery.io import file_format, iter_located, read_checked, read_text
from distillery.llm import ChatRequest, ChatResult, EndpointOptions
from distillery.llm_step import Failed, LLMStep, Rejected, Session
from distillery.one_step import StepRun, run_one_step
from distillery.respond import user_turn
from distillery.step import Record, option

__all__ = ["Chat", "ChatOptions", "ChatStepOptions", "chat", "load_chat_seeds", "load_topics"]

STOP_MARKER = "[END]"
_TOPICS = files("distillery") / "data" / "topics"
_TEMPLATES = files("distillery") / "data" / "templates" / "chat"
MOVES: dict[str, dict[str, str]] = {
    "en": {
        "curious": "ask, out of curiosity, about something in the assistant's last answer you want to know more "
                   "about.",
        "follow-up": "ask a follow-up question that builds directly on the assistant's last answer, or ask it to "
                     "take the next step.",
        "sub-topic": "move to a related sub-topic that has not been discussed yet.",
        "clarification": "ask the assistant to clarify something in its last answer that is unclear, vague or too "
                         "technical for you.",
    },
    "zh": {
        "curious": "出于好奇，追问助手上一条回答中你想进一步了解的内容。",
        "follow-up": "紧接着助手上一条回答提出一个后续问题，或者请它进行下一步。",
        "sub-topic": "转到一个还没有讨论过的相关子话题。",
        "clarification": "请助手澄清它上一条回答中不清楚、含糊或对你来说太专业的地方。",
    },
}
_NO_TOPIC = {"en": "whatever the user's first message is about", "zh": "用户第一条消息所涉及的内容"}
_SPEAKERS = {"en": ("User", "Assistant"), "zh": ("用户", "助手")}
_TRANSCRIPT_CHARS = 2000  # each turn shown to the simulator is cut to this, so long answers keep prompts bounded

# Rejection reasons, one per check.
USER_ENDED = "user_ended"
BROKE_CHARACTER = "user_broke_character"
USER_ANSWERED = "user_answered"
REPEATED = "repeated_turn"
EMPTY_USER = "empty_user_turn"
TRUNCATED_USER = "truncated_user_turn"
EMPTY_ANSWER = "empty_answer"
TRUNCATED_ANSWER = "truncated_answer"

_BROKE = re.compile(
    r"\bas an? (?:ai|a\.i\.|artificial intelligence|(?:large )?language model|ai (?:language model|assistant)|"
    r"virtual assistant|assistant)\b"
    r"|\bi(?:'m| am) (?:just )?an? (?:ai|artificial intelligence|(?:large )?language model|virtual assistant|"
    r"ai assistant)\b"
    r"|\bhow (?:can|may) i (?:help|assist) you\b|\bi(?:'m| am) here to (?:help|assist)\b"
    r"|作为(?:一个|一名)?(?:ai|人工智能|语言模型|大语言模型|ai助手|人工智能助手|助手)"
    r"|我(?:只)?是(?:一个|一名)?(?:ai|人工智能|语言模型|大语言模型|ai助手|人工智能助手)"
    r"|有什么(?:可以|能|需要)(?:帮助|帮|为)(?:您|你)",
    re.IGNORECASE,
)
_ANSWERING = re.compile(
    r"^(?:certainly|absolutely|of course)\s*[!.,]|^great question|^here(?:'s| is| are) (?:a|an|the|some|my)\b"
    r"|^i'?d be (?:happy|glad) to\b|^(?:i'?m )?happy to help|^sure[!,]? here"
    r"|^当然可以|^好的[，,]\s*(?:以下|下面)|^以下是|^下面是|^很高兴(?:为您|为你|帮助)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*[*_]*\s*(?:user|human|me|question|用户|人类|问题)\s*[*_]*\s*[:：]\s*[*_]*\s*", re.IGNORECASE)
_NEXT_SPEAKER = re.compile(r"\n\s*[*_]*\s*(?:assistant|ai|gpt|助手|AI助手)\s*[*_]*\s*[:：]", re.IGNORECASE)
_QUOTES = {'"': '"', "“": "”", "「": "」", "'": "'"}


@dataclass(frozen=True)
class Seed:
    """What a conversation starts from: a topic the simulator opens, or the first user turn itself."""

    topic: str | None
    first: str | None
    system: str | None
    occurrence: int  # how many identical seeds came before: identical topics still make distinct conversations

    def identity(self) -> dict[str, Any]:
        return {"topic": self.topic, "first": self.first, "system": self.system, "occurrence": self.occurrence}


def parse_seed(record: Record, where: str) -> tuple[str | None, str | None, str | None]:
    """(topic, first user turn, system) of a seed record: `topic`, `question`, or an Alpaca record."""
    if not isinstance(record, dict):
        raise InputError(where, "a chat seed must be an object with 'topic', 'question' or 'instruction'")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise InputError(where, "'system' must be a string")
    for name in ("topic", "question"):
        if name in record:
            value = record[name]
            if not isinstance(value, str) or not value.strip():
                raise InputError(where, f"{name!r} must be non-empty text")
            return (value.strip(), None, system) if name == "topic" else (None, value.strip(), system)
    if "instruction" in record:
        instruction, extra = record["instruction"], record.get("input", "")
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError(where, "'instruction' must be non-empty text")
        if not isinstance(extra, str):
            raise InputError(where, "'input' must be a string")
        return None, user_turn(record).strip(), system
    raise InputError(where, "a chat seed needs 'topic', 'question' or 'instruction' (an Alpaca record) text")


def load_topics(name: str) -> list[Record]:
    """A bundled topic set, `topics-en` or `topics-zh`."""
    resource = _TOPICS / f"{name.removeprefix('topics-')}.jsonl"
    if not name.startswith("topics-") or not resource.is_file():
        known = sorted(f"builtin:topics-{p.name.removesuffix('.jsonl')}" for p in _TOPICS.iterdir())
        raise UserError(f"unknown topic set 'builtin:{name}'; built-in sets: {', '.join(known)}")
    with resources.as_file(resource) as path:
        return [record for _, record in iter_located(path)]


def load_chat_seeds(spec: str | Path) -> list[Record]:
    """Seed records from `builtin:topics-en`/`builtin:topics-zh` or a JSON/JSONL file, each checked."""
    text = str(spec)
    if text.startswith("builtin:"):
        return load_topics(text.removeprefix("builtin:"))
    return read_checked(spec, parse_seed)


def cleaned_user_turn(text: str) -> str:
    """The simulator's message without what it wrapped around it: a leading "User:" label, quotes around
    the whole message, and an "Assistant:" turn it went on to write itself."""
    text = _NEXT_SPEAKER.split(text, maxsplit=1)[0].strip()
    text = _LABEL.sub("", text, count=1).strip()
    inner = text[1:-1]
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text[0] not in inner and text[-1] not in inner:
        text = inner.strip()
    return text


def breaks_character(text: str) -> str | None:
    """Why a user turn is not a user's: it speaks as an AI, or it answers instead of asking; None if fine."""
    found = _BROKE.search(text)
    if found:
        return BROKE_CHARACTER
    return USER_ANSWERED if _ANSWERING.search(text.strip()) else None


def repeats(text: str, earlier: list[str], threshold: float) -> tuple[float, str] | None:
    """(score, earlier turn) when `text` repeats an earlier turn of its role: equal after folding case and
    spaces, or ROUGE-L above `threshold`."""
    from distillery.dedup import rouge_l, tokenize  # numpy and rapidfuzz: loaded when a turn is first checked

    folded = " ".join(text.lower().split())
    tokens = tokenize(text)
    for before in earlier:
        if folded == " ".join(before.lower().split()):
            return 1.0, before
        score = rouge_l(tokens, tokenize(before))
        if score > threshold:
            return score, before
    return None


@dataclass
class Round:
    """One decided round of one conversation: both turns, or why the conversation ends here."""

    number: int
    user: str | None = None
    assistant: str | None = None
    end: str | None = None  # a reason the conversation ends at this round (the round itself is not kept)
    bad_role: str | None = None  # the role whose turn failed a check; None for a natural end
    detail: Any = None
    error: str | None = None
    move: str | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ChatStepOptions(ChatSettings):
    endpoint: dict[str, Any] = option({}, "Endpoint options for this step only (model, temperature...).")


class Chat(LLMStep):
    """The step: one conversation per seed record, each round decided in turn and remembered.

    Out come ShareGPT records (`conversations` of human/gpt turns, `system` when there is one, and `chat`:
    the seed, the rounds made and aimed at, and why it ended early); a bad turn is dropped with its reason,
    and a conversation shorter than `min_turns` is dropped as a whole."""

    name = "chat"
    Options = ChatStepOptions

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        self.least, self.most = self.options.check()
        lang = self.options.lang
        self.opening = self._template(self.options.opening_prompt, f"{lang}/opening.txt", ("{topic}",))
        self.follow_up = self._template(self.options.user_prompt, f"{lang}/user.txt", ("{conversation}", "{move}"))
        self.seeds: list[Seed] = []

    @staticmethod
    def _template(path: str | None, bundled: str, slots: tuple[str, ...]) -> str:
        if path is None:
            return (_TEMPLATES / bundled).read_text(encoding="utf-8")
        text = read_text(path)
        missing = [slot for slot in slots if slot not in text]
        if missing:
            raise UserError(f"{path}: a user-simulator prompt needs the slot(s) {', '.join(missing)}")
        return text

    def parse_seeds(self, records: Iterable[Record]) -> list[Record]:
        """Check every seed before anything is sent, and number identical seeds apart."""
        items, seen = [], Counter()
        self.seeds = []
        for number, record in enumerate(records, start=1):
            topic, first, system = parse_seed(record, f"{self.name} input record {number}")
            system = system if system is not None else self.options.system
            key = json.dumps([topic, first, system], ensure_ascii=False)
            self.seeds.append(Seed(topic, first, system, seen[key]))
            seen[key] += 1
            items.append(record)
        return items

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        items = self.parse_seeds(records)
        result = self.answer(items)
        for index, record in enumerate(items):
            if index in result.failed:
                self.drop(record, "request_failed", result.failed[index])
                continue
            if index in result.rejected:
                self.drop(record, result.rejected[index].reason, result.rejected[index].detail)
                continue
            for outcome in result.outputs.get(index, []):
                for bad in outcome["rejects"]:
                    self.drop(bad["record"], bad["reason"], bad["detail"])
                if outcome["record"] is not None:
                    yield outcome["record"]

    def target_rounds(self, seed: Seed, seed_value: int) -> int:
        """Rounds this conversation aims at: drawn from the range, fixed by --seed and the seed itself."""
        if self.least == self.most:
            return self.most
        text = json.dumps([seed_value, seed.identity()], ensure_ascii=False, sort_keys=True)
        return random.Random(hashlib.sha256(text.encode()).hexdigest()).randint(self.least, self.most)

    def choose_move(self, seed: Seed, seed_value: int, number: int) -> str:
        text = json.dumps([seed_value, seed.identity(), number], ensure_ascii=False, sort_keys=True)
        return random.Random(hashlib.sha256(text.encode()).hexdigest()).choice(sorted(MOVES[self.options.lang]))

    def estimate_requests(self, record: Record) -> list[ChatRequest]:
        """The most a conversation can cost: a simulator request and an answer per round, at the longest."""
        topic, first, system = parse_seed(record, f"{self.name} input record")
        text = first or topic or ""
        requests = []
        for _ in range(self.most):
            requests.append(ChatRequest([{"role": "user", "content": self.follow_up + text}]))
            requests.append(ChatRequest([{"role": "user", "content": text}]))
        return requests

    async def decide(self, record: Record, session: Session, index: int = 0) -> list[Record] | Rejected | Failed:
        """One conversation: round after round, each replayed if a run decided it, else decided and remembered."""
        seed = self.seeds[index]
        seed_value = session.endpoint.seed or 0
        target = self.target_rounds(seed, seed_value)
        turns: list[dict[str, str]] = []
        ending: Round | None = None
        for number in range(1, target + 1):
            key = self._round_key(session, seed, target, number)
            known = session.recall(key)
            if known is not None:
                decided = Round(**known)
                session.stats.cached += decided.requests
                session.stats.cached_prompt_tokens += decided.prompt_tokens
                session.stats.cached_completion_tokens += decided.completion_tokens
            else:
                decided = await self._round(session, seed, seed_value, turns, number)
                if decided.error is not None:
                    return Failed(decided.error)
                session.remember(key, asdict(decided))
            if decided.end is not None:
                ending = decided
                break
            turns += [{"role": "user", "content": decided.user or ""},
                      {"role": "assistant", "content": decided.assistant or ""}]
        return self._outcome(seed, target, turns, ending)

    def _outcome(
        self, seed: Seed, target: int, turns: list[dict[str, str]], ending: Round | None
    ) -> list[Record] | Rejected:
        """The kept conversation and its bad last turn, or the rejection of one too short to keep."""
        rounds = len(turns) // 2
        where = {"topic": seed.topic, "first": seed.first}
        if rounds < self.options.min_turns:
            reason = ending.end if ending is not None else USER_ENDED
            detail = {"rounds": rounds, "min_turns": self.options.min_turns, **_bad_turn(ending)}
            return Rejected(reason or USER_ENDED, detail)
        record: Record = {"conversations": [{"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]}
                                            for t in turns]}
        if seed.system:
            record["system"] = seed.system
        record["chat"] = {**{k: v for k, v in where.items() if v is not None}, "rounds": rounds, "target": target,
                          "ended": ending.end if ending is not None else None}
        rejects = []
        if ending is not None and ending.bad_role is not None:
            bad = {**where, **_bad_turn(ending), "conversation": record["conversations"]}
            rejects.append({"reason": ending.end, "detail": ending.detail, "record": bad})
        return [{"record": record, "rejects": rejects}]

    def _round_key(self, session: Session, seed: Seed, target: int, number: int) -> str:
        """Everything that decides a round: both models and their sampling, the prompts, the checks, the seed."""
        endpoint = session.endpoint
        o = self.options
        settings = {"model": endpoint.model, "user_model": o.user_model or endpoint.model,
                    "params": endpoint.generation_params(), "user_temperature": o.user_temperature,
                    "opening": self.opening, "follow_up": self.follow_up, "lang": o.lang,
                    "repeat_threshold": o.repeat_threshold, "seed": seed.identity(), "target": target,
                    "round": number}
        text = json.dumps(settings, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    async def _round(self, session: Session, seed: Seed, seed_value: int, turns: list[dict[str, str]],
                     number: int) -> Round:
        """The user's turn (the seed's, or the simulator's), its checks, then the answer and its checks."""
        decided = Round(number)
        earlier_users = [t["content"] for t in turns if t["role"] == "user"]
        earlier_answers = [t["content"] for t in turns if t["role"] == "assistant"]
        if number == 1 and seed.first is not None:
            decided.user = seed.first
        else:
            request = self._simulator_request(session, seed, seed_value, turns, number, decided)
            reply = await _ask(session, request, decided, self.options.user_model)
            if not reply.ok:
                decided.error = f"user simulator: {reply.error}"
                return decided
            if self._check_user(decided, reply, earlier_users):
                return decided
        params = {"seed": session.endpoint.seed + number} if session.endpoint.seed is not None else {}
        messages = ([{"role": "system", "content": seed.system}] if seed.system else []) + turns
        messages.append({"role": "user", "content": decided.user or ""})
        answer = await _ask(session, ChatRequest(messages, sample=seed.occurrence, params=params), decided)
        if not answer.ok:
            decided.error = f"assistant: {answer.error}"
            return decided
        decided.assistant = (answer.text or "").strip()
        if not decided.assistant:
            _fail(decided, EMPTY_ANSWER, "assistant", None)
        elif answer.finish_reason == "length":
            _fail(decided, TRUNCATED_ANSWER, "assistant", "answer cut off at --max-tokens")
        else:
            repeated = repeats(decided.assistant, earlier_answers, self.options.repeat_threshold)
            if repeated:
                _fail(decided, REPEATED, "assistant", {"score": round(repeated[0], 4), "earlier": repeated[1]})
        return decided

    def _simulator_request(self, session: Session, seed: Seed, seed_value: int, turns: list[dict[str, str]],
                           number: int, decided: Round) -> ChatRequest:
        lang = self.options.lang
        topic = seed.topic or _NO_TOPIC[lang]
        if not turns:
            prompt = self.opening.replace("{topic}", topic)
        else:
            decided.move = self.choose_move(seed, seed_value, number)
            prompt = (self.follow_up.replace("{topic}", topic).replace("{move}", MOVES[lang][decided.move])
                      .replace("{conversation}", transcript(turns, lang)))
        params: dict[str, Any] = {}
        if self.options.user_temperature is not None:
            params["temperature"] = self.options.user_temperature
        if session.endpoint.seed is not None:
            params["seed"] = session.endpoint.seed + 1000 + number
        return ChatRequest([{"role": "user", "content": prompt}], sample=seed.occurrence, params=params)

    def _check_user(self, decided: Round, reply: ChatResult, earlier: list[str]) -> bool:
        """Read the simulator's reply into the round; True when the conversation ends here."""
        raw = (reply.text or "").strip()
        if STOP_MARKER in raw.upper():
            decided.end = USER_ENDED
            return True
        text = cleaned_user_turn(raw)
        decided.user = text
        if not text:
            _fail(decided, EMPTY_USER, "user", None)
        elif reply.finish_reason == "length":
            _fail(decided, TRUNCATED_USER, "user", "user turn cut off at --max-tokens")
        elif broke := breaks_character(text):
            _fail(decided, broke, "user", None)
        elif repeated := repeats(text, earlier, self.options.repeat_threshold):
            _fail(decided, REPEATED, "user", {"score": round(repeated[0], 4), "earlier": repeated[1]})
        return decided.end is not None


def transcript(turns: list[dict[str, str]], lang: str) -> str:
    """The conversation as the simulator reads it, each turn cut to a bounded length."""
    user, assistant = _SPEAKERS[lang]
    lines = []
    for turn in turns:
        text = turn["content"]
        if len(text) > _TRANSCRIPT_CHARS:
            text = text[:_TRANSCRIPT_CHARS] + " …"
        lines.append(f"{user if turn['role'] == 'user' else assistant}: {text}")
    return "\n\n".join(lines)


def _fail(decided: Round, reason: str, role: str, detail: Any) -> None:
    decided.end, decided.bad_role, decided.detail = reason, role, detail


def _bad_turn(ending: Round | None) -> dict[str, Any]:
    if ending is None or ending.bad_role is None:
        return {}
    return {"turn": ending.number, "role": ending.bad_role,
            "text": ending.user if ending.bad_role == "user" else ending.assistant}


async def _ask(session: Session, request: ChatRequest, decided: Round, model: str | None = None) -> ChatResult:
    """Send, and charge the usage to the round so a replayed round can account for it."""
    result = await session.chat(request, model)
    decided.requests += 1
    decided.prompt_tokens += result.prompt_tokens
    decided.completion_tokens += result.completion_tokens
    return result


@dataclass(kw_only=True)
class ChatOptions(ChatSettings):
    """`distillery chat`'s options: the recipe's settings plus where it reads, writes and asks."""

    seeds: str | Path
    output: Path
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)


@dataclass
class ChatRunResult(StepRun):
    """The chat step's run, with the figures the command prints: rounds per kept conversation, why
    conversations ended early, and rounds replayed from an earlier run."""

    replayed: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)


def chat(options: ChatOptions, progress: bool = True) -> ChatRunResult:
    """Make a conversation from every seed; the API behind `distillery chat`, a one-step pipeline over the
    `chat` step whose state is the cache beside OUTPUT."""
    settings = {f: getattr(options, f) for f in ChatSettings.__dataclass_fields__}
    step = Chat(ChatStepOptions(**settings))
    file_format(options.output)
    endpoint = options.endpoint.resolve()
    if options.user_model:
        replace(endpoint, model=options.user_model).resolve()  # a model --local-model cannot serve fails now
    seeds = step.parse_seeds(load_chat_seeds(options.seeds))
    ended: Counter = Counter()
    rounds: Counter = Counter()

    def tally(record: Record) -> None:
        rounds[record["chat"]["rounds"]] += 1
        if record["chat"]["ended"]:
            ended[record["chat"]["ended"]] += 1

    def figures() -> dict[str, Any]:
        return {"rounds": {str(k): v for k, v in sorted(rounds.items())}, "ended": dict(ended.most_common())}

    meta = {"command": "chat", "input": str(options.seeds), "user_model": options.user_model or endpoint.model,
            "turns": options.turns, "lang": options.lang, "seed": endpoint.seed or 0, "seeds": len(seeds)}
    run = run_one_step(step, seeds, options.output, meta, endpoint, progress=progress, figures=figures, watch=tally)
    return ChatRunResult(**vars(run), replayed=step.stats.notes["replayed"], ended=dict(ended.most_common()),
                         rounds=dict(sorted(rounds.items())))
