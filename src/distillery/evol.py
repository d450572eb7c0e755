"""`distillery evol`: WizardLM's Evol-Instruct as the paper describes it, reproducibly.

Every seed instruction is one lineage. In each of M rounds its live instruction is rewritten by one
method chosen from a seeded RNG, judged for information gain, answered, and checked by the paper's four
elimination rules. A passing evolution becomes the live instruction for the next round; a failing one is
logged with the rule that failed it, and its parent is evolved again next round. Lineages do not depend
on each other, so each runs its rounds on its own and no round waits for the slowest request of another.

The recipe is the `evol` LLM step (`Evol`): each seed's lineage is one multi-stage `decide` coroutine, and
the engine (`llm_step`) owns the event loop, the cache, retries, the budget and the run state. Every decided
attempt is remembered under a key made of its evolution request and the settings that judge it, so a re-run
(after a crash, a kill -9 or a spent --max-cost) replays what was decided, re-sends nothing that was
answered, and writes the same OUTPUT. `distillery evol` is that one step over a seed file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from distillery.cache import canonical_request
from distillery.errors import UserError
from distillery.evol_options import (
    IN_BREADTH,
    IN_DEPTH,
    LANGS,
    METHOD_GROUPS,
    METHODS,
    SAMPLING,
    EvolSettings,
    parse_methods,
)
from distillery.io import file_format, read_text
from distillery.llm import ChatRequest, ChatResult, EndpointOptions
from distillery.llm_step import Failed, LLMRun, LLMStep, Rejected, Session
from distillery.one_step import StepRun, run_one_step
from distillery.respond import check_alpaca, load_alpaca
from distillery.step import Record, option
from distillery.summary import StageStats

__all__ = ["IN_BREADTH", "IN_DEPTH", "LANGS", "METHODS", "METHOD_GROUPS", "Evol",
           "EvolOptions", "evol", "parse_methods"]
JUDGE = "judge"

# What complicate-input asks the rewriter to add; one is drawn per attempt, like the paper's data formats.
DATA_FORMATS = {
    "en": ("JSON data", "XML data", "a Markdown table", "a CSV table", "Python code", "an SQL database schema",
           "an HTML page", "a shell command"),
    "zh": ("JSON 格式的数据", "XML 格式的数据", "一张 Markdown 表格", "一张 CSV 表格", "一段 Python 代码",
           "一个 SQL 数据库表结构", "一个 HTML 页面", "一条 Shell 命令"),
}
# WizardLM's Evol_Instruct/openai_access.py sends this system message with every rewrite and every answer.
WIZARDLM_SYSTEM = "You are a helpful assistant."
_PLACEHOLDERS = {JUDGE: ("{first}", "{second}")}
_FIELD = re.compile(r"\{(instruction|data_format|first|second)\}")
_JUDGE_PARAMS = {"temperature": 0.0, "max_tokens": 16}

# Rule 2. The paper says "sorry" and fewer than 80 words; a Chinese answer has no spaces, so each CJK
# character counts as half a word (Chinese words average about two characters).
SORRY_WORDS = 80
_SORRY = re.compile(r"sorry|抱歉|对不起", re.IGNORECASE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]+")
_WORD = re.compile(r"[^\W_]+")

# Rule 3: an answer made only of punctuation and these words carries nothing. The English list is NLTK's,
# plus fillers; words are split at apostrophes, so "isn't" is "isn" and "t" and both are listed.
EN_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves also oh um uh
hmm well s t d ll m re ve don ain aren couldn didn doesn hadn hasn haven isn mightn mustn needn shan shouldn
wasn weren won wouldn
""".split())
ZH_STOPWORDS = frozenset("""
的 了 着 过 是 在 和 与 及 或 也 都 就 而 又 把 被 让 给 对 从 向 于 以 之 其 这 那 这个 那个 这些 那些 这样
那样 我 你 您 他 她 它 我们 你们 他们 她们 它们 自己 啊 吧 呢 吗 嘛 呀 哦 噢 嗯 哈 呵 哎 唉 么 什么 怎么
为什么 哪 哪里 如何 因为 所以 但是 但 可是 然而 如果 虽然 而且 并且 只是 还是 一个 一些 有 没有 不 很
非常 等 等等 个 之类 然后 即 并
""".split())
_ZH_LONGEST = max(map(len, ZH_STOPWORDS))

