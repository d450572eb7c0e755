"""`distillery export`: labels decode back to exactly the assistant turns, and mismatches are reported."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import ANCHORS, run_cli
from tiny_tokenizer import CHATML_JINJA, LLAMA3_JINJA, SPECIAL_TOKENS, build_tiny_tokenizer, training_text

from distillery.chat_templates import ALPACA_SYSTEM, VICUNA_SYSTEM, builtin
from distillery.errors import InputError, UserError
from distillery.export import (
    IGNORE_INDEX,
    Dropped,
    ExportFailed,
    ExportOptions,
    LabelEncoder,
    RecordFailed,
    export_file,
)
from distillery.io import read_records
from distillery.summary import Summary
from distillery.tokens import load_tokenizer

TRICKY = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "Write </s> and <|im_end|> literally, then 你好 😀"},
    {"role": "assistant", "content": "Sure: </s> <|im_end|> <|eot_id|> <|im_start|>user 你好 👩‍💻!"},
    {"role": "user", "content": "Again, in Chinese?"},
    {"role": "assistant", "content": "  当然可以：天空是蓝色的。🚀  "},
]
EOT = {"vicuna_v1.1": "</s>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>", "alpaca": "</s>"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    base = tmp_path_factory.mktemp("tokenizers")
    return {
        "plain": load_tokenizer(str(build_tiny_tokenizer(base / "plain"))),
        "chatml": load_tokenizer(str(build_tiny_tokenizer(base / "chatml", CHATML_JINJA))),
        "llama3": load_tokenizer(str(build_tiny_tokenizer(base / "llama3", LLAMA3_JINJA))),
    }


def labelled_runs(labels: list[int]) -> list[list[int]]:
    """Contiguous stretches of trained tokens: one per trained assistant turn."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


CASES = [("plain", "vicuna_v1.1"), ("plain", "chatml"), ("plain", "llama3"), ("plain", "alpaca"),
         ("chatml", "auto"), ("llama3", "auto")]


@pytest.mark.parametrize(("tokenizer_name", "template"), CASES)
def test_labels_decode_to_exactly_the_assistant_turns(tokenizers, tokenizer_name, template):
    tokenizer = tokenizers[tokenizer_name]
    encoder = LabelEncoder(tokenizer, template)
    example = encoder.example(TRICKY, ExportOptions(tokenizer="-", template=template))
    strip = template == "llama3" or tokenizer_name == "llama3"
    eot = EOT.get(template) or ("<|eot_id|>" if tokenizer_name == "llama3" else "<|im_end|>")
    replies = [m["content"].strip() if strip else m["content"] for m in TRICKY if m["role"] == "assistant"]
    runs = labelled_runs(example.labels)
    assert len(runs) == 2
    specials = set(encoder.special_text)
    for run, reply in zip(runs, replies, strict=True):
        decoded = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        expected = reply + eot
        # vicuna's "ASSISTANT: " space may merge into the first reply token, as in FastChat's own data
        assert decoded == expected or (template == "vicuna_v1.1" and decoded == " " + expected)
        assert run[-1] == encoder.specials[eot], "the turn ends with the end-of-turn special token"
        assert not specials & set(run[:-1]), "literal special-token strings in the reply stay text"
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids, strict=True))
    rendered = encoder.template.render(TRICKY).text
    assert tokenizer.decode(example.input_ids, skip_special_tokens=False) == rendered


@pytest.mark.parametrize(("tokenizer_name", "template"), CASES)
def test_tokens_are_what_the_tokenizer_gives_the_whole_rendered_text(tokenizers, tokenizer_name, template):
    """Cutting only at template specials keeps BPE merges exactly as on the whole string."""
    tokenizer = tokenizers[tokenizer_name]
    encoder = LabelEncoder(tokenizer, template)
    plain = [{**m, "content": m["content"].replace("<|", "< |").replace("</s>", "< /s>")} for m in TRICKY]
    example = encoder.example(plain, ExportOptions(tokenizer="-", template=template))
    rendered = encoder.template.render(plain).text
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if template == "auto":
        assert rendered == tokenizer.apply_chat_template(plain, tokenize=False)


