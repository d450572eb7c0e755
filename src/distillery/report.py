"""One self-contained HTML page that shows what a dataset is, for one input or several side by side.

Each input is read once, streaming: counts, lengths and leading verbs are aggregated over every record,
and a seeded reservoir sample feeds what is too costly for all of them (language identification,
all-pairs ROUGE-L) and the examples table. Charts are finished SVG and the examples are escaped JSON, so
the page loads nothing, runs only its own script (a Content-Security-Policy pins it by hash), and stays
small for 100K records.

Lengths are counted as `stats` counts them (`stats.length_counter`: tokens with a tokenizer, else words),
for a batch of records at a time; medians and p90s are nearest-rank, as `stats` gives them too.

Rejections are read from files beside INPUT: `INPUT.summary.json` and `INPUT.rejected.jsonl`, or from the
files named by `--summary` and `--rejected`, both in the one schema every command and `distillery run`
write (`summary.py`): the summary with `Summary.read`, each rejects line as `{"stage", "reason", "detail",
"record"}`. A file in any other shape is refused with one line naming it. The funnel, the figures
(requests, tokens, cost) and the examples of dropped records come from these.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from markupsafe import Markup

from distillery import __version__, charts
from distillery.charts import Ring, Stage
from distillery.dedup import RougeIndex, normalize
from distillery.errors import InputError, UserError
from distillery.formats import ALPACA, detect_format, to_messages
from distillery.html2md import clean_turn
from distillery.io import iter_located, sidecar, write_text
from distillery.langid import DEFAULT_DETECTOR, DETECTORS, conversation_sample, detect_languages
from distillery.stats import LengthCounter, length_counter, summarize
from distillery.summary import Summary
from distillery.verbs import verb_object

Record = dict[str, Any]
FIELDS = ("instruction", "input", "output")
REJECTION_KEYS = ("stage", "reason", "detail", "record")  # the one rejection schema
_BATCH = 1024  # records whose texts are measured together: one tokenizer call per field and batch
_TEXT_CLIP = 4000
_SHOW_CLIP = 1200
_PAIR_CLIP = 400
_ROUGE_BINS = 20
_CLOSEST_PAIRS = 20
_REJECTED_EXAMPLES = 3
_TOP_LANGUAGES = 8


@dataclass
class ReportOptions:
    """What to read and how much of it to sample; the defaults keep a 100K-record page under 10 MB."""

    inputs: list[Path]
    output: Path = Path("report.html")
    tokenizer: str | None = None
    sample: int = 1000
    dup_sample: int = 2000
    lang_sample: int = 2000
    rejected: list[Path] = field(default_factory=list)
    summaries: list[Path] = field(default_factory=list)
    top_verbs: int = 20
    objects_per_verb: int = 4
    short_output: int = 5
    seed: int = 0
    title: str = "distillery report"
    lang_detector: str = DEFAULT_DETECTOR

    def __post_init__(self) -> None:
        self.inputs = [Path(p) for p in self.inputs]
        self.output = Path(self.output)
        if not self.inputs:
            raise UserError("give at least one INPUT file")
        for name in ("sample", "dup_sample", "lang_sample", "short_output"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.lang_detector not in DETECTORS:
            raise UserError(f"--lang-detector must be one of {', '.join(DETECTORS)}, got {self.lang_detector!r}")
        if self.top_verbs < 1 or self.objects_per_verb < 0:
            raise UserError("top_verbs must be at least 1 and objects_per_verb at least 0")
        for flag, paths in (("--rejected", self.rejected), ("--summary", self.summaries)):
            if len(paths) > len(self.inputs):
                raise UserError(f"{len(paths)} {flag} files for {len(self.inputs)} inputs; give at most one per INPUT")
        if self.output.suffix.lower() not in (".html", ".htm"):
            raise UserError(f"{self.output}: the report is HTML; name it with .html")
        if self.output.is_dir():
            raise UserError(f"{self.output} is a directory; give a file name such as report.html")
        if any(self.output.resolve() == p.resolve() for p in self.inputs):
            raise UserError(f"{self.output} is also an INPUT; refusing to overwrite it")


@dataclass
class Row:
    """A sampled record as the page shows it."""

    number: int
    layout: str
    instruction: str
    input: str
    output: str
    turns: int | None
    verb: str | None
    obj: str | None
    lengths: tuple[int, int, int]
    prompts: tuple[str, ...] = ()
    replies: tuple[str, ...] = ()
    lang: str | None = None
    response_lang: str | None = None
    max_rouge: float | None = None


@dataclass
class Rejections:
    """Why records were dropped before they reached INPUT."""

    sources: list[Path]
    stages: list[Stage]
    examples: dict[str, list[str]]
    figures: list[tuple[str, str]]
    rejected: int = 0  # lines of the rejects file

    @property
    def total(self) -> int:
        """Records dropped: by the summary's stages, else the lines of the rejects file."""
        return sum(sum(stage.dropped.values()) for stage in self.stages) if self.stages else self.rejected