# Rule 4: words of the evolving prompt itself, in either language's templates.
EN_MARKERS = ("given prompt", "rewritten prompt", "created prompt")
ZH_MARKERS = ("给定提示", "给定的提示", "改写后提示", "改写后的提示", "新创提示", "新创的提示")

_LEAKED_HEADER = re.compile(
    r"^\s*[*_]*\s*(?:"
    r"#\s*(?:the\s+)?(?:rewritten|created)\s+prompt\s*#\s*[:：]?"
    r"|(?:the\s+)?(?:rewritten|created)\s+prompt\s*[*_]*\s*[:：]"
    r"|#\s*(?:改写后的?|新创的?)提示\s*#\s*[:：]?"
    r"|(?:改写后的?|新创的?)提示\s*[*_]*\s*[:：]"
    r")\s*[*_]*\s*",
    re.IGNORECASE,
)
# The judge's verdict. Replies are read clause by clause; a clause that ends in a question mark only echoes
# the question ("Equal? No, ..."), the template's own "Equal or Not Equal" is no answer, and a bare yes or no
# answers the question the judge was asked. Negative forms come first in each alternation, so "not equal"
# and "不相同" are never read as their positive halves.
_CLAUSE = re.compile(r"[^.!?。！？,，;；:：\n]+[.!?。！？,，;；:：\n]*")
_ECHOED_CHOICE = re.compile(r"equal\s+or\s+not\s+equal|“?相同”?\s*(?:还是|或)\s*“?不相同”?", re.IGNORECASE)
_VERDICT = re.compile(
    r"(?P<differ>\bnot\s*equal|\bunequal|\bnot\s+the\s+same\b|\bdifferent\b|不相同|不相等|不同|不一样)"
    r"|(?P<same>\bequal|\bthe\s+same\b|\bidentical\b|相同|相等|一样)",
    re.IGNORECASE,
)
_BARE_ANSWER = {"no": False, "yes": True, "否": False, "不是": False, "是": True, "是的": True}

NO_INFORMATION_GAIN = "no_information_gain"
SORRY_SHORT_ANSWER = "sorry_short_answer"
ONLY_PUNCTUATION_STOPWORDS = "answer_only_punctuation_stopwords"
COPIED_PROMPT_MARKERS = "copied_prompt_markers"
EMPTY_REWRITE = "empty_rewrite"
TRUNCATED = "truncated"


@dataclass
class EvolOptions(EvolSettings):
    """One `distillery evol` run; the random choices are seeded by `endpoint.seed` (0 when unset)."""

    input: Path
    output: Path
    endpoint: EndpointOptions = field(default_factory=lambda: EndpointOptions(**SAMPLING))

    def validate(self) -> None:
        """Reject impossible settings before anything is read, sent or written."""
        file_format(self.output)
        self.check()

    def settings(self) -> EvolSettings:
        return EvolSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvolSettings)})


class Templates:
    """The prompts for one language: the bundled files, each replaceable by `<dir>/[zh/]<method>.txt`."""

    def __init__(self, lang: str, directory: Path | None = None):
        self.lang = lang
        self.texts = {name: self._load(name, directory) for name in (*METHODS, JUDGE)}

    def _load(self, name: str, directory: Path | None) -> str:
        relative = f"{name}.txt" if self.lang == "en" else f"{self.lang}/{name}.txt"
        custom = directory / relative if directory is not None else None
        if custom is not None and custom.is_file():
            text, where = read_text(custom), str(custom)
        else:
            text, where = (files("distillery") / "data/templates/evol" / relative).read_text(encoding="utf-8"), name
        missing = [p for p in _PLACEHOLDERS.get(name, ("{instruction}",)) if p not in text]
        if missing:
            raise UserError(f"{where}: template lacks the placeholder {' and '.join(missing)}")
        return text.rstrip()

    def prompt(self, method: str, instruction: str, data_format: str = "") -> str:
        return _fill(self.texts[method], instruction=instruction, data_format=data_format)

    def judge(self, first: str, second: str) -> str:
        return _fill(self.texts[JUDGE], first=first, second=second)


