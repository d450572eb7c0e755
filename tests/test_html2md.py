"""html2md against markdownify (FastChat's pipeline, in benchmarks/clean.py) and on share-page details."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from distillery.html2md import clean_turn, html_to_markdown, looks_like_html

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sharegpt_raw.json"
PROSE = '<div class="markdown prose w-full break-words dark:prose-invert light">{}</div>'


def code_block(language: str, body_html: str) -> str:
    """ChatGPT's share-page markup for one code block, header and copy button included."""
    return (
        '<pre><div class="bg-black rounded-md mb-4"><div class="flex items-center relative text-gray-200 '
        'bg-gray-800 px-4 py-2 text-xs font-sans justify-between rounded-t-md">'
        f'<span>{language}</span><button class="flex ml-auto gap-2"><svg stroke="currentColor" fill="none" '
        'viewBox="0 0 24 24"><path d="M16 4h2a2 2 0 0 1 2 2v14"></path><rect x="8" y="2"></rect></svg>'
        'Copy code</button></div><div class="p-4 overflow-y-auto">'
        f'<code class="!whitespace-pre hljs language-{language}">{body_html}</code></div></div></pre>'
    )


def _load_fastchat_markdown():
    """The FastChat-style reference lives with the benchmark that also races it."""
    spec = importlib.util.spec_from_file_location("benchmark_clean", ROOT / "benchmarks" / "clean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fastchat_markdown


fastchat_markdown = _load_fastchat_markdown()


def normalise_reference(text: str) -> str:
    """Undo markdownify's documented differences: backslash escapes and setext headings."""
    text = text.replace("\\_", "_").replace("\\*", "*")
    return re.sub(r"^(.+)\n(=+|-+)$", lambda m: ("# " if m.group(2)[0] == "=" else "## ") + m.group(1), text,
                  flags=re.MULTILINE)


def normalise_ours(text: str) -> str:
    """Apply FastChat's lossy blank-line squeeze and drop our `\\|` cell escape, to compare the rest."""
    return text.replace("\\|", "|").replace("\n\n\n", "\n")


def html_turns() -> list[str]:
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return [t["value"] for r in records for t in r["conversations"] if looks_like_html(t["value"])]


def test_sample_matches_markdownify_reference_up_to_documented_differences():
    turns = html_turns()
    assert len(turns) >= 40
    mismatched = [
        (fastchat_markdown(html), clean_turn(html))
        for html in turns
        if normalise_reference(fastchat_markdown(html)) != normalise_ours(clean_turn(html))
    ]
    assert mismatched == []


def test_the_documented_differences_do_occur_in_the_sample():
    """The comparison above normalises these; make sure the sample really exercises each of them."""
    pairs = [(fastchat_markdown(html), clean_turn(html)) for html in html_turns()]
    assert any("\\_" in ref and "\\_" not in ours for ref, ours in pairs)
    assert any(re.search(r"^-{3,}$", ref, re.MULTILINE) and "## " in ours for ref, ours in pairs)
    assert any("\n\n\n" in ours for _, ours in pairs)


def test_code_block_gets_fence_language_indentation_and_underscores():
    body = ('<span class="hljs-keyword">def</span> <span class="hljs-title function_">add_one</span>'
            '(x_val):\n    <span class="hljs-keyword">if</span> x_val &lt; 0:\n        return 0\n'
            '    return x_val + 1\n')
    html = PROSE.format("<p>Try this:</p>" + code_block("python", body) + "<p>Done.</p>")
    assert clean_turn(html) == (
        "Try this:\n\n```python\ndef add_one(x_val):\n    if x_val < 0:\n        return 0\n"
        "    return x_val + 1\n```\n\nDone."
    )


def test_no_markup_or_copy_button_survives():
    html = PROSE.format(code_block("bash", "ls -la\n") + "<ul><li><p>one <strong>two</strong></p></li></ul>")
    markdown = clean_turn(html)
    assert "Copy code" not in markdown
    assert re.search(r"</?[a-z][^>]*>", markdown) is None
    assert markdown == "```bash\nls -la\n```\n\n* one **two**"


def test_code_holding_backticks_gets_a_longer_fence():
    html = PROSE.format(code_block("markdown", "```python\nprint(1)\n```\n"))
    assert clean_turn(html) == "````markdown\n```python\nprint(1)\n```\n````"


def test_lists_keep_numbering_nesting_and_start():
    html = PROSE.format(
        "<ol><li>first<ul><li>nested a</li><li>nested b</li></ul></li><li>second</li></ol>"
        "<p>then</p><ol start=\"3\"><li>third</li></ol>"
    )
    assert clean_turn(html) == "1. first\n   * nested a\n   * nested b\n2. second\n\nthen\n\n3. third"


def test_table_becomes_markdown_with_pipes_escaped_in_cells():
    html = PROSE.format(
        "<table><thead><tr><th>op</th><th>meaning</th></tr></thead>"
        "<tbody><tr><td><code>a | b</code></td><td>or</td></tr><tr><td>汉字</td><td>한국어</td></tr></tbody></table>"
    )
    assert clean_turn(html) == "| op | meaning |\n| --- | --- |\n| `a \\| b` | or |\n| 汉字 | 한국어 |"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1 / 1Write a haiku about snow_fall *now*", "Write a haiku about snow_fall *now*"),
        ("2 / 2" + PROSE.format("<p>Hello</p>"), "Hello"),
        ("Translate this sentence.Copy24 chars / 4 words", "Translate this sentence."),
        ("3 / 4 of the pie is gone; is x<y and a_b?", "3 / 4 of the pie is gone; is x<y and a_b?"),
        ("  indented\n\n\n  text with <b>tags</b> kept\n", "indented\n\n\n  text with <b>tags</b> kept"),
        ("你好，请介绍一下你自己。", "你好，请介绍一下你自己。"),
    ],
)
def test_plain_text_keeps_its_content_and_loses_only_share_page_noise(raw, expected):
    assert clean_turn(raw) == expected


def test_headings_are_atx_and_inline_markup_converts():
    html = PROSE.format('<h2>Setup</h2><p>Use <em>care</em>, see <a href="https://x.org/a_b">docs</a>.</p><hr>'
                        "<blockquote><p>quoted</p></blockquote>")
    assert html_to_markdown(html) == "## Setup\n\nUse *care*, see [docs](https://x.org/a_b).\n\n---\n\n> quoted"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('<span class="x">Use <code>snake_case</code> here.</span>', "Use `snake_case` here."),
        ("<strong>Note:</strong> keep <em>both</em> files.", "**Note:** keep *both* files."),
        ("Sure!<p>Here is the plan:</p><ol><li>read</li><li>write</li></ol>",
         "Sure!\n\nHere is the plan:\n\n1. read\n2. write"),
        ("1 / 2<b>Bold</b> start", "**Bold** start"),
    ],
)
def test_turns_opening_with_inline_markup_are_converted(raw, expected):
    assert looks_like_html(raw)
    assert clean_turn(raw) == expected


def test_a_literal_special_token_at_the_start_is_not_markup():
    assert clean_turn("<s>[INST] hi [/INST]") == "<s>[INST] hi [/INST]"
