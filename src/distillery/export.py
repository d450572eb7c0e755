"""Tokenized training examples whose assistant-only loss masks are verified, not assumed.

Each conversation is rendered by a chat template that reports the character span of every message.
The rendered text is cut only at the special tokens the template itself wrote; every piece between
them (template text and message text together, so BPE merges as it would on the whole string) is
encoded with special-token matching switched off. So a literal "</s>" or "<|im_end|>" inside a message
stays text. Token offsets then say which tokens are assistant text; those tokens and the special token
that ends each assistant turn get labels, everything else gets -100.

The self-check decodes each labelled turn and compares it with the message text and the end-of-turn
token. A record that fails is reported with its turn and decoded text, never written with a silently
wrong or empty mask. A record with nothing to train on (empty assistant turns) or far too long to fit
is dropped with its reason, the latter before it is tokenized, and an export that would write no example
fails instead.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.chat_templates import BUILTIN_NAMES, Rendered, RenderError, Span, get_template
from distillery.convert import RejectFile
from distillery.errors import InputError, UserError
from distillery.formats import to_messages
from distillery.io import iter_located, open_writer
from distillery.summary import StageStats, rejection
from distillery.tokens import load_tokenizer

IGNORE_INDEX = -100
_CACHED_PIECE = 32
_MARK = "\ue002"  # a private-use character, added to our copy of the tokenizer as a plain added token
TEMPLATES = ("auto", *BUILTIN_NAMES)
TRAIN_ON = ("all-assistant", "last-assistant")
OVERLONG = ("truncate", "drop")
# A token covers at most as many characters as its longest vocabulary string, give or take normalizers that
# fold a few characters into one (NFKC, accent stripping); text longer than this many times the cutoff
# cannot fit, so it is never tokenized.
_NORMALIZER_SLACK = 4
# transformers' stand-in for "no model_max_length" is 1e30; anything this large is no real context size.
_NO_CONTEXT = 10**9
EMPTY_ASSISTANT = "empty_assistant"
OVERLONG_REASON = "overlong"
FAILED_SELF_CHECK = "failed_self_check"
PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello! 你好吗?"},
    {"role": "assistant", "content": "Hi there. 我很好。"},
    {"role": "user", "content": "What is 1 + 1?"},
    {"role": "assistant", "content": "1 + 1 = 2."},
]


@dataclass
class ExportOptions:
    tokenizer: str
    template: str = "auto"
    max_length: int | None = None
    overlong: str = "truncate"
    train_on: str = "all-assistant"
    skip_invalid: bool = False
    rejected: Path | None = None
    allow_template_mismatch: bool = False

    def __post_init__(self) -> None:
        for value, allowed, flag in (
            (self.template, TEMPLATES, "--template"),
            (self.overlong, OVERLONG, "--overlong"),
            (self.train_on, TRAIN_ON, "--train-on"),
        ):
            if value not in allowed:
                raise UserError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
        if self.max_length is not None and self.max_length < 1:
            raise UserError(f"--max-length must be a positive number of tokens, not {self.max_length}")


@dataclass
class Failure:
    """One record that cannot be exported, located well enough to go and fix it."""

    where: str
    reason: str
    turn: int | None = None
    expected: str | None = None
    decoded: str | None = None

    def describe(self) -> str:
        turn = f" turn {self.turn}" if self.turn is not None else ""
        text = f" (expected {self.expected!r}, decoded {self.decoded!r})" if self.expected is not None else ""
        return f"{self.where}{turn}: {self.reason}{text}"


@dataclass
class ExportResult:
    output: Path
    template: str
    records: int = 0
    written: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_empty: int = 0
    invalid: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    failures: list[Failure] = field(default_factory=list)
    rejected: Path | None = None

    def stage(self) -> StageStats:
        """The export as one stage of the one summary schema; the token counts are its notes."""
        dropped = {EMPTY_ASSISTANT: self.dropped_empty, OVERLONG_REASON: self.dropped_overlong,
                   FAILED_SELF_CHECK: self.invalid}
        notes = {"truncated": self.truncated, "tokens": self.tokens, "trained_tokens": self.trained_tokens}
        return StageStats("export", self.records, self.written, Counter({k: n for k, n in dropped.items() if n}),
                          Counter({k: n for k, n in notes.items() if n}))


class ExportFailed(UserError):
    """Some records failed; the output was not written. Carries the result for the CLI's summary."""

    def __init__(self, result: ExportResult):
        first = result.failures[0].describe() if result.failures else ""
        super().__init__(
            f"{result.invalid} of {result.records} records cannot be exported, so {result.output} was not "
            f"written; first: {first}. All failures: {result.rejected}. Use --skip-invalid to export the rest."
        )
        self.result = result


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