def _fill(template: str, **values: str) -> str:
    """One pass, so an instruction that itself contains "{second}" is never substituted into."""
    return _FIELD.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def choose(seed: int, index: int, round_: int, methods: tuple[str, ...], lang: str) -> tuple[str, str]:
    """The method (and complicate-input's data format) for one lineage in one round, the same on every run."""
    rng = random.Random(f"{seed}:{index}:{round_}")
    return rng.choice(methods), rng.choice(DATA_FORMATS[lang])


def seed_instruction(record: dict[str, Any]) -> str:
    """What WizardLM evolves: the instruction, and its input on a new line when there is one."""
    extra = (record.get("input") or "").strip()
    return f"{record['instruction'].strip()}\n{extra}" if extra else record["instruction"].strip()


def strip_leaked_header(text: str) -> str:
    """Models often echo the template's answer marker; drop it where it leads the reply."""
    return _LEAKED_HEADER.sub("", text.strip(), count=1).strip()


def normalise(text: str) -> str:
    """Case, width, whitespace and punctuation do not make a new instruction."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def judged_equal(reply: str) -> bool | None:
    """The judge's verdict: the first clause that answers, not the first word that looks like an answer.

    "Equal? No, the second adds a constraint." is Not Equal; None when no clause gives a verdict.
    """
    for clause in _CLAUSE.findall(_ECHOED_CHOICE.sub(" ", reply)):
        if clause.rstrip().endswith(("?", "？")):
            continue
        bare = clause.strip(" \t\n.!,，;；:：。！*_\"'“”").casefold()
        if bare in _BARE_ANSWER:
            return _BARE_ANSWER[bare]
        verdict = _VERDICT.search(clause)
        if verdict:
            return verdict.lastgroup == "same"
    return None


def word_count(text: str) -> float:
    cjk = sum(len(run) for run in _CJK.findall(text))
    return len(_WORD.findall(_CJK.sub(" ", text))) + cjk / 2


def is_unchanged(parent: str, evolved: str) -> bool:
    """Rule 1, first half: the rewrite is the parent again."""
    return normalise(parent) == normalise(evolved)


def is_sorry_short(answer: str) -> bool:
    """Rule 2: the teacher apologised and said little, so the instruction is too hard or ill-posed."""
    return bool(_SORRY.search(answer)) and word_count(answer) < SORRY_WORDS


def is_only_punctuation_stopwords(answer: str) -> bool:
    """Rule 3: nothing but punctuation and stop words (an empty answer included)."""
    if not all(_zh_stopwords_only(run) for run in _CJK.findall(answer)):
        return False
    return all(word in EN_STOPWORDS for word in _WORD.findall(_CJK.sub(" ", answer).lower()))


def _zh_stopwords_only(run: str) -> bool:
    """Whether a run of CJK characters splits entirely into stop words (linear, no regex backtracking)."""
    reachable = {0}
    for start in range(len(run)):
        if start not in reachable:
            continue
        for end in range(start + 1, min(start + _ZH_LONGEST, len(run)) + 1):
            if run[start:end] in ZH_STOPWORDS:
                reachable.add(end)
    return len(run) in reachable


def copies_prompt_markers(instruction: str) -> bool:
    """Rule 4: the rewrite talks about the evolving prompt instead of being an instruction."""
    spaced = " ".join(instruction.lower().split())
    packed = "".join(spaced.split())
    return any(marker in spaced for marker in EN_MARKERS) or any(marker in packed for marker in ZH_MARKERS)


@dataclass
class Attempt:
    """One evolution of one lineage in one round, and how it was decided."""

    index: int
    round: int
    method: str
    root: str
    parent: str
    instruction: str | None = None
    output: str | None = None
    salvaged: bool = False
    rule: str | None = None
    detail: str | None = None
    error: str | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def passed(self) -> bool:
        return self.rule is None and self.error is None

    def record(self) -> dict[str, Any]:
        lineage = {"root": self.root, "parent": self.parent, "round": self.round, "method": self.method}
        return {"instruction": self.instruction, "input": "", "output": self.output or "", "evol": lineage}

    def rejection(self) -> dict[str, Any]:
        """The attempt as a rejected record; its rule and detail travel in the rejection around it."""
        return {"round": self.round, "method": self.method, "instruction": self.instruction, "output": self.output,
                "parent": self.parent, "root": self.root}


@dataclass
class EvolResult(StepRun):
    """The evol step's run, with the round-by-round figures the command prints."""

    evolved: int = 0
    salvaged: int = 0
    replayed: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rules: dict[str, int] = field(default_factory=dict)


