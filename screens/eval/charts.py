"""The Eval screen's drawings, from a run's report.json and samples.jsonl: a bar chart of mean
P(AI) per row with the source and human levels marked on every choice's bar, P(AI)
distributions as one histogram line per row, and one held-out sample side by side (AI draft |
a choice's rewrite | human) with its scores and its slop phrases highlighted (found with
engine/eval/slop.py, the finder the eval counts them with).

The render functions are pure (text in, Rich out), so they are tested without an app; the
widgets draw them at their own size and are redrawn only when `set_data` is called (the
screen does that on its 3-a-second redraw timer, never per event)."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from engine.eval.slop import slop_hits
from screens.eval.widgets import DASH, calibrated, det_cell

BLOCKS = " ▏▎▍▌▋▊▉█"
LEVELS = "▁▂▃▄▅▆▇█"
ROW_STYLE = {"source": "dark_orange", "human": "green3", "choice": "dodger_blue1"}
SOURCE_MARK, HUMAN_MARK = "│", "┆"
SIDE_TITLES = {"draft": "AI draft", "human": "human"}


def _label_width(labels: list[str], width: int) -> int:
    return min(max((len(x) for x in labels), default=4), max(6, width // 4))


def _clip(label: str, n: int) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def render_bars(report: dict | None, detector: str | None, width: int) -> Text:
    """Mean P(AI) per row on `detector` as horizontal bars on a 0..1 scale; every choice's bar
    carries the source (│) and human (┆) levels, so how far it moved is read off the bar."""
    if not report or detector is None:
        return Text("no detector scored this run", style="dim")
    title = Text.assemble(("Mean P(AI) · ", "bold"), (detector, "bold"), ("   d: next detector", "dim"))
    if not calibrated(report, detector):
        return title + Text(f"\n{detector} is uncalibrated: it has scores but no P(AI) to chart "
                            "(`humanizer detect calibrate` fits its profile)", style="dim")
    rows = (report.get("table") or {}).get("rows") or []
    levels = {r.get("row"): det_cell(r, detector).get("p_ai") for r in rows}
    src, hum = levels.get("source"), levels.get("human")
    lw = _label_width([str(r.get("row")) for r in rows], width)
    bar_w = max(8, width - lw - 8)
    out = [title]
    legend = Text(" " * (lw + 1))
    if src is not None:
        legend.append(f"{SOURCE_MARK} source {src:.3f}", style=ROW_STYLE["source"])
    if hum is not None:
        legend.append(f"   {HUMAN_MARK} human {hum:.3f}", style=ROW_STYLE["human"])
    out.append(legend)
    for r in rows:
        label, kind, p = str(r.get("row")), r.get("kind"), levels.get(r.get("row"))
        line = Text(_clip(label, lw).ljust(lw) + " ", style="bold" if kind == "choice" else "italic")
        if p is None:
            line.append(DASH + " " + (det_cell(r, detector).get("missing") or {}).get("p_ai", ""), style="dim")
            out.append(line)
            continue
        eighths = round(min(1.0, max(0.0, p)) * bar_w * 8)
        cells = ["█"] * (eighths // 8) + ([BLOCKS[eighths % 8]] if eighths % 8 else [])
        cells += [" "] * (bar_w - len(cells))
        styles = [ROW_STYLE.get(kind, ROW_STYLE["choice"])] * bar_w
        if kind == "choice":
            for level, mark, key in ((src, SOURCE_MARK, "source"), (hum, HUMAN_MARK, "human")):
                if level is not None:
                    at = min(bar_w - 1, max(0, round(level * bar_w)))
                    cells[at], styles[at] = mark, f"bold {ROW_STYLE[key]}"
        for c, st in zip(cells, styles):
            line.append(c, style=st)
        line.append(f" {p:.3f}", style="bold")
        out.append(line)
    axis = Text(" " * (lw + 1), style="dim")
    mid = bar_w // 2
    axis.append("0" + "─" * (mid - 2) + "0.5" + "─" * (bar_w - mid - 3) + "1", style="dim")
    out.append(axis)
    return Text("\n").join(out)


def p_values(samples: list[dict], detector: str | None, row: str) -> list[float]:
    """P(AI) of every scored text of `row` in samples.jsonl (uncalibrated: none)."""
    out = []
    for s in samples:
        v = ((s.get("scores") or {}).get(detector or "") or {}).get(row, {}).get("p_ai")
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def histogram(values: list[float], bins: int) -> list[int]:
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return counts


def render_distributions(report: dict | None, samples: list[dict], detector: str | None, width: int) -> Text:
    """One histogram line per row: how the texts' P(AI) spread over 0..1 (each row scaled to its
    own fullest bin; · = no text there), with the count and the median."""
    if not report or detector is None:
        return Text()
    title = Text.assemble(("P(AI) distribution · ", "bold"), (detector, "bold"))
    if not calibrated(report, detector):
        return title + Text(f"\n{detector} is uncalibrated: no P(AI) per text", style="dim")
    rows = [(str(r.get("row")), r.get("kind")) for r in (report.get("table") or {}).get("rows") or []]
    lw = _label_width([label for label, _ in rows], width)
    bins = 20 if width - lw - 18 >= 20 else 10
    out = [title]
    for label, kind in rows:
        values = p_values(samples, detector, label)
        line = Text(_clip(label, lw).ljust(lw) + " ", style="bold" if kind == "choice" else "italic")
        if not values:
            line.append(DASH + " no scored text", style="dim")
            out.append(line)
            continue
        counts = histogram(values, bins)
        top = max(counts)
        style = ROW_STYLE.get(kind, ROW_STYLE["choice"])
        for c in counts:
            line.append(LEVELS[max(0, math.ceil(c / top * len(LEVELS)) - 1)] if c else "·",
                        style=style if c else "dim")
        values.sort()
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
        line.append(f" n={len(values)} median {median:.2f}", style="dim")
        out.append(line)
    axis = Text(" " * (lw + 1), style="dim")
    axis.append("0" + " " * (bins - 2) + "1", style="dim")
    out.append(axis)
    return Text("\n").join(out)


def highlight_slop(text: str, style: str = "reverse") -> tuple[Text, list[str]]:
    """`text` with every slop phrase the eval counts highlighted, and the phrases found."""
    out, at, found = Text(), 0, []
    for hit in slop_hits(text or ""):
        out.append(text[at:hit.start])
        out.append(text[hit.start:hit.end], style=style)
        at = hit.end
        found.append(hit.phrase)
    out.append((text or "")[at:])
    return out, found


def _scores_line(sample: dict, row: str, detectors: list[str], detector: str | None) -> Text:
    """P(AI) (or the raw score of an uncalibrated detector) by each detector, the shown one first."""
    line = Text("P(AI)", style="dim")
    for name in sorted(detectors, key=lambda n: n != detector):
        s = ((sample.get("scores") or {}).get(name) or {}).get(row) or {}
        value = (f"{s['p_ai']:.2f}" if s.get("p_ai") is not None
                 else f"score {s['score']:+.2f}" if s.get("score") is not None else f"— {s.get('skipped') or ''}")
        line.append(f"\n{name} ", style="bold" if name == detector else "")
        line.append(value, style="bold" if name == detector else "")
        if s.get("truncated"):
            line.append(" (cut)", style="dim")
    return line


def sample_view(sample: dict, choice: str, detectors: list[str], detector: str | None,
                limit: int = 1500) -> Table:
    """One held-out sample side by side: AI draft | `choice`'s rewrite | human; each with its
    scores by every detector (the shown one first) and its slop phrases highlighted."""
    table = Table(box=box.MINIMAL, expand=True, padding=(0, 1), show_edge=False)
    for key in ("draft", "rewrite", "human"):
        table.add_column(SIDE_TITLES.get(key, f"{choice} rewrite"), ratio=1, overflow="fold", header_style="bold")
    cells = []
    for key in ("draft", "rewrite", "human"):
        row = {"draft": "source", "human": "human"}.get(key, choice)
        rw = (sample.get("rewrites") or {}).get(choice) or {}
        text = sample.get(key) if key != "rewrite" else rw.get("text")
        cell = _scores_line(sample, row, detectors, detector)
        if key == "rewrite":
            bits = []
            if rw.get("length_ratio") is not None:
                bits.append(f"length ×{rw['length_ratio']:.2f}")
            for k, name in (("cos_draft", "cos→draft"), ("cos_human", "cos→human")):
                if rw.get(k) is not None:
                    bits.append(f"{name} {rw[k]:.2f}")
            if bits:
                cell.append("\n" + " · ".join(bits), style="dim")
            problem = rw.get("error") or rw.get("degenerate") or rw.get("skipped")
            if problem:
                cell.append(f"\n✗ {'not generated' if rw.get('error') else 'degenerate'}: {problem}",
                            style="bold red")
        shown_text, found = highlight_slop(str(text or "")[:limit])
        cell.append(f"\nslop: {', '.join(found)}" if found else "\nslop: none", style="italic" if found else "dim")
        cell.append("\n\n")
        cell.append_text(shown_text if text else Text("(empty)", style="dim"))
        cells.append(cell)
    table.add_row(*cells)
    return table


class BarChart(Widget):
    """render_bars at the widget's width; as tall as the chart."""

    DEFAULT_CSS = "BarChart { height: auto; min-height: 1; width: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.report: dict | None = None
        self.detector: str | None = None

    def set_data(self, report: dict | None, detector: str | None) -> None:
        self.report, self.detector = report, detector
        self.refresh(layout=True)

    def render(self) -> Text:
        return render_bars(self.report, self.detector, self.content_size.width or 70)

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(render_bars(self.report, self.detector, width or 70).plain.splitlines()) or 1


class Distributions(BarChart):
    """render_distributions at the widget's width."""

    DEFAULT_CSS = "Distributions { height: auto; min-height: 1; width: 1fr; margin-top: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.samples: list[dict] = []

    def set_data(self, report: dict | None, detector: str | None, samples: list[dict] | None = None) -> None:
        self.samples = samples or []
        super().set_data(report, detector)

    def render(self) -> Text:
        return render_distributions(self.report, self.samples, self.detector, self.content_size.width or 70)

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(render_distributions(self.report, self.samples, self.detector, width or 70).plain.splitlines()) or 1
