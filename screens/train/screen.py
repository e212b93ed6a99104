"""Train mode: start a LoRA SFT or DPO run as a job, watch its loss, KL and (DPO) reward
curves live, open past runs and overlay a second run's curves on the same charts.

A run is a `humanizer lora train` job (engine.jobs), so closing the app or dropping SSH
leaves it training; this screen only reads runs/<id>/events.jsonl. A run's whole history
is read once, in a worker thread, when it first appears; after that only what was
appended since the last read, 3 times a second, and the charts are redrawn from what has
accumulated (never once per event).

Layout: at 110 columns and more, the run (title, numbers, charts, the runs table) on the
left and the new-run form on the right; narrower, one of the two at a time, filling the
screen (screens/panes.py): ctrl+g switches, n goes to the form, r / esc to the runs, and
the charts share the run pane with a short runs table, so they are always in reach."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, ScrollableContainer, Vertical
from textual.widgets import Static

from engine.events import TERMINAL
from engine.jobs import JobInfo
from screens.common.charts import LineChart, Series, fmt_num
from screens.common.panes import NarrowPanes
from screens.common.history import append_outcome, append_timing, bar
from screens.common.runs import RunsScreen
from screens.train.fields import parse_extra
from screens.train.form import TrainForm
from screens.train.widgets import CHARTS, KL_TITLE, RunHistory, RunTable, is_train_job
from screens.common.widgets import FitFooter, ModeHeader, StatusBar, cursor_key, fmt_time, status_text

__all__ = ["TrainScreen", "RunTable", "RunHistory", "parse_extra"]

SHORT = 30  # below this many rows: the compact form


class TrainScreen(NarrowPanes, TrainForm, RunsScreen):
    """The run shown (live or past), the runs table, and the new-run form."""

    DEFAULT_CSS = """
    TrainScreen #train-body { layout: horizontal; height: 1fr; }
    TrainScreen #train-main { width: 1fr; height: 1fr; padding: 0 1; }
    TrainScreen #train-form {
        width: 44; height: 1fr; padding: 0 1; border-left: vkey $primary-background;
        scrollbar-size-vertical: 1;
    }
    TrainScreen #run-title { height: auto; }
    TrainScreen #run-numbers { height: auto; color: $text-muted; }
    TrainScreen #charts { layout: grid; grid-size: 2; grid-gutter: 0 2; height: 1fr; min-height: 6; }
    TrainScreen #charts LineChart { height: 1fr; }
    TrainScreen #runs-heading, TrainScreen .heading { height: 1; text-style: bold; }
    TrainScreen #runs-heading { margin-top: 1; }
    TrainScreen #runs-table { height: auto; max-height: 8; }
    TrainScreen .form-row { height: 1; margin-top: 1; }
    TrainScreen .form-row Label { width: 8; color: $text-muted; }
    TrainScreen .form-row Select, TrainScreen .form-row Input { width: 1fr; }
    TrainScreen #f-preset-info, TrainScreen .hint { height: auto; color: $text-muted; padding-left: 8; }
    TrainScreen Checkbox { margin: 1 0 0 8; }
    TrainScreen Checkbox:focus { border: none !important; text-style: reverse; }
    TrainScreen #f-start { margin: 1 0 0 8; }
    TrainScreen #f-errors { height: auto; color: $error; }
    TrainScreen #preview-summary { height: auto; margin-top: 1; }
    TrainScreen #preview-table { height: auto; max-height: 8; }
    TrainScreen #preview-issues { height: auto; color: $error; }
    TrainScreen.-narrow #train-body { layout: vertical; overflow: hidden hidden; }
    TrainScreen.-narrow #train-form { width: 1fr; border-left: none; overflow-y: auto; }
    TrainScreen.-narrow.-pane-run #train-form, TrainScreen.-narrow.-pane-form #train-main { display: none; }
    TrainScreen.-narrow #charts.-dpo { grid-size: 3; grid-gutter: 0 1; }
    TrainScreen.-narrow #runs-table { max-height: 5; }
    TrainScreen.-narrow #runs-heading { margin-top: 0; }
    TrainScreen.-narrow .hint, TrainScreen.-narrow #f-preset-info { padding-left: 0; }
    TrainScreen.-short .form-row, TrainScreen.-short Checkbox, TrainScreen.-short #f-start { margin-top: 0; }
    """

    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="train_start", tooltip="Start training with the form's settings"),
        Binding("ctrl+o", "pick_dataset", "Dataset", id="train_pick_data",
                tooltip="Pick a workspace dataset or an example; sets the method its rows feed"),
        Binding("c", "cancel_run", "Cancel", id="train_cancel", tooltip="Stop the shown run, after a confirm"),
        Binding("n", "new_run", "New run", id="train_new", tooltip="Go to the form"),
        Binding("ctrl+g", "toggle_pane", "Charts/form", id="train_pane",
                tooltip="Narrow terminal: switch between the run's charts and the new-run form"),
        Binding("r", "focus_runs", "Runs", id="train_runs", show=False, tooltip="Go to the runs table"),
        Binding("escape", "focus_runs", "Runs", id="train_escape", show=False, tooltip="Back to the runs table"),
    ]

    history_class = RunHistory
    noun = "run"
    group = "train"
    body_id = "train-body"
    main_id, form_id = "train-main", "train-form"
    short_rows = SHORT
    widen_columns = True
    heading = ("Runs", "enter: open · v: compare with the shown run · c: cancel")
    palette_names = ("Start training", "New training run", "Cancel training")
    cancel_texts = ("Cancel training [b]{name}[/b] ({id})?\n\nIt saves a checkpoint and stops; "
                    "tick resume in the form to continue it later.", "Cancel training", "Keep training")
    started_verb = "training"

    def __init__(self) -> None:
        super().__init__("Train")
        self.adapters: list = []
        self.preview_result = None
        self._preview_timer = None

    # layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield ModeHeader("train")
        yield StatusBar()
        with ScrollableContainer(id="train-body", can_focus=False):
            with Vertical(id="train-main"):
                yield Static("", id="run-title")
                yield Static("", id="run-numbers")
                with Container(id="charts"):
                    for cid, title, _, _, y_min, y_max in CHARTS:
                        yield LineChart(title, y_min=y_min, y_max=y_max, id=f"chart-{cid}")
                yield Static("", id="runs-heading")
                yield RunTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="train-form"):
                yield from self.compose_form()
        yield FitFooter()

    def is_job(self, job: JobInfo) -> bool:
        return is_train_job(job)

    def runs_columns(self, narrow: bool) -> list[tuple[str, str]]:
        columns = [("mark", " "), ("run", "run"), ("method", "method"), ("status", "status"), ("steps", "steps"),
                   ("val", "val loss")]
        if not narrow or self.size.width >= 90:
            columns.append(("started", "started"))
        return columns

    # drawing ----------------------------------------------------------------------------
    def run_row(self, job: JobInfo, h: RunHistory) -> tuple:
        mark = ""
        if job.id == self.shown:
            mark = "A" if self.overlay else "●"
        elif job.id == self.overlay:
            mark = "B"
        step, total = h.step
        if job.status == "done" and total:
            step = total
        steps = f"{step if step is not None else 0}/{total}" if total else (str(step) if step else "—")
        cells = [Text(mark, style="bold"), h.name, h.method.upper(), status_text(job.status),
                 Text(steps, justify="right"), Text(fmt_num(h.latest.get("val_loss")), justify="right"),
                 fmt_time(job.started)]
        return tuple(cells[: len(self.query_one(RunTable).columns)])

    def _redraw(self) -> None:
        h = self.histories.get(self.shown) if self.shown else None
        o = self.histories.get(self.overlay) if self.overlay else None
        title = self.query_one("#run-title", Static)
        numbers = self.query_one("#run-numbers", Static)
        charts = self.query_one("#charts")
        if self.shown is None:
            title.update(Text.assemble(
                ("No training runs yet. ", "bold"),
                "Fill in the form (n), then start with ctrl+s. Runs started with `humanizer lora train` show up "
                "here too."))
            numbers.update("")
            charts.display = False
            return
        if h is None:
            title.update(Text(f"loading {self.shown}…", style="dim"))
            numbers.update("")
            charts.display = False
            return
        charts.display = True
        self._size_charts(h.method)
        title.update(self._title(h, o))
        numbers.update(self._numbers(h))
        last = max((pts[-1][0] for run in (h, o) if run is not None for pts in run.metrics.values() if pts),
                   default=None)
        x_range = (0, last)  # every chart of the run spans the same steps
        for cid, ctitle, keys, methods, _, _ in CHARTS:
            chart = self.query_one(f"#chart-{cid}", LineChart)
            chart.display = h.method in methods
            if not chart.display:
                continue
            series = []
            for i, (key, label) in enumerate(keys):
                series.append(Series(f"A:{label}" if o else label, h.metrics.get(key, []), style=i))
            if o is not None:
                for i, (key, label) in enumerate(keys):
                    if o.metrics.get(key):
                        series.append(Series(f"B:{label}", o.metrics[key], style=i + 2))
            waiting = "waiting for the first eval…" if cid == "kl" else "waiting for the first report…"
            if h.final:
                waiting = "no data in this run"
            chart.empty = waiting
            chart.set_series(series, title=KL_TITLE.get(h.method, ctitle) if cid == "kl" else ctitle,
                             x_range=x_range)

    def _size_charts(self, method: str) -> None:
        """DPO's six charts: three a row in a narrow pane (two rows of charts tall enough to read)."""
        self.query_one("#charts").set_class(method == "dpo", "-dpo")

    def _title(self, h: RunHistory, o: RunHistory | None) -> Text:
        job = h.job
        line = Text.assemble(status_text(job.status), "  ", (h.name, "bold"), "  ",
                             (f"{h.method.upper()} · {h.args.get('preset', 'small')}", ""))
        model = h.args.get("model")
        if model:
            line.append(f" · {Path(model).name}", style="dim")
        if h.args.get("mount_adapter"):
            line.append(f" + {Path(h.args['mount_adapter']).name}", style="dim")
        line.append("\n")
        step, total = h.step
        if job.status == "done" and total:
            step = total
        if h.phase is not None and job.status not in TERMINAL:
            p, n = h.phase.get("step") or 0, h.phase.get("total") or 0
            line.append_text(bar(p / n if n else 0, 16))
            line.append(f" {h.phase.get('message') or h.phase.get('phase')} {p}/{n}")
        elif total:
            line.append_text(bar((step or 0) / int(total) if str(total).isdigit() else 0, 16))
            line.append(f" step {step or 0}/{total}", style="bold")
        else:
            line.append("starting…" if job.status in ("running", "starting") else "no steps recorded", style="dim")
        append_timing(line, h, self.app.clock())
        if o is not None:
            line.append("\n")
            line.append("A", style="bold")
            line.append(f" = {h.name} (● ◆)  ")
            line.append("B", style="bold")
            line.append(f" = {o.name} (○ ◇)")
            line.append("   v on B: remove", style="dim")
        append_outcome(line, h, "the last checkpoint is kept; tick resume to continue it")
        return line

    def _numbers(self, h: RunHistory) -> Text:
        v = h.latest
        parts: list[tuple[str, str]] = []

        def add(label: str, key: str, fmt=fmt_num) -> None:
            if key in v:
                parts.append((label, fmt(v[key])))

        add("loss", "loss")
        add("val", "val_loss")
        add("KL", "val_kl")
        if h.method == "dpo":
            add("acc", "accuracy", lambda x: f"{100 * x:.0f}%")
            add("val acc", "val_accuracy", lambda x: f"{100 * x:.0f}%")
            add("margin", "margin")
        add("tok/s", "tokens_per_second", lambda x: f"{x:,.0f}")
        add("lr", "learning_rate", lambda x: f"{x:.2e}")
        add("peak", "peak_memory_gb", lambda x: f"{x:.2f} GB")
        add("tokens", "trained_tokens", lambda x: f"{x:,.0f}")
        text = Text()
        for i, (label, value) in enumerate(parts):
            if i:
                text.append(" · ", style="dim")
            text.append(f"{label} ")
            text.append(value, style="bold")
        if not parts:
            text.append(h.message or "no metrics yet", style="dim")
        return text

    def on_train_form_submitted(self, message: TrainForm.Submitted) -> None:
        self._start_job(message.kind, message.args, message.settings)

    # comparing two runs -------------------------------------------------------------------
    def action_overlay(self) -> None:
        key = cursor_key(self.query_one(RunTable))
        if key is None:
            return
        if key == self.overlay:
            self.overlay = None
            self.notify("comparison removed", timeout=2)
        elif key == self.shown:
            self.notify("highlight another run to compare it with the shown one", severity="warning", timeout=3)
            return
        else:
            self.overlay = key
            h = self.histories.get(key)
            self.notify(f"comparing with {h.name if h else key} (B: ○ ◇)", timeout=2)
        self._dirty = True
        self.tick()

    def clear_overlay(self) -> None:
        self.overlay = None
        self._dirty = True
        self.tick()

    # the palette ---------------------------------------------------------------------------
    def more_commands(self) -> list[tuple]:
        return [("Stop comparing", "remove the overlaid run's curves", self.clear_overlay)] if self.overlay else []

    def job_commands(self, job: JobInfo, name: str) -> list[tuple]:
        return [(f"Open run: {name}", f"{job.kind} · {job.status} · {job.id}", lambda i=job.id: self.show(i)),
                (f"Compare with run: {name}", f"overlay its curves · {job.id}", lambda i=job.id: self._compare(i))]

    def _compare(self, job_id: str) -> None:
        self.overlay = job_id
        self._dirty = True
        self.tick()