@dataclass
class EvolStepOptions(EvolSettings):
    endpoint: dict[str, Any] = option({}, "Endpoint options for this step only (model, temperature...).")


class Evol(LLMStep):
    """The step: one lineage per seed record, `rounds` attempts each (rewrite, judge, answer, eliminate).

    Out come the passing evolutions, round by round and in input order within a round (the seeds first as
    round 0 with `keep_original`); eliminated attempts are dropped with their rule."""

    name = "evol"
    Options = EvolStepOptions
    recipe_defaults = SAMPLING

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        self.options.check()
        if self.options.templates is not None and not Path(self.options.templates).is_dir():
            raise UserError(f"{self.options.templates}: --templates must be a directory of <method>.txt files")
        templates = Path(self.options.templates) if self.options.templates is not None else None
        self.templates = Templates(self.options.lang, templates)
        self.decided: list[Attempt] = []  # every attempt of the last run, in OUTPUT's order

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        seeds = []
        for number, record in enumerate(records, start=1):
            check_alpaca(record, f"{self.name} input record {number}")
            seeds.append(record)
        attempts = self.attempts(seeds, self.answer(seeds))
        self.decided = attempts
        if self.options.keep_original:
            yield from (_original(seed) for seed in seeds)
        for attempt in attempts:
            self.stats.notes[f"round {attempt.round} attempts"] += 1
            if attempt.passed:
                yield attempt.record()
            elif attempt.rule:
                self.drop(attempt.rejection(), attempt.rule, attempt.detail)
            else:
                self.drop(attempt.rejection(), "request_failed", attempt.error)

    def estimate_requests(self, record: Record) -> list[ChatRequest]:
        """Every round at its dearest (rewrite, judge and answer), each prompt built on the seed itself."""
        root = seed_instruction(record)
        requests = []
        for round_ in range(1, self.options.rounds + 1):
            method, data_format = choose(0, 0, round_, self.options.methods, self.options.lang)
            prompt = self.templates.prompt(method, root, data_format)
            requests.append(ChatRequest([{"role": "system", "content": WIZARDLM_SYSTEM},
                                         {"role": "user", "content": prompt}]))
            if self.options.judge:
                requests.append(ChatRequest([{"role": "user", "content": self.templates.judge(root, root)}]))
            if self.options.answers:
                requests.append(ChatRequest([{"role": "system", "content": self.options.answer_system
                                              or WIZARDLM_SYSTEM}, {"role": "user", "content": root}]))
        return requests

    def attempts(self, seeds: list[Record], run: LLMRun) -> list[Attempt]:
        """Every attempt decided, in the order OUTPUT is written: round by round, seeds in input order."""
        decided = [Attempt(**attempt) for index in range(len(seeds))
                   for attempt in run.outputs.get(index, run.partial.get(index, []))]
        return sorted(decided, key=lambda attempt: (attempt.round, attempt.index))

    async def decide(self, record: Record, session: Session, index: int = 0) -> list[Record] | Rejected | Failed:
        """One lineage: each round evolves the live instruction; a failed evolution leaves the parent live."""
        root = seed_instruction(record)
        live, attempts = root, []
        for round_ in range(1, self.options.rounds + 1):
            attempt = await self._attempt(session, index, round_, root, live)
            attempts.append(attempt)
            if attempt.passed and attempt.instruction:
                live = attempt.instruction
        errors = [a.error for a in attempts if a.error]
        decided = [asdict(a) for a in attempts]
        return Failed(errors[0], decided) if errors else decided

    async def _attempt(self, session: Session, index: int, round_: int, root: str, parent: str) -> Attempt:
        """Replay the decision if a run already made it, else make it and remember it."""
        endpoint = session.endpoint
        method, data_format = choose(endpoint.seed or 0, index, round_, self.options.methods, self.options.lang)
        prompt = self.templates.prompt(method, parent, data_format)
        params = {"seed": (endpoint.seed or 0) + round_} if endpoint.seed is not None else {}
        messages = [{"role": "system", "content": WIZARDLM_SYSTEM}, {"role": "user", "content": prompt}]
        request = ChatRequest(messages, sample=round_, params=params)
        key = self._decision_key(endpoint, request)
        known = session.recall(key)
        if known is not None:
            replayed = Attempt(**known)
            session.stats.cached += replayed.requests
            session.stats.cached_prompt_tokens += replayed.prompt_tokens
            session.stats.cached_completion_tokens += replayed.completion_tokens
            return replace(replayed, index=index, root=root)
        attempt = Attempt(index, round_, method, root, parent)
        await self._decide(session, attempt, request)
        if attempt.error is None:
            session.remember(key, asdict(attempt))
        return attempt

    def _decision_key(self, endpoint: EndpointOptions, request: ChatRequest) -> str:
        """Everything that decides an attempt: its evolution request and how it is judged and answered."""
        params = {**endpoint.generation_params(), **request.params}
        evolve = canonical_request(endpoint.model, request.messages, params, request.sample)
        o = self.options
        judge = self.templates.texts[JUDGE] if o.judge else None
        settings = {"answers": o.answers, "answer_model": o.answer_model or endpoint.model,
                    "answer_system": o.answer_system or WIZARDLM_SYSTEM, "judge": o.judge}
        text = json.dumps({"evolve": evolve, "judge_prompt": judge, **settings}, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    async def _decide(self, session: Session, attempt: Attempt, request: ChatRequest) -> None:
        """Evolve, then the cheap checks, the judge and the answer checks; stops at the first failure."""
        reply = await _chat(session, request, attempt)
        if not reply.ok:
            attempt.error = f"evolution: {reply.error}"
            return
        attempt.instruction = strip_leaked_header(reply.text or "")
        attempt.salvaged = attempt.instruction != (reply.text or "").strip()
        if not attempt.instruction:
            attempt.rule = EMPTY_REWRITE
        elif reply.finish_reason == "length":
            attempt.rule, attempt.detail = TRUNCATED, "rewrite cut off at --max-tokens"
        elif is_unchanged(attempt.parent, attempt.instruction):
            attempt.rule, attempt.detail = NO_INFORMATION_GAIN, "same as the parent"
        elif copies_prompt_markers(attempt.instruction):
            attempt.rule = COPIED_PROMPT_MARKERS
        if attempt.rule:
            return
        if self.options.judge:
            prompt = self.templates.judge(attempt.parent, attempt.instruction)
            judge = ChatRequest([{"role": "user", "content": prompt}], params=_JUDGE_PARAMS)
            verdict = await _chat(session, judge, attempt)
            if not verdict.ok:
                attempt.error = f"judge: {verdict.error}"
                return
            if judged_equal(verdict.text or ""):
                attempt.rule, attempt.detail = NO_INFORMATION_GAIN, f"judge: {(verdict.text or '').strip()}"
                return
        if self.options.answers:
            await self._answer(session, attempt)

    async def _answer(self, session: Session, attempt: Attempt) -> None:
        system = self.options.answer_system or WIZARDLM_SYSTEM
        messages = [{"role": "system", "content": system}, {"role": "user", "content": attempt.instruction or ""}]
        answer = await _chat(session, ChatRequest(messages), attempt, self.options.answer_model)
        if not answer.ok:
            attempt.error = f"answer: {answer.error}"
            return
        attempt.output = answer.text or ""
        if answer.finish_reason == "length":
            attempt.rule, attempt.detail = TRUNCATED, "answer cut off at --max-tokens"
        elif is_sorry_short(attempt.output):
            attempt.rule = SORRY_SHORT_ANSWER
        elif is_only_punctuation_stopwords(attempt.output):
            attempt.rule = ONLY_PUNCTUATION_STOPWORDS


async def _chat(session: Session, request: ChatRequest, attempt: Attempt, model: str | None = None) -> ChatResult:
    """Send, and charge the usage to the attempt so a replayed decision can account for it."""
    result = await session.chat(request, model)
    attempt.requests += 1
    attempt.prompt_tokens += result.prompt_tokens
    attempt.completion_tokens += result.completion_tokens
    return result


def evol(options: EvolOptions, progress: bool = True) -> EvolResult:
    """Evolve every seed for `options.rounds` rounds; the API behind `distillery evol`, the `evol` step over
    one seed file whose state is the cache beside OUTPUT. OUTPUT is in a fixed order: the seeds (with
    `keep_original`), then round by round in input order."""
    options.validate()
    step = Evol(EvolStepOptions(**asdict(options.settings())))
    endpoint = options.endpoint.resolve()
    if options.answer_model:
        replace(endpoint, model=options.answer_model).resolve()  # a model --local-model cannot serve fails now
    seeds = load_alpaca(options.input)
    meta = {"command": "evol", "input": str(options.input), "seeds": len(seeds),
            "answer_model": (options.answer_model or endpoint.model) if options.answers else None,
            "lang": options.lang, "methods": list(options.methods), "rounds": options.rounds,
            "seed": endpoint.seed or 0, "judge": options.judge}
    tally: dict[str, Any] = {}

    def figures() -> dict[str, Any]:
        """Per round and per method: what each attempted, passed and why the rest failed."""
        ordered = step.decided
        rounds = {r: StageStats(f"round {r}") for r in range(1, options.rounds + 1)}
        methods = {m: StageStats(m) for m in options.methods}
        for attempt in ordered:
            for stage in (rounds[attempt.round], methods[attempt.method]):
                stage.seen += 1
                stage.kept += attempt.passed
                if not attempt.passed:
                    stage.dropped[attempt.rule or "request_failed"] += 1
        tally.update(
            pending=len(seeds) * options.rounds - len(ordered), evolved=sum(a.passed for a in ordered),
            salvaged=sum(a.passed and a.salvaged for a in ordered),
            rounds=[{"round": r, **stage.as_dict(), "pass_rate": _rate(stage)} for r, stage in rounds.items()],
            rules=dict(Counter(a.rule for a in ordered if a.rule).most_common()),
        )
        step.stats.notes.update({"evolved": tally["evolved"], "salvaged": tally["salvaged"]})
        return {"pending": tally["pending"], "per_round": tally["rounds"],
                "per_method": {m: {**stage.as_dict(), "pass_rate": _rate(stage)} for m, stage in methods.items()}}

    run = run_one_step(step, seeds, options.output, meta, endpoint, progress=progress, figures=figures)
    return EvolResult(**{**vars(run), **tally}, replayed=step.stats.notes["replayed"])


def _original(seed: Record) -> Record:
    output = seed.get("output")
    return {"instruction": seed["instruction"], "input": seed.get("input") or "",
            "output": output if isinstance(output, str) else "",
            "evol": {"root": seed_instruction(seed), "parent": None, "round": 0, "method": None}}


def _rate(stage: StageStats) -> float | None:
    return round(stage.kept / stage.seen, 4) if stage.seen else None