@dataclass
class Profile:
    """Everything the report shows about one input."""

    name: str
    path: Path
    records: int = 0
    formats: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)
    empty_instruction: int = 0
    empty_output: int = 0
    short_output: int = 0
    exact_duplicates: int = 0
    lengths: dict[str, list[int]] = field(default_factory=lambda: {name: [] for name in FIELDS})
    verbs: Counter = field(default_factory=Counter)
    pairs: Counter = field(default_factory=Counter)
    sample: list[Row] = field(default_factory=list)
    prompt_langs: Counter = field(default_factory=Counter)
    response_langs: Counter = field(default_factory=Counter)
    lang_mismatch: int = 0
    dup_scores: list[float] = field(default_factory=list)
    closest: list[tuple[float, str, str]] = field(default_factory=list)
    rejections: Rejections | None = None
    rejection_files: list[Path] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # judge scores by criterion (`distillery score`)

    @property
    def with_verb(self) -> int:
        return sum(self.verbs.values())

    def median(self, name: str) -> int:
        return summarize(self.lengths[name])["p50"]

    @property
    def mean_turns(self) -> float:
        return sum(k * n for k, n in self.turns.items()) / self.turns.total() if self.turns else 0.0

    @property
    def near_dup_share(self) -> float:
        return sum(score > 0.7 for score in self.dup_scores) / len(self.dup_scores) if self.dup_scores else 0.0


@dataclass
class Report:
    path: Path
    size: int
    seconds: float
    unit: str
    profiles: list[Profile]