def test_builtin_templates_render_like_their_sources(tokenizers):
    tokenizer = tokenizers["plain"]
    chat = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Good."}]
    # FastChat vicuna_v1.1 (ADD_COLON_TWO, sep " ", sep2 "</s>") after the LLaMA tokenizer's BOS
    assert builtin("vicuna_v1.1", tokenizer).render(chat).text == (
        f"<s>{VICUNA_SYSTEM} USER: Hello! ASSISTANT: Hi.</s>USER: How are you? ASSISTANT: Good.</s>"
    )
    # LLaMA-Factory's alpaca template
    assert builtin("alpaca", tokenizer).render(chat[:2]).text == (
        f"<s>{ALPACA_SYSTEM}\n\n### Instruction:\nHello!\n\n### Response:\nHi.</s>\n\n"
    )
    with_system = [{"role": "system", "content": "Be kind."}, *chat]
    assert builtin("chatml", tokenizer).render(with_system).text == (
        tokenizers["chatml"].apply_chat_template(with_system, tokenize=False)
    )
    llama = tokenizers["llama3"].apply_chat_template(with_system, tokenize=False)
    assert builtin("llama3", tokenizer).render(with_system).text == llama.replace("<s>", "<|begin_of_text|>", 1)


def test_train_on_last_assistant_labels_only_the_final_reply(tokenizers):
    encoder = LabelEncoder(tokenizers["plain"], "chatml")
    example = encoder.example(TRICKY, ExportOptions(tokenizer="-", template="chatml", train_on="last-assistant"))
    runs = labelled_runs(example.labels)
    assert len(runs) == 1
    assert tokenizers["plain"].decode(runs[0], skip_special_tokens=False) == TRICKY[-1]["content"] + "<|im_end|>"


def test_max_length_truncates_at_a_turn_boundary_or_drops(tokenizers):
    encoder = LabelEncoder(tokenizers["plain"], "chatml")
    one_round = encoder.example(TRICKY[:3], ExportOptions(tokenizer="-", template="chatml"))
    full = encoder.example(TRICKY, ExportOptions(tokenizer="-", template="chatml"))
    limit = len(one_round.input_ids) + 2
    assert limit < len(full.input_ids)
    cut = encoder.example(TRICKY, ExportOptions(tokenizer="-", template="chatml", max_length=limit))
    assert cut.truncated
    assert (cut.input_ids, cut.labels) == (one_round.input_ids, one_round.labels)
    with pytest.raises(Dropped, match=f"tokens, over --max-length {limit}$"):
        encoder.example(TRICKY, ExportOptions(tokenizer="-", template="chatml", max_length=limit, overlong="drop"))
    with pytest.raises(Dropped, match="no earlier turn boundary fits"):
        encoder.example(TRICKY, ExportOptions(tokenizer="-", template="chatml", max_length=5))


def test_export_file_counts_truncated_and_dropped(tmp_path, tokenizers):
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    source = tmp_path / "in.jsonl"
    short = {"messages": TRICKY[:3]}
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (short, {"messages": TRICKY})))
    encoder = LabelEncoder(tokenizers["plain"], "chatml")
    limit = len(encoder.example(TRICKY[:3], ExportOptions(tokenizer="-", template="chatml")).input_ids)
    result = export_file(source, tmp_path / "out.jsonl",
                         ExportOptions(tokenizer=str(tokenizer_dir), template="chatml", max_length=limit))
    assert (result.records, result.written, result.truncated, result.dropped_overlong) == (2, 2, 1, 0)
    rows = read_records(tmp_path / "out.jsonl")
    assert rows[0] == rows[1]
    assert result.tokens == 2 * limit
    assert result.trained_tokens == 2 * sum(label != IGNORE_INDEX for label in rows[0]["labels"])


@pytest.mark.anchors
def test_cli_export_of_fastchat_data_to_parquet(tmp_path):
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "train.parquet"
    done = run_cli("export", str(ANCHORS / "fastchat_dummy_conversation.json"), "-o", str(out),
                   "--tokenizer", str(tokenizer_dir), "--template", "vicuna_v1.1")
    assert done.returncode == 0, done.stderr
    assert "examples written" in done.stdout
    (stage,) = Summary.read(f"{out}.summary.json").stages
    assert (stage.stage, stage.seen, stage.kept, stage.notes["trained_tokens"] > 0) == ("export", 500, 500, True)
    table = pq.read_table(out)
    assert table.schema.names == ["input_ids", "attention_mask", "labels"]
    rows = table.to_pylist()
    assert len(rows) == 500
    tokenizer = load_tokenizer(str(tokenizer_dir))
    source = json.loads((ANCHORS / "fastchat_dummy_conversation.json").read_text(encoding="utf-8"))
    for row, record in zip(rows[:50], source[:50], strict=True):
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == sum(row["attention_mask"])
        replies = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
        decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in labelled_runs(row["labels"])]
        assert [text.removeprefix(" ") for text in decoded] == [reply + "</s>" for reply in replies]