class Dropped(Exception):
    """A record left out on purpose: it has nothing to train on, or cannot fit."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RecordFailed(Exception):
    def __init__(self, failures: list[Failure]):
        super().__init__(failures[0].describe())
        self.failures = failures


class LabelEncoder:
    """Renders, tokenizes and labels conversations for one tokenizer and template, checking every label."""

    def __init__(self, tokenizer: Any, template_name: str, allow_template_mismatch: bool = False):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UserError("export needs a fast tokenizer (a tokenizer.json); this one has none")
        from tokenizers import AddedToken, Tokenizer

        self.tokenizer = tokenizer
        self.template = get_template(template_name, tokenizer)
        self.original = backend
        self.text_encoder = Tokenizer.from_str(backend.to_str())
        self.text_encoder.post_processor = None
        self.text_encoder.no_truncation()
        self.text_encoder.no_padding()
        self.text_encoder.encode_special_tokens = True
        self.text_encoder.add_tokens([AddedToken(_MARK, special=False, normalized=False)])
        self.longest_token = max(map(len, backend.get_vocab()), default=1)
        context = getattr(tokenizer, "model_max_length", None)
        self.context = context if isinstance(context, int) and 0 < context < _NO_CONTEXT else None
        # Template glue ("\n", "user\n", " USER: ") repeats in every record; its encoding never changes.
        self._encode_short = functools.lru_cache(maxsize=4096)(self._encode_text)
        added = {token.content: token for token in backend.get_added_tokens_decoder().values() if token.special}
        self.specials = {content: backend.token_to_id(content) for content in added}
        self.special_text = {token_id: content for content, token_id in self.specials.items()}
        self.strips = {content: (token.lstrip, token.rstrip) for content, token in added.items()}
        ordered = sorted(self.specials, key=len, reverse=True)
        self.special_pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._check_compatible(allow_template_mismatch)

    def _check_compatible(self, allow_template_mismatch: bool) -> None:
        """Template/tokenizer mismatches are reported up front: every record would be wrong otherwise."""
        name = self.template.name
        missing = [text for text in self.template.special_strings() if text not in self.specials]
        if missing:
            raise UserError(
                f"template {name} needs {', '.join(map(repr, missing))} as special tokens, but this tokenizer "
                "would split them into ordinary text; use the tokenizer the template was made for, or --template auto"
            )
        probe, rendered = self._render_probe()
        if name != "auto" and getattr(self.tokenizer, "chat_template", None) and not allow_template_mismatch:
            try:
                theirs = self.tokenizer.apply_chat_template(probe, tokenize=False)
            except Exception as exc:  # a broken or refusing Jinja template is a mismatch too
                theirs = f"(the tokenizer's chat_template fails: {exc})"
            if theirs != rendered.text:
                at = next((i for i, (a, b) in enumerate(zip(rendered.text, theirs, strict=False)) if a != b), None)
                at = min(len(rendered.text), len(theirs)) if at is None else at
                raise UserError(
                    f"the tokenizer's own chat_template formats conversations differently from --template {name} "
                    f"(at character {at}: {rendered.text[at:at + 24]!r} vs {theirs[at:at + 24]!r}); the model "
                    "would be trained in one format and prompted in another. Use --template auto, or pass "
                    "--allow-template-mismatch if that is intended"
                )
        piecewise, _ = self.encode(rendered)
        whole = self.original.encode(rendered.text, add_special_tokens=False).ids
        if piecewise != whole:
            raise UserError(
                "this tokenizer gives different tokens when text is encoded between the template's special "
                "tokens than when the whole text is encoded at once, so distillery cannot keep special-token "
                "strings in messages as text without changing the other tokens"
            )

    def _render_probe(self) -> tuple[list[dict[str, Any]], Rendered]:
        """The probe conversation and its rendering, without the system prompt if the template refuses one."""
        try:
            return PROBE, self.template.render(PROBE)
        except RenderError:
            pass
        try:
            return PROBE[1:], self.template.render(PROBE[1:])
        except RenderError as exc:
            raise UserError(f"the chat template cannot render a plain conversation: {exc}") from None

    def _special_matches(self, text: str, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """Template-written special tokens in text[start:end], with the whitespace that tokens marked
        lstrip/rstrip swallow, as the tokenizer itself matches them."""
        if self.special_pattern is None:
            return
        floor = start
        for match in self.special_pattern.finditer(text, start, end):
            first, last = match.span()
            lstrip, rstrip = self.strips[match.group()]
            while lstrip and first > floor and text[first - 1].isspace():
                first -= 1
            while rstrip and last < end and text[last].isspace():
                last += 1
            floor = last
            yield first, last, self.specials[match.group()]

    def encode(self, rendered: Rendered) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets; only template-written special strings become special tokens."""
        text = rendered.text
        specials: list[tuple[int, int, int]] = []
        cursor = 0
        for span in sorted(rendered.spans, key=lambda s: s.start):
            specials += self._special_matches(text, cursor, span.start)
            cursor = span.end
        specials += self._special_matches(text, cursor, len(text))
        pieces: list[tuple[int, int, int | None]] = []
        cursor = 0
        for start, end, token_id in specials:
            if start > cursor:
                pieces.append((cursor, start, None))
            pieces.append((start, end, token_id))
            cursor = end
        if cursor < len(text):
            pieces.append((cursor, len(text), None))
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for start, end, token_id in pieces:
            if token_id is not None:
                ids.append(token_id)
                offsets.append((start, end))
                continue
            piece_ids, piece_offsets = self._encode_piece(text[start:end], opening=start == 0)
            ids += piece_ids
            offsets += [(start + a, start + b) for a, b in piece_offsets]
        return ids, offsets

    def _encode_piece(self, piece: str, opening: bool) -> tuple[list[int], list[tuple[int, int]]]:
        if len(piece) <= _CACHED_PIECE:
            return self._encode_short(piece, opening)
        return self._encode_text(piece, opening)

    def _encode_text(self, piece: str, opening: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """A piece that does not open the text is encoded behind a marker, so tokenizers that treat the
        start of the input specially (Metaspace prepend_scheme="first") see it as they would in place."""
        if opening:
            encoding = self.text_encoder.encode(piece, add_special_tokens=False)
            return encoding.ids, encoding.offsets
        encoding = self.text_encoder.encode(_MARK + piece, add_special_tokens=False)
        shift = len(_MARK)
        return encoding.ids[1:], [(a - shift, b - shift) for a, b in encoding.offsets[1:]]

    def label(
        self, rendered: Rendered, ids: list[int], offsets: list[tuple[int, int]], trained: list[Span]
    ) -> list[int]:
        """Labels for the trained assistant spans, each re-decoded and compared before it is accepted."""
        labels = [IGNORE_INDEX] * len(ids)
        starts = [start for start, _ in offsets]
        ends = [end for _, end in offsets]
        failures = []
        for span in trained:
            first = bisect.bisect_right(ends, span.start)
            last = bisect.bisect_left(starts, span.end) - 1 if span.end > span.start else first - 1
            problem = self._check_turn(rendered, ids, offsets, span, first, last)
            if problem:
                expected = rendered.content(span) + (rendered.eot or "")
                decoded = self.original.decode(ids[first : last + 2], skip_special_tokens=False)
                failures.append(Failure("", problem, span.index + 1, expected, decoded))
                continue
            for index in range(first, last + 2):
                labels[index] = ids[index]
        if failures:
            raise RecordFailed(failures)
        return labels

    def _check_turn(
        self,
        rendered: Rendered,
        ids: list[int],
        offsets: list[tuple[int, int]],
        span: Span,
        first: int,
        last: int,
    ) -> str | None:
        """What is wrong with the labels of this assistant turn, if anything."""
        content = rendered.content(span)
        eot_index = last + 1
        eot = self.special_text.get(ids[eot_index]) if eot_index < len(ids) else None
        if eot is None or offsets[eot_index][0] != span.end or (rendered.eot or eot) != eot:
            return "the assistant text is not followed by a single end-of-turn special token"
        if any(token in self.special_text for token in ids[first : last + 1]):
            return "a special-token string inside the assistant text was encoded as a special token"
        if last < first:
            return "no token covers the assistant text" if content else None
        lead = rendered.text[offsets[first][0] : span.start]
        if lead.strip():
            return "a token straddles template text and the assistant text"
        # Decoded behind the end-of-turn token, so decoders that drop a leading space at the start of the
        # text (Metaspace) decode the slice as they do in place.
        piece = self.original.decode([ids[eot_index], *ids[first : last + 1]], skip_special_tokens=False)
        if piece != eot + lead + content:
            return "the labelled tokens do not decode back to the assistant text"
        return None

    def example(self, messages: list[dict[str, Any]], options: ExportOptions) -> Example:
        """The training example, truncated at a turn boundary when allowed; raises Dropped when the record
        cannot fit or would train on end-of-turn tokens only."""
        messages, truncated = self._within_reach(messages, options)
        rendered = self.template.render(messages)
        ids, offsets = self.encode(rendered)
        if options.max_length is not None and len(ids) > options.max_length:
            over = f"{len(ids):,} tokens, over --max-length {options.max_length}"
            if options.overlong == "drop":
                raise Dropped(OVERLONG_REASON, over)
            fitted = self._fit(messages, options.max_length)
            if fitted is None:
                raise Dropped(OVERLONG_REASON, f"{over}, and no earlier turn boundary fits")
            rendered, ids, offsets = fitted
            truncated = True
        spans = [span for span in rendered.spans if span.role == "assistant"]
        if options.train_on == "last-assistant":
            spans = spans[-1:]
        if not any(rendered.content(span).strip() for span in spans):
            which = "the last assistant turn is" if options.train_on == "last-assistant" else "every assistant turn is"
            raise Dropped(EMPTY_ASSISTANT, f"{which} empty, so only end-of-turn tokens would be trained"
                          if spans else "it has no assistant turn to train on")
        return Example(ids, self.label(rendered, ids, offsets, spans), truncated)

    def _within_reach(
        self, messages: list[dict[str, Any]], options: ExportOptions
    ) -> tuple[list[dict[str, Any]], bool]:
        """The messages with everything from the first one that cannot fit cut off, counted in characters so
        a huge turn is never tokenized; whether anything was cut. The cutoff is --max-length, else the
        tokenizer's own context size."""
        cutoff = options.max_length or self.context
        if cutoff is None:
            return messages, False
        limit = cutoff * self.longest_token * _NORMALIZER_SLACK
        sizes = list(itertools.accumulate(len(message.get("content") or "") for message in messages))
        reach = bisect.bisect_right(sizes, limit)
        if reach == len(messages):
            return messages, False
        unit = f"--max-length {options.max_length}" if options.max_length else f"the tokenizer's {cutoff}"
        detail = f"{sizes[-1]:,} characters of text, far beyond what {unit} tokens can hold; not tokenized"
        kept = messages[:reach]
        while kept and kept[-1]["role"] != "assistant":
            kept.pop()
        if options.max_length is None or options.overlong == "drop" or not kept:
            raise Dropped(OVERLONG_REASON, detail)
        return kept, True

    def _fit(self, messages: list[dict[str, Any]], max_length: int):
        """The longest prefix ending with an assistant turn that fits, rendered afresh."""
        cuts = [number for number, message in enumerate(messages, start=1) if message["role"] == "assistant"]
        for cut in reversed([cut for cut in cuts if cut < len(messages)]):
            rendered = self.template.render(messages[:cut])
            ids, offsets = self.encode(rendered)
            if len(ids) <= max_length:
                return rendered, ids, offsets
        return None


def export_file(input_path: str | Path, output: str | Path, options: ExportOptions) -> ExportResult:
    """Export a record file as input_ids / attention_mask / labels; nothing is written if a record fails,
    unless options.skip_invalid, or if no record is left to train on. Dropped records go to the rejected
    file with their reason."""
    output = Path(output)
    encoder = LabelEncoder(load_tokenizer(options.tokenizer), options.template, options.allow_template_mismatch)
    result = ExportResult(output, encoder.template.name)
    dropped: Counter[str] = Counter()
    rejects = RejectFile.beside(output, options.rejected)
    result.rejected = rejects.path
    with rejects, open_writer(output) as writer:
        for where, record in iter_located(input_path):
            result.records += 1
            try:
                example = encoder.example(to_messages(record, where), options)
            except Dropped as exc:
                dropped[exc.reason] += 1
                rejects.write(rejection("export", exc.reason, record, {"where": where, "problem": exc.detail}))
                continue
            except (InputError, RenderError) as exc:
                message = str(exc).removeprefix(f"{where}: ")
                _fail(result, rejects, record, [Failure(where, message)])
                continue
            except RecordFailed as exc:
                for failure in exc.failures:
                    failure.where = where
                _fail(result, rejects, record, exc.failures)
                continue
            result.truncated += example.truncated
            result.tokens += len(example.input_ids)
            result.trained_tokens += sum(label != IGNORE_INDEX for label in example.labels)
            mask = [1] * len(example.input_ids)
            writer.write({"input_ids": example.input_ids, "attention_mask": mask, "labels": example.labels})
        if not result.records:
            raise InputError(input_path, "holds no records")
        result.dropped_overlong, result.dropped_empty = dropped[OVERLONG_REASON], dropped[EMPTY_ASSISTANT]
        if result.invalid and not options.skip_invalid:
            rejects.keep()
            raise ExportFailed(result)
        if not writer.count:
            counts = ((result.dropped_empty, "with empty assistant turns"), (result.dropped_overlong, "over-long"),
                      (result.invalid, "failing the self-check"))
            why = ", ".join(f"{count} {text}" for count, text in counts if count)
            raise InputError(input_path, f"nothing to train on: all {result.records} records were left out "
                                         f"({why}), so {output} was not written")
    result.written = writer.count
    if not rejects.count:
        result.rejected = None
    return result


def _fail(result: ExportResult, rejects: RejectFile, record: dict[str, Any], failures: list[Failure]) -> None:
    result.invalid += 1
    if len(result.failures) < 100:
        result.failures += failures
    for failure in failures:
        rejects.write(rejection("export", FAILED_SELF_CHECK, record, {
            "where": failure.where, "turn": failure.turn, "problem": failure.reason, "expected": failure.expected,
            "decoded": failure.decoded}))