def _string(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(where, f"'{key}' is {type(value).__name__}, expected a string")
    return value


Texts = tuple[str, str, str, str, int | None, tuple[str, ...], tuple[str, ...]]


def _texts(record: dict[str, Any], where: str) -> Texts:
    """(layout, instruction, input, output, turns, prompts, replies): conversations show their first
    exchange; prompts and replies (every user and assistant text) decide the record's language."""
    layout = detect_format(record, where)
    if layout == ALPACA:
        instruction, given = _string(record, "instruction", where), _string(record, "input", where)
        output = _string(record, "output", where)
        return layout, instruction, given, output, None, (instruction, given), (output,)
    turns = [(m["role"], m["content"], bool(m.get("tool_calls")))
             for m in to_messages(record, where) if m["role"] != "system"]
    instruction = output = ""
    for position, (role, content, _) in enumerate(turns):
        if role == "user":
            instruction = content
            answers = (text for role, text, calls in turns[position + 1:] if role == "assistant" and not calls)
            output = next(answers, "")
            break
    prompts = tuple(text for role, text, _ in turns if role == "user")
    replies = tuple(text for role, text, calls in turns if role == "assistant" and not calls)
    return layout, instruction, "", output, len(turns), prompts, replies


def _display_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return [str(p) if names.count(p.name) > 1 else p.name for p in paths]


def _read(path: Path, measure: LengthCounter) -> Iterator[tuple[Any, ...]]:
    """(number, layout, instruction, input, output, turns, prompts, replies, lengths) per record. Lengths
    are measured for a batch of records at once, so a tokenizer gets one call per field and batch rather
    than one per text."""
    located = enumerate(iter_located(path), start=1)
    while batch := [(number, *_texts(record, where)) for number, (where, record) in islice(located, _BATCH)]:
        lengths = zip(*(measure([row[column] for row in batch]) for column in (2, 3, 4)), strict=True)
        for row, sizes in zip(batch, lengths, strict=True):
            yield (*row, sizes)


def _profile(path: Path, name: str, options: ReportOptions, measure: LengthCounter) -> Profile:
    profile = Profile(name=name, path=path)
    rng = random.Random(options.seed)
    keep = max(options.sample, options.dup_sample, options.lang_sample)
    seen_keys: set[int] = set()
    for number, layout, instruction, given, output, turns, prompts, replies, lengths in _read(path, measure):
        profile.records = number
        profile.formats[layout] += 1
        if turns is not None:
            profile.turns[turns] += 1
        profile.lengths["instruction"].append(lengths[0])
        if given.strip():
            profile.lengths["input"].append(lengths[1])
        profile.lengths["output"].append(lengths[2])
        profile.empty_instruction += not instruction.strip()
        profile.empty_output += not output.strip()
        profile.short_output += 0 < lengths[2] < options.short_output and bool(output.strip())
        key = hash(normalize(instruction + "\n" + given))
        profile.exact_duplicates += key in seen_keys
        seen_keys.add(key)
        verb, obj = verb_object(instruction)
        if verb is not None:
            profile.verbs[verb] += 1
            profile.pairs[verb, obj] += 1
        slot = number - 1 if number <= keep else rng.randrange(number)
        if slot < keep:
            row = Row(number, layout, instruction[:_TEXT_CLIP], given[:_TEXT_CLIP], output[:_TEXT_CLIP], turns,
                      verb, obj, lengths, prompts, replies)
            if number <= keep:
                profile.sample.append(row)
            else:
                profile.sample[slot] = row
    if not profile.records:
        raise InputError(path, "holds no records")
    rng.shuffle(profile.sample)
    return profile


def _detect_languages(profiles: list[Profile], size: int, detector: str = DEFAULT_DETECTOR) -> None:
    """One batch for every input's language sample. A record's language is decided as `clean` decides it
    (`langid.conversation_sample` of its markdown: the prompts, the replies filling in), so both commands
    give a record the same language; the response language is decided on the replies alone."""
    chosen = [p.sample[:size] for p in profiles]
    prompts = [conversation_sample(map(clean_turn, row.prompts), map(clean_turn, row.replies))
               for rows in chosen for row in rows]
    responses = [conversation_sample(map(clean_turn, row.replies)) for rows in chosen for row in rows]
    if not prompts:
        return
    codes = detect_languages(prompts + responses, detector)
    prompt_codes, response_codes = codes[: len(prompts)], codes[len(prompts):]
    position = 0
    for profile, rows in zip(profiles, chosen, strict=True):
        for row in rows:
            row.lang, row.response_lang = prompt_codes[position], response_codes[position]
            profile.prompt_langs[row.lang or "none"] += 1
            profile.response_langs[row.response_lang or "none"] += 1
            profile.lang_mismatch += bool(row.lang and row.response_lang and row.lang != row.response_lang)
            position += 1


def _near_duplicates(profile: Profile, size: int) -> None:
    """Each sampled instruction's best ROUGE-L F against every other one, and the closest pairs."""
    rows = profile.sample[:size]
    if len(rows) < 2:
        return
    index = RougeIndex()
    for row in rows:
        index.add(row.instruction)
    pairs: dict[tuple[int, int], float] = {}
    for i, row in enumerate(rows):
        scores = index.scores(row.instruction)
        scores[i] = -1.0
        best = int(scores.argmax())
        row.max_rouge = float(scores[best])
        profile.dup_scores.append(row.max_rouge)
        pairs[min(i, best), max(i, best)] = row.max_rouge
    top = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:_CLOSEST_PAIRS]
    profile.closest = [(score, rows[a].instruction[:_PAIR_CLIP], rows[b].instruction[:_PAIR_CLIP])
                       for (a, b), score in top]