def test_template_that_disagrees_with_the_tokenizer_chat_template_is_reported(tokenizers):
    with pytest.raises(UserError, match="formats conversations differently from --template llama3"):
        LabelEncoder(tokenizers["chatml"], "llama3")
    LabelEncoder(tokenizers["chatml"], "llama3", allow_template_mismatch=True)
    LabelEncoder(tokenizers["chatml"], "chatml")


def test_tokenizer_without_the_end_of_turn_special_token_is_reported(tmp_path):
    """Like FastChat's vicuna template on a Llama 3 tokenizer: '</s>' would be four text tokens."""
    lacking = [token for token in SPECIAL_TOKENS if token not in ("<s>", "</s>")]
    directory = build_tiny_tokenizer(tmp_path / "tok", special_tokens=lacking)
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = load_tokenizer(str(directory))
    assert len(tokenizer("</s>", add_special_tokens=False)["input_ids"]) > 1
    with pytest.raises(UserError, match="template vicuna_v1.1 needs '</s>' as special tokens"):
        LabelEncoder(tokenizer, "vicuna_v1.1")


def test_lossy_tokenizer_fails_the_self_check_with_turn_and_decoded_text(tmp_path):
    """A lowercasing normalizer changes what the model is trained on; the check must catch it."""
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Lowercase"}
    (tokenizer_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    source = tmp_path / "in.jsonl"
    records = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "all lowercase 你好"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Mixed Case"}]},
    ]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    done = run_cli("export", str(source), "-o", str(out), "--tokenizer", str(tokenizer_dir), "--template", "chatml")
    assert done.returncode == 2
    assert "1 of 2 records cannot be exported" in done.stderr
    assert "in.jsonl:2 turn 2: the labelled tokens do not decode back to the assistant text" in done.stderr
    assert "'mixed case<|im_end|>'" in done.stderr
    assert not out.exists()
    report = read_records(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["reason"], r["detail"]["where"].rsplit("/", 1)[-1], r["detail"]["turn"], r["detail"]["decoded"])
            for r in report] == [("failed_self_check", "in.jsonl:2", 2, "mixed case<|im_end|>")]

    result = export_file(source, out, ExportOptions(tokenizer=str(tokenizer_dir), template="chatml",
                                                     skip_invalid=True))
    assert (result.written, result.invalid) == (1, 1)
    assert len(read_records(out)) == 1


def test_template_that_writes_text_between_reply_and_end_of_turn_is_reported(tmp_path):
    loose = CHATML_JINJA.replace("message['content'] + '<|im_end|>'", "message['content'] + '\\n<|im_end|>'")
    tokenizer = load_tokenizer(str(build_tiny_tokenizer(tmp_path / "tok", loose)))
    with pytest.raises(RecordFailed) as caught:
        LabelEncoder(tokenizer, "auto").example(TRICKY, ExportOptions(tokenizer="-"))
    failure = caught.value.failures[0]
    assert failure.turn == 3
    assert failure.reason == "the assistant text is not followed by a single end-of-turn special token"


def test_the_check_catches_special_strings_encoded_as_specials(tokenizers):
    """Break the encoder on purpose: the self-check, not the encoder, is what guarantees the labels."""
    encoder = LabelEncoder(tokenizers["plain"], "chatml")
    encoder.text_encoder.encode_special_tokens = False
    with pytest.raises(RecordFailed) as caught:
        encoder.example(TRICKY, ExportOptions(tokenizer="-", template="chatml"))
    assert caught.value.failures[0].reason.startswith("a special-token string inside the assistant text")


