"""ChatGPT share-page HTML to markdown, on lexbor (selectolax) instead of BeautifulSoup.

markdownify on bs4 sets the expected output, but its pure-Python parser is most of the cost of FastChat's
cleaner. This converter follows markdownify's block, whitespace and newline rules on lexbor's C parse
tree, and knows ChatGPT's markup, so no regex repair is needed afterwards. Intended differences from
FastChat's markdownify pipeline (tests/test_html2md.py checks everything else is equal):

- nothing is backslash-escaped: ``snake_case`` and ``2*3`` stay as ChatGPT wrote them;
- headings are ATX (``## Title``), not setext underlines;
- ``|`` inside a table cell is escaped as ``\\|`` so the row keeps its columns;
- code keeps its blank lines (FastChat turns every ``\\n\\n\\n`` into ``\\n``, also inside code);
- a fence is longer than any backtick run in the code it holds.

Text that does not start with HTML markup (user turns, already-clean data) is left as it is, apart from
the share page's "1 / 2" regeneration counter glued to its start and "CopyN chars / N words" labels.
"""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser, LexborNode

# Share-page turns open with a block element, with inline markup (`<span>…`, `<strong>…`), or with a few
# words and then a closed block (`Sure!<p>…</p>`). `<s>` is left out: as plain text it is a special token.
_HTML_START = re.compile(
    r"\s*<(?:div|p|pre|ol|ul|table|h[1-6]|blockquote|span|strong|b|em|i|a|code|br|hr|img|del|u|sup|sub)[\s>/]",
    re.IGNORECASE,
)
_LEAD_IN_BLOCK = re.compile(r"[^\n<]{1,200}<(div|p|pre|ol|ul|table|h[1-6]|blockquote)[\s>].*</\1\s*>",
                            re.IGNORECASE | re.DOTALL)
_REGEN_COUNTER = re.compile(r"^\s*\d{1,3} / \d{1,3}(?=\S|$)")
_COPY_LABEL = re.compile(r"Copy\d+ chars / \d+ words")
_NEWLINE_SPACE = re.compile(r"[\t \r\n]*[\r\n][\t \r\n]*")
_SPACES = re.compile(r"[\t ]+")
_NEEDS_SPACE_FIX = re.compile(r"[\t\r\n]| {2}")
_ALL_SPACE = re.compile(r"[\t \r\n]+")
_LINE = re.compile(r"^(.*)", re.MULTILINE)
_BACKTICKS = re.compile(r"`+")
_PRE_HEAD = re.compile(r"^[ \n]*\n")
_PRE_TAIL = re.compile(r"[ \n]*$")
_LANGUAGE_CLASS = re.compile(r"(?:^|\s)(?:language|lang)-([\w+#.-]+)")