def _rejected_text(record: Record) -> str:
    """What an example of a dropped record shows: its first instruction or user turn, else its JSON."""
    try:
        return _texts(record, "rejected record")[1] or json.dumps(record, ensure_ascii=False)
    except UserError:
        return json.dumps(record, ensure_ascii=False)


def _read_rejected(path: Path) -> tuple[int, dict[str, list[str]]]:
    """How many records a rejects file holds, and a few examples per reason; every line must be in the one
    rejection schema (`summary.rejection`)."""
    count, examples = 0, {}
    if path.stat().st_size == 0:  # a run that rejected nothing, such as `clean` on clean data, leaves it empty
        return count, examples
    for where, line in iter_located(path):
        if not line.keys() >= set(REJECTION_KEYS) or not isinstance(line["record"], dict) or not line["reason"]:
            keys = ", ".join(f'"{key}"' for key in REJECTION_KEYS)
            raise InputError(where, f"not a distillery rejection (expected {{{keys}}})")
        count += 1
        shown = examples.setdefault(str(line["reason"]), [])
        if len(shown) < _REJECTED_EXAMPLES:
            shown.append(_rejected_text(line["record"])[:_SHOW_CLIP])
    return count, examples


def _figures(summary: Summary) -> list[tuple[str, str]]:
    """The run's totals (requests, tokens, cost) and its scalar metadata (command, model, stopped...)."""
    found = []
    items = [*summary.as_dict()["totals"].items(), *summary.meta.items()]
    for key, value in items:
        if isinstance(value, int | float | str | bool) and len(str(value)) <= 80:
            found.append((str(key), f"{value:,}" if _count(value) else str(value)))
    return found[:24]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rejections(profile: Profile, summary: Path | None, rejected: Path | None) -> Rejections | None:
    summary = summary or _existing(sidecar(profile.path, ".summary.json"))
    rejected = rejected or _existing(sidecar(profile.path, ".rejected.jsonl"))
    profile.rejection_files = [sidecar(profile.path, ".summary.json"), sidecar(profile.path, ".rejected.jsonl")]
    if summary is None and rejected is None:
        return None
    run = Summary.read(summary) if summary else None
    count, examples = _read_rejected(rejected) if rejected else (0, {})
    stages = [Stage(s.stage, s.seen, s.kept, dict(s.dropped)) for s in run.stages] if run else []
    return Rejections([p for p in (summary, rejected) if p], stages, examples, _figures(run) if run else [], count)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def collect(options: ReportOptions) -> list[Profile]:
    """Read every input and compute what the page shows."""
    measure = length_counter(options.tokenizer)
    names = _display_names(options.inputs)
    profiles = [_profile(path, name, options, measure) for path, name in zip(options.inputs, names, strict=True)]
    _detect_languages(profiles, options.lang_sample, options.lang_detector)
    for position, profile in enumerate(profiles):
        _near_duplicates(profile, options.dup_sample)
        summary = options.summaries[position] if position < len(options.summaries) else None
        rejected = options.rejected[position] if position < len(options.rejected) else None
        profile.rejections = _rejections(profile, summary, rejected)
        profile.scores = _scores(profile.path)
    return profiles


def _scores(path: Path) -> dict[str, list[float]]:
    """Every numeric `scores.CRITERION` the records carry, by criterion (empty when none was judged)."""
    found: dict[str, list[float]] = {}
    for _, record in iter_located(path):
        scores = record.get("scores")
        if isinstance(scores, dict):
            for name, value in scores.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    found.setdefault(str(name), []).append(float(value))
    return found


