"""The Convert screen's pieces that need no app: a convert job's history read from its
events, and pure renderers (plain Rich text) for the layer grid, the sensitivity bars
and the budget gauge, so they are tested without Textual.

Every coloured thing also reads without colour (NO_COLOR, screenshots): a grid cell
holds its chosen bits as a digit (F for a layer kept in float16, ~4 for provisional bits
estimated during the calibration pass, ? for measured and waiting for the allocation, ·
for not measured yet); the gauge marks the target with ┃."""

from __future__ import annotations

import math

from rich.text import Text

from engine.convert.settings import setting_fields
from engine.jobs import JobInfo
from engine.workspace import human_bytes
from screens.common.history import JobHistory

DEFAULTS = {f.name: f.default for f in setting_fields()}  # what a job's settings leave out

# the grid's columns, as engine.convert.MODULE_NAMES names them
GRID_COLUMNS = ("q", "k", "v", "o", "gate", "up", "down", "embedding", "head")
COLUMN_LABELS = {"embedding": "emb"}
CELL = 5  # cells of a grid column
LABEL = 6  # cells of a row label ("L12  ")
BITS_STYLE = {  # background colour per chosen bit width (the digit is shown too)
    2: "bold white on red3", 3: "bold black on dark_orange", 4: "bold black on gold3",
    5: "bold black on yellow3", 6: "bold black on green3", 8: "bold black on dodger_blue2",
    16: "bold white on medium_purple4",
}
PENDING, MEASURED, PROVISIONAL = "·", "?", "~"


def is_convert_job(job: JobInfo) -> bool:
    return job.kind == "convert"


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class ConvertHistory(JobHistory):
    """One convert's events, read incrementally: every layer's latest `layer` event (in
    the convert's order), the latest progress, the budget metric, done/error."""

    def __init__(self, job: JobInfo) -> None:
        super().__init__(job)
        self.layers: dict[str, dict] = {}  # path -> its latest layer event, measured or allocated
        self.estimates: dict[str, dict] = {}  # path -> its latest estimate (during the calibration pass)
        self.metric: dict = {}
        self.total_layers: int | None = None

    def feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "layer" and ev.get("path"):
            (self.estimates if ev.get("phase") == "estimate" else self.layers)[str(ev["path"])] = ev
            if isinstance(ev.get("total"), int):
                self.total_layers = ev["total"]
        elif kind == "metric":
            values = ev.get("values") or {}
            self.metric.update({k: v for k, v in values.items() if _num(v) is not None})
        else:
            super().feed(ev)

    # what the view shows -----------------------------------------------------------------
    @property
    def target(self) -> float | None:
        return _num(self.metric.get("target_bpw")) or _num(self.args.get("target_bpw"))

    @property
    def candidate_bits(self) -> list[int]:
        bits = self.args.get("candidate_bits") or DEFAULTS["candidate_bits"]
        parts = bits.split(",") if isinstance(bits, str) else bits  # "4,8" as typed, [4, 8] as recorded
        return sorted({int(b) for b in parts if str(b).strip().isdigit()})

    @property
    def group_size(self) -> int:
        g = self.args.get("group_size")
        return int(g) if str(g).isdigit() else DEFAULTS["group_size"]

    def ordered(self) -> list[dict]:
        return sorted(self.layers.values(), key=lambda e: e.get("index", 0))

    def shown_layers(self) -> list[dict]:
        """Each layer's measured or allocated event, else its estimate, in the convert's order."""
        merged = {**self.estimates, **self.layers}
        return sorted(merged.values(), key=lambda e: e.get("index", 0))

    def estimated_from(self) -> tuple[int, int] | None:
        """(calibration samples, of how many) behind the latest estimates, while any is shown."""
        if not self.estimates or self.allocated():
            return None
        ev = max(self.estimates.values(), key=lambda e: e.get("samples") or 0)
        return ev.get("samples") or 0, ev.get("of") or 0

    def measured(self) -> int:
        return len(self.layers)

    def allocated(self) -> bool:
        return any(e.get("phase") == "allocated" for e in self.layers.values())

    def bpw_now(self) -> float | None:
        """Achieved bits per weight: the allocation's, else the quantizable layers' so far."""
        if self.done and _num(self.done.get("achieved_bpw")) is not None:
            return float(self.done["achieved_bpw"])
        if _num(self.metric.get("achieved_bpw")) is not None:
            return float(self.metric["achieved_bpw"])
        chosen = [(e.get("params") or 0, _num(e.get("bpw"))) for e in self.layers.values()
                  if e.get("phase") == "allocated"]
        total = sum(p for p, b in chosen if b is not None)
        return sum(p * b for p, b in chosen if b is not None) / total if total else None


# renderers ---------------------------------------------------------------------------------
def bits_cell(ev: dict | None, estimate: dict | None = None) -> Text:
    """One grid cell: the chosen bits as a digit on its colour; before the allocation the
    provisional bits of the latest estimate (~4, not bold), else ? (measured) or ·."""
    if ev is None or (ev.get("phase") != "allocated" and ev.get("chosen_bits") != 16):
        guess = (estimate or {}).get("chosen_bits")
        if guess is not None:
            style = BITS_STYLE.get(int(guess), "reverse").replace("bold ", "")
            return Text(f"{PROVISIONAL}{guess}".center(CELL - 1), style=style) + Text(" ")
    if ev is None:
        return Text(PENDING.center(CELL - 1) + " ", style="dim")
    bits = ev.get("chosen_bits")
    if ev.get("phase") != "allocated" and bits != 16:
        return Text(MEASURED.center(CELL - 1), style="bold reverse") + Text(" ")
    if bits is None:
        return Text(MEASURED.center(CELL - 1), style="bold reverse") + Text(" ")
    label = "F" if bits == 16 else str(bits)
    return Text(label.center(CELL - 1), style=BITS_STYLE.get(int(bits), "bold reverse")) + Text(" ")


