"""The leading verb of an instruction and its direct object: what the Self-Instruct sunburst plots.

Self-Instruct ran a constituency parser over every instruction. A report over 100K records cannot
afford that, and imperative instructions are regular enough for a heuristic:

English: split the instruction into clauses at punctuation and quotes and look at the first three.
Strip polite lead-ins ("please", "can you", "I want you to", "help me"...). The clause must then
open with a verb from a built-in lexicon of instruction verbs ("Given a list, sort it" yields
"sort"). The object is the head of the noun phrase that follows: skip determiners, pronouns
and numbers, read up to the next preposition, conjunction or wh-word, and take the last word,
singularised ("Write a short story about a dog" gives write/story). Questions ("What is...") and
statements have no leading verb.

Chinese: the same clauses, with quoted spans removed, are tagged with jieba.posseg. After polite
lead-ins (请, 帮我, 你能...) and adverbs, the first token must be a verb (a `v*` tag, or one of the
instruction verbs jieba tags as a noun or adverb, such as 分类 and 比较). A leading prepositional
phrase (根据以下文章，构建...) is skipped up to its verb, and a 将/把 construction puts the object
before the verb. The object is the head of the following noun phrase: Chinese noun phrases are head-final,
so it is the last content word after the last 的 (生成两个关于自动化的问题 gives 生成/问题).
"""

from __future__ import annotations

import logging
import re
import sys
from functools import lru_cache
from typing import Any

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CLAUSE = re.compile(r"[.!?;:,\n\"“”「」()（）\[\]，。！？；：、]+|\s[-–—]+\s")
_QUOTE = r"(?:“[^”]*”|\"[^\"]*\"|「[^」]*」)"
_QUOTED = re.compile(f"{_QUOTE}(?:\\s*(?:[、,，]|and|or|和|与|及|或)\\s*{_QUOTE})*")
_WORD = re.compile(r"[a-z]+(?:['’-][a-z]+)*|\d+")
_MAX_CLAUSES = 3
_ZH_CLIP = 32

EN_VERBS = frozenset("""
act add adapt adjust advise alter analyse analyze annotate answer apply arrange ask assess assign
brainstorm break build calculate categorise categorize change check choose cite clarify classify clean
combine come compare compile complete compose compute condense connect construct continue convert
correct count craft create critique cut debug decide decode deduce define delete derive describe design
detect determine develop devise diagnose discuss distinguish divide draft draw edit elaborate eliminate
encode enumerate estimate evaluate examine expand explain explore express extract figure fill find fix
format formulate generate give group guess help highlight identify illustrate imagine implement improve
indicate infer input insert interpret introduce invent investigate justify label link list locate look
make map match measure merge modify multiply name note offer optimize optimise order organise organize
outline output paraphrase parse pick plan point predict prepare present prioritize process produce
proofread propose prove provide quote rank rate read rearrange recall recommend recreate refactor
reformat rephrase replace reply report represent research resolve respond restate restructure retrieve
return reverse review revise rewrite reword role-play roleplay round say score search select
separate set share shorten show simplify simulate solve sort specify speculate spell split state step
substitute suggest sum summarise summarize supply swap tag take teach tell test think train transform
translate traverse turn type underline update use validate verify visualize visualise write
""".split())


def _by_first_word(phrases: str) -> dict[str, list[list[str]]]:
    """'|'-separated phrases, indexed by their first word for a quick prefix test."""
    index: dict[str, list[list[str]]] = {}
    for phrase in phrases.replace("\n", "").split("|"):
        words = phrase.split()
        index.setdefault(words[0], []).append(words)
    return index


_PHRASAL = {"come": ("up", "with"), "fill": ("in",), "figure": ("out",), "point": ("out",), "sum": ("up",),
            "break": ("down",), "think": ("of", "about"), "look": ("up",), "set": ("up",), "make": ("up",)}
