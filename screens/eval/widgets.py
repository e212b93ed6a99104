"""The Eval screen's pieces that need no screen: an eval job's history (its progress events, the
newest sample it rewrote, then its report.json and samples.jsonl), the tables with their
bindings, and pure renderers (Rich) of a report: the table's rows, the detectors and why the
headline is the one it is, a run compared with another. The charts and the sample view are in
screens/eval_charts.py. Every number shown comes from the run folder `humanizer eval` wrote
(engine/eval/run.py); nothing is recomputed here but differences between two reports."""

from __future__ import annotations

import json
from pathlib import Path

from rich.text import Text
from textual.binding import Binding

from engine.eval.run import REPORT, SAMPLES
from engine.jobs import JobInfo
from screens.common.history import JobHistory
from screens.common.runs import RunsTable
from screens.common.widgets import LiveTable

DASH = "—"
REF_ROWS = ("source", "human")
# (key, header, format) of the table's detector columns; then the rewrite columns
DET_COLUMNS = [("gap_closed", "gap", "{:+.2f}"), ("auroc", "AUROC", "{:.3f}"),
               ("tpr_at_1pct_fpr", "TPR@1%", "{:.3f}")]
REWRITE_COLUMNS = [("slop_per_1k", "slop/1K", "{:.1f}"), ("cos_draft", "cos→draft", "{:.3f}"),
                   ("length_ratio", "length", "{:.2f}"), ("degenerate_share", "degen.", "{:.0%}")]
# (key, header, format, better): the metrics two runs are compared on; better: "low", "high" or "half"
COMPARED = [("p_ai", "P(AI)", "{:.3f}", "low"), ("gap_closed", "gap", "{:+.2f}", "high"),
            ("slop_per_1k", "slop", "{:.1f}", "low"), ("auroc", "AUROC", "{:.3f}", "half"),
            ("tpr_at_1pct_fpr", "TPR", "{:.3f}", "low")]


def is_eval_job(job: JobInfo) -> bool:
    return job.kind == "eval"


def fmt(value, spec: str) -> str:
    return DASH if value is None else spec.format(value)


class EvalHistory(JobHistory):
    """One eval's events (progress, the newest rewrite it wrote, the report it wrote) and,
    once it is done, its report.json and samples.jsonl (`load_results`, in a worker thread)."""

    def __init__(self, job: JobInfo) -> None:
        super().__init__(job)
        data = str(self.args.get("data") or "?").rstrip("/")
        self.name = Path(data).stem if data.endswith(".jsonl") else Path(data).name
        self.sample: dict | None = None
        self.report_path: str | None = None
        self.report: dict | None = None
        self.samples: list[dict] = []
        self.results_error: str | None = None
        self.results_loaded = False

    @classmethod
    def read(cls, job: JobInfo):
        h = super().read(job)
        if h.job.status == "done":
            h.load_results()
        return h

    def feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "sample":
            self.sample = ev
        elif kind == "artifact" and ev.get("kind") == "eval report":
            self.report_path = str(ev.get("path") or "") or None
        else:
            super().feed(ev)

    def load_results(self) -> None:
        """Read report.json and samples.jsonl (a bad samples line is skipped and counted)."""
        path = Path(self.report_path) if self.report_path else self.job.dir / REPORT
        if not path.is_file():
            path = self.job.dir / REPORT
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(report, dict) or not isinstance((report.get("table") or {}).get("rows"), list):
                raise ValueError("it has no table")
            self.report = report
        except FileNotFoundError:
            self.results_error = f"no {REPORT} in {self.job.dir}"
        except (OSError, ValueError) as e:
            self.results_error = f"{path} is unreadable: {e}"
        samples, bad = [], 0
        try:
            lines = (path.parent / SAMPLES).read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(row, dict):
                samples.append(row)
        self.samples = samples
        if bad and not self.results_error:
            self.results_error = f"{bad} unreadable line{'s' * (bad != 1)} in {SAMPLES} (left out)"
        self.results_loaded = True

    @property
    def choices(self) -> list[str]:
        if self.report:
            return list(self.report.get("choices") or [])
        given = [c.strip() for c in str(self.args.get("choices") or "").split(",") if c.strip()]
        if given:
            return given
        out, stack = ["base"], []
        for a in self.args.get("adapters") or []:
            stack.append(Path(str(a).rstrip("/")).name)
            out.append("+".join(stack))
        return out


# a report's pieces -------------------------------------------------------------------------------
def detector_names(report: dict | None) -> list[str]:
    return [d["name"] for d in (report or {}).get("detectors") or [] if d.get("name")]


def shown_detector(report: dict | None, wanted: str | None) -> str | None:
    """`wanted` when the report has it, else its headline detector, else its first."""
    names = detector_names(report)
    if wanted in names:
        return wanted
    head = ((report or {}).get("headline") or {}).get("detector")
    return head if head in names else (names[0] if names else None)


def calibrated(report: dict, detector: str | None) -> bool:
    return any(d.get("name") == detector and d.get("calibrated") for d in report.get("detectors") or [])


