"""The leading verb/object heuristic: hand-checked instructions, plus its coverage on real datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ANCHORS

from distillery.verbs import singular, verb_object


@pytest.mark.parametrize(
    ("text", "verb", "obj"),
    [
        ("Write a short story about a dog.", "write", "story"),
        ("Give three tips for staying healthy.", "give", "tip"),
        ("Generate a list of 5 ideas for a birthday party.", "generate", "list"),
        ("Please help me write a poem about the sea", "write", "poem"),
        ("Could you please summarize this article", "summarize", "article"),
        ("Tell me a joke.", "tell", "joke"),
        ("Given a list of numbers, sort them in ascending order and return the largest.", "sort", None),
        ("Given the following text, identify the main idea.", "identify", "idea"),
        ("Come up with three ideas for a science fair.", "come", "idea"),
        ("Set up a weekly meeting with the team.", "set", "meeting"),
        ('Re-write the sentence "I am happy" in the passive voice.', "rewrite", "sentence"),
        ("Classify the following sentence as positive or negative", "classify", "sentence"),
        ("Create a story involving a talking mouse and an elephant.", "create", "story"),
        ("Describe the process of photosynthesis.", "describe", "process"),
        ("Explain why the sky is blue.", "explain", None),
        ("Name three countries in Europe.", "name", "country"),
        ("Let’s write a song about friendship", "write", "song"),
        ("What is the capital of France?", None, None),
        ("How do I bake bread?", None, None),
        ("The cat sat on the mat.", None, None),
        ("", None, None),
        ("!!! ???", None, None),
    ],
)
def test_english(text: str, verb: str | None, obj: str | None) -> None:
    assert verb_object(text) == (verb, obj)


@pytest.mark.parametrize(
    ("text", "verb", "obj"),
    [
        ("写一首关于秋天的诗。", "写", "诗"),
        ("生成两个关于自动化的问题。", "生成", "问题"),
        ("请给出三个保持健康的建议。", "给出", "建议"),
        ("帮我分类以下动物：猪、鸡、牛。", "分类", "动物"),
        ("将句子“她在公园里散步”改写成更有趣的措辞。", "改写", "句子"),
        ("根据以下文章，总结文章的主要观点。", "总结", "观点"),
        ("用“黎明”、“天空”和“广阔”这三个词组成一个句子。", "组成", "句子"),
        ("简要描述光合作用的过程", "描述", "过程"),
        ("解释人工智能中的迁移学习概念。", "解释", "概念"),
        ("给定一个国家，列出几个该国家的代表性菜肴。", "列出", "菜肴"),
        ("直接宾语和间接宾语有什么区别？", None, None),
        ("24小时有多少分钟？", None, None),
    ],
)
def test_chinese(text: str, verb: str | None, obj: str | None) -> None:
    assert verb_object(text) == (verb, obj)


_TAGGER_PROBE = """
import json, os, sys, tempfile
from distillery.verbs import verb_object
found = verb_object("写一首关于秋天的诗。")
side_effects = {"pkg_resources": "pkg_resources" in sys.modules, "temp files": os.listdir(tempfile.gettempdir())}
import jieba.posseg
stock = jieba.Tokenizer()
stock.initialize()
ours = jieba.posseg.dt.tokenizer
print(json.dumps({"found": found, **side_effects, "same words and counts": stock.FREQ == ours.FREQ,
                  "same total": stock.total == ours.total}))
"""


def test_chinese_tagger_loads_jiebas_dictionary_without_its_cache(tmp_path):
    """The prefix dictionary distillery builds is jieba's own, and loading it neither imports pkg_resources
    nor writes jieba's cache into the temp directory (both cost start-up time)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _TAGGER_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"found": ["写", "诗"], "pkg_resources": False, "temp files": [],
                                       "same words and counts": True, "same total": True}


@pytest.mark.parametrize(
    ("word", "expected"),
    [("tips", "tip"), ("stories", "story"), ("boxes", "box"), ("process", "process"), ("analysis", "analysis"),
     ("news", "news"), ("ideas", "idea"), ("bus", "bus"), ("poem", "poem")],
)
def test_singular(word: str, expected: str) -> None:
    assert singular(word) == expected


def _instructions(name: str) -> list[str]:
    return [record["instruction"] for record in json.loads((ANCHORS / name).read_text(encoding="utf-8"))]


@pytest.mark.anchors
@pytest.mark.parametrize(
    ("name", "least_share", "expected_top"),
    [
        ("llamafactory_alpaca_en_demo.json", 0.85, {"generate", "create", "describe", "write", "explain"}),
        ("llamafactory_alpaca_zh_demo.json", 0.70, {"生成", "写", "描述", "列出", "创建"}),
    ],
)
def test_real_datasets(name: str, least_share: float, expected_top: set[str]) -> None:
    """Most Alpaca instructions are imperatives, and the usual verbs lead (as in the Alpaca paper)."""
    found = [verb_object(text) for text in _instructions(name)]
    verbs = Counter(verb for verb, _ in found if verb)
    assert sum(verbs.values()) / len(found) >= least_share
    assert expected_top <= {verb for verb, _ in verbs.most_common(8)}
    with_object = sum(1 for verb, obj in found if verb and obj)
    assert with_object / sum(verbs.values()) >= 0.7