_POLITE = _by_first_word("""
please|kindly|can you|could you|would you|will you|can you please|could you please|would you please|
i want you to|i need you to|i'd like you to|i would like you to|i'd like to|i would like to|i want to|
help me|help me to|let's|let us|you should|you need to|you must|you will|you are asked to|
you are required to|your task is to|the task is to|now|then|also|briefly|quickly|simply|first|just
""")
_SKIP = frozenset("""
a an the this these those some any me us him her them my your our their its his each every all both
few several many more most another other one two three four five six seven eight nine ten twenty
hundred new own certain various different such
""".split())
_STOP = frozenset("""
about above across after against along among and around as at based because before below between but
by during for from given how if in including into like near of off on onto or over per since so such
than that then through to toward towards under until upon using via what when where whether which while
who whom whose why with within without is are was were be can could should would will
""".split())
_NOT_HEAD = frozenset("following given above below previous next same latter former".split())
_KEEP_S = frozenset("news series species physics mathematics economics politics ethics lyrics means".split())

_ZH_POLITE = re.compile(
    r"^(?:请你|请|麻烦你|麻烦|帮我|帮忙|你能否|你能不能|你能|你可以|能否|能不能|可以|可否|"
    r"我想让你|我希望你|我需要你|我想|你需要|你应该|试着|现在|然后|接下来)+"
)
ZH_VERBS = frozenset("""
分类 比较 归类 总结 概括 翻译 创作 优化 改写 重写 描述 解释 生成 列出 列举 写 写出 编写 撰写 设计 创建
计算 分析 评价 评估 判断 识别 提取 推荐 建议 回答 给出 提供 整理 排序 改进 修改 润色 扩写 缩写 续写 造句
编辑 阅读 回复 说明 选择 填写 补全 检测 纠正 替换 返回 输出 举 告诉 介绍 预测 制定 制作 规划 扮演 说出 找出
""".split())
_ZH_NOT_VERBS = frozenset("""
是 是否 有 有没有 在 会 能 要 想 应该 需要 可以 可能 觉得 认为 叫 像 成为 没有 给定 所给
""".split())
_ZH_PREPOSITIONS = frozenset("根据 按照 依据 基于 针对 对于 关于 用 使用 通过 从 在 以 对 为 给 就".split())
_ZH_BA = frozenset("将 把".split())
_ZH_END = frozenset("并 并且 然后 而且 以 以便 来 从而 同时".split())
_ZH_FUNCTION_FLAGS = ("m", "q", "u", "x", "r", "p", "c", "d", "f", "y", "e", "o")


def verb_object(text: str) -> tuple[str | None, str | None]:
    """(leading verb, head of its direct object); either is None when the heuristic finds none."""
    clauses = [c for c in _CLAUSE.split(_QUOTED.sub(" ", text[:400])) if c.strip()][:_MAX_CLAUSES]
    for clause in clauses:
        found = _zh_clause(clause) if _CJK.search(clause) else _en_clause(clause)
        if found[0] is not None:
            return found
    return None, None


def _en_verb(word: str) -> str | None:
    if word in EN_VERBS:
        return word
    joined = word.replace("-", "")
    return joined if joined in EN_VERBS else None


def _en_clause(clause: str) -> tuple[str | None, str | None]:
    words = _WORD.findall(clause.lower().replace("’", "'"))
    for view in reversed(_polite_views(words) if words else []):
        verb = _en_verb(view[0])
        if verb is not None:
            return verb, _en_object(verb, view[1:])
    return None, None


def _polite_views(words: list[str]) -> list[list[str]]:
    """The clause with 0, 1, 2... polite lead-ins removed; the most stripped view is tried first."""
    views = [words]
    while True:
        current = views[-1]
        starts = _POLITE.get(current[0], ()) if current else ()
        match = max((p for p in starts if current[: len(p)] == p and len(current) > len(p)), key=len, default=None)
        if match is None:
            return views
        views.append(current[len(match):])


def _en_object(verb: str, rest: list[str]) -> str | None:
    particles = _PHRASAL.get(verb, ())
    while rest and rest[0] in particles:
        rest = rest[1:]
    while rest and (rest[0] in _SKIP or rest[0].isdigit()):
        rest = rest[1:]
    phrase: list[str] = []
    for index, word in enumerate(rest[:6]):
        if word in _STOP or phrase and word.endswith("ing") and _introduces_phrase(rest[index + 1:]):
            break
        phrase.append(word)
    if not phrase or phrase[-1] in _NOT_HEAD or phrase[-1] in _SKIP or phrase[-1].isdigit():
        return None
    return singular(phrase[-1])


def _introduces_phrase(after: list[str]) -> bool:
    """An -ing word followed by a determiner starts a participle clause ('a story involving a mouse')."""
    return bool(after) and (after[0] in _SKIP or after[0].isdigit())


