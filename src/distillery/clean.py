"""`distillery clean`: Vicuna's ShareGPT cleaning as one streaming, parallel recipe with a reason per drop.

The per-record work (HTML to markdown, special tokens, structure, content filters, language detection,
planning the split) runs in `workers` processes on chunks of records, consumed in input order through a
bounded window, so memory stays flat whatever the input size. Reading, the language filter (and, with
`--lang-detector lingua`, detection for the few conversations too short for lingua's low-accuracy mode,
see `add_language`), the order-dependent dedup and writing happen in this process over the ordered
stream.
Every stage is a pipeline Filter or Step, so each counts what came in, what went out and what was
dropped for which reason, and every drop lands in the rejected file.

Output records are ShareGPT: `{id, conversations: [{from: human|gpt, value}], system?, lang, ...}` with
every other field of the input kept. A leading `system` turn (or an OpenAI system message) becomes the
record's `system` field. Records without an id get their 1-based position in the input as id.

Length is counted per turn with the tokenizer (or `tokens.estimate_tokens`: one token per CJK
character, 1.3 per other word) plus `template_tokens` per turn for the chat template's role markers; the
system prompt counts the same way and goes into every piece. A piece therefore fits `max_tokens` as
`sum(count(value) + template_tokens)` over its turns, system included.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.dedup import ExactIndex, MinHashIndex, normalize
from distillery.errors import InputError, UserError
from distillery.executor import cpu_count, ordered_map
from distillery.html2md import clean_turn
from distillery.io import iter_located, open_writer, sidecar
from distillery.langid import (
    DEFAULT_DETECTOR,
    DETECTORS,
    conversation_sample,
    detect_language,
    known_code,
    needs_heavy_model,
)
from distillery.step import Filter, Record, Step, run_steps
from distillery.summary import StageStats, rejection, write_summary
from distillery.tokens import TokenCounter

HUMAN, GPT, SYSTEM = "human", "gpt", "system"
ROLES = {
    "human": HUMAN, "user": HUMAN,
    "gpt": GPT, "chatgpt": GPT, "assistant": GPT, "bard": GPT, "bing": GPT,
    "system": SYSTEM, "developer": SYSTEM,
}
ANY_ROLE = "any"

# Phrases matched case-insensitively inside a turn of the given role. The refusal and moralizing lists
# follow ShareGPT_Vicuna_unfiltered's idea but keep to whole phrases, so topics are never censored.
REFUSALS = (
    "as an ai language model", "as a large language model", "as an ai developed by openai",
    "i'm sorry, but i cannot", "i'm sorry, but i can't", "i am sorry, but i cannot", "i cannot fulfill",
    "i can't fulfill", "i cannot comply", "i cannot provide assistance", "i cannot provide guidance",
    "i'm unable to provide", "i am unable to provide", "against my programming",
    "openai's content policy", "openai's use case policy", "violates openai",
)
MORALIZING = (
    "it is important to remember that", "it's important to remember that", "it is never okay",
    "it is not appropriate to", "it's not appropriate to", "please refrain from", "i must remind you",
    "respectful and inclusive", "harmful and offensive", "hateful and harmful", "promotes hate",
    "real-world consequences", "respect the rights and dignity",
)
ERROR_PAGES = (
    "too many requests in 1 hour", "an error occurred. if this issue persists",
    "something went wrong, please try reloading the conversation", "hmm...something seems to have gone wrong",
    "there was an error generating a response", "the message you submitted was too long",
    "only one message at a time. please allow any other responses",
)


@dataclass(frozen=True)
class BlockRule:
    """Drop a conversation whose `role` turns contain `phrase` (case-insensitive), for `reason`."""

    role: str
    phrase: str
    reason: str = "blocked_phrase"


def parse_block(spec: str) -> BlockRule:
    """`gpt:PHRASE`, `human:PHRASE` or `any:PHRASE` from the command line."""
    role, sep, phrase = spec.partition(":")
    if not sep:
        raise UserError(f"--block {spec!r}: expected human:PHRASE, gpt:PHRASE or any:PHRASE")
    return BlockRule(role.strip().lower(), phrase)


def parse_codes(values: Iterable[str]) -> tuple[str, ...]:
    """Language codes given as `en,zh` or as repeated flags."""
    return tuple(code.strip().lower() for value in values for code in value.split(",") if code.strip())


# FastChat's `contain_blocked_words`: a conversation that names OpenAI or ChatGPT in any turn is mostly
# about the assistant being ChatGPT, which a model trained on it would then claim to be.
OPENAI_MENTIONS = tuple(BlockRule(ANY_ROLE, word, "openai_mention") for word in ("openai", "chatgpt"))

DEFAULT_BLOCKS = (
    *(BlockRule(GPT, phrase, "refusal") for phrase in REFUSALS),
    *(BlockRule(GPT, phrase, "moralizing") for phrase in MORALIZING),
    *(BlockRule(ANY_ROLE, phrase, "error_page") for phrase in ERROR_PAGES),
)

# Literal strings that tokenizers turn into control tokens. A zero-width space after the first character
# keeps the text looking the same while no tokenizer can match the special token any more.
SPECIAL_TOKENS = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|<｜[^｜<>\s]{1,40}｜>|</?s>|<(?:unk|pad|mask|bos|eos|start_of_turn|end_of_turn)>"
    r"|\[/?INST\]|<</?SYS>>"
)
NEUTRALIZER = "\u200b"


@dataclass(frozen=True)
class CleanOptions:
    """Everything `distillery clean` can be told; the CLI maps its flags one to one onto these."""

    workers: int = 0
    chunk_size: int = 256
    on_bad_roles: str = "cut"
    min_chars: int = 16
    blocks: tuple[BlockRule, ...] = DEFAULT_BLOCKS
    repeated_digits: bool = False
    restarted_lists: bool = True
    detect_lang: bool = True
    lang_detector: str = DEFAULT_DETECTOR
    langs: tuple[str, ...] = ()
    skip_langs: tuple[str, ...] = ()
    exact_dedup: bool = True
    near_dup: float | None = None
    num_perm: int = 128
    max_tokens: int = 2048
    tokenizer: str | None = None
    template_tokens: int = 6
    long_round: str = "drop"
    neutralize_special: bool = True
    openai_filter: bool = True
    plugins_filter: bool = True

    def __post_init__(self) -> None:
        if self.on_bad_roles not in ("cut", "drop"):
            raise UserError(f"--on-bad-roles must be cut or drop, got {self.on_bad_roles!r}")
        if self.long_round not in ("drop", "truncate"):
            raise UserError(f"--long-round must be drop or truncate, got {self.long_round!r}")
        if self.workers < 0 or self.chunk_size < 1:
            raise UserError("--workers must be 0 (all cores) or more, and the chunk size at least 1")
        if self.max_tokens < 1 or self.template_tokens < 0 or self.min_chars < 0:
            raise UserError("--max-tokens must be positive; --template-tokens and --min-chars not negative")
        if self.near_dup is not None and not 0.0 < self.near_dup < 1.0:
            raise UserError(f"--near-dup must be between 0 and 1 (exclusive), got {self.near_dup}")
        if self.num_perm < 16:
            raise UserError(f"--num-perm must be at least 16, got {self.num_perm}")
        if not self.detect_lang and (self.langs or self.skip_langs):
            raise UserError("--lang and --skip-lang need language detection; leave out --no-detect-lang")
        if self.lang_detector not in DETECTORS:
            raise UserError(f"--lang-detector must be one of {', '.join(DETECTORS)}, got {self.lang_detector!r}")
        for code in (*self.langs, *self.skip_langs):
            if not known_code(code, self.lang_detector):
                raise UserError(f"unknown language code {code!r}; use ISO 639-1 codes such as en, zh, ko")
        for rule in self.blocks:
            if rule.role not in (HUMAN, GPT, ANY_ROLE) or not rule.phrase:
                raise UserError(f"bad block rule {rule.role}:{rule.phrase!r}; use human:, gpt: or any: PHRASE")

    @property
    def process_count(self) -> int:
        return self.workers or cpu_count()


@dataclass
class CleanReport:
    """What a run did: stage-by-stage counts, the files it wrote and how long it took."""

    input: str
    output: str
    rejected: str
    summary: str
    records_in: int
    records_out: int
    rejected_count: int
    seconds: float
    workers: int
    stages: list[dict[str, Any]] = field(default_factory=list)


def stage_summary(stats: StageStats, notes: Counter | None = None) -> dict[str, Any]:
    """A stage's counts plus its notes: edits that drop nothing (cuts, splits, languages seen)."""
    return {**stats.as_dict(), "notes": dict(notes or {})}