def render_grid(h: ConvertHistory, plan_layers: list[dict] | None = None) -> Text:
    """Blocks as rows (the embedding and the head on a first row), modules as columns."""
    by_cell: dict[tuple, dict] = {}
    guesses: dict[tuple, dict] = {}
    blocks: set[int] = set()
    for ev in (plan_layers or []):
        if ev.get("block") is not None:
            blocks.add(int(ev["block"]))
    for cells, events in ((guesses, h.estimates.values()), (by_cell, h.ordered())):
        for ev in events:
            block = ev.get("block")
            if block is not None:
                blocks.add(int(block))
            for module in ev.get("modules") or [ev.get("module")]:
                cells[(block, module)] = ev
    extra = sorted({m for (_, m) in {**guesses, **by_cell} if m not in GRID_COLUMNS})
    columns = list(GRID_COLUMNS) + extra
    head = Text(" " * LABEL)
    for c in columns:
        head.append(COLUMN_LABELS.get(c, c)[: CELL - 1].center(CELL - 1) + " ", style="bold")
    lines = [head]
    top = Text("model".ljust(LABEL), style="dim")
    for c in columns:
        if c in ("embedding", "head"):
            top.append_text(bits_cell(by_cell.get((None, c)), guesses.get((None, c))))
        else:
            top.append(" " * CELL)
    lines.append(top)
    for b in sorted(blocks):
        row = Text(f"L{b}".ljust(LABEL), style="dim")
        for c in columns:
            if c in ("embedding", "head"):
                row.append(" " * CELL)
            else:
                row.append_text(bits_cell(by_cell.get((b, c)), guesses.get((b, c))))
        lines.append(row)
    return Text("\n").join(lines)


def legend(bits: list[int]) -> Text:
    line = Text()
    for b in list(bits) + [16]:
        line.append(("F" if b == 16 else str(b)).center(3), style=BITS_STYLE.get(b, "reverse"))
        line.append(" float16  " if b == 16 else f" {b}-bit  ")
    line.append(f"{PROVISIONAL}4 provisional (estimated)  {MEASURED} measured, waiting for the allocation  "
                f"{PENDING} not measured", style="dim")
    return line


def fmt_size(n: float | None) -> str:
    return human_bytes(n, missing="—")


def fmt_sci(v: float | None) -> str:
    return "—" if v is None else f"{v:.2e}"


def layer_label(ev: dict) -> str:
    if ev.get("block") is None:
        return "+".join(ev.get("modules") or [ev.get("module") or "?"])
    return f"L{ev['block']} {ev.get('module')}"


def render_sensitivity(h: ConvertHistory, width: int = 60) -> Text:
    """Each measured layer's sensitivity at the fewest candidate bits (predicted KL per token
    when that layer alone gets them), as a bar on a log scale shared by all layers."""
    bits = h.candidate_bits
    low = str(bits[0]) if bits else None
    rows = []
    for ev in h.shown_layers():
        sens = ev.get("sensitivity") or {}
        v = _num(sens.get(low)) if low else None
        if v is None and sens:
            v = _num(sens[sorted(sens, key=lambda k: int(k) if str(k).isdigit() else 99)[0]])
        rows.append((ev, v))
    if not rows:
        return Text("no layer measured yet", style="dim italic")
    values = [v for _, v in rows if v is not None and v > 0]
    lo, hi = (math.log10(min(values)), math.log10(max(values))) if values else (0.0, 0.0)
    name_w = min(14, max(len(layer_label(ev)) for ev, _ in rows))
    bar_w = max(4, width - name_w - 20)
    title = Text(f"Sensitivity at {low}-bit (KL/token, log scale)" if low else "Sensitivity", style="bold")
    source = h.estimated_from()
    if source and len(h.layers) < len(rows):
        title.append(f"  {PROVISIONAL} estimated from {source[0]}/{source[1]} calibration samples", style="dim")
    lines = [title]
    for ev, v in rows:
        line = Text(layer_label(ev)[:name_w].ljust(name_w) + " ")
        if v is None or v <= 0:
            frac = 0.0
        elif hi - lo < 1e-9:
            frac = 1.0
        else:
            frac = 0.08 + 0.92 * (math.log10(v) - lo) / (hi - lo)
        full = round(frac * bar_w)
        line.append("█" * full, style="dark_orange")
        line.append("░" * (bar_w - full), style="dim")
        line.append(f" {fmt_sci(v) if ev.get('chosen_bits') != 16 or v else 'float16':>8}")
        b = ev.get("chosen_bits")
        tag = " → F" if b == 16 else (f" → {b}" if ev.get("phase") == "allocated" and b is not None else
                                      f" {PROVISIONAL} {b}" if ev.get("phase") == "estimate" and b is not None else "    ")
        line.append(tag, style="bold")
        lines.append(line)
    return Text("\n").join(lines)


def render_gauge(bpw: float | None, target: float | None, lo: float, hi: float, width: int = 40) -> Text:
    """A bar from `lo` to `hi` bits per weight: filled up to `bpw`, the target marked ┃."""
    width = max(8, width)
    span = (hi - lo) or 1.0

    def pos(v: float) -> int:
        return min(width - 1, max(0, round((v - lo) / span * (width - 1))))

    filled = pos(bpw) + 1 if bpw is not None else 0
    mark = pos(target) if target is not None else None
    line = Text(f"{lo:g} ", style="dim")
    for i in range(width):
        if i == mark:
            line.append("┃", style="bold red")
        elif i < filled:
            line.append("━", style="bold green")
        else:
            line.append("─", style="dim")
    line.append(f" {hi:g}", style="dim")
    return line
