"""`distillery self-instruct`: the Alpaca recipe, with the constraints a user asks for actually enforced.

Each request shows the teacher a few seed tasks (and optionally some already accepted ones) as numbered
`Instruction / Input / Output` blocks and lets it continue the list. Answers are parsed tolerantly, run
through Alpaca's filters plus a language check and, for text-to-SQL, a validator that runs every query on
its schema, and then through ROUGE-L near-duplicate removal against the seeds and everything kept so far.

Resuming is exact, and so is running at any concurrency. Requests are numbered; each one's messages are
journaled before it is sent, and answers are processed in request order (one that arrives early waits for
its predecessors), each in one SQLite transaction that journals its accepted and rejected items and marks
the request done. So the kept tasks never depend on which answer came first, and a kill -9 leaves the
processed requests a prefix of the issued ones. A re-run replays the journal, rebuilds the dedup index,
re-issues journaled requests that were never processed with identical messages (so answered ones come from
the cache), and numbers new requests after the last one issued. With --machine-examples, request k shows
tasks accepted from requests up to k - concurrency and is sent only once those are processed, so its
prompt is fixed too (and the dataset then depends on --concurrency as well as --seed).

Requests cost money, so one is sent only while the tasks still wanted exceed what the requests in flight
are expected to yield: a large --num keeps all --concurrency slots busy, and a small --num (or the end of
any run) sends few more requests than it needs.
"""

from __future__ import annotations

import asyncio
import random
import re
import string
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distillery.cost import RunStats
from distillery.dedup import RougeIndex
from distillery.errors import InputError, UserError
from distillery.io import file_format, iter_located, read_text
from distillery.langid import is_language, known_code
from distillery.llm import LLM, ChatRequest, ChatResult, EndpointOptions, run_bounded
from distillery.progress import RunProgress, StepLine
from distillery.sql_check import check_sql, strip_fence
from distillery.state import RunState
from distillery.step import Filter, Step, run_steps

if TYPE_CHECKING:
    from distillery.one_step import StepRun

Record = dict[str, Any]

GENERAL, TEXT_TO_SQL = "general", "text-to-sql"
TASK_TYPES = (GENERAL, TEXT_TO_SQL)
RECIPE_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 3072}

BLOCKLIST_EN = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)
BLOCKLIST_ZH = ("图片", "图像", "照片", "视频", "音频", "文件", "图表", "流程图", "画一", "链接")
CHARACTER_LANGS = {"zh", "ja", "ko"}  # instruction length is counted in characters, not words
LENGTH_DEFAULTS = {"words": (4, 150), "characters": (6, 300)}  # Alpaca drops <= 3 and > 150 words

# Detectors are unreliable on English under about 20 letters ("Yes" -> Tsonga, "Paris" -> Latin) while
# they name short French or German sentences correctly from about 20 letters; so only ASCII text
# shorter than this passes for English undetected.
_SHORT_LETTERS = 20
_STALL_LIMIT = 100  # answers in a row without one accepted record: the run cannot progress
_MIN_FAILURE_LIMIT = 10
_FORMAT_PROBE = 10  # from this many answers on, a model whose answers mostly parse to nothing ignores the format
_FORMAT_SHARE = 5  # ... "mostly": fewer than one answer in this many gave a task (SmolLM2-135M: 1 in 11)
# What a format or stall stop says to do: the cache would give a re-run the same answers.
_NOT_BY_RERUNNING = "re-running alone gets the same answers from the cache: use a teacher model that follows the format"
_TOP_SIMILAR = 10
_TEMPLATES = resources.files("distillery") / "data" / "templates"
_SEEDS = resources.files("distillery") / "data" / "seeds"
_SPACE = r"[^\S\n]"  # any space but a line break, the no-break space included
_LABEL = re.compile(
    rf"^(?:{_SPACE}|[>*#])*(\d+){_SPACE}*[.．、)）](?:{_SPACE}|\*)*(instruction|input|output|指令|输入|输出)"
    rf"(?:{_SPACE}|\*)*[:：](?:{_SPACE}|\*)*",
    re.I | re.M,
)
_KINDS = {"instruction": "instruction", "input": "input", "output": "output",
          "指令": "instruction", "输入": "input", "输出": "output"}
