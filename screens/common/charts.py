"""A terminal line chart: several named series drawn with Unicode braille (2x4 dots a
cell), min/max labels on both axes and a legend with each series' latest value. Plain
Rich text in a Textual widget, no plotting dependency.

Series stay apart without colour (NO_COLOR, monochrome terminals, screenshots): each
style has a marker glyph (● ◆ ○ ◇ ■ ▲) that the legend shows, that marks every data
point of a sparse series (an eval every N steps) and the last point of any series, and
a dash pattern (solid, dashed, dotted, sparse dots, ...; an overlaid second run gets the
dotted ones).

`render_chart()` is a pure function of the data and the size, so it is tested without an
app; `LineChart` is the widget, redrawn only when `set_series` is called."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rich.text import Text
from textual.widget import Widget


@dataclass(frozen=True)
class SeriesStyle:
    color: str
    marker: str
    dash: tuple[int, int]  # pixels on, pixels off along the line; (1, 0) is solid


STYLES: tuple[SeriesStyle, ...] = (
    SeriesStyle("dodger_blue1", "●", (1, 0)),
    SeriesStyle("dark_orange", "◆", (3, 2)),
    SeriesStyle("medium_purple1", "○", (1, 1)),
    SeriesStyle("green3", "◇", (1, 3)),
    SeriesStyle("deep_pink2", "■", (2, 1)),
    SeriesStyle("gold3", "▲", (1, 2)),
)

# bit of the braille dot at (column 0-1, row 0-3) within a cell
_DOT = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_BRAILLE = 0x2800


@dataclass
class Series:
    name: str
    points: Sequence[tuple[float, float]] = field(default_factory=list)  # (x, y), x ascending
    style: int = 0  # index into STYLES


def fmt_num(v: float | None, digits: int = 4) -> str:
    """A compact number for labels: 4 significant digits, exponent only when needed."""
    if v is None or not math.isfinite(v):
        return "—"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.{max(1, digits - 2)}e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    if float(v).is_integer() and a < 1e5:
        return str(int(v))
    return f"{v:.{digits}g}"


def _finite(points) -> list[tuple[float, float]]:
    out = []
    for x, y in points:
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


def _legend(series: list[Series], fmt: Callable) -> list[Text]:
    items = []
    for s in series:
        st = STYLES[s.style % len(STYLES)]
        item = Text(st.marker + " ", style=st.color)
        item.append(s.name)
        if s.points:
            item.append(" " + fmt(s.points[-1][1]), style="bold")
        items.append(item)
    return items


def _pack(title: str, items: list[Text], width: int) -> list[Text]:
    """The title and legend items on as few lines of `width` as they fit."""
    lines = [Text(title, style="bold")] if title else [Text()]
    for item in items:
        line = lines[-1]
        gap = 2 if line.cell_len else 0
        if line.cell_len and line.cell_len + gap + item.cell_len > width:
            lines.append(item.copy())
        else:
            line.append(" " * gap)
            line.append_text(item)
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines


def _bresenham(x0: int, y0: int, x1: int, y1: int):
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        yield x0, y0
        if x0 == x1 and y0 == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


def render_chart(series: Sequence[Series], width: int, height: int, *, title: str = "",
                 y_min: float | None = None, y_max: float | None = None, x_min: float | None = None,
                 x_max: float | None = None, x_label: str = "step",
                 fmt: Callable[[float], str] = fmt_num, axis_fmt: Callable[[float], str] | None = None,
                 empty: str = "no data yet") -> Text:
    """The chart as `height` lines of at most `width` cells. `fmt` formats the legend's
    latest values, `axis_fmt` the axis labels (3 significant digits by default). The axes
    span the data unless `y_min`/`y_max`/`x_min`/`x_max` fix an end (several charts of
    one run share their x range that way)."""
    axis_fmt = axis_fmt or (lambda v: fmt_num(v, 3))
    width, height = max(0, int(width)), max(0, int(height))
    if width == 0 or height == 0:
        return Text()
    clean = [Series(s.name, _finite(s.points), s.style) for s in series]
    head = _pack(title, _legend(clean, fmt), width)
    pts = [p for s in clean for p in s.points]
    if not pts:
        return _fit(head[: max(1, height - 1)] + [Text(empty, style="dim italic")], width, height)

    # ranges -------------------------------------------------------------------------
    lo = min(y for _, y in pts) if y_min is None else y_min
    hi = max(y for _, y in pts) if y_max is None else y_max
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        pad = abs(hi) * 0.05 or 1.0
        lo, hi = (lo - pad, hi + pad) if y_min is None and y_max is None else (
            (lo, lo + pad) if y_min is not None else (hi - pad, hi))
    xs = [x for x, _ in pts]
    x0 = min(xs) if x_min is None else min(x_min, min(xs))
    x1 = max(xs) if x_max is None else max(x_max, max(xs))
    if x1 <= x0:
        x1 = x0 + 1

    # room: header lines, plot rows, one x-axis row --------------------------------------
    max_head = max(1, height - 3)
    head = head[:max_head]
    rows = height - len(head) - 1
    labels = {0: axis_fmt(hi), rows - 1: axis_fmt(lo)} if rows > 0 else {}
    if rows >= 5:
        labels.setdefault(rows // 2, axis_fmt((hi + lo) / 2))
    label_w = max((len(v) for v in labels.values()), default=0)
    cols = width - label_w - 1
    if rows < 1 or cols < 4:  # too small to draw: the title and latest values only
        return _fit(head + [Text("(too small to plot)", style="dim")], width, height)

    # plot --------------------------------------------------------------------------------
    pw, ph = cols * 2, rows * 4
    bits = [[0] * cols for _ in range(rows)]
    owner = [[-1] * cols for _ in range(rows)]
    marks: dict[tuple[int, int], int] = {}

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = round((x - x0) / (x1 - x0) * (pw - 1))
        py = round((hi - min(max(y, lo), hi)) / (hi - lo) * (ph - 1))
        return px, py

    for s in reversed(clean):  # the first series ends up on top
        if not s.points:
            continue
        sidx = s.style % len(STYLES)
        on, off = STYLES[sidx].dash
        period = on + off
        pix = []
        for x, y in s.points:
            p = to_px(x, y)
            if not pix or pix[-1] != p:
                pix.append(p)
        walk = 0
        path = [pix[0]] if len(pix) == 1 else []
        for a, b in zip(pix, pix[1:]):
            seg = list(_bresenham(*a, *b))
            path.extend(seg if not path else seg[1:])
        for px, py in path:
            if walk % period < on:
                r, c = py // 4, px // 2
                bits[r][c] |= _DOT[px % 2][py % 4]
                owner[r][c] = sidx
            walk += 1
        sparse = len(s.points) <= max(1, cols // 3)
        for px, py in (pix if sparse else pix[-1:]):
            marks[(py // 4, px // 2)] = sidx

    # text ---------------------------------------------------------------------------------
    out = list(head)
    for r in range(rows):
        line = Text()
        label = labels.get(r)
        line.append((label or "").rjust(label_w), style="dim")
        line.append("┤" if label is not None else "│", style="dim")
        for c in range(cols):
            if (r, c) in marks:
                st = STYLES[marks[(r, c)]]
                line.append(st.marker, style=f"bold {st.color}")
            elif bits[r][c]:
                line.append(chr(_BRAILLE + bits[r][c]), style=STYLES[owner[r][c]].color)
            else:
                line.append(" ")
        out.append(line)
    left, right = axis_fmt(x0), (axis_fmt(x1) if max(xs) > x0 or x_max is not None else "")
    fill = cols - len(left) - len(right)
    axis = Text(" " * label_w + "└", style="dim")
    if fill >= len(x_label) + 4:
        a = (fill - len(x_label) - 2) // 2
        axis.append(left + "─" * a + f" {x_label} " + "─" * (fill - a - len(x_label) - 2) + right, style="dim")
    elif fill >= 1:
        axis.append(left + "─" * fill + right, style="dim")
    else:
        axis.append("─" * cols, style="dim")
    out.append(axis)
    return _fit(out, width, height)


def _fit(lines: list[Text], width: int, height: int) -> Text:
    lines = [line.copy() for line in lines[:height]]
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return Text("\n").join(lines)


class LineChart(Widget):
    """A `render_chart` that fills the widget; call `set_series` to redraw it."""

    DEFAULT_CSS = """
    LineChart { height: 10; min-height: 3; width: 1fr; }
    """

    def __init__(self, title: str = "", *, y_min: float | None = None, y_max: float | None = None,
                 x_label: str = "step", empty: str = "no data yet", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title, self.y_min, self.y_max, self.x_label, self.empty = title, y_min, y_max, x_label, empty
        self.x_range: tuple[float | None, float | None] = (None, None)
        self.series: list[Series] = []

    def set_series(self, series: Sequence[Series], title: str | None = None,
                   x_range: tuple[float | None, float | None] = (None, None)) -> None:
        self.series = list(series)
        self.x_range = x_range
        if title is not None:
            self.title = title
        self.refresh()

    def render(self) -> Text:
        size = self.content_size
        return render_chart(self.series, size.width, size.height, title=self.title, y_min=self.y_min,
                            y_max=self.y_max, x_min=self.x_range[0], x_max=self.x_range[1], x_label=self.x_label,
                            empty=self.empty)