def det_cell(row: dict, detector: str | None) -> dict:
    return (row.get("detectors") or {}).get(detector or "", {}) if detector else {}


def value_of(row: dict, key: str, detector: str | None, cal: bool = True):
    """A table row's value of `key` (a detector column on `detector`, or a rewrite column);
    P(AI) of an uncalibrated detector is its mean score."""
    if key == "p_ai":
        return det_cell(row, detector).get("p_ai" if cal else "mean_score")
    if key in ("gap_closed", "auroc", "tpr_at_1pct_fpr", "delta"):
        return det_cell(row, detector).get(key)
    return row.get(key)


def table_columns(report: dict, detector: str | None) -> list[tuple[str, str]]:
    first = "P(AI)" if detector is None or calibrated(report, detector) else "score"
    return ([("row", "row"), ("p_ai", first)] + [(k, h) for k, h, _ in DET_COLUMNS]
            + [(k, h) for k, h, _ in REWRITE_COLUMNS])


def table_rows(report: dict, detector: str | None) -> list[tuple[str, tuple]]:
    """The report's table as (row label, cells) for `detector`: the reference's columns."""
    cal = calibrated(report, detector)
    out = []
    for r in (report.get("table") or {}).get("rows") or []:
        label = str(r.get("row"))
        p = value_of(r, "p_ai", detector, cal)
        cells = [Text(label, style="bold" if r.get("kind") == "choice" else "italic"),
                 Text(fmt(p, "{:.3f}" if cal else "{:+.3f}"), justify="right")]
        cells += [Text(fmt(value_of(r, k, detector), f), justify="right") for k, _, f in DET_COLUMNS]
        cells += [Text(fmt(r.get(k), f), justify="right") for k, _, f in REWRITE_COLUMNS]
        out.append((label, tuple(cells)))
    return out


def row_detail(report: dict, label: str, detector: str | None) -> Text:
    """One row's numbers the table has no room for, and why any '—' of it is empty."""
    row = next((r for r in (report.get("table") or {}).get("rows") or [] if r.get("row") == label), None)
    if row is None:
        return Text()
    cell = det_cell(row, detector)
    out = Text.assemble((label, "bold"), ": ")
    bits = []
    if cell.get("p_ai") is not None and cell.get("p_ai_ci"):
        lo, hi = cell["p_ai_ci"]
        bits.append(f"P(AI) {cell['p_ai']:.3f} (95% CI {lo:.3f}–{hi:.3f})")
    if cell.get("gap_closed") is not None:
        bits.append(f"gap closed {cell['gap_closed']:+.2f}")
    if cell.get("delta") is not None:
        bits.append(f"ΔP(AI) {cell['delta']:+.3f}")
    if cell:
        bits.append(f"{cell.get('n_scored', 0)} of {cell.get('n', 0)} scored")
    if row.get("cos_human") is not None:
        bits.append(f"cos→human {row['cos_human']:.3f}")
    if row.get("length_within") is not None:
        bits.append(f"length within 0.8–1.25: {row['length_within']:.0%}")
    if row.get("degenerate"):
        bits.append("degenerate: " + ", ".join(f"{k} {v}" for k, v in row["degenerate"].items()))
    if row.get("slop_by_phrase"):
        bits.append("slop: " + ", ".join(f"“{k}” ×{v}" for k, v in row["slop_by_phrase"].items()))
    out.append(" · ".join(bits))
    why = {**(row.get("missing") or {}), **(cell.get("missing") or {})}
    shown = ("p_ai", "gap_closed", "auroc", "tpr_at_1pct_fpr", "slop_per_1k", "cos_draft", "length_ratio",
             "degenerate_share")
    empty = {why[k] for k in shown if k in why and value_of(row, k, detector) is None
             and "not a rewrite" not in why[k] and "reference" not in why[k] and "target" not in why[k]}
    if empty:
        out.append("\n— = " + "; ".join(sorted(empty)), style="dim")
    return out


def detectors_text(report: dict, detector: str | None) -> Text:
    """The headline detector and why; each detector with what it was made on and whether it
    helped make the training data (then its numbers lean toward the humanizer)."""
    head = report.get("headline") or {}
    out = Text("headline: ", style="bold")
    out.append(head.get("detector") or "none", style="bold")
    out.append(f" — {head.get('reason', '')}", style="dim")
    for d in report.get("detectors") or []:
        name = d.get("name", "?")
        out.append("\n")
        out.append("▸ " if name == detector else "  ", style="bold")
        out.append(name, style="bold" if name == detector else "")
        if d.get("helped_make_training_data"):
            out.append("  ✗ helped make the training data", style="bold red")
            if d.get("involvement"):
                out.append(f" ({d['involvement']})", style="dim")
        else:
            out.append("  ✓ did not help make the training data", style="green")
        if not d.get("calibrated"):
            out.append(" · uncalibrated: scores, no P(AI)", style="italic")
        notes = d.get("notes") or []
        if notes:
            out.append(f" · {notes[0]}", style="dim")
    return out


