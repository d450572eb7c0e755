"""Charts for the HTML report, drawn server-side as inline SVG.

The report must open offline and fast on 100K records, so it ships aggregates as finished SVG rather than
data plus a charting library. Every label passes through `html.escape`: labels can come from record text
(verbs, objects, rejection reasons), and an SVG label is markup like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
_FONT = "font-family:system-ui,sans-serif"


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _svg(width: float, height: float, body: list[str], label: str, kind: str = "chart") -> str:
    return (f'<svg class="{kind}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} {height:g}" '
            f'width="{width:g}" height="{height:g}" role="img" aria-label="{escape(label)}" '
            f'style="{_FONT}">' + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, size: int = 10, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>'
            f"{escape(text)}</text>")


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" fill="{fill}">'
            f"<title>{escape(title)}</title></rect>")


def bars(labels: Sequence[str], counts: Sequence[int], fill: str, label: str, unit: str,
         width: int = 380, height: int = 170) -> str:
    """Vertical bars over ordered bins (a histogram when the labels are ranges)."""
    left, bottom, top = 36, 30, 12
    plot_w, plot_h = width - left - 24, height - bottom - top
    peak = max(counts, default=0) or 1
    step = plot_w / max(len(counts), 1)
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 24}" y2="{top + plot_h}" stroke="#999"/>',
            _text(left - 4, top + 8, f"{peak:,}", 9, "end"), _text(left - 4, top + plot_h, "0", 9, "end")]
    for i, (name, count) in enumerate(zip(labels, counts, strict=True)):
        h = plot_h * count / peak
        body.append(_rect(left + i * step + 0.5, top + plot_h - h, step - 1, h, fill, f"{name}: {count:,} {unit}"))
    for i in _tick_positions(len(labels)):
        body.append(_text(left + (i + 0.5) * step, height - bottom + 13, labels[i], 9, "middle"))
    return _svg(width, height, body, label)


def _tick_positions(n: int, most: int = 6) -> list[int]:
    if n <= most:
        return list(range(n))
    stride = math.ceil(n / most)
    return list(range(0, n, stride))


def hbars(rows: Sequence[tuple[str, int]], fill: str, label: str, width: int = 380) -> str:
    """Horizontal bars with counts and shares of their sum: categories such as languages."""
    row_h, left, right = 18, 110, 90
    total = sum(count for _, count in rows)
    peak = max((count for _, count in rows), default=0) or 1
    body = []
    for i, (name, count) in enumerate(rows):
        y = 4 + i * row_h
        share = f"{count / total:.1%}" if total else "0%"
        w = (width - left - right) * count / peak
        body.append(_text(left - 6, y + 12, _clip(name, 18), 10, "end"))
        body.append(_rect(left, y + 2, w, row_h - 5, fill, f"{name}: {count:,} ({share})"))
        body.append(_text(left + w + 4, y + 12, f"{count:,} · {share}", 9))
    return _svg(width, 8 + row_h * len(rows), body, label)


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


@dataclass
class Ring:
    """One inner-ring segment of a sunburst (a verb) and its outer segments (its objects)."""

    name: str
    count: int
    children: list[tuple[str, int]]


def _arc(cx: float, cy: float, r_in: float, r_out: float, start: float, end: float) -> str:
    end = min(end, start + 2 * math.pi - 1e-4)
    large = 1 if end - start > math.pi else 0

    def point(r: float, angle: float) -> str:
        return f"{cx + r * math.sin(angle):.2f},{cy - r * math.cos(angle):.2f}"

    return (f"M{point(r_out, start)}A{r_out},{r_out} 0 {large} 1 {point(r_out, end)}"
            f"L{point(r_in, end)}A{r_in},{r_in} 0 {large} 0 {point(r_in, start)}Z")


def _arc_label(cx: float, cy: float, radius: float, start: float, end: float, text: str, size: int) -> str:
    middle = (start + end) / 2
    x, y = cx + radius * math.sin(middle), cy - radius * math.cos(middle)
    degrees = math.degrees(middle) - 90
    if 90 < math.degrees(middle) < 270:
        degrees += 180
    return _text(x, y + size / 3, text, size, "middle", f'transform="rotate({degrees:.1f} {x:.1f} {y:.1f})"'
                 ' pointer-events="none"')


def sunburst(rings: Sequence[Ring], label: str, size: int = 420) -> str:
    """Self-Instruct's verb/object figure: verbs inside, their most common objects outside."""
    cx = cy = size / 2
    r0, r1, r2 = size * 0.1, size * 0.29, size * 0.48
    total = sum(ring.count for ring in rings) or 1
    body, angle = [], 0.0
    for i, ring in enumerate(rings):
        sweep = 2 * math.pi * ring.count / total
        fill = color(i)
        body.append(f'<path d="{_arc(cx, cy, r0, r1, angle, angle + sweep)}" fill="{fill}" stroke="#fff">'
                    f"<title>{escape(ring.name)}: {ring.count:,}</title></path>")
        if sweep > 0.12:
            body.append(_arc_label(cx, cy, (r0 + r1) / 2, angle, angle + sweep, _clip(ring.name, 12), 11))
        inner = angle
        for obj, count in ring.children:
            part = sweep * count / ring.count
            body.append(f'<path d="{_arc(cx, cy, r1, r2, inner, inner + part)}" fill="{fill}" '
                        f'fill-opacity="0.55" stroke="#fff"><title>{escape(ring.name)} → {escape(obj)}: '
                        f"{count:,}</title></path>")
            if part > 0.06:
                body.append(_arc_label(cx, cy, (r1 + r2) / 2, inner, inner + part, _clip(obj, 14), 9))
            inner += part
        angle += sweep
    return _svg(size, size, body, label)


