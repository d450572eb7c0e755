"""`distillery score`: an LLM judge rates each record, AlpaGasus- or deita-style, or compares two answers.

Selecting the best fraction of generated data matters as much as generating it (AlpaGasus kept 9K of
Alpaca's 52K by a judge's rating and trained a better model). The judge is an `LLMStep`: one request per
criterion per record, through the run's cache, retries and budget. Scores land on the record under
`scores.{criterion}` with the judge's words under `rationales.{criterion}`. A reply whose score cannot be
read is a counted failure (`unparseable_score`), never a default score, because a silent 0 or 3 would
bias every selection made afterwards.

Pairwise mode asks which of two answers to the same instruction is better, in both orders: a judge that
favours the first position then contradicts itself and the pair is a tie. The pair's score is the mean of
the two votes (+1 for A, -1 for B, 0 tie), so swapping A and B negates it exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from distillery.errors import InputError, UserError
from distillery.formats import ALPACA, detect_format, to_messages
from distillery.io import read_text
from distillery.llm import ChatRequest, ChatResult, EndpointOptions
from distillery.llm_step import LLMStep, Rejected
from distillery.one_step import StepRun, run_over_file
from distillery.step import Record, option

CRITERIA = ("alpagasus", "complexity", "quality")
PAIRWISE = "pairwise"
UNPARSEABLE = ("unparseable_score", "unparseable_verdict")
BUNDLED_SCALE = (1.0, 5.0)
LANGS = ("auto", "en", "zh")
# Criteria whose prompt shows no answer: a record without one can still be rated.
_INSTRUCTION_ONLY = {"complexity"}
_SLOT = re.compile(r"\{(instruction|input|output|answer_1|answer_2)\}")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_KEYS = ("score", "rating", "评分", "分数", "得分", "打分")
_RATIONALE_KEYS = ("rationale", "reason", "explanation", "理由", "解释", "原因")
_VERDICT_KEYS = ("better", "winner", "verdict", "更好", "胜者", "结论")
# "Score: 4", "**Rating:** 4.5/5", "评分：4分", "得分 = 4": a label, a separator, the number.
_LABELLED = re.compile(
    r"(?:score|rating|评分|分数|得分|打分)\s*(?:\*\*|__)?\s*(?:[:：=]|is|of|为|是)?\s*(?:\*\*|__)?\s*"
    + _NUMBER + r"(?:\s*(?:/|out of)\s*(\d+))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(r"(?<![\d.])" + _NUMBER + r"\s*/\s*(\d+)(?![\d.])")
_BARE = re.compile(r"^\s*(?:\*\*)?" + _NUMBER + r"(?:\s*/\s*(\d+))?\s*(?:分|points?)?(?:\*\*)?\s*[.。]?\s*$",
                   re.IGNORECASE)
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_VERDICT = re.compile(
    r"(?:better|winner|verdict|更好|胜者|结论)\s*(?:\*\*)?\s*[:：=]\s*(?:\*\*)?\s*(?:answer|回答|assistant)?\s*"
    r"(1|2|tie|平局|一样好|相当)",
    re.IGNORECASE,
)
_BARE_VERDICT = re.compile(r"^\s*(?:\[\[)?(?:answer\s*|回答\s*)?(1|2|tie|平局)(?:\]\])?\s*[.。]?\s*$", re.IGNORECASE)
_RATIONALE_LINE = re.compile(r"(?:rationale|reason|explanation|理由|解释)\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*)",
                             re.IGNORECASE | re.DOTALL)


def parse_score(text: str | None, low: float, high: float) -> float | None:
    """The score a judge's reply gives, or None when it gives none, or one out of [low, high]. Reads, in
    this order: JSON (`{"score": 4}`, fenced or not), a first line that is just the number ("4.5", "4分"),
    the first labelled score ("Score: 4", "评分：4分", "Rating: 4/5"), else a lone fraction ("4/5")."""
    if not text or not text.strip():
        return None
    found = _json_value(text, _SCORE_KEYS)
    if found is None:
        found = _first_line(text, high)
    if found is None:
        found = _labelled(text, high)
    if found is None:
        fractions = {_out_of(value, total, high) for value, total in _FRACTION.findall(text)}
        found = fractions.pop() if len(fractions) == 1 else None
    if isinstance(found, bool) or not isinstance(found, int | float) or not low <= found <= high:
        return None
    return float(found)


def _json_value(text: str, keys: tuple[str, ...]) -> Any:
    """The first of `keys` in a JSON object the reply is, or holds in a ``` fence or between braces."""
    candidates = [text.strip(), *_FENCED.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start: end + 1])
    for candidate in candidates:
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            lowered = {str(key).lower(): value for key, value in doc.items()}
            for key in keys:
                if key in lowered:
                    value = lowered[key]
                    if isinstance(value, str):
                        value = value.strip().removesuffix("分").strip()
                        try:
                            return float(value)
                        except ValueError:
                            return value
                    return value
    return None


def _out_of(value: str, total: str | None, high: float) -> float | None:
    """"4/5" is 4 on a scale to 5; "8/10" on a scale to 5 is no score (it is not rescaled)."""
    if total and float(total) != high:
        return None
    return float(value)


def _labelled(text: str, high: float) -> float | None:
    """The first labelled score: a rationale may go on to mention other numbers ("a 5 would need...")."""
    match = _LABELLED.search(text)
    return _out_of(match.group(1), match.group(2), high) if match else None


def _first_line(text: str, high: float) -> float | None:
    first = text.strip().splitlines()[0]
    match = _BARE.match(first)
    return _out_of(match.group(1), match.group(2), high) if match else None


def parse_verdict(text: str | None) -> str | None:
    """"1", "2" or "tie" from a pairwise judge's reply ("Better: 1", "更好：平局", `{"better": "2"}`, "[[1]]")."""
    if not text or not text.strip():
        return None
    value = _json_value(text, _VERDICT_KEYS)
    if value is not None:
        verdicts = {_verdict_word(str(value).removesuffix(".0"))}
    else:
        verdicts = {_verdict_word(found) for found in _VERDICT.findall(text)}
        if not verdicts:
            match = _BARE_VERDICT.match(text.strip().splitlines()[0])
            verdicts = {_verdict_word(match.group(1))} if match else set()
    return verdicts.pop() if len(verdicts) == 1 else None


def _verdict_word(word: str) -> str | None:
    word = word.strip().lower().removeprefix("answer").strip()
    return word if word in ("1", "2") else "tie" if word in ("tie", "平局", "一样好", "相当") else None


def rationale_of(text: str) -> str:
    """The judge's reasons: a JSON rationale, the text after "Rationale:"/"理由：", else the whole reply."""
    value = _json_value(text, _RATIONALE_KEYS)
    if isinstance(value, str):
        return value.strip()
    match = _RATIONALE_LINE.search(text)
    return (match.group(1) if match else text).strip()


def parse_scale(text: str, where: str = "scale") -> tuple[float, float]:
    """"1-5" or "0-10": the range a rubric's scores must fall in."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*", str(text))
    if not match or float(match.group(1)) >= float(match.group(2)):
        raise UserError(f"{where}: expected a range such as 1-5 or 0-10, got {text!r}")
    return float(match.group(1)), float(match.group(2))


def bundled_prompt(name: str, lang: str) -> str:
    return (resources.files("distillery") / "data" / "judge" / f"{name}_{lang}.txt").read_text(encoding="utf-8")


def render(template: str, slots: dict[str, str]) -> str:
    """The prompt with its {slots} filled; other braces (JSON examples in a rubric) are left alone."""
    return _SLOT.sub(lambda match: slots[match.group(1)], template)


@dataclass(frozen=True)
class Judged:
    """What the judge is shown of a record."""

    instruction: str
    input: str
    output: str | None


def judged_parts(record: Record, where: str) -> Judged:
    """Instruction, input and answer of an Alpaca record; for a conversation, its last answer and the user
    turn before it."""
    layout = detect_format(record, where)
    if layout == ALPACA:
        instruction, extra, output = record.get("instruction"), record.get("input") or "", record.get("output")
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError(where, "record has no 'instruction' text")
        if not isinstance(extra, str):
            raise InputError(where, "'input' must be a string")
        if output is not None and not isinstance(output, str):
            raise InputError(where, "'output' must be a string")
        return Judged(instruction, extra, output)
    messages = to_messages(record, where)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    before = messages[:last] if last is not None else messages
    users = [m["content"] for m in before if m["role"] == "user"]
    if not users:
        raise InputError(where, "conversation has no user turn to judge")
    return Judged(users[-1], "", messages[last]["content"] if last is not None else None)


@dataclass
class ScoreStepOptions:
    criteria: list[str] = option([], "Bundled criteria to rate: alpagasus (accuracy and helpfulness of the "
                                     "response, 1-5), complexity (deita-style, of the instruction, 1-5), quality "
                                     "(deita-style, of the response, 1-5); default: alpagasus unless a rubric is "
                                     "given.")
    rubric: Path | None = option(None, "A rubric prompt file with {instruction}, {input} and {output} slots; "
                                       "its scores go under scores.NAME, NAME being the file's stem.")
    scale: str = option("1-5", "The range a rubric's scores must fall in.")
    lang: str = option("auto", "Judge prompt language: en, zh, or auto (zh when the instruction holds CJK).")
    pairwise: list[str] = option([], "Two fields A B holding answers to the same instruction: ask which is "
                                     "better, in both orders, instead of rating.")
    endpoint: dict[str, Any] = option({}, "Endpoint options for the judge only (e.g. a stronger model).")


@dataclass
class Criterion:
    name: str
    prompts: dict[str, str]  # lang -> template
    low: float
    high: float
    needs_output: bool = True


class Score(LLMStep):
    """The judge: each criterion one request per record, its reply read into `scores.{criterion}`."""

    name = "score"
    Options = ScoreStepOptions
    recipe_defaults = {"temperature": 0.0, "max_tokens": 512}  # noqa: RUF012 - read only
    failure_reasons = ("request_failed", *UNPARSEABLE)  # a command never passes a reply without a score

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__(options, **values)
        self.criteria = self._criteria()

    def _criteria(self) -> list[Criterion]:
        o = self.options
        if o.lang not in LANGS:
            raise UserError(f"{self.name}.lang: expected one of {', '.join(LANGS)}, got {o.lang!r}")
        if o.pairwise:
            if len(o.pairwise) != 2 or o.pairwise[0] == o.pairwise[1]:
                raise UserError(f"{self.name}.pairwise: name two different fields A B, got {list(o.pairwise)}")
            return []
        found = []
        for name in o.criteria or ([] if o.rubric is not None else ["alpagasus"]):
            if name not in CRITERIA:
                raise UserError(f"{self.name}.criteria: no criterion {name!r} (bundled: {', '.join(CRITERIA)}; "
                                "or give a rubric file)")
            found.append(Criterion(name, {lang: bundled_prompt(name, lang) for lang in ("en", "zh")},
                                   *BUNDLED_SCALE, needs_output=name not in _INSTRUCTION_ONLY))
        if o.rubric is not None:
            text = read_text(o.rubric)
            if "{instruction}" not in text:
                raise InputError(o.rubric, "a rubric needs an {instruction} slot (and usually {input} and {output})")
            name = re.sub(r"\W+", "_", Path(o.rubric).stem).strip("_") or "rubric"
            if name in CRITERIA or name == PAIRWISE:
                raise InputError(o.rubric, f"a rubric's name (its file stem) must not be a bundled criterion: {name}")
            found.append(Criterion(name, {"en": text, "zh": text}, *parse_scale(o.scale, f"{self.name}.scale"),
                                   needs_output="{output}" in text))
        return found

    def identity(self) -> Any:
        """An edited rubric rates again."""
        from distillery.recipes import file_identity

        return [file_identity(self.options.rubric)] if self.options.rubric is not None else []

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        def checked() -> Iterator[Record]:
            for number, record in enumerate(records, start=1):
                self.check(record, f"{self.name} input record {number}")
                yield record

        yield from super().run(checked())

    def check(self, record: Record, where: str) -> None:
        """A record the judge can be shown, or an InputError naming it."""
        parts = judged_parts(record, where)
        if self.options.pairwise:
            for name in self.options.pairwise:
                if not isinstance(record.get(name), str):
                    raise InputError(where, f"record has no {name!r} answer text to compare")
        elif parts.output is None and any(c.needs_output for c in self.criteria):
            raise InputError(where, "record has no answer ('output' or a last assistant turn) to judge")

    def lang(self, parts: Judged) -> str:
        if self.options.lang != "auto":
            return self.options.lang
        return "zh" if _CJK.search(parts.instruction) else "en"

    def requests(self, record: Record) -> list[ChatRequest]:
        parts = judged_parts(record, "record")
        lang = self.lang(parts)
        slots = {"instruction": parts.instruction, "input": parts.input or ("（无）" if lang == "zh" else "(none)"),
                 "output": parts.output or "", "answer_1": "", "answer_2": ""}
        if self.options.pairwise:
            a, b = (record[name] for name in self.options.pairwise)
            template = bundled_prompt(PAIRWISE, lang)
            return [_ask(render(template, {**slots, "answer_1": first, "answer_2": second}))
                    for first, second in ((a, b), (b, a))]
        return [_ask(render(c.prompts[lang], slots)) for c in self.criteria]

    def parse(self, record: Record, answers: list[ChatResult]) -> list[Record] | Rejected:
        if self.options.pairwise:
            return self._pairwise(record, answers)
        scores, rationales = dict(record.get("scores") or {}), dict(record.get("rationales") or {})
        for criterion, answer in zip(self.criteria, answers, strict=True):
            value = parse_score(answer.text, criterion.low, criterion.high)
            if value is None:
                return Rejected("unparseable_score", {"criterion": criterion.name, "reply": (answer.text or "")[:500]})
            scores[criterion.name] = value
            rationales[criterion.name] = rationale_of(answer.text or "")
        return [{**record, "scores": scores, "rationales": rationales}]

    def _pairwise(self, record: Record, answers: list[ChatResult]) -> list[Record] | Rejected:
        a, b = self.options.pairwise
        verdicts = [parse_verdict(answer.text) for answer in answers]
        if None in verdicts:
            bad = answers[verdicts.index(None)].text or ""
            return Rejected("unparseable_verdict", {"criterion": PAIRWISE, "reply": bad[:500]})
        # Vote for A: first order shows A as answer 1, the swapped order shows A as answer 2.
        votes = [_vote(verdicts[0], "1"), _vote(verdicts[1], "2")]
        value = sum(votes) / 2
        verdict = "A" if value > 0 else "B" if value < 0 else "tie"
        winner = a if verdict == "A" else b if verdict == "B" else None
        loser = b if verdict == "A" else a if verdict == "B" else None
        scores = {**(record.get("scores") or {}), PAIRWISE: value}
        rationales = {**(record.get("rationales") or {}),
                      PAIRWISE: [rationale_of(answer.text or "") for answer in answers]}
        return [{**record, "scores": scores, "rationales": rationales,
                 "pairwise": {"a": a, "b": b, "verdict": verdict, "winner": winner, "loser": loser, "votes": votes}}]


def _ask(prompt: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": prompt}])


def _vote(verdict: str | None, a_is: str) -> int:
    if verdict == "tie":
        return 0
    return 1 if verdict == a_is else -1


# --- the command ---------------------------------------------------------------------------------------------


@dataclass
class ScoreResult(StepRun):
    """The judge's run, with every written record's scores by criterion, for the command's table."""

    scores: dict[str, list[float]] = field(default_factory=dict)

    @property
    def unparseable(self) -> int:
        return sum(self.step.stats.dropped[reason] for reason in UNPARSEABLE)


def score_file(input_path: Path, output: Path, step: Score, endpoint: EndpointOptions | None,
               progress: bool = True) -> ScoreResult:
    """Rate every record of INPUT into OUTPUT, a one-step pipeline over the `score` step; records whose request
    failed or whose reply held no score go to OUTPUT.failed.jsonl with why. The judge's answers are cached
    beside OUTPUT, so a re-run is free."""
    endpoint = (endpoint or EndpointOptions()).resolve()
    names = [PAIRWISE] if step.options.pairwise else [c.name for c in step.criteria]
    scores: dict[str, list[float]] = {name: [] for name in names}

    def tally(record: Record) -> None:
        for name in names:
            scores[name].append(record["scores"][name])

    run = run_over_file(step, input_path, output, {"command": "score", "criteria": names}, endpoint=endpoint,
                        progress=progress, watch=tally)
    return ScoreResult(**vars(run), scores=scores)