class Stage(Filter):
    """A Filter that may also edit the record it keeps, counting edits in `notes` for the summary."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: Counter = Counter()


class Markdown(Stage):
    """Share-page HTML to markdown; plain text keeps its content."""

    name = "markdown"

    def keep(self, record: Record) -> bool:
        for turn in record["conversations"]:
            value = turn["value"]
            cleaned = clean_turn(value)
            if cleaned != value:
                self.notes["turns_changed"] += 1
                turn["value"] = cleaned
        return True


class Neutralize(Stage):
    """Defuse literal special tokens so they cannot end a sequence or fake a role in training."""

    name = "special_tokens"

    def __init__(self, extra_tokens: Iterable[str] = ()) -> None:
        super().__init__()
        extra = sorted({t for t in extra_tokens if len(t) > 1}, key=len, reverse=True)
        alternatives = [SPECIAL_TOKENS.pattern, *map(re.escape, extra)]
        self.pattern = re.compile("|".join(alternatives))

    def _defuse(self, text: str) -> str:
        return self.pattern.sub(lambda m: m.group(0)[0] + NEUTRALIZER + m.group(0)[1:], text)

    def keep(self, record: Record) -> bool:
        changed = False
        for turn in record["conversations"]:
            if self.pattern.search(turn["value"]):
                turn["value"] = self._defuse(turn["value"])
                changed = True
        if isinstance(record.get("system"), str) and self.pattern.search(record["system"]):
            record["system"] = self._defuse(record["system"])
            changed = True
        self.notes["records_changed"] += changed
        return True


def tokenizer_specials(tokenizer: Any | None) -> list[str]:
    """The given tokenizer's own control tokens, so they get defused too."""
    if tokenizer is None:
        return []
    found = set(getattr(tokenizer, "all_special_tokens", []))
    found.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    return sorted(found)