def _score_charts(profile: Profile, index: int) -> list[dict[str, Any]]:
    """One histogram per criterion: each distinct score its own bar when there are few (1-5 in halves,
    pairwise -1..1), else 20 equal bins."""
    panels = []
    for name, values in sorted(profile.scores.items()):
        distinct = sorted(set(values))
        if len(distinct) <= 21:
            labels, counts = [f"{v:g}" for v in distinct], [values.count(v) for v in distinct]
        else:
            low, width = distinct[0], (distinct[-1] - distinct[0]) / 20
            counts = [0] * 20
            for value in values:
                counts[min(int((value - low) / width), 19)] += 1
            labels = [f"{low + k * width:.2f}" for k in range(20)]
        panels.append({"name": name, "count": len(values), "mean": sum(values) / len(values),
                       "svg": Markup(charts.bars(labels, counts, charts.color(index),
                                                 f"scores.{name}: {profile.name}", unit="records"))})
    return panels


def _selection(profile: Profile) -> Stage | None:
    """The run's `select` stage (records in, kept, and why the rest were not), when it had one."""
    stages = profile.rejections.stages if profile.rejections else []
    return next((stage for stage in stages if stage.name == "select"), None)


def build_report(options: ReportOptions) -> Report:
    """Write the HTML page atomically; nothing is written if any input is bad."""
    start = time.perf_counter()
    profiles = collect(options)
    unit = "tokens" if options.tokenizer else "words"
    page = render(profiles, options, unit)
    write_text(options.output, page)
    return Report(options.output, len(page.encode("utf-8")), time.perf_counter() - start, unit, profiles)