def test_template_that_rewrites_message_text_is_reported(tmp_path):
    american = CHATML_JINJA.replace("message['content']", "message['content'] | replace('colour', 'color')")
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok", american)
    source = tmp_path / "in.json"
    records = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
               {"instruction": "Name a fruit.", "input": "", "output": "An apple."}]
    source.write_text(json.dumps(records))
    with pytest.raises(ExportFailed) as caught:
        export_file(source, tmp_path / "out.parquet", ExportOptions(tokenizer=str(tokenizer_dir)))
    assert caught.value.result.invalid == 1
    assert caught.value.result.failures[0].reason == "the chat template changes the text of message 1; cannot locate it"
    assert not (tmp_path / "out.parquet").exists()
    everywhere = CHATML_JINJA.replace("message['content']", "message['content'] | upper")
    with pytest.raises(UserError, match="cannot render a plain conversation"):
        LabelEncoder(load_tokenizer(str(build_tiny_tokenizer(tmp_path / "tok2", everywhere))), "auto")


@pytest.mark.anchors
def test_tool_calls_are_reported_not_rendered(tmp_path):
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    with pytest.raises(ExportFailed) as caught:
        export_file(ANCHORS / "llamafactory_glaive_toolcall_zh_demo.json", tmp_path / "o.jsonl",
                    ExportOptions(tokenizer=str(tokenizer_dir), template="chatml"))
    assert caught.value.result.failures[0].reason == (
        "message 2 is a tool call; export renders system, user and assistant turns")


def sentencepiece_style(directory, scheme: str):
    """A Metaspace tokenizer like LLaMA/Mistral conversions; 'first' only marks the start of the input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
    tokenizer.decoder = decoders.Metaspace(prepend_scheme=scheme)
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator([*training_text(), "".join(m["content"] for m in TRICKY)], trainer=trainer)
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return load_tokenizer(str(directory))


@pytest.mark.parametrize("scheme", ["first", "always"])
def test_sentencepiece_style_tokenizers_keep_whole_string_tokens(tmp_path, scheme):
    tokenizer = sentencepiece_style(tmp_path / "sp", scheme)
    encoder = LabelEncoder(tokenizer, "chatml")
    plain = [{**m, "content": m["content"].replace("<|", "< |").replace("</s>", "< /s>")} for m in TRICKY]
    example = encoder.example(plain, ExportOptions(tokenizer="-", template="chatml"))
    rendered = encoder.template.render(plain).text
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert in_context(tokenizer, example) == [m["content"] + "<|im_end|>" for m in plain if m["role"] == "assistant"]


def in_context(tokenizer, example) -> list[str]:
    """Each labelled run decoded where it stands (what the prefix gains), as sentencepiece decoders need."""
    texts = []
    for index, label in enumerate(example.labels):
        if label != IGNORE_INDEX and (index == 0 or example.labels[index - 1] == IGNORE_INDEX):
            start = index
        if label != IGNORE_INDEX and (index + 1 == len(example.labels) or example.labels[index + 1] == IGNORE_INDEX):
            before = tokenizer.decode(example.input_ids[:start], skip_special_tokens=False)
            after = tokenizer.decode(example.input_ids[: index + 1], skip_special_tokens=False)
            assert after.startswith(before)
            texts.append(after[len(before):])
    return texts


@pytest.mark.parametrize("flag", ["lstrip", "rstrip"])
def test_special_tokens_that_swallow_whitespace_match_whole_string_tokens(tmp_path, flag):
    """Some tokenizers (Phi-3's, for one) mark end-of-turn tokens rstrip: they absorb the newline after them."""
    directory = build_tiny_tokenizer(tmp_path / "tok")
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    for token in spec["added_tokens"]:
        if token["content"] in ("<|im_end|>", "<|im_start|>"):
            token[flag] = True
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    tokenizer = load_tokenizer(str(directory))
    encoder = LabelEncoder(tokenizer, "chatml")
    plain = [{**m, "content": m["content"].replace("<|", "< |").replace("</s>", "< /s>").strip()} for m in TRICKY]
    example = encoder.example(plain, ExportOptions(tokenizer="-", template="chatml"))
    rendered = encoder.template.render(plain).text
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(example.input_ids, skip_special_tokens=False) != rendered, "newlines were swallowed"
    decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in labelled_runs(example.labels)]
    assert decoded == [m["content"] + "<|im_end|>" for m in plain if m["role"] == "assistant"]


def test_bad_input_and_bad_options_exit_2_without_output(tmp_path):
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    source = tmp_path / "in.json"
    source.write_text('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": ]')
    out = tmp_path / "out.parquet"
    done = run_cli("export", str(source), "-o", str(out), "--tokenizer", str(tokenizer_dir), "--template", "chatml")
    assert done.returncode == 2 and "in.json:1: invalid JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob("*.rejected.jsonl"))
    with pytest.raises(UserError, match="--template must be one of"):
        ExportOptions(tokenizer="-", template="vicuna")
    with pytest.raises(UserError, match="--max-length must be a positive"):
        ExportOptions(tokenizer="-", max_length=0)
    with pytest.raises(UserError, match="needs a tokenizer with a chat_template"):
        LabelEncoder(load_tokenizer(str(tokenizer_dir)), "auto")