class Structure(Stage):
    """Strict human/gpt rounds: trim the ends, cut (or drop) at a role break, cut at an empty turn."""

    name = "structure"

    def __init__(self, on_bad_roles: str = "cut", min_chars: int = 16) -> None:
        super().__init__()
        self.on_bad_roles = on_bad_roles
        self.min_chars = min_chars

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        turns = record["conversations"]
        start = next((i for i, turn in enumerate(turns) if turn["from"] == HUMAN), len(turns))
        if start:
            self.notes["leading_turns_dropped"] += 1
        turns = turns[start:]
        broken = next((i for i, turn in enumerate(turns) if turn["from"] != (HUMAN, GPT)[i % 2]), None)
        if broken is not None:
            if self.on_bad_roles == "drop":
                return False, "bad_roles"
            self.notes["cut_at_bad_role"] += 1
            turns = turns[:broken]
        empty = next((i for i, turn in enumerate(turns) if not turn["value"].strip()), None)
        if empty is not None:
            self.notes["cut_at_empty_turn"] += 1
            turns = turns[:empty]
        if len(turns) % 2:
            self.notes["trailing_human_dropped"] += 1
            turns = turns[:-1]
        if not turns:
            return False, "no_full_round"
        if sum(len(turn["value"]) for turn in turns) < self.min_chars:
            return False, "too_short"
        record["conversations"] = turns
        return True


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ORDERED_ITEM = re.compile(r"^( *)(\d{1,9})[.)] ")
_FIRST_ITEMS = re.compile(r"^ *1[.)] ", re.MULTILINE)
_REPEATED_DIGITS = re.compile(r"(\d)\1{8}")


