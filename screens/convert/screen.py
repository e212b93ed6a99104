"""Convert mode: sensitivity-aware mixed-precision quantization (`humanizer convert`) as a
job, with the per-layer bit map filling in live.

The form picks a workspace model, the target bits per weight (with what that means in
MB for this model: engine.convert.model_plan, in a worker thread), the candidate bits,
the group size and the output name. While a convert runs: a grid of blocks (rows) by
module (columns) whose cells show each layer's chosen bits (a digit on a colour; ~4 for the
provisional bits estimated while the calibration pass runs; ? once measured, before the
allocation), the budget gauge (bpw now against the target), the
phase with its ETA, and each layer's sensitivity as a bar. At the end: size on disk,
achieved bpw, and the held-out perplexity of the result against the source.

The job's events.jsonl is read whole (in a worker thread) when a convert first appears,
then tailed 3 times a second, so a restarted app shows a running or past convert with
its whole history. Layout: the run on the left and the form on the right at 110 columns
and more; narrower, one of the two at a time (screens/panes.py): ctrl+g switches between
the grid (the run pane, scrolled to its top and focused, so arrows and page keys scroll
it) and the form; n goes to the form, r / esc to the converts table."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical, VerticalScroll
from textual.widgets import Static

from engine.convert import layer_bpw
from engine.jobs import JobInfo
from screens.convert.form import ConvertForm
from screens.convert.widgets import (
    ConvertHistory, fmt_size, is_convert_job, legend, render_gauge, render_grid, render_sensitivity,
)
from screens.common.panes import NarrowPanes
from screens.common.history import append_outcome, append_timing, bar
from screens.common.runs import RunsScreen, RunsTable
from screens.common.widgets import FitFooter, ModeHeader, StatusBar, display_path, fmt_time, status_text

PHASES = {"load": "loading", "statistics": "calibration pass", "measure": "measuring layers",
          "allocate": "allocating bits", "write": "writing", "evaluate": "held-out perplexity"}


class ConvertTable(RunsTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="convert_open", tooltip="Show this convert")]


class ConvertScreen(NarrowPanes, ConvertForm, RunsScreen):
    DEFAULT_CSS = """
    ConvertScreen #cv-body { layout: horizontal; height: 1fr; }
    ConvertScreen #cv-main { width: 1fr; height: 1fr; padding: 0 1; overflow-y: auto; scrollbar-size-vertical: 1; }
    ConvertScreen #cv-form {
        width: 44; height: 1fr; padding: 0 1; border-left: vkey $primary-background; scrollbar-size-vertical: 1;
    }
    ConvertScreen #cv-title, ConvertScreen #cv-gauge, ConvertScreen #cv-grid, ConvertScreen #cv-legend,
    ConvertScreen #cv-result, ConvertScreen #cv-sens { height: auto; }
    ConvertScreen #cv-grid, ConvertScreen #cv-sens, ConvertScreen #cv-result { margin-top: 1; }
    ConvertScreen #cv-legend { color: $text-muted; }
    ConvertScreen #runs-heading, ConvertScreen .heading { height: 1; text-style: bold; }
    ConvertScreen #runs-heading { margin-top: 1; }
    ConvertScreen #cv-runs { height: auto; max-height: 8; }
    ConvertScreen .form-row { height: 1; margin-top: 1; }
    ConvertScreen .form-row Label { width: 9; color: $text-muted; }
    ConvertScreen .form-row Select, ConvertScreen .form-row Input { width: 1fr; }
    ConvertScreen .hint { height: auto; color: $text-muted; padding-left: 9; }
    ConvertScreen Checkbox { margin: 1 0 0 9; }
    ConvertScreen Checkbox:focus { border: none !important; text-style: reverse; }
    ConvertScreen #f-start { margin: 1 0 0 9; }
    ConvertScreen #f-errors { height: auto; color: $error; }
    ConvertScreen #cv-main:focus { background-tint: $foreground 3%; }
    ConvertScreen.-narrow #cv-body { layout: vertical; overflow: hidden hidden; }
    ConvertScreen.-narrow #cv-form { width: 1fr; border-left: none; overflow-y: auto; }
    ConvertScreen.-narrow.-pane-run #cv-form, ConvertScreen.-narrow.-pane-form #cv-main { display: none; }
    ConvertScreen.-narrow .hint { padding-left: 0; }
    """

    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="convert_start", tooltip="Start converting with the form's settings"),
        Binding("c", "cancel_run", "Cancel", id="convert_cancel", tooltip="Stop the shown convert, after a confirm"),
        Binding("n", "new_run", "New convert", id="convert_new", tooltip="Go to the form"),
        Binding("ctrl+g", "toggle_pane", "Grid/form", id="convert_pane",
                tooltip="Narrow terminal: switch between the layer grid and the new-convert form"),
        Binding("r", "focus_runs", "Converts", id="convert_runs", show=False, tooltip="Go to the converts table"),
        Binding("escape", "focus_runs", "Converts", id="convert_escape", show=False,
                tooltip="Back to the converts table"),
    ]

    history_class = ConvertHistory
    noun = "convert"
    group = "convert"
    body_id = "cv-body"
    main_id, form_id = "cv-main", "cv-form"
    heading = ("Converts", "enter: open · c: cancel · n: new")
    palette_names = ("Start converting", "New convert", "Cancel convert")
    cancel_texts = ("Cancel converting [b]{name}[/b] ({id})?\n\nIts measurements are kept; tick resume in the "
                    "form to continue it later.", "Cancel convert", "Keep going")
    started_verb = "converting"

    def __init__(self) -> None:
        super().__init__("Convert")
        self.plans = {}
        self._plan_timer = None

    # layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield ModeHeader("convert")
        yield StatusBar()
        with ScrollableContainer(id="cv-body", can_focus=False):
            with VerticalScroll(id="cv-main"):
                yield Static("", id="cv-title")
                yield Static("", id="cv-gauge")
                yield Static("", id="cv-result")
                yield Static("", id="cv-grid")
                yield Static("", id="cv-legend")
                yield Static("", id="runs-heading")
                yield ConvertTable(id="cv-runs", cursor_type="row", zebra_stripes=True)
                yield Static("", id="cv-sens")
            with Vertical(id="cv-form"):
                yield from self.compose_form()
        yield FitFooter()

    def is_job(self, job: JobInfo) -> bool:
        return is_convert_job(job)

    def focus_run_pane(self) -> None:
        """The grid can be taller than the screen: its pane gets the focus, at the top."""
        main = self.query_one("#cv-main")
        main.focus()
        main.scroll_home(animate=False)

    def runs_columns(self, narrow: bool) -> list[tuple[str, str]]:
        return [(key, key) for key in ("output", "status", "target", "bpw", "size", "started")]

    # drawing ---------------------------------------------------------------------------
    def run_row(self, job: JobInfo, h: ConvertHistory) -> tuple:
        bpw = h.bpw_now() if h.allocated() or h.done else None
        size = (h.done or {}).get("size_bytes")
        mark = "● " if job.id == self.shown else "  "
        return (Text(mark + h.name), status_text(job.status), Text(f"{h.target or 0:g}", justify="right"),
                Text(f"{bpw:.3f}" if bpw is not None else "—", justify="right"),
                Text(fmt_size(size) if size else "—", justify="right"), fmt_time(job.started))

    def _redraw(self) -> None:
        h = self.histories.get(self.shown) if self.shown else None
        title = self.query_one("#cv-title", Static)
        parts = [self.query_one(f"#{i}", Static) for i in ("cv-gauge", "cv-result", "cv-grid", "cv-legend", "cv-sens")]
        if h is None:
            title.update(Text.assemble(("No converts yet. ", "bold"),
                                       "Fill in the form (n), then start with ctrl+s. Converts started with "
                                       "`humanizer convert` show up here too.") if self.shown is None
                         else Text(f"loading {self.shown}…", style="dim"))
            for p in parts:
                p.display = False
            return
        for p in parts:
            p.display = True
        title.update(self._title(h))
        bits = h.candidate_bits or [4, 8]
        lo, hi = layer_bpw(bits[0], h.group_size), layer_bpw(bits[-1], h.group_size)
        bpw = h.bpw_now()
        gauge = Text("budget ", style="bold")
        gauge.append_text(render_gauge(bpw, h.target, lo, hi, width=24 if self._narrow else 30))
        gauge.append(f"  {bpw:.3f}" if bpw is not None else "  —", style="bold")
        gauge.append(f" / {h.target:g} bpw target" if h.target is not None else " bpw")
        if bpw is None:
            gauge.append("  (allocated after the last layer)", style="dim")
        parts[0].update(gauge)
        parts[1].update(self._result(h))
        parts[1].display = bool(h.done)
        parts[2].update(render_grid(h))
        parts[3].update(legend(bits))
        width = max(30, (self.query_one("#cv-main").size.width or 70) - 2)
        parts[4].update(render_sensitivity(h, width=min(width, 76)))

    def _title(self, h: ConvertHistory) -> Text:
        job = h.job
        line = Text.assemble(status_text(job.status), "  ", (h.name, "bold"))
        model = h.args.get("model")
        if model:
            line.append(f" ← {Path(model).name}", style="dim")
        line.append(f"  bits {','.join(map(str, h.candidate_bits))} · group {h.group_size}", style="dim")
        line.append("\n")
        p = h.progress or {}
        total = h.total_layers
        if job.status in ("running", "starting"):
            step, n = p.get("step") or 0, p.get("total") or 0
            line.append_text(bar(step / n if n else 0, 16))
            phase = PHASES.get(p.get("phase"), p.get("phase") or "starting")
            line.append(f" {phase}" + (f" {step}/{n}" if n else ""), style="bold")
            if total:
                line.append(f" · {h.measured()}/{total} layers")
            source = h.estimated_from()
            if source and h.measured() < (total or 0):
                line.append(f" · ~ estimated from {source[0]}/{source[1]} samples", style="dim")
        else:
            line.append(f"{h.measured()}/{total or h.measured()} layers", style="bold")
        append_timing(line, h, self.app.clock())
        append_outcome(line, h, "the measurements are kept; tick resume to continue")
        return line

    def _result(self, h: ConvertHistory) -> Text:
        d = h.done or {}
        text = Text("Result  ", style="bold")
        text.append("size on disk ")
        text.append(fmt_size(d.get("size_bytes")), style="bold")
        if d.get("achieved_bpw") is not None:
            text.append(" · achieved ")
            text.append(f"{d['achieved_bpw']:.3f} bpw", style="bold")
            text.append(f" (target {d.get('target_bpw', h.target):g})")
        if d.get("ppl_source") is not None:
            text.append("\nheld-out perplexity ")
            text.append(f"{d['ppl_source']:.4g} → {d['ppl_result']:.4g}", style="bold")
            text.append(f" ({d['ppl_increase_pct']:+.2f}%) source → result")
            if d.get("kl_source_result") is not None:
                text.append(f" · KL {d['kl_source_result']:.2e}/token on {d.get('heldout_tokens', 0):,} tokens",
                            style="dim")
        if d.get("output"):
            text.append(f"\n→ {display_path(d['output'], self.app.ws.home)}", style="dim")
        return text

    def on_convert_form_submitted(self, message: ConvertForm.Submitted) -> None:
        self._start_job(message.kind, message.args, message.settings)

    # the palette --------------------------------------------------------------------------
    def job_commands(self, job: JobInfo, name: str) -> list[tuple]:
        return [(f"Open convert: {name}", f"{job.status} · {job.id}", lambda i=job.id: self.show(i))]