@dataclass
class Stage:
    """One pipeline stage of a funnel: records in and out, and what was dropped for which reason."""

    name: str
    seen: int
    kept: int
    dropped: dict[str, int]


def funnel(stages: Sequence[Stage], label: str, width: int = 760) -> str:
    """Stage by stage, a bar as wide as the stage's input: kept in grey, drops coloured by reason."""
    left, row_h = 150, 34
    spans = [max(stage.seen, stage.kept + sum(stage.dropped.values())) for stage in stages]  # splits add records
    peak = max(spans, default=0) or 1
    scale = (width - left - 150) / peak
    reasons = sorted({reason for stage in stages for reason in stage.dropped})
    fills = {reason: color(i + 3) for i, reason in enumerate(reasons)}
    body = []
    for i, (stage, span) in enumerate(zip(stages, spans, strict=True)):
        y = 6 + i * row_h
        offset = left + (peak - span) * scale / 2
        body.append(_text(left - 8, y + 17, _clip(stage.name, 22), 11, "end"))
        body.append(_rect(offset, y + 4, stage.kept * scale, row_h - 12, "#9aa5b1",
                          f"{stage.name}: {stage.kept:,} of {stage.seen:,} kept"))
        x = offset + stage.kept * scale
        for reason, count in sorted(stage.dropped.items(), key=lambda item: -item[1]):
            body.append(_rect(x, y + 4, count * scale, row_h - 12, fills[reason],
                              f"{stage.name} dropped {count:,}: {reason}"))
            x += count * scale
        body.append(_text(offset + span * scale + 6, y + 17,
                          f"{stage.seen:,} → {stage.kept:,}", 10))
    legend_y = 10 + row_h * len(stages)
    x = left
    for reason in reasons:
        body.append(_rect(x, legend_y, 10, 10, fills[reason], reason))
        body.append(_text(x + 14, legend_y + 9, _clip(reason, 28), 10))
        x += 24 + 6 * min(len(reason), 28)
        if x > width - 120:
            x, legend_y = left, legend_y + 16
    return _svg(width, legend_y + (18 if reasons else 0), body, label, "chart wide")