def singular(word: str) -> str:
    """A plain English singular, good enough to merge 'tips' with 'tip' in a chart."""
    if word in _KEEP_S or len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")):
        return word
    return word[:-1]


@lru_cache(maxsize=1)
def _posseg() -> Any:
    """jieba's part-of-speech tagger, with its prefix dictionary built here from one split of the
    dictionary file: the same words, counts and total that jieba builds, in about 60 % of the CPU time
    of loading jieba's own marshal cache (and without first writing that cache to the temp directory
    where it is missing). jieba is imported without pkg_resources, which it needs only to find its
    own data files."""
    blocked = "pkg_resources" not in sys.modules
    if blocked:  # jieba opens its files through pkg_resources when it imports (0.1 CPU s), else directly
        sys.modules["pkg_resources"] = None  # type: ignore[assignment]
    try:
        import jieba
        import jieba.posseg
    finally:
        if blocked:
            del sys.modules["pkg_resources"]
    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.posseg.dt.tokenizer
    if not tokenizer.initialized and tokenizer.dictionary == jieba.DEFAULT_DICT:
        with tokenizer.get_dict_file() as file:
            fields = file.read().decode("utf-8").split()
        words, counts = fields[0::3], [int(count) for count in fields[1::3]]
        freq = dict.fromkeys({word[:end] for word in words for end in range(1, len(word))}, 0)
        freq.update(zip(words, counts, strict=True))
        tokenizer.FREQ, tokenizer.total, tokenizer.initialized = freq, sum(counts), True
    return jieba.posseg.dt


def _zh_verb(word: str, flag: str) -> bool:
    if word in ZH_VERBS:
        return True
    return flag.startswith("v") and word not in _ZH_NOT_VERBS


def _zh_clause(clause: str) -> tuple[str | None, str | None]:
    return _zh_text(_ZH_POLITE.sub("", clause.strip()).replace("一下", "")[:_ZH_CLIP])


@lru_cache(maxsize=1 << 16)
def _zh_text(text: str) -> tuple[str | None, str | None]:
    """Verb and object of a clipped clause; cached, as datasets repeat their openings (请写一首...)."""
    tokens = [(t.word, t.flag) for t in _posseg().cut(text) if t.word.strip()]
    while len(tokens) > 1 and tokens[0][1] in ("d", "ad", "a") and tokens[0][0] not in ZH_VERBS | _ZH_BA:
        tokens = tokens[1:]
    if not tokens:
        return None, None
    first = tokens[0][0]
    if first in _ZH_BA:
        return _zh_ba(tokens[1:])
    if first in _ZH_PREPOSITIONS and not _zh_verb(*tokens[0]):
        tokens = _after_first_verb(tokens[1:])
        if len(tokens) < 2:
            return None, None
    if not tokens or not _zh_verb(*tokens[0]):
        return None, None
    verb, rest = tokens[0][0], tokens[1:]
    if len(rest) >= 2 and rest[0][0] in ("并", "和", "或") and _zh_verb(*rest[1]):
        rest = rest[2:]
    return verb, _zh_head(rest)


def _after_first_verb(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for index, token in enumerate(tokens[:10]):
        if _zh_verb(*token):
            return tokens[index:]
    return []


def _zh_ba(tokens: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """将/把 + object + verb: the object is the first noun, the verb the first verb after it."""
    rest = _after_first_verb(tokens)
    if not rest:
        return None, None
    phrase = tokens[: len(tokens) - len(rest)]
    nouns = [w for w, f in phrase if f.startswith(("n", "vn", "l", "j", "eng"))]
    return rest[0][0], nouns[0] if nouns else None


def _zh_head(tokens: list[tuple[str, str]]) -> str | None:
    """Head of a head-final noun phrase: the last content word, after the last 的 when there is one."""
    phrase: list[tuple[str, str]] = []
    for word, flag in tokens[:14]:
        if word in _ZH_END or flag == "x":
            break
        phrase.append((word, flag))
    marks = [i for i, (word, _) in enumerate(phrase) if word == "的"]
    if marks:
        phrase = phrase[marks[-1] + 1:]
    content = [w for w, f in phrase if not f.startswith(_ZH_FUNCTION_FLAGS) and w not in _ZH_NOT_VERBS]
    return content[-1] if content else None