def _edges(top: int) -> list[int]:
    """Bin edges 0 1 2 3 4 6 8 12 16 24…: two bins per doubling, so a long tail and short texts both show."""
    edges, power = [0, 1, 2, 3], 4
    while edges[-1] <= top:
        edges += [power, power * 3 // 2]
        power *= 2
    while len(edges) > 2 and edges[-2] > top:
        edges.pop()
    return edges


def _length_charts(profiles: list[Profile], name: str, unit: str) -> list[dict[str, Any]]:
    """Histograms on shared logarithmic bins, so inputs compare at a glance whatever their tails."""
    edges = _edges(max((max(p.lengths[name], default=0) for p in profiles), default=0))
    labels = [f"{lo}" if hi - lo == 1 else f"{lo}–{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
    panels = []
    for index, profile in enumerate(profiles):
        values = profile.lengths[name]
        counts = [0] * len(labels)
        for value in values:
            counts[bisect.bisect_right(edges, value) - 1] += 1
        summary = summarize(values)
        panels.append({
            "name": profile.name, "color": charts.color(index), "count": len(values),
            "median": summary["p50"], "p90": summary["p90"], "max": summary["max"],
            "svg": Markup(charts.bars(labels, counts, charts.color(index), f"{name} length in {unit}: {profile.name}",
                                      unit="records")) if values else None,
        })
    return panels


def _top_with_rest(counter: Counter, most: int) -> list[tuple[str, int]]:
    top = counter.most_common(most)
    rest = sum(counter.values()) - sum(count for _, count in top)
    return top + ([("other", rest)] if rest else [])


def _turns_chart(profile: Profile, index: int) -> Markup | None:
    if not profile.turns:
        return None
    cap = 20
    labels = [str(k) for k in range(1, cap + 1)] + [f">{cap}"]
    counts = [profile.turns.get(k, 0) for k in range(1, cap + 1)]
    counts.append(sum(v for k, v in profile.turns.items() if k > cap))
    while len(counts) > 2 and counts[-1] == 0:
        counts.pop()
        labels.pop()
    return Markup(charts.bars(labels, counts, charts.color(index), f"turns per conversation: {profile.name}",
                              unit="conversations"))


def _rings(profile: Profile, options: ReportOptions) -> list[Ring]:
    rings = []
    for verb, count in profile.verbs.most_common(options.top_verbs):
        rings.append(Ring(verb, count, _objects(profile, verb).most_common(options.objects_per_verb)))
    return rings


def _objects(profile: Profile, verb: str) -> Counter:
    return Counter({obj: n for (v, obj), n in profile.pairs.items() if v == verb and obj is not None})


def _rouge_chart(profile: Profile, index: int) -> Markup | None:
    if not profile.dup_scores:
        return None
    step = 1 / _ROUGE_BINS
    counts = [0] * _ROUGE_BINS
    for score in profile.dup_scores:
        counts[min(int(score * _ROUGE_BINS), _ROUGE_BINS - 1)] += 1
    labels = [f"{k * step:.2f}" for k in range(_ROUGE_BINS)]
    return Markup(charts.bars(labels, counts, charts.color(index), f"max ROUGE-L per instruction: {profile.name}",
                              unit="instructions"))


def _clip(text: str) -> str:
    return text if len(text) <= _SHOW_CLIP else text[:_SHOW_CLIP] + " …"


def _examples_json(profiles: list[Profile], size: int) -> Markup:
    """The table's rows as JSON that is safe inside <script>: no '<', '>' or '&' survives unescaped."""
    rows = []
    for index, profile in enumerate(profiles):
        for row in sorted(profile.sample[:size], key=lambda r: r.number):
            rows.append({
                "src": index, "n": row.number, "fmt": row.layout, "turns": row.turns,
                "ins": _clip(row.instruction), "inp": _clip(row.input), "out": _clip(row.output),
                "lang": row.lang, "rlang": row.response_lang,
                "verb": " → ".join(part for part in (row.verb, row.obj) if part),
                "len": list(row.lengths), "rouge": None if row.max_rouge is None else round(row.max_rouge, 3),
            })
    text = json.dumps({"inputs": [p.name for p in profiles], "rows": rows}, ensure_ascii=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _asset(name: str) -> str:
    return resources.files("distillery").joinpath("data", "report", name).read_text(encoding="utf-8")


def render(profiles: list[Profile], options: ReportOptions, unit: str) -> str:
    """The page as one string; the inline script is allowed by its hash and nothing else runs."""
    import jinja2

    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    template = env.from_string(_asset("report.html.j2"))
    views = []
    for index, profile in enumerate(profiles):
        views.append({
            "p": profile, "color": charts.color(index),
            "turns_svg": _turns_chart(profile, index),
            "prompt_langs_svg": Markup(charts.hbars(_top_with_rest(profile.prompt_langs, _TOP_LANGUAGES),
                                                    charts.color(index), f"prompt languages: {profile.name}")),
            "response_langs_svg": Markup(charts.hbars(_top_with_rest(profile.response_langs, _TOP_LANGUAGES),
                                                      charts.color(index), f"response languages: {profile.name}")),
            "sunburst_svg": Markup(charts.sunburst(_rings(profile, options), f"verbs and objects: {profile.name}"))
            if profile.verbs else None,
            "top_verbs": [(verb, count, _objects_of(profile, verb)) for verb, count in profile.verbs.most_common(10)],
            "rouge_svg": _rouge_chart(profile, index),
            "score_panels": _score_charts(profile, index),
            "selection": _selection(profile),
            "funnel_svg": Markup(charts.funnel(profile.rejections.stages, f"rejections: {profile.name}"))
            if profile.rejections and profile.rejections.stages else None,
        })
    return template.render(
        title=options.title, version=__version__, views=views, unit=unit, options=options,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        lengths=[(name, _length_charts(profiles, name, unit)) for name in FIELDS],
        examples=_examples_json(profiles, options.sample), css=Markup(_asset("report.css")),
        script=Markup(script), script_hash=digest, clip=_SHOW_CLIP,
    )


def _objects_of(profile: Profile, verb: str) -> str:
    return ", ".join(f"{obj} ({n})" for obj, n in _objects(profile, verb).most_common(5))