_BLOCK = ("instruction", "input", "output")
# A line of ###, or ### opening the line of a numbered instruction label: the boundary between two tasks.
_SEPARATOR = re.compile(
    rf"^{_SPACE}*#{{3,}}{_SPACE}*(?:$|(?=\**\d+{_SPACE}*[.．、)）](?:{_SPACE}|\*)*(?:instruction|指令)))", re.I | re.M
)
_NO_INPUT = re.compile(r"^[<《（(]?\s*(no\s*-?\s*input|无输入)\s*[>》）)]?$", re.I)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_REQUIREMENT_NUMBER = re.compile(r"^\s*(\d+)\s*[.．、]", re.M)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`", re.S)
_SYMBOLIC = re.compile(r"[\d_/\\=<>{}\[\]|@#$%^&*+~]")
_PUNCTUATION = string.punctuation + "“”‘’«»…–—"
_EN_FUNCTION_WORDS = frozenset(
    "a an the to of and or for from with into onto about by in on at as is are was were be been it its this that "
    "these those what which who whom whose how why when where your you their there than then should would can "
    "could will does do did has have not given following each every some any".split()
)
_LANGUAGE_CODES = {
    "english": "en", "french": "fr", "spanish": "es", "german": "de", "italian": "it", "portuguese": "pt",
    "dutch": "nl", "russian": "ru", "chinese": "zh", "mandarin": "zh", "cantonese": "zh", "japanese": "ja",
    "korean": "ko", "arabic": "ar", "hindi": "hi", "turkish": "tr", "persian": "fa", "greek": "el",
    "latin": "la", "hebrew": "he", "swedish": "sv", "polish": "pl", "vietnamese": "vi", "thai": "th",
    "indonesian": "id", "swahili": "sw", "中文": "zh", "汉语": "zh", "英文": "en", "英语": "en",
    "日语": "ja", "日文": "ja", "法语": "fr", "德语": "de", "韩语": "ko", "俄语": "ru", "西班牙语": "es",
}
_ASKS_FOR_LANGUAGE = re.compile(
    r"\b(?:translat\w*|(?:another|other|foreign|target|different|second) languages?|dialects?|"
    + "|".join(name for name in _LANGUAGE_CODES if name.isascii()) + r")\b|翻译|译成|译为|"
    + "|".join(name for name in _LANGUAGE_CODES if not name.isascii()),
    re.I,
)


@dataclass(frozen=True)
class Labels:
    instruction: str
    input: str
    output: str
    no_input: str
    colon: str


EN_LABELS = Labels("Instruction", "Input", "Output", "<noinput>", ": ")
ZH_LABELS = Labels("指令", "输入", "输出", "<无输入>", "：")


@dataclass
class SelfInstructOptions:
    """Everything a Self-Instruct run needs; the CLI maps its flags onto this and nothing else."""

    output: Path | None = None  # the command's output file; None inside a pipeline, whose executor writes
    num: int = 100
    seeds: str | None = None
    lang: str = "en"
    task_type: str = GENERAL
    template: Path | None = None
    prompt_examples: int = 3
    machine_examples: int = 0
    tasks_per_request: int = 20
    constraints: list[str] = field(default_factory=list)
    rouge_threshold: float = 0.7
    min_length: int | None = None
    max_length: int | None = None
    block: list[str] = field(default_factory=list)
    default_blocklist: bool = True
    with_meta: bool = False
    endpoint: EndpointOptions = field(default_factory=lambda: EndpointOptions(**RECIPE_DEFAULTS))

    def validate(self) -> None:
        """Reject impossible settings before anything is read, sent or written."""
        if self.output is not None and file_format(self.output) not in ("json", "jsonl"):
            raise UserError(f"{self.output}: self-instruct writes a JSON list (.json) or JSON Lines (.jsonl)")
        if self.num < 1:
            raise UserError("--num must be at least 1")
        if self.task_type not in TASK_TYPES:
            raise UserError(f"unknown --task-type {self.task_type!r}; use one of {', '.join(TASK_TYPES)}")
        if not known_code(self.lang):
            raise UserError(f"unknown --lang {self.lang!r}; use an ISO 639-1 code such as en or zh")
        if self.lang not in ("en", "zh") and (self.template is None or self.seeds is None):
            raise UserError(f"--lang {self.lang} has no built-in template or seeds: pass --template and --seeds")
        if self.prompt_examples < 1 or self.machine_examples < 0:
            raise UserError("--prompt-examples must be at least 1 and --machine-examples at least 0")
        if self.tasks_per_request <= self.prompt_examples + self.machine_examples:
            raise UserError("--tasks-per-request must exceed --prompt-examples plus --machine-examples, "
                            "since the examples are the first tasks of the list")
        if not 0.0 <= self.rouge_threshold <= 1.0:
            raise UserError("--rouge-threshold must be between 0 and 1")
        low, high = self.length_bounds
        if low < 1 or high < low:
            raise UserError("--min-length must be at least 1 and at most --max-length")

    @property
    def unit(self) -> str:
        return "characters" if self.lang in CHARACTER_LANGS else "words"

    @property
    def length_bounds(self) -> tuple[int, int]:
        low, high = LENGTH_DEFAULTS[self.unit]
        return (self.min_length if self.min_length is not None else low,
                self.max_length if self.max_length is not None else high)

    @property
    def blocklist(self) -> list[str]:
        defaults = (BLOCKLIST_ZH if self.lang == "zh" else BLOCKLIST_EN) if self.default_blocklist else ()
        return [*defaults, *(word.strip() for word in self.block if word.strip())]

    @property
    def seed_spec(self) -> str:
        if self.seeds is not None:
            return self.seeds
        return "builtin:sql" if self.task_type == TEXT_TO_SQL else f"builtin:{self.lang}"

    @property
    def labels(self) -> Labels:
        return ZH_LABELS if self.lang == "zh" else EN_LABELS


# Seeds and templates


def load_seeds(spec: str) -> list[Record]:
    """`builtin:NAME` or a file of Alpaca seed tasks (JSONL, `instances`) or Alpaca records, told apart by
    content; each becomes {instruction, input, output}."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        resource = _SEEDS / f"{name}.jsonl"
        if not resource.is_file():
            known = sorted(f"builtin:{p.name.removesuffix('.jsonl')}" for p in _SEEDS.iterdir())
            raise UserError(f"unknown seed set {spec!r}; built-in sets: {', '.join(known)}")
        with resources.as_file(resource) as path:
            return _read_seeds(path)
    return _read_seeds(Path(spec))


def _read_seeds(path: Path) -> list[Record]:
    seeds = []
    for where, record in iter_located(path):
        instances = record.get("instances")
        if instances is None:
            task = record
        elif isinstance(instances, list) and instances and isinstance(instances[0], dict):
            task = instances[0]
        else:
            raise InputError(where, "'instances' must be a non-empty list of objects with 'input' and 'output'")
        seed = {"instruction": record.get("instruction"), "input": task.get("input") or "",
                "output": task.get("output")}
        for name, value in seed.items():
            if not isinstance(value, str) or (name != "input" and not value.strip()):
                raise InputError(where, f"seed task needs a non-empty string {name!r}")
        seeds.append(seed)
    if not seeds:
        raise InputError(path, "holds no seed tasks")
    return seeds


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt file with slots {examples}, {requirements} and {num_tasks}, all optional: without an
    {examples} slot the examples follow the text, as Alpaca's own prompt.txt is used."""

    text: str
    source: str
    labels: Labels

    @classmethod
    def load(cls, options: SelfInstructOptions) -> PromptTemplate:
        if options.template is not None:
            text, source = read_text(options.template), str(options.template)
        else:
            name = f"self_instruct_{options.lang}.txt"
            text, source = (_TEMPLATES / name).read_text(encoding="utf-8"), f"built-in {name}"
        if "{examples}" not in text:
            text = text.rstrip() + "\n{examples}"  # Alpaca's prompt.txt: the examples follow the text
        if _requirements(options) and "{requirements}" not in text:
            raise UserError(f"{source}: the template has no {{requirements}} slot for --constraint / "
                            "--task-type text-to-sql requirements")
        return cls(text, source, options.labels)

    def render(self, examples: list[Record], requirements: list[str], num_tasks: int) -> str:
        text = self.text.replace("{num_tasks}", str(num_tasks))
        slot = text.find("{requirements}")
        if slot >= 0:
            numbers = _REQUIREMENT_NUMBER.findall(text[:slot])
            first = int(numbers[-1]) + 1 if numbers else 1
            lines = "\n".join(f"{first + n}. {line}" for n, line in enumerate(requirements))
            text = text.replace("{requirements}\n", lines + "\n" if lines else "").replace("{requirements}", lines)
        return text.replace("{examples}", encode_examples(examples, self.labels)).rstrip()


def _requirements(options: SelfInstructOptions) -> list[str]:
    """The task type's add-on requirements, then the user's own constraints, one requirement per line."""
    lines = []
    if options.task_type == TEXT_TO_SQL:
        name = "self_instruct_sql_zh.txt" if options.lang == "zh" else "self_instruct_sql.txt"
        lines = [line.strip() for line in (_TEMPLATES / name).read_text(encoding="utf-8").splitlines()]
    return [line for line in [*lines, *(c.strip() for c in options.constraints)] if line]


def encode_examples(examples: list[Record], labels: Labels) -> str:
    """Alpaca's numbered blocks; the list ends by opening the next instruction for the model to write."""
    blocks = []
    for number, task in enumerate(examples, start=1):
        instruction = re.sub(r"\s+", " ", task["instruction"]).strip().rstrip(":：")
        blocks.append(
            f"###\n{number}. {labels.instruction}{labels.colon}{instruction}\n"
            f"{number}. {labels.input}{labels.colon.rstrip()}\n{task['input'].strip() or labels.no_input}\n"
            f"{number}. {labels.output}{labels.colon.rstrip()}\n{task['output'].strip()}\n"
        )
    blocks.append(f"###\n{len(examples) + 1}. {labels.instruction}{labels.colon.rstrip()}")
    return "".join(blocks)


# Parsing


@dataclass
class ParsedResponse:
    tasks: list[Record]
    truncated: Record | None
    failures: list[str]


def parse_response(text: str, finish_reason: str | None) -> ParsedResponse:
    """Numbered blocks from an answer that continues the list.

    `###` is a hard boundary: each chunk between two is one task, so a block the parser cannot read costs
    that task alone. The first chunk continues the prompt's open `N. Instruction:`, which may or may not be
    repeated; colons may be full-width; numbers need not run on. Within a chunk the first `N. Input:` and
    then `N. Output:` with the instruction's number are the labels, and everything after `Output:` is the
    output, so a numbered list inside an answer stays in it. A cut-off answer loses its last chunk only;
    a trailing partial block of a finished answer is ignored.
    """
    chunks = _SEPARATOR.split(text.replace("\r\n", "\n").replace("\r", "\n"))
    truncated = None
    if finish_reason == "length":
        cut = _read_chunk(chunks.pop(), first=len(chunks) == 0)
        if isinstance(cut, dict) and cut.get("instruction"):
            truncated = {name: cut.get(name, "") for name in _BLOCK}
    tasks, failures = [], []
    for position, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        block = _read_chunk(chunk, first=position == 0)
        if isinstance(block, dict) and len(block) == len(_BLOCK):
            block["input"] = "" if _NO_INPUT.match(block["input"]) else block["input"]
            tasks.append(block)
        elif position < len(chunks) - 1 or not isinstance(block, dict):
            described = block if isinstance(block, str) else "\n".join(f"{k}: {v}" for k, v in block.items())
            failures.append(described)
    if not tasks and not failures and truncated is None:
        failures.append(text)
    return ParsedResponse(tasks, truncated, failures)


def _read_chunk(chunk: str, first: bool) -> dict[str, str] | str:
    """The labelled fields of one chunk, in order (a prefix of instruction, input, output where the chunk
    stops early), or the chunk itself where its fields are out of order or missing."""
    labels: dict[str, re.Match[str]] = {}
    for match in _LABEL.finditer(chunk):
        kind, number = _KINDS[match.group(2).lower()], match.group(1)
        if kind == "instruction" and "input" not in labels:
            labels["instruction"] = match  # a repeated label: the last one before the input holds the text
        elif kind == "input" and "input" not in labels and number == labels.get("instruction", match).group(1):
            labels["input"] = match
        elif kind == "output" and "input" in labels and number == labels["input"].group(1):
            labels["output"] = match
            break
    if "instruction" not in labels and not first:
        return chunk.strip()
    ordered = [labels[kind] for kind in _BLOCK if kind in labels]
    fields: dict[str, str] = {}
    if "instruction" not in labels:
        end = ordered[0].start() if ordered else len(chunk)
        fields["instruction"] = chunk[:end].strip()
    for position, match in enumerate(ordered):
        end = ordered[position + 1].start() if position + 1 < len(ordered) else len(chunk)
        fields[_KINDS[match.group(2).lower()]] = chunk[match.end(): end].strip()
    if not fields["instruction"] and len(fields) == 1:
        return {}
    return fields


# Filters


class LengthFilter(Filter):
    name = "length"

    def __init__(self, bounds: tuple[int, int], unit: str):
        super().__init__()
        self.low, self.high = bounds
        self.by_characters = unit == "characters"

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        text = record["instruction"]
        size = len("".join(text.split())) if self.by_characters else len(text.split())
        if size < self.low:
            return False, "too_short"
        if size > self.high:
            return False, "too_long"
        return True


class BlocklistFilter(Filter):
    """Latin words match whole words as Alpaca's `\\b` does (so `file_name` is no `file`), case-insensitively;
    other scripts (Chinese) match as substrings."""

    name = "blocklist"

    def __init__(self, words: list[str]):
        super().__init__()
        latin = [re.escape(word) for word in words if word.isascii()]
        self.pattern = re.compile(rf"(?<!\w)(?:{'|'.join(latin)})(?!\w)", re.I) if latin else None
        self.substrings = [word.casefold() for word in words if not word.isascii()]

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        text = record["instruction"]
        folded = text.casefold()
        if (self.pattern and self.pattern.search(text)) or any(word in folded for word in self.substrings):
            return False, "blocklisted"
        return True


class PunctuationFilter(Filter):
    name = "punctuation"

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        first = record["instruction"][:1]
        if first and (first in string.punctuation or unicodedata.category(first).startswith("P")):
            return False, "starts_with_punctuation"
        return True


class OpeningFilter(Filter):
    """Alpaca's other two rules on how an instruction starts. "Write a program" asks for something a text
    model tends to answer with prose instead, and Alpaca saw models add it to everything; and an English
    instruction starts with an ASCII character (so not with an emoji)."""

    name = "opening"

    def __init__(self, lang: str):
        super().__init__()
        self.ascii_start = lang == "en"

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        text = record["instruction"]
        if text.lower().startswith("write a program"):
            return False, "write_a_program"
        if self.ascii_start and not text[:1].isascii():
            return False, "non_ascii_start"
        return True


class OutputFilter(Filter):
    name = "output"

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        return bool(record["output"].strip()) or (False, "empty_output")


def language_matches(text: str, lang: str) -> bool:
    """Whether `text` may be kept as `lang` (detected offline, see `distillery.langid`).

    Text with no letters (numbers, formulas) carries no language and passes; Chinese needs a Han character.
    Plain-ASCII text with fewer than 20 letters passes for English without detection, because short answers
    such as "Yes", "Paris" or "3 ft = 36 in." are English far more often than a detector can tell; longer text
    passes when `lang` is the detector's top guess or a close runner-up (see `langid.is_language`).
    """
    letters = sum(ch.isalpha() for ch in text)
    if not letters:
        return True
    if lang == "zh" and not _HAN.search(text):
        return False  # cannot be Chinese; deciding it here also spares the detector
    if lang == "en" and text.isascii() and letters < _SHORT_LETTERS:
        return True
    return is_language(text, lang)


def without_names(text: str, keep_sentence_starts: bool) -> str:
    """`text` less code, capitalised words and tokens with digits or symbols, which carry no language.

    Names are what detectors trip on: "Convert Fahrenheit to Celsius" reads as German, a list of
    countries or Italian dishes as anything but English, a FEN string or a snippet of code as noise.
    Chinese tokens are kept whole, since Chinese is written without spaces. With `keep_sentence_starts`
    the first word of each sentence stays (in an instruction it is usually the verb, which says a lot).
    """
    kept = []
    sentence_start = True
    for token in _CODE.sub(" ", text).split():
        core = token.strip(_PUNCTUATION)
        starts = sentence_start
        sentence_start = token.endswith((".", "!", "?", ":"))
        if _CJK.search(token):
            kept.append(token)
        elif not core or _SYMBOLIC.search(core) or (core[0].isupper() and not (starts and keep_sentence_starts)):
            continue
        else:
            kept.append(token)
    return " ".join(kept)


def _english_by_function_words(text: str) -> bool:
    """ASCII text built on English function words ("the", "to", "from"...): at least two different ones,
    making up a third of its words, which French, German or Spanish sentences do not reach. A detector
    misled by the names in an instruction may miss what these words say."""
    words = re.findall(r"[a-z']+", text.lower())
    found = {word for word in words if word in _EN_FUNCTION_WORDS}
    return text.isascii() and len(found) >= 2 and 3 * sum(word in found for word in words) >= len(words)


def asks_for_other_language(text: str, lang: str) -> bool:
    """Whether a task asks for text in a language other than `lang` (translation, "the Spanish equivalent",
    "into another language"), whose output is then rightly not in `lang`."""
    return any(_LANGUAGE_CODES.get(match.group(0).lower()) != lang for match in _ASKS_FOR_LANGUAGE.finditer(text))


def instruction_language_ok(instruction: str, lang: str) -> bool:
    """The target language is what the instruction is written in; names in it must not decide that."""
    if language_matches(instruction, lang):
        return True
    plain = without_names(instruction, keep_sentence_starts=True)
    if plain == instruction.strip() or not plain or (lang not in CHARACTER_LANGS and _CJK.search(instruction)):
        return False  # no names to discount, or written in Chinese, Japanese or Korean
    if lang == "en" and _english_by_function_words(plain):
        return True
    return sum(ch.isalpha() for ch in plain) >= _SHORT_LETTERS and is_language(plain, lang)


def output_language_ok(task: Record, lang: str) -> bool:
    """An output is checked only where it has enough prose (names, code and symbols aside) to say something,
    and only when the task does not ask for another language."""
    if asks_for_other_language(f"{task['instruction']}\n{task.get('input', '')}", lang):
        return True
    prose = without_names(task["output"], keep_sentence_starts=False)
    if lang in CHARACTER_LANGS:
        return language_matches(prose, lang)
    return sum(ch.isalpha() for ch in prose) < _SHORT_LETTERS or language_matches(prose, lang)


class LanguageFilter(Filter):
    """The instruction must be in the target language; the output too, when it says enough (see above)."""

    name = "language"

    def __init__(self, lang: str, check_output: bool):
        super().__init__()
        self.lang = lang
        self.check_output = check_output

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        wrong = [] if instruction_language_ok(record["instruction"], self.lang) else ["instruction"]
        if self.check_output and not output_language_ok(record, self.lang):
            wrong.append("output")
        if wrong:
            record["detail"] = f"not {self.lang}: {', '.join(wrong)}"
            return False, "wrong_language"
        return True


class SqlFilter(Filter):
    """The input must be a schema the query runs on. SQL written in another dialect is kept as the SQLite
    it was transpiled to, so every kept record runs as it stands; why a record failed is its detail."""

    name = "sql"

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        verdict = check_sql(record["input"], record["output"])
        if not verdict.ok:
            record["detail"] = verdict.problem
            return False, "sql_invalid"
        record["input"], record["output"] = verdict.schema, verdict.query
        return True


class NearDuplicateFilter(Filter):
    """ROUGE-L against the seeds and everything accepted so far; a kept instruction joins the index."""

    name = "dedup"

    def __init__(self, index: RougeIndex):
        super().__init__()
        self.index = index

    def keep(self, record: Record) -> bool | tuple[bool, str]:
        match = self.index.find_duplicate(record["instruction"])
        if match is not None:
            record["most_similar"], record["score"] = match[1], match[0]
            return False, "near_duplicate"
        self.index.add(record["instruction"])
        return True


def build_filters(options: SelfInstructOptions, index: RougeIndex) -> list[Step]:
    sql = options.task_type == TEXT_TO_SQL
    steps: list[Step] = [
        LengthFilter(options.length_bounds, options.unit),
        BlocklistFilter(options.blocklist),
        PunctuationFilter(),
        OpeningFilter(options.lang),
        OutputFilter(),
        LanguageFilter(options.lang, check_output=not sql),
    ]
    if sql:
        steps.append(SqlFilter())
    steps.append(NearDuplicateFilter(index))
    return steps


STAGES = ("parse", "length", "blocklist", "punctuation", "opening", "output", "language", "sql", "dedup")


# The run


def examples_pool(seeds: list[Record], lang: str, per_prompt: int) -> list[Record]:
    """The seeds shown in prompts: those written in the target language's script when there are enough of
    them to vary (a mixed set such as builtin:sql would otherwise invite the other language); else all.

    The script decides, not a language detector: it costs nothing, so a run pays for no detection before
    its first request (the built-in sets' languages are checked by the tests instead).
    """
    matching = [seed for seed in seeds if bool(_CJK.search(seed["instruction"])) == (lang in CHARACTER_LANGS)]
    return matching if len(matching) >= 2 * per_prompt else seeds


class _Run:
    """The state of one output's generation: journals, dedup index and counters, replayed on start.

    Answers are processed in request order, whatever order they arrive in: an answer that comes before its
    predecessors waits until they are processed. So which tasks are accepted (ROUGE-L against the earlier
    ones, the `num` cap, the early stops) never depends on timing or on --concurrency, and a re-run after a
    kill -9, which finds the processed requests a prefix of the issued ones, continues the same sequence. A
    request that fails after its retries is skipped in that order (recorded as failed, not processed), and a
    re-run sends it again before any new request.
    """

    def __init__(
        self, options: SelfInstructOptions, seeds: list[Record], template: PromptTemplate, llm: LLM,
        state: RunState, stream: str = "",
    ):
        self.options = options
        self.examples = examples_pool(seeds, options.lang, options.prompt_examples)
        self.template = template
        self.requirements = _requirements(options)
        self.llm = llm
        self.seed = llm.options.seed
        self.state = state
        self.issued = state.journal(f"{stream}issued")
        self.accepted_log = state.journal(f"{stream}accepted")
        self.rejected_log = state.journal(f"{stream}rejected")
        self.processed_log = state.journal(f"{stream}processed")
        self.accepted: list[Record] = list(self.accepted_log)
        index = RougeIndex(options.rouge_threshold)
        for task in [*seeds, *self.accepted]:
            index.add(task["instruction"])
        self.filters = build_filters(options, index)
        processed = list(self.processed_log)
        done = {entry["request"] for entry in processed}
        issued = {entry["request"]: entry["messages"] for entry in self.issued}
        self.pending = deque((number, issued[number]) for number in sorted(issued) if number not in done)
        self.next_request = max(issued, default=-1) + 1
        self.answers = len(done)
        self.prior_yield = (options.tasks_per_request - options.prompt_examples) / 2
        # Requests taken in this run and not yet processed, in request order; the answers among them that
        # arrived before an earlier request was processed wait in `arrived`.
        self.unsettled: deque[int] = deque()
        self.arrived: dict[int, ChatResult | UserError] = {}
        concurrency = llm.options.concurrency
        # With machine examples request k shows tasks accepted from requests up to k - concurrency, so it is
        # sent only once those are processed; without, up to two slots' worth of answers may wait for a
        # slow one, so a single slow request does not idle every slot.
        self.window = concurrency if options.machine_examples else 2 * concurrency
        self.changed = asyncio.Event()
        self.stopped: str | None = None
        self.refused = False
        self.failures_in_a_row = 0
        self.failed: list[Record] = []
        self.answered = False
        self.parsed_answers = sum(1 for entry in processed if entry["parsed"])
        self.failure_limit = max(_MIN_FAILURE_LIMIT, 2 * concurrency)
        self.dry_in_a_row = 0
        for entry in reversed(processed):  # the stall count goes on where the last run left it
            if entry["accepted"]:
                break
            self.dry_in_a_row += 1
        self.progress: RunProgress | None = None

    @property
    def finished(self) -> bool:
        return len(self.accepted) >= self.options.num or self.stopped is not None

    def prompt(self, number: int) -> list[dict[str, str]]:
        """Examples are drawn by an RNG seeded with the request number, and machine examples only from
        requests up to `number - window`, all processed before this one is sent: a prompt never depends on
        which answers happened to arrive first."""
        rng = random.Random(f"{self.seed or 0}:{number}")
        examples = rng.sample(self.examples, min(self.options.prompt_examples, len(self.examples)))
        shown = [task for task in self.accepted if task["source_request"] <= number - self.window]
        if self.options.machine_examples and shown:
            examples += rng.sample(shown, min(self.options.machine_examples, len(shown)))
        text = self.template.render(examples, self.requirements, self.options.tasks_per_request)
        return [{"role": "user", "content": text}]

    def slots(self) -> Iterator[None]:
        """One job per request slot for as long as tasks are wanted; `send` decides whether and what to send."""
        while not (self.finished or self.refused):
            yield None

    def worth_sending(self) -> bool:
        """Whether the tasks still wanted exceed what the unprocessed requests are expected to yield, and the
        next request lies within `window` of the oldest unprocessed one.

        An answer is expected to yield as many tasks as the answers so far did on average, with a prior of
        half the new tasks a prompt asks for counted as one answer. So a large --num keeps every
        --concurrency slot busy, while a small one (or the last few tasks of any run) is not bought with
        answers that nobody will use.
        """
        if self.unsettled:
            following = self.pending[0][0] if self.pending else self.next_request
            if following >= self.unsettled[0] + self.window:
                return False
        per_answer = (len(self.accepted) + self.prior_yield) / (self.answers + 1)
        return len(self.accepted) + per_answer * len(self.unsettled) < self.options.num

    async def send(self, _slot: None) -> None:
        """Wait until another request is worth paying for, then send the oldest unprocessed one, or a new one."""
        while not (self.finished or self.refused or self.worth_sending()):
            await self.changed.wait()
        if self.finished or self.refused:
            return
        number, messages = self.pending.popleft() if self.pending else self.issue()
        self.unsettled.append(number)
        try:
            await self.handle(number, messages)
        except BaseException as exc:
            self.stopped = self.stopped or str(exc) or type(exc).__name__  # the waiting slots must quit too
            raise
        finally:
            self.changed.set()
            self.changed = asyncio.Event()

    def issue(self) -> tuple[int, list[dict[str, str]]]:
        """A new request, numbered after every earlier one and journaled before it is sent."""
        number = self.next_request
        self.next_request += 1
        messages = self.prompt(number)
        self.issued.append({"request": number, "messages": messages})
        return number, messages

    async def handle(self, number: int, messages: list[dict[str, str]]) -> None:
        """Ask, then process every answer whose predecessors are all processed, this one's included."""
        params = {} if self.seed is None else {"seed": self.seed + number}
        try:
            outcome: ChatResult | UserError = await self.llm.chat(ChatRequest(messages, sample=number, params=params))
        except UserError as exc:
            if not self.answered:
                raise  # the endpoint refuses every request so far (key, model or URL): nothing to go on with
            outcome = exc  # the client sends nothing more after a refusal: keep what was made
            self.refused = True
        else:
            self.answered = self.answered or outcome.ok
        self.arrived[number] = outcome
        while self.unsettled and self.unsettled[0] in self.arrived:
            first = self.unsettled.popleft()
            self.settle(first, self.arrived.pop(first))

    def settle(self, number: int, outcome: ChatResult | UserError) -> None:
        """Decide one answer, in request order: what it adds, or that it failed, or that the run stops."""
        if self.finished:
            return  # answered after the target was met: cached, and used by a later run with a larger --num
        if isinstance(outcome, UserError):
            self.failed.append({"source_request": number, "error": str(outcome)})
            self.stopped = str(outcome)
            return
        if not outcome.ok:
            self.failed.append({"source_request": number, "error": outcome.error})
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= self.failure_limit:
                self.stopped = f"{self.failures_in_a_row} requests in a row failed (last: {outcome.error})"
            return
        self.failures_in_a_row = 0
        added = self.process(number, outcome)
        self.dry_in_a_row = 0 if added else self.dry_in_a_row + 1
        if self.answers >= _FORMAT_PROBE and self.parsed_answers * _FORMAT_SHARE < self.answers and not self.finished:
            parsed = f"only {self.parsed_answers}" if self.parsed_answers else "none"
            self.stopped = (f"{parsed} of the first {self.answers} answers could be parsed: the model does not follow "
                            f"the numbered {self.options.labels.instruction} / {self.options.labels.input} / "
                            f"{self.options.labels.output} format (see the rejected file for what it wrote); "
                            f"{_NOT_BY_RERUNNING}, or a prompt template it follows")
            return
        if self.dry_in_a_row >= _STALL_LIMIT and not self.finished:
            self.stopped = (f"{_STALL_LIMIT} answers in a row gave no new record; the model may not follow the "
                            f"format, or the filters and --rouge-threshold leave nothing new (see the rejected file); "
                            f"{_NOT_BY_RERUNNING}, or looser filters")

    def process(self, number: int, result: ChatResult) -> int:
        """Parse, filter and journal one answer in a single transaction; returns how many were accepted."""
        parsed = parse_response(result.text or "", result.finish_reason)
        sql = self.options.task_type == TEXT_TO_SQL
        tasks = [
            {**task, "input": strip_fence(task["input"]), "output": strip_fence(task["output"])} if sql else task
            for task in parsed.tasks
        ]
        accepted = filtered = 0

        def reject(record: Record, stage: str, reason: str) -> None:
            nonlocal filtered
            filtered += stage != "parse"
            self.rejected_log.append({**record, "reason": reason, "stage": stage, "source_request": number})

        with self.state.atomically():
            if parsed.truncated is not None:
                reject(parsed.truncated, "parse", "truncated")
            for raw in parsed.failures:
                reject({"raw": raw}, "parse", "unparseable")
            for record in run_steps((dict(task) for task in tasks), self.filters, reject):
                record["source_request"] = number
                self.accepted_log.append(record)
                self.accepted.append(record)
                accepted += 1
                if len(self.accepted) >= self.options.num:
                    break
            self.processed_log.append({
                "request": number, "parsed": len(tasks), "accepted": accepted,
                "unused": len(tasks) - accepted - filtered, "parse_failures": len(parsed.failures),
            })
        self.answers += 1
        self.parsed_answers += bool(tasks)
        if self.progress is not None:
            self.progress.advance(accepted)
        return accepted


@dataclass
class Generated:
    """What a generation left in its journals (earlier, interrupted runs included) and what it spent."""

    accepted: list[Record] = field(default_factory=list)
    rejected: list[Record] = field(default_factory=list)
    processed: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    stopped: str | None = None
    stats: RunStats = field(default_factory=RunStats)


def generate(options: SelfInstructOptions, progress: bool = True) -> StepRun:
    """Generate `options.num` accepted tasks (or stop cleanly); the API behind `distillery self-instruct`, a
    one-step pipeline over the `self_instruct` step whose state is the cache beside OUTPUT."""
    from distillery.one_step import run_one_step
    from distillery.recipes import SelfInstruct, SelfInstructStepOptions

    options.validate()
    if options.output is None:
        raise UserError("self-instruct needs an output file")
    endpoint = options.endpoint.resolve()
    load_seeds(options.seed_spec)  # bad seeds or template fail before OUTPUT's state is touched
    PromptTemplate.load(options)
    o = options
    step = SelfInstruct(SelfInstructStepOptions(
        num=o.num, seeds=o.seeds, lang=o.lang, task_type=o.task_type, template=o.template,
        prompt_examples=o.prompt_examples, machine_examples=o.machine_examples,
        tasks_per_request=o.tasks_per_request, constraint=list(o.constraints), rouge_threshold=o.rouge_threshold,
        min_length=o.min_length, max_length=o.max_length, block=list(o.block),
        default_blocklist=o.default_blocklist, with_meta=o.with_meta))
    meta = {"command": "self-instruct", "seeds": o.seed_spec, "lang": o.lang, "task_type": o.task_type, "num": o.num}
    return run_one_step(step, [], o.output, meta, endpoint, progress=progress)


async def generate_with(
    llm: LLM,
    state: RunState,
    options: SelfInstructOptions,
    seeds: list[Record],
    template: PromptTemplate,
    stream: str,
    made: Generated,
    progress: bool | StepLine,
) -> None:
    """The request/answer loop over a client and state the caller opened (the command's state file beside
    its output, or a pipeline's run state); its journals are named after `stream`, and what it decided
    lands in `made`. No connection or event loop of its own. `progress`: the step's line in the run's view,
    or whether to show a view of its own (the command)."""
    run = _Run(options, seeds, template, llm, state, stream)
    try:
        with RunProgress("self-instruct", options.num, made.stats, progress) as bar:
            bar.advance(min(len(run.accepted), options.num), earlier=True)
            run.progress = bar
            await run_bounded(run.slots(), run.send, limit=llm.options.concurrency)
    finally:
        made.accepted, made.rejected = run.accepted, list(run.rejected_log)
        made.processed, made.stopped, made.failed = list(run.processed_log), run.stopped, run.failed


def final_records(options: SelfInstructOptions, seeds: list[Record], made: Generated) -> Iterator[Record]:
    """The tasks a run keeps, at most `num`, plain or with Alpaca's similarity fields."""
    accepted = made.accepted[: options.num]
    return (_with_meta(accepted, seeds, options.rouge_threshold) if options.with_meta
            else (_plain(record) for record in accepted))


def _with_meta(records: list[Record], seeds: list[Record], threshold: float) -> Iterator[Record]:
    """Alpaca's similarity fields, replayed in acceptance order: each record against the seeds and every
    record accepted before it, exactly the index it was judged by."""
    texts = [seed["instruction"] for seed in seeds]
    index = RougeIndex(threshold)
    for text in texts:
        index.add(text)
    for record in records:
        scores = index.scores(record["instruction"])
        top = np.argsort(-scores, kind="stable")[:_TOP_SIMILAR]
        yield {
            **_plain(record),
            "most_similar_instructions": {texts[i]: float(scores[i]) for i in top},
            "avg_similarity_score": float(scores.mean()) if len(scores) else 0.0,
            "source_request": record["source_request"],
        }
        index.add(record["instruction"])
        texts.append(record["instruction"])


def _plain(record: Record) -> Record:
    return {name: record[name] for name in _BLOCK}