_BLOCK = frozenset(
    {"p", "blockquote", "article", "div", "section", "ol", "ul", "li", "dl", "dt", "dd", "table", "thead",
     "tbody", "tfoot", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6"}
)
_BLOCK_OR_PRE = _BLOCK | {"pre"}
_DROPPED = frozenset({"button", "svg", "script", "style", "-comment", "head", "title", "template"})
_INLINE_MARKS = {"b": "**", "strong": "**", "em": "*", "i": "*", "del": "~~", "s": "~~"}
_BULLETS = "*+-"
# What a node's ancestors imply, as bit flags; the count of enclosing <ul> sits above them.
_INLINE, _NOFORMAT, _IN_LI, _UL = 1, 2, 4, 8
_ENTER = {tag: _INLINE for tag in ("td", "th", "h1", "h2", "h3", "h4", "h5", "h6")}
_ENTER.update(code=_NOFORMAT, kbd=_NOFORMAT, samp=_NOFORMAT)


def looks_like_html(text: str) -> bool:
    """Whether a turn is share-page markup rather than plain text (only markup is converted)."""
    return _is_markup(_REGEN_COUNTER.sub("", text, count=1))


def _is_markup(text: str) -> bool:
    return _HTML_START.match(text) is not None or _LEAD_IN_BLOCK.match(text) is not None


def clean_turn(text: str) -> str:
    """One turn's value as clean markdown: markup converted, share-page noise removed."""
    text = _REGEN_COUNTER.sub("", text, count=1)
    if _is_markup(text):
        text = html_to_markdown(text)
    return _COPY_LABEL.sub("", text).strip()


def html_to_markdown(html: str) -> str:
    body = LexborHTMLParser(html).body
    if body is None:
        return ""
    return _children(body, 0).strip("\n")


def _enter(ctx: int, tag: str) -> int:
    return ctx + _UL if tag == "ul" else ctx | _ENTER.get(tag, 0)


def _is_content(node: LexborNode) -> bool:
    if node.tag == "-text":
        return bool(node.text_content.strip())
    return node.tag != "-comment"


def _children(node: LexborNode, ctx: int) -> str:
    """Convert a node's children and join them, collapsing newlines at their boundaries like markdownify."""
    strip_inside = node.tag in _BLOCK
    only = node.child
    if only is not None and only.next is None and only.tag == "-text":  # most inline elements: one text
        return _text(only.text_content, strip_inside, strip_inside)
    kids = list(node.iter(include_text=True))
    tags = [kid.tag for kid in kids]
    last = len(kids) - 1
    parts: list[str] = []
    pending = ""
    list_items = 0
    for index, kid in enumerate(kids):
        tag = tags[index]
        if tag == "-text":
            after_block = tags[index - 1] in _BLOCK_OR_PRE if index else strip_inside
            before_block = tags[index + 1] in _BLOCK_OR_PRE if index < last else strip_inside
            piece = _text(kid.text_content, after_block, before_block)
        elif tag in _DROPPED:
            continue
        elif tag == "li":
            list_items += 1
            piece = _li(kid, ctx, node if node.tag == "ol" else None, list_items)
        elif tag in ("ul", "ol"):
            following = next((k for k in kids[index + 1:] if _is_content(k)), None)
            piece = _list(kid, ctx, following is not None and following.tag not in ("ul", "ol"))
        else:
            piece = _element(kid, ctx)
        if not piece:
            continue
        if piece[0] != "\n" and piece[-1] != "\n":
            parts += (pending, piece)
            pending = ""
            continue
        body = piece.strip("\n")
        lead = piece[: len(piece) - len(piece.lstrip("\n"))] if body else piece
        if pending and lead:
            lead = "\n" * min(2, max(len(pending), len(lead)))
        else:
            parts.append(pending)
        parts += (lead, body)
        pending = piece[len(piece.rstrip("\n")):] if body else ""
    parts.append(pending)
    return "".join(parts)


def _text(text: str, after_block: bool, before_block: bool) -> str:
    """Collapse whitespace as a browser would, and drop it next to block boundaries."""
    if _NEEDS_SPACE_FIX.search(text):
        text = _SPACES.sub(" ", _NEWLINE_SPACE.sub("\n", text))
    if after_block:
        text = text.lstrip(" \t\r\n")
    if before_block:
        text = text.rstrip()
    return text


def _chomp(text: str) -> tuple[str, str, str]:
    """Move edge spaces outside inline markup, so `<b> x</b>` gives ` **x**`, not `** x**`."""
    return (" " if text[:1] == " " else "", " " if text[-1:] == " " else "", text.strip())


def _element(node: LexborNode, ctx: int) -> str:
    tag = node.tag
    if tag in _LEAVES:
        return _LEAVES[tag](node, ctx)
    text = _children(node, _enter(ctx, tag))
    if tag in _INLINE_MARKS:
        return text if ctx & _NOFORMAT else _wrap(text, _INLINE_MARKS[tag])
    if tag in _BLOCKS_LIKE_P:
        return f" {text.strip()} " if ctx & _INLINE else _block(text.strip())
    if tag in ("code", "kbd", "samp"):
        return text if ctx & _NOFORMAT else _inline_code(text)
    if tag in _HEADINGS:
        return text if ctx & _INLINE else _block(_HEADINGS[tag] + _ALL_SPACE.sub(" ", text.strip()))
    if tag in ("td", "th"):
        return " " + text.strip().replace("\n", " ").replace("|", "\\|") + " |" * _colspan(node)
    if tag == "tr":
        return _row(node, text)
    if tag == "table":
        return _block(text.strip())
    if tag == "a":
        return text if ctx & _NOFORMAT else _link(node, text)
    if tag == "blockquote":
        return _blockquote(text, ctx)
    if tag == "q":
        return f'"{text}"'
    return text


def _block(text: str) -> str:
    return f"\n\n{text}\n\n" if text else ""


def _wrap(text: str, mark: str) -> str:
    before, after, text = _chomp(text)
    return f"{before}{mark}{text}{mark}{after}" if text else ""


def _inline_code(text: str) -> str:
    before, after, text = _chomp(text)
    if not text:
        return ""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    if longest:
        text = f" {text} "
    fence = "`" * (longest + 1)
    return f"{before}{fence}{text}{fence}{after}"


def _link(node: LexborNode, text: str) -> str:
    before, after, text = _chomp(text)
    if not text:
        return ""
    href = node.attributes.get("href")
    title = node.attributes.get("title")
    if not href:
        return text
    if text == href and not title:
        return f"<{href}>"
    title_part = ' "{}"'.format(title.replace('"', '\\"')) if title else ""
    return f"{before}[{text}]({href}{title_part}){after}"


def _image(node: LexborNode, ctx: int) -> str:
    alt = node.attributes.get("alt") or ""
    if ctx & _INLINE:
        return alt
    src = node.attributes.get("src") or ""
    title = node.attributes.get("title") or ""
    title_part = ' "{}"'.format(title.replace('"', '\\"')) if title else ""
    return f"![{alt}]({src}{title_part})"


def _blockquote(text: str, ctx: int) -> str:
    text = text.strip(" \t\r\n")
    if ctx & _INLINE:
        return f" {text} "
    if not text:
        return "\n"
    return "\n" + _LINE.sub(lambda m: "> " + m.group(1) if m.group(1) else ">", text) + "\n\n"


def _pre(node: LexborNode) -> str:
    """A ChatGPT code block: language from the highlighter's class; the header and button are dropped."""
    code = node.css_first("code")
    language = ""
    if code is None:
        text = node.text(deep=True)
    else:
        text = code.text(deep=True)
        found = _LANGUAGE_CLASS.search(code.attributes.get("class") or "")
        language = found.group(1) if found else ""
    text = _PRE_TAIL.sub("", _PRE_HEAD.sub("", text))
    if not text:
        return ""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"\n\n{fence}{language}\n{text}\n{fence}\n\n"


def _list(node: LexborNode, ctx: int, before_paragraph: bool) -> str:
    text = _children(node, _enter(ctx, node.tag))
    if ctx & _IN_LI:
        return "\n" + text.rstrip()
    return "\n\n" + text + ("\n" if before_paragraph else "")


def _li(node: LexborNode, ctx: int, ordered: LexborNode | None, position: int) -> str:
    text = _children(node, ctx | _IN_LI).strip()
    if not text:
        return "\n"
    if ordered:
        start = ordered.attributes.get("start") or ""
        bullet = f"{(int(start) if start.isdigit() else 1) + position - 1}. "
    else:
        bullet = _BULLETS[max(0, ctx // _UL - 1) % len(_BULLETS)] + " "
    indent = " " * len(bullet)
    text = _LINE.sub(lambda m: indent + m.group(1) if m.group(1) else "", text)
    return bullet + text[len(bullet):] + "\n"


def _colspan(cell: LexborNode) -> int:
    span = cell.attributes.get("colspan") or ""
    return max(1, min(1000, int(span))) if span.isdigit() else 1


def _previous_element(node: LexborNode) -> LexborNode | None:
    node = node.prev
    while node is not None and node.tag in ("-text", "-comment"):
        node = node.prev
    return node


def _row(row: LexborNode, text: str) -> str:
    """A table row, with the header rule after a header row and an empty header over a headless table."""
    cells = [kid for kid in row.iter() if kid.tag in ("td", "th")]
    parent = row.parent
    parent_tag = parent.tag if parent is not None else ""
    first = _previous_element(row) is None
    width = sum(_colspan(cell) for cell in cells)
    header_row = all(cell.tag == "th" for cell in cells) or (
        parent_tag == "thead" and sum(kid.tag == "tr" for kid in parent.iter()) == 1
    )
    table = parent.parent if parent is not None else None
    has_thead = table is not None and any(kid.tag == "thead" for kid in table.iter())
    rule = "| " + " | ".join(["---"] * width) + " |\n"
    if first and header_row:
        return f"|{text}\n{rule}"
    if first and (parent_tag != "tbody" or not has_thead or _previous_element(parent) is None):
        return "| " + " | ".join([""] * width) + " |\n" + rule + f"|{text}\n"
    return f"|{text}\n"


_LEAVES = {
    "pre": lambda node, ctx: _pre(node),
    "br": lambda node, ctx: " " if ctx & _INLINE else "  \n",
    "hr": lambda node, ctx: "\n\n---\n\n",
    "img": _image,
}
_BLOCKS_LIKE_P = frozenset({"p", "div", "article", "section", "dl", "dt", "dd", "figure", "figcaption"})
_HEADINGS = {f"h{level}": "#" * level + " " for level in range(1, 7)}