def run_summary(report: dict) -> tuple[str, str]:
    """('tiny + sft, dpo on classics-st', '6 of 6 held-out samples · seed 0 · ...')."""
    model = (report.get("model") or {}).get("name") or "?"
    adapters = [a.get("name", "?") for a in report.get("adapters") or []]
    ds, counts = report.get("dataset") or {}, report.get("counts") or {}
    settings = report.get("settings") or {}
    head = f"{model}" + (f" + {', '.join(adapters)}" if adapters else "") + f" on {ds.get('name', '?')}"
    rest = f"{counts.get('samples', '?')} of {ds.get('rows', '?')} held-out samples · seed {settings.get('seed')}"
    degenerate = sum(sum(v.values()) for v in (counts.get("degenerate") or {}).values())
    if degenerate:
        rest += f" · {degenerate} degenerate rewrite{'s' * (degenerate != 1)}"
    return head, rest


def best_choice(report: dict, detector: str | None) -> tuple[str, float] | None:
    """The choice with the highest gap closed on `detector` (for the runs table)."""
    found = [(c["gap_closed"], r["row"]) for r in (report.get("table") or {}).get("rows") or []
             if r.get("kind") == "choice" and (c := det_cell(r, detector)).get("gap_closed") is not None]
    if not found:
        return None
    gap, row = max(found)
    return row, gap


# two runs ---------------------------------------------------------------------------------------
def settings_diff(a: dict, b: dict) -> list[str]:
    """What differs between two reports' runs: model, adapters, dataset, settings."""
    out = []
    for what, get in (("model", lambda r: (r.get("model") or {}).get("name")),
                      ("dataset", lambda r: (r.get("dataset") or {}).get("name")),
                      ("adapters", lambda r: ", ".join(x.get("name", "?") for x in r.get("adapters") or []))):
        if get(a) != get(b):
            out.append(f"{what} {get(a) or 'none'} → {get(b) or 'none'}")
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    for key in sa:
        if key not in ("model", "adapters", "data", "resume") and sa.get(key) != sb.get(key):
            out.append(f"{key.replace('_', ' ')} {sa.get(key)!s} → {sb.get(key)!s}".replace("  ", " "))
    return out


def _better(delta: float, a: float, b: float, better: str) -> str:
    if better == "half":
        gain = abs(a - 0.5) - abs(b - 0.5)
    else:
        gain = -delta if better == "low" else delta
    return "green" if gain > 1e-9 else "red" if gain < -1e-9 else ""


def compare_columns() -> list[tuple[str, str]]:
    cols = [("row", "row")]
    for key, head, _, _ in COMPARED:
        cols += [(f"{key}:a", f"{head} A"), (f"{key}:b", f"{head} B"), (f"{key}:d", f"Δ{head}")]
    return cols


def compare_rows(a: dict, b: dict, detector: str | None) -> list[tuple[str, tuple]]:
    """Each row of either table: A's and B's values of the compared metrics and B − A, the
    delta green where B is better (lower P(AI), slop, TPR; higher gap closed; AUROC nearer 0.5)."""
    rows_a = {r.get("row"): r for r in (a.get("table") or {}).get("rows") or []}
    rows_b = {r.get("row"): r for r in (b.get("table") or {}).get("rows") or []}
    labels = list(rows_a) + [k for k in rows_b if k not in rows_a]
    if "human" in labels:  # the references last, as in the table
        labels = [k for k in labels if k != "human"] + ["human"]
    cal_a, cal_b = calibrated(a, detector), calibrated(b, detector)
    out = []
    for label in labels:
        ra, rb = rows_a.get(label), rows_b.get(label)
        cells = [Text(str(label), style="bold" if (ra or rb or {}).get("kind") == "choice" else "italic")]
        for key, _, spec, better in COMPARED:
            va = value_of(ra, key, detector, cal_a) if ra else None
            vb = value_of(rb, key, detector, cal_b) if rb else None
            if key == "p_ai" and cal_a != cal_b:
                va = vb = None  # a P(AI) and a raw score do not compare
            cells += [Text(fmt(va, spec), justify="right"), Text(fmt(vb, spec), justify="right")]
            if va is None or vb is None:
                cells.append(Text(DASH, justify="right", style="dim"))
            else:
                d = vb - va
                cells.append(Text(spec.replace("{:", "{:+").replace("++", "+").format(d), justify="right",
                                  style=_better(d, va, vb, better)))
        out.append((str(label), tuple(cells)))
    return out


# tables ---------------------------------------------------------------------------------------------
class EvalRunTable(RunsTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open", id="eval_open",
                tooltip="Show this eval (with a marked run: compare the two)"),
        Binding("m", "screen.mark", "Mark", id="eval_mark",
                tooltip="Mark this eval to compare others with (again: unmark)"),
    ]


class MetricTable(LiveTable):
    """The selected run's table: one row per text set (source, each choice, human)."""


class SampleTable(LiveTable):
    """The held-out samples of the selected run, with P(AI) of draft, rewrite and reference."""


class CompareTable(LiveTable):
    """Two runs' headline metrics side by side with their differences."""