def test_records_with_empty_assistant_turns_are_dropped_with_their_reason(tmp_path):
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    source = tmp_path / "in.json"
    records = [{"instruction": "Name a colour.", "input": "", "output": ""},
               {"instruction": "Name a fruit.", "input": "", "output": "An apple."},
               {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                                  {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "  "}]}]
    source.write_text(json.dumps(records))
    out = tmp_path / "out.jsonl"
    result = export_file(source, out, ExportOptions(tokenizer=str(tokenizer_dir), template="chatml"))
    assert (result.records, result.written, result.dropped_empty) == (3, 2, 1)
    rejected = read_records(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["detail"]["where"], r["reason"]) for r in rejected] == [(f"{source} (record 1)", "empty_assistant")]
    assert rejected[0]["detail"]["problem"] == \
        "every assistant turn is empty, so only end-of-turn tokens would be trained"
    last = export_file(source, out, ExportOptions(tokenizer=str(tokenizer_dir), template="chatml",
                                                  train_on="last-assistant"))
    assert (last.written, last.dropped_empty) == (1, 2)


def test_an_export_with_nothing_to_train_on_fails_and_writes_nothing(tmp_path):
    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    source = tmp_path / "in.json"
    source.write_text(json.dumps([{"instruction": f"Question {n}?", "input": "", "output": ""} for n in range(3)]))
    out = tmp_path / "out.parquet"
    done = run_cli("export", str(source), "-o", str(out), "--tokenizer", str(tokenizer_dir), "--template", "chatml")
    assert done.returncode == 2, done.stdout
    assert done.stderr.strip().splitlines()[-1].endswith(
        "in.json: nothing to train on: all 3 records were left out (3 with empty assistant turns), "
        f"so {out} was not written")
    assert "Traceback" not in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.json", "tok"]
    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"instruction": "Tell a story.", "input": "", "output": "Once upon a time " * 50}]))
    with pytest.raises(InputError, match=r"all 1 records were left out \(1 over-long\)"):
        export_file(long, out, ExportOptions(tokenizer=str(tokenizer_dir), template="chatml", max_length=20,
                                             overlong="drop"))
    assert not out.exists() and not list(tmp_path.glob("*.rejected.jsonl"))


def test_a_huge_turn_is_dropped_before_it_is_tokenized(tmp_path, tokenizers):
    huge = "All work and no play makes Jack a dull boy. " * 100_000  # 4.4 MB
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": huge}, {"role": "assistant", "content": "Indeed."}]
    encoder = LabelEncoder(tokenizers["plain"], "chatml")
    encoded: list[int] = []
    encode = encoder.encode
    encoder.encode = lambda rendered: encoded.append(len(rendered.text)) or encode(rendered)
    options = ExportOptions(tokenizer="-", template="chatml", max_length=64)
    cut = encoder.example(chat, options)
    assert cut.truncated and tokenizers["plain"].decode(cut.input_ids).endswith("Hello.<|im_end|>\n")
    with pytest.raises(Dropped, match=r"4,400,007 characters of text, far beyond what --max-length 64 tokens can "
                                      r"hold; not tokenized"):
        encoder.example(chat[2:], options)
    with pytest.raises(Dropped, match="far beyond"):
        encoder.example(chat, ExportOptions(tokenizer="-", template="chatml", max_length=64, overlong="drop"))
    assert max(encoded) < 100, "the huge turn was never tokenized"

    tokenizer_dir = build_tiny_tokenizer(tmp_path / "tok")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"messages": chat[2:]}) + "\n" + json.dumps({"messages": chat[:2]}) + "\n")
    result = export_file(source, tmp_path / "out.jsonl",
                         ExportOptions(tokenizer=str(tokenizer_dir), template="chatml", max_length=64))
    assert (result.written, result.dropped_overlong) == (1, 1)
    rejected = read_records(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["detail"]["where"], r["reason"]) for r in rejected] == [(f"{source}:1", "overlong")]
    assert rejected[0]["detail"]["problem"].endswith("not tokenized")