def restarted_numbering(markdown: str) -> bool:
    """An item "1." right after an item "1." of the same list level: the split-list artifact of old
    markdownify, which ignored `<ol start>` and numbered every step of a list broken by code as 1."""
    if len(_FIRST_ITEMS.findall(markdown)) < 2:
        return False
    last: dict[int, int] = {}
    fence = ""
    for line in markdown.splitlines():
        opened = _FENCE.match(line)
        if opened and (not fence or (opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence))):
            fence = "" if fence else opened.group(1)
            continue
        item = None if fence else _ORDERED_ITEM.match(line)
        if item is None:
            continue
        indent, number = len(item.group(1)), int(item.group(2))
        for deeper in [level for level in last if level > indent]:
            del last[deeper]
        if number == 1 and last.get(indent) == 1:
            return True
        last[indent] = number
    return False


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """One regex for many lowercase phrases, shaped as a trie: much faster than a flat alternation,
    which Python's engine tries phrase by phrase at every position."""
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
        node[""] = {}

    def regex(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + regex(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(regex(trie))


def used_plugins(record: Record) -> bool:
    """A share-page conversation held with ChatGPT plugins (a non-empty `plugins` list, or a `model` such as
    "Plugins"): its answers lean on tool output the training data does not hold."""
    model = record.get("model")
    return bool(record.get("plugins")) or (isinstance(model, str) and "plugin" in model.lower())


class Content(Stage):
    """Blocked phrases per role, repeated-digit spam, restarted list numbering and ChatGPT-plugin
    conversations, each its own reason."""

    name = "content"

    def __init__(self, blocks: Iterable[BlockRule] = DEFAULT_BLOCKS, repeated_digits: bool = False,
                 restarted_lists: bool = True, plugins: bool = False) -> None:
        super().__init__()
        self.reasons: dict[str, dict[str, str]] = {HUMAN: {}, GPT: {}}
        for rule in blocks:
            for role in (HUMAN, GPT) if rule.role == ANY_ROLE else (rule.role,):
                self.reasons[role].setdefault(rule.phrase.lower(), rule.reason)
        self.patterns = {role: phrase_pattern(found) for role, found in self.reasons.items() if found}
        self.repeated_digits = repeated_digits
        self.restarted_lists = restarted_lists
        self.plugins = plugins

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        if self.plugins and used_plugins(record):
            return False, "plugins"
        for turn in record["conversations"]:
            role, text = turn["from"], turn["value"]
            pattern = self.patterns.get(role)
            found = pattern.search(text.lower()) if pattern else None
            if found:
                return False, self.reasons[role][found.group(0)]
            if self.repeated_digits and _REPEATED_DIGITS.search(text):
                return False, "repeated_digits"
            if self.restarted_lists and role == GPT and restarted_numbering(text):
                return False, "restarted_numbering"
        return True


def language_sample(record: Record) -> str:
    """The text that decides the record's language (`langid.conversation_sample` of its turns)."""
    turns = record["conversations"]
    return conversation_sample((t["value"] for t in turns if t["from"] == HUMAN),
                               (t["value"] for t in turns if t["from"] == GPT))


def add_language(record: Record, short_too: bool = True, detector: str = DEFAULT_DETECTOR) -> None:
    """Set `lang` (ISO 639-1, or null when the text has no language) from the record's language sample.

    With lingua, a sample too short for its low-accuracy mode needs its high-accuracy models, about
    1 GB and 5 s to load per process; so the workers (`short_too=False`) leave such a record without
    `lang` and the parent's Language stage, one process, finishes it. The default detector has no such
    model, and the workers decide every record.
    """
    sample = language_sample(record)
    if short_too or not needs_heavy_model(sample, detector):
        record["lang"] = detect_language(sample, detector)
    else:
        record.pop("lang", None)  # an input's own `lang` must not pass for a detected one


class Language(Stage):
    """Keeps or skips languages by `lang`, first detecting it where a worker left it out (see add_language)."""

    name = "language"

    def __init__(self, langs: Iterable[str] = (), skip_langs: Iterable[str] = (),
                 detector: str = DEFAULT_DETECTOR) -> None:
        super().__init__()
        self.langs = set(langs)
        self.skip_langs = set(skip_langs)
        self.detector = detector

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        if "lang" not in record:
            add_language(record, detector=self.detector)
        lang = record["lang"]
        self.notes[lang or "none"] += 1
        if self.langs and lang not in self.langs:
            return False, "language_not_kept"
        if lang in self.skip_langs:
            return False, "language_skipped"
        return True


PLAN_KEY = "__split_plan__"  # where a kept record carries its split plan from the worker to Split


@dataclass
class Piece:
    """A run of whole rounds planned by the splitter; `reason` set means it is dropped, not written."""

    turns: list[dict[str, Any]]
    reason: str | None = None


class Splitter:
    """Plans pieces of at most `max_tokens` at round boundaries, keeping every round that fits."""

    def __init__(self, counter: TokenCounter, max_tokens: int = 2048, template_tokens: int = 6,
                 long_round: str = "drop") -> None:
        self.counter = counter
        self.max_tokens = max_tokens
        self.template_tokens = template_tokens
        self.long_round = long_round

    def cost(self, text: str) -> int:
        return self.counter.count(text) + self.template_tokens

    def plan(self, record: Record) -> list[Piece] | None:
        """None when the conversation fits as it is, else the pieces in order."""
        system = record.get("system")
        budget = self.max_tokens - (self.cost(system) if isinstance(system, str) and system else 0)
        turns = record["conversations"]
        costs = [self.cost(turn["value"]) for turn in turns]
        if sum(costs) <= budget:
            return None
        pieces: list[Piece] = []
        current: list[dict[str, Any]] = []
        used = 0
        for i in range(0, len(turns), 2):
            pair, pair_cost = turns[i:i + 2], costs[i] + costs[i + 1]
            if pair_cost > budget:
                if current:
                    pieces.append(Piece(current))
                    current, used = [], 0
                pieces.append(self._long_round(pair, costs[i], budget))
                continue
            if used + pair_cost > budget:
                pieces.append(Piece(current))
                current, used = [], 0
            current.extend(pair)
            used += pair_cost
        if current:
            pieces.append(Piece(current))
        return pieces

    def _long_round(self, pair: list[dict[str, Any]], human_cost: int, budget: int) -> Piece:
        room = budget - human_cost - self.template_tokens
        if self.long_round == "drop" or room <= 0:
            return Piece(pair, "round_too_long")
        answer = pair[1]["value"]
        return Piece([pair[0], {**pair[1], "value": self._truncate(answer, room)}], None)

    def _truncate(self, text: str, tokens: int) -> str:
        """The longest prefix within `tokens`, found by bisection so it works with any counter."""
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if self.counter.count(text[:middle]) <= tokens:
                low = middle
            else:
                high = middle - 1
        return text[:low].rstrip()


def normalize_record(record: Record, where: str, position: int) -> Record:
    """A ShareGPT record with canonical roles and the system prompt lifted out; malformed input raises."""
    if "conversations" in record:
        key, role_key, text_key = "conversations", "from", "value"
    elif "messages" in record:
        key, role_key, text_key = "messages", "role", "content"
    else:
        raise InputError(where, "missing 'conversations' (ShareGPT) or 'messages' (OpenAI) list")
    raw = record[key]
    if not isinstance(raw, list):
        raise InputError(where, f"'{key}' is not a list")
    turns = []
    system = record.get("system")
    for number, turn in enumerate(raw, start=1):
        if not isinstance(turn, dict):
            raise InputError(where, f"turn {number} of '{key}' is not an object")
        value = turn.get(text_key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise InputError(where, f"turn {number} of '{key}': '{text_key}' is not a string")
        name = turn.get(role_key)
        role = ROLES.get(name.lower(), name) if isinstance(name, str) else str(name)
        if role == SYSTEM and number == 1 and not system:
            system = value
            continue
        extras = {k: v for k, v in turn.items() if k not in (role_key, text_key)}
        turns.append({"from": role, "value": value, **extras})
    out: Record = {}
    for field_name, field_value in record.items():
        if field_name == key:
            out["conversations"] = turns
        elif field_name != "system":
            out[field_name] = field_value
    if out.get("id") is None:
        out["id"] = str(position)
    elif not isinstance(out["id"], str | int | float) or isinstance(out["id"], bool):
        raise InputError(where, f"'id' is {type(out['id']).__name__}, expected a string or a number")
    if system:
        out["system"] = system
    return out


@dataclass
class ChunkResult:
    """One chunk's records in input order, plus its stage counts to add up in the parent.

    An outcome is `(record, None, None)` for a kept record (its split plan under PLAN_KEY) and
    `(record, stage, reason)` for a dropped one.
    """

    outcomes: list[tuple[Record, str | None, str | None]]
    stages: list[dict[str, Any]]
    error: str | None = None


class RecordCleaner:
    """The per-record stages, built once per worker process."""

    def __init__(self, options: CleanOptions) -> None:
        counter = TokenCounter.from_option(options.tokenizer)
        self.stages: list[Stage] = [Markdown()]
        if options.neutralize_special:
            self.stages.append(Neutralize(tokenizer_specials(counter.tokenizer)))
        self.stages += [
            Structure(options.on_bad_roles, options.min_chars),
            Content(options.blocks + (OPENAI_MENTIONS if options.openai_filter else ()), options.repeated_digits,
                    options.restarted_lists, options.plugins_filter),
        ]
        self.splitter = Splitter(counter, options.max_tokens, options.template_tokens, options.long_round)
        self.detect_lang = options.detect_lang
        self.detector = options.lang_detector

    def run(self, chunk: list[tuple[int, str, Record]]) -> ChunkResult:
        for stage in self.stages:
            stage.stats, stage.notes = StageStats(stage.name), Counter()
        outcomes: list[tuple[Record, str | None, str | None]] = []
        normalized = (normalize_record(raw, where, position) for position, where, raw in chunk)

        def drop(record: Record, stage: str, reason: str, detail: object = None) -> None:
            outcomes.append((record, stage, reason))

        try:
            # The steps are generators taking one record at a time, so drops and keeps arrive in input order.
            for record in run_steps(normalized, self.stages, drop):
                if self.detect_lang:
                    add_language(record, short_too=False, detector=self.detector)
                record[PLAN_KEY] = self.splitter.plan(record)
                outcomes.append((record, None, None))
        except UserError as exc:  # crosses the process boundary as text, raised again in the parent
            return ChunkResult([], [], str(exc))
        return ChunkResult(outcomes, [stage_summary(stage.stats, stage.notes) for stage in self.stages])


_worker: RecordCleaner | None = None


def _start_worker(options: CleanOptions) -> None:
    global _worker
    _worker = RecordCleaner(options)


def _run_chunk(chunk: list[tuple[int, str, Record]]) -> ChunkResult:
    assert _worker is not None, "worker process started without its initializer"
    return _worker.run(chunk)


def _chunks(located: Iterable[tuple[str, Record]], size: int) -> Iterator[list[tuple[int, str, Record]]]:
    chunk: list[tuple[int, str, Record]] = []
    for position, (where, record) in enumerate(located, start=1):
        chunk.append((position, where, record))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_chunks(chunks: Iterable[list[tuple[int, str, Record]]], options: CleanOptions) -> Iterator[ChunkResult]:
    """Results in input order, through the executor's bounded process pool, so memory stays flat."""
    yield from ordered_map(_run_chunk, chunks, options.process_count, _start_worker, (options,))


class Dedup(Filter):
    """Order-dependent drops, so it runs in the parent: repeated ids, repeated first rounds, and with
    `near_dup` first user turns that MinHash finds too similar to an earlier one."""

    name = "dedup"

    def __init__(self, exact: bool = True, near_dup: float | None = None, num_perm: int = 128) -> None:
        super().__init__()
        self.ids: set[Any] = set()
        self.exact = ExactIndex() if exact else None
        self.near = MinHashIndex(near_dup, num_perm) if near_dup is not None else None
        self.first_ids: dict[str, Any] = {}

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        if record["id"] in self.ids:
            return False, "duplicate_id"
        human, gpt = record["conversations"][0]["value"], record["conversations"][1]["value"]
        # The index holds a digest of the folded first round, not its text: less memory per record.
        key = hashlib.blake2b(f"{normalize(human)}\0{normalize(gpt)}".encode(), digest_size=16).hexdigest()
        for index, text, reason in ((self.exact, key, "duplicate_first_round"), (self.near, human, "near_duplicate")):
            found = index.find_duplicate(text) if index is not None else None
            if found is not None:
                record["duplicate_of"] = self.first_ids[found[1]]
                return False, reason
        for index, text in ((self.exact, key), (self.near, human)):
            if index is not None:
                index.add(text)
                self.first_ids.setdefault(text, record["id"])
        self.ids.add(record["id"])
        return True


class Split(Step):
    """Writes the pieces the workers planned: `{id}_{k}` each, with the system prompt and other fields."""

    name = "split"

    def __init__(self) -> None:
        super().__init__()
        self.notes: Counter = Counter()

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            pieces: list[Piece] | None = record.pop(PLAN_KEY)
            if pieces is None:
                yield record
                continue
            self.notes["records_split"] += len(pieces) > 1
            for k, piece in enumerate(pieces):
                out = {**record, "conversations": piece.turns}
                if len(pieces) > 1:
                    out["id"] = f"{record['id']}_{k}"
                if piece.reason:
                    self.drop(out, piece.reason)
                else:
                    self.notes["pieces"] += 1
                    yield out


def _merge(totals: dict[str, dict[str, Any]], stage: dict[str, Any]) -> None:
    into = totals.setdefault(stage["stage"], {"stage": stage["stage"], "in": 0, "out": 0, "dropped": Counter(),
                                              "notes": Counter()})
    into["in"] += stage["in"]
    into["out"] += stage["out"]
    into["dropped"].update(stage["dropped"])
    into["notes"].update(stage["notes"])


def clean(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
          options: CleanOptions | None = None, rejected_path: str | os.PathLike[str] | None = None) -> CleanReport:
    """Clean INPUT into OUTPUT; every dropped record goes to the rejected file with its stage and reason."""
    options = options or CleanOptions()
    started = time.perf_counter()
    output = Path(output_path)
    rejected = Path(rejected_path) if rejected_path else sidecar(output, ".rejected.jsonl")
    if rejected.resolve() == output.resolve():
        raise UserError(f"--rejected {rejected} is the same file as the output")
    if options.tokenizer:
        TokenCounter.from_option(options.tokenizer)  # a bad tokenizer fails here, before any worker starts
    read = StageStats("read")
    worker_stages: dict[str, dict[str, Any]] = {}
    parent_steps: list[Step] = (
        [Language(options.langs, options.skip_langs, options.lang_detector)] if options.detect_lang else []
    )
    parent_steps += [Dedup(options.exact_dedup, options.near_dup, options.num_perm), Split()]

    def counted() -> Iterator[tuple[str, Record]]:
        for item in iter_located(input_path):
            read.seen += 1
            read.kept += 1
            yield item

    with open_writer(output) as out, open_writer(rejected) as bin_:

        def reject(record: Record, stage: str, reason: str, detail: object = None) -> None:
            record.pop(PLAN_KEY, None)
            bin_.write(rejection(stage, reason, record, detail))

        def cleaned() -> Iterator[Record]:
            for result in run_chunks(_chunks(counted(), options.chunk_size), options):
                if result.error is not None:
                    raise UserError(result.error)
                for stage in result.stages:
                    _merge(worker_stages, stage)
                for record, stage, reason in result.outcomes:
                    if reason is None:
                        yield record
                    else:
                        reject(record, stage, reason)

        out.write_all(run_steps(cleaned(), parent_steps, reject))
        if read.seen == 0:
            raise InputError(input_path, "holds no records")
    stages = [stage_summary(read)]
    stages += [{**s, "dropped": dict(s["dropped"]), "notes": dict(s["notes"])} for s in worker_stages.values()]
    stages += [stage_summary(step.stats, getattr(step, "notes", None)) for step in parent_steps]
    report = CleanReport(
        input=str(input_path), output=str(output), rejected=str(rejected),
        summary=str(sidecar(output, ".summary.json")),
        records_in=read.seen, records_out=out.count, rejected_count=bin_.count,
        seconds=round(time.perf_counter() - started, 3), workers=options.process_count, stages=stages,
    )
    write_summary(output, [StageStats.from_dict(stage) for stage in stages], {
        "command": "clean", "input": report.input, "output": report.output, "rejected": report.rejected,
        "workers": report.workers, "seconds": report.seconds})
    return report
