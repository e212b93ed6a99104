"""Train mode: start a LoRA SFT or DPO run as a job, watch its loss, KL and (DPO) reward
curves live, open past runs and overlay a second run's curves on the same charts.

A run is a `humanizer lora train` job (engine.jobs), so closing the app or dropping SSH
leaves it training; this screen only reads runs/<id>/events.jsonl. A run's whole history
is read once, in a worker thread, when it first appears; after that only what was
appended since the last read, 3 times a second, and the charts are redrawn from what has
accumulated (never once per event).

Layout: at 110 columns and more, the run (title, numbers, charts, the runs table) on the
left and the new-run form on the right; narrower, one column that scrolls (focus moves
the view), with shorter charts."""

from __future__ import annotations

import shlex
from functools import partial
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, ScrollableContainer, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Checkbox, DataTable, Footer, Input, Label, Select, Static

from engine.errors import HumanizerError
from engine.events import TERMINAL
from engine.jobs import JobInfo, humanizer_argv, job_events, job_info, start_job
from screens.charts import LineChart, Series, fmt_num
from screens.widgets import (
    parse_verb_argv,
    ModeHeader, StatusBar, confirm_cancel, cursor_key, display_path, fmt_duration, fmt_time, status_text, sync_table,
)

REDRAW_HZ = 3  # the charts and numbers are redrawn at most this often
NARROW = 110  # below this many columns: one scrolling column
SHORT = 30  # below this many rows: shorter charts
CHART_ROWS, CHART_ROWS_SHORT = 10, 8  # a chart's height in the narrow layout
PREVIEW_ROWS = 20
PREVIEW_DELAY = 0.35  # seconds after the last keystroke in the dataset field
MAX_ISSUES = 12
BOOL_FLAGS = {"resume", "skip-bad-rows", "json"}
# Flags the "flags" field may add (the rest of the form sets the others).
EXTRA_FLAGS = {
    "--rank": int, "--scale": float, "--dropout": float, "--num-layers": int, "--keys": str,
    "--learning-rate": float, "--batch-size": int, "--max-seq-length": int, "--beta": float, "--dpo-loss": str,
    "--val-batches": int, "--steps-per-eval": int, "--steps-per-report": int, "--steps-per-save": int,
    "--seed": int, "--skip-bad-rows": None,
}
FORM_FLAGS = ("--data", "--method", "--preset", "--iters", "--output", "--mount-adapter", "--resume", "--json")

# (id, title, [(metric, label)], methods, y_min, y_max)
CHARTS = [
    ("loss", "Loss", [("loss", "train"), ("val_loss", "val")], ("sft", "dpo"), None, None),
    ("kl", "KL", [("val_kl", "val")], ("sft", "dpo"), None, None),
    ("lr", "Learning rate", [("learning_rate", "lr")], ("sft",), None, None),
    ("tps", "Tokens/s", [("tokens_per_second", "tok/s")], ("sft",), None, None),
    ("rewards", "Rewards", [("chosen_reward", "chosen"), ("rejected_reward", "rejected")], ("dpo",), None, None),
    ("margin", "Margin", [("margin", "train"), ("val_margin", "val")], ("dpo",), None, None),
    ("accuracy", "Accuracy", [("accuracy", "train"), ("val_accuracy", "val")], ("dpo",), 0.0, 1.0),
    ("logps", "Log-probs", [("chosen_logp", "chosen"), ("rejected_logp", "rejected")], ("dpo",), None, None),
]
KL_TITLE = {"sft": "KL(policy‖base)", "dpo": "KL(policy‖ref)"}


# runs ---------------------------------------------------------------------------------
def is_train_job(job: JobInfo) -> bool:
    return job.kind.startswith("lora train")


def parse_train_argv(argv: list[str]) -> dict:
    """The model and flags of a `... lora train MODEL --flag value ...` command line."""
    return parse_verb_argv(argv, ("lora", "train"), BOOL_FLAGS)


class RunHistory:
    """One training run's events, read incrementally: every metric as a (step, value)
    series, the latest values, the latest progress, and the error or done event."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.args = parse_train_argv(job.argv)
        kind = job.kind.split()
        self.method = kind[2] if len(kind) > 2 and kind[2] in ("sft", "dpo") else self.args.get("method", "sft")
        self.name = Path(self.args["output"]).name if self.args.get("output") else job.id
        self.offset = 0
        self.metrics: dict[str, list[tuple[float, float]]] = {}
        self.latest: dict[str, float] = {}
        self.progress: dict | None = None  # the latest training-step progress
        self.phase: dict | None = None  # the latest progress of a phase before training (DPO reference)
        self.error: dict | None = None
        self.done: dict | None = None
        self.message: str | None = None
        self.final = False  # the run ended and every event it wrote has been read

    def update(self, job: JobInfo | None = None) -> bool:
        """Read what was appended since the last call (the job's status first, so a run
        seen as ended is read to its end); True if anything new arrived."""
        if self.final:
            return False
        if job is not None:
            self.job = job
        events, self.offset = job_events(self.job, self.offset)
        for ev in events:
            self._feed(ev)
        if self.job.status in TERMINAL:
            self.final = True
        return bool(events)

    def _feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "metric":
            step = ev.get("step")
            if not isinstance(step, (int, float)):
                return
            for key, value in (ev.get("values") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.metrics.setdefault(key, []).append((step, float(value)))
                    self.latest[key] = float(value)
        elif kind == "progress":
            if ev.get("phase"):
                self.phase = ev
            else:
                self.progress, self.phase = ev, None
        elif kind == "error":
            self.error = ev
        elif kind == "done" and self.done is None:
            self.done = ev
        elif kind == "log" and ev.get("message"):
            self.message = str(ev["message"])

    @property
    def step(self) -> tuple[int | None, int | None]:
        p = self.progress or {}
        total = p.get("total") or self.args.get("iters")
        return p.get("step"), (int(total) if str(total).isdigit() else total)


def load_history(job: JobInfo) -> RunHistory:
    """A run's whole history so far (call it in a worker thread: the file may be long)."""
    h = RunHistory(job)
    h.update(job_info(job.dir))
    return h


def bar(fraction: float, width: int) -> Text:
    """A progress bar of `width` cells; the filled and empty parts differ in glyph too."""
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return Text.assemble(("━" * full, "bold"), ("─" * (width - full), "dim"))


# the form -----------------------------------------------------------------------------
def _engine_train():
    from engine import train  # imported late: it loads MLX

    return train


def preset_summary(method: str, preset: str, mounted: bool = False) -> str:
    cfg = _engine_train().resolve_config(method, preset)
    layers = "every block" if cfg["num_layers"] <= 0 else f"last {cfg['num_layers']} blocks"
    keys = " ".join(k.replace("_proj", "") for k in cfg["keys"])
    text = (f"rank {cfg['rank']} · scale {cfg['scale']:g} · dropout {cfg['dropout']:g} · {layers} · {keys} · "
            f"lr {cfg['learning_rate']:.0e} · batch {cfg['batch_size']}")
    if mounted:
        text += " · layers and keys follow the mounted adapter"
    return text


def default_iters(method: str) -> int:
    return int(_engine_train().DEFAULTS["iters"][method])


def holds_run(folder: Path) -> bool:
    """A training run wrote here: checkpoints, or a finished adapter."""
    ckpt = folder / "checkpoints"
    return (folder / "adapters.safetensors").exists() or (ckpt.is_dir() and any(ckpt.iterdir()))


def output_path(ws, name: str) -> Path:
    """A plain name is a folder in the workspace's adapters/; a path is used as it is."""
    if "/" in name or name.startswith("~"):
        return Path(name).expanduser().resolve()
    return ws.adapters_dir / name


def check_dataset(ws, spec: str) -> str | None:
    """Why `spec` cannot be a dataset (cheap, no reading), or None."""
    if not spec:
        return "required: a folder with train.jsonl, a .jsonl/.parquet file, a workspace dataset or an HF id"
    p = Path(spec).expanduser()
    if p.exists() or spec.startswith("hf:") or (ws.datasets_dir / spec).exists():
        return None
    looks_like_path = (spec.startswith((".", "/", "~")) or spec.lower().endswith((".jsonl", ".parquet", ".json"))
                       or spec.count("/") > 1)
    if looks_like_path:
        return f"no such file or folder: {spec}"
    return None  # a Hugging Face dataset id: read when the run starts


def parse_extra(text: str) -> tuple[list[str], str | None]:
    """The extra flags as argv, or an error."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        return [], f"cannot parse: {e}"
    i = 0
    while i < len(tokens):
        flag = tokens[i].split("=", 1)[0]
        if flag in FORM_FLAGS:
            return [], f"{flag} is set by the form"
        if flag not in EXTRA_FLAGS:
            return [], f"unknown flag {tokens[i]} (allowed: {', '.join(EXTRA_FLAGS)})"
        kind = EXTRA_FLAGS[flag]
        if kind is None:
            i += 1
            continue
        if "=" in tokens[i]:
            value = tokens[i].split("=", 1)[1]
        elif i + 1 < len(tokens):
            value = tokens[i + 1]
            i += 1
        else:
            return [], f"{flag} needs a value"
        try:
            kind(value)
        except ValueError:
            return [], f"{flag} {value}: not a{'n integer' if kind is int else ' number' if kind is float else ''} value"
        i += 1
    return tokens, None


def _cell(value, width: int = 24) -> str:
    if isinstance(value, list):  # messages
        value = " / ".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                           for m in value)
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


class RunTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open", id="train_open", tooltip="Show this run's curves"),
        Binding("v", "overlay", "Compare", id="train_overlay",
                tooltip="Overlay this run's curves on the shown run (again: remove)"),
    ]

    def action_overlay(self) -> None:
        self.screen.action_overlay()


class TrainScreen(Screen):
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
    TrainScreen.-narrow #train-body { layout: vertical; overflow-y: auto; scrollbar-size-vertical: 1; }
    TrainScreen.-narrow #train-main { height: auto; }
    TrainScreen.-narrow #train-form {
        width: 1fr; height: auto; border-left: none; border-top: hkey $primary-background; margin-top: 1;
    }
    TrainScreen.-narrow #charts { grid-rows: 10; }
    TrainScreen.-narrow.-short #charts { grid-rows: 8; }
    TrainScreen.-narrow .hint, TrainScreen.-narrow #f-preset-info { padding-left: 0; }
    TrainScreen.-short .form-row, TrainScreen.-short Checkbox, TrainScreen.-short #f-start { margin-top: 0; }
    """

    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="train_start", tooltip="Start training with the form's settings"),
        Binding("c", "cancel_run", "Cancel", id="train_cancel", tooltip="Stop the shown run, after a confirm"),
        Binding("n", "new_run", "New run", id="train_new", tooltip="Go to the form"),
        Binding("r", "focus_runs", "Runs", id="train_runs", show=False, tooltip="Go to the runs table"),
        Binding("escape", "focus_runs", "Runs", id="train_escape", show=False, tooltip="Back to the runs table"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Train"
        self.histories: dict[str, RunHistory] = {}
        self._loading: set[str] = set()
        self.shown: str | None = None
        self.overlay: str | None = None
        self._dirty = True
        self._narrow: bool | None = None
        self._short: bool | None = None
        self.models: list = []
        self.adapters: list = []
        self.preview_result: tuple | None = None  # (spec, method, rows, total, issues, error)
        self._preview_timer: Timer | None = None
        self._auto_output: str | None = None
        self._known: set[str] = set()  # the runs seen so far (a new one gets shown)

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
                yield Static("New run", classes="heading")
                yield Static("", id="f-errors")
                with Horizontal(classes="form-row"):
                    yield Label("model")
                    yield Select([], prompt="no models: pull one in Models (1)", compact=True, id="f-model")
                with Horizontal(classes="form-row"):
                    yield Label("dataset")
                    yield Input(placeholder="folder, .jsonl, .parquet or HF id", compact=True, id="f-data")
                with Horizontal(classes="form-row"):
                    yield Label("method")
                    yield Select([("SFT", "sft"), ("DPO", "dpo")], value="sft", allow_blank=False, compact=True,
                                 id="f-method")
                with Horizontal(classes="form-row"):
                    yield Label("preset")
                    yield Select([(p, p) for p in ("small", "medium", "large")], value="small", allow_blank=False,
                                 compact=True, id="f-preset")
                yield Static("", id="f-preset-info")
                with Horizontal(classes="form-row"):
                    yield Label("mount")
                    yield Select([("none", "")], value="", allow_blank=False, compact=True, id="f-mount")
                with Horizontal(classes="form-row"):
                    yield Label("iters")
                    yield Input(type="integer", compact=True, id="f-iters")
                with Horizontal(classes="form-row"):
                    yield Label("output")
                    yield Input(placeholder="adapter name (in adapters/) or a path", compact=True, id="f-output")
                with Horizontal(classes="form-row"):
                    yield Label("flags")
                    yield Input(placeholder="e.g. --rank 4 --learning-rate 2e-4", compact=True, id="f-extra")
                yield Checkbox("resume the run in output", compact=True, id="f-resume")
                yield Button("Start  ctrl+s", id="f-start", compact=True, variant="primary")
                yield Static("", id="preview-summary")
                yield DataTable(id="preview-table", cursor_type="row", zebra_stripes=True, show_cursor=False)
                yield Static("", id="preview-issues")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(RunTable)
        self._layout()
        self.query_one("#preview-table").display = False
        self._clear_errors()
        self._method_changed()
        self._scan_workspace()
        self._show_preview_hint()
        train_jobs = [j for j in self.app.jobs if is_train_job(j)]
        self._known = {j.id for j in train_jobs}
        running = [j for j in train_jobs if j.status in ("running", "starting")]
        if running or train_jobs:
            self.shown = (running or train_jobs)[0].id
        self.tick()
        self.set_interval(1 / REDRAW_HZ, self.tick)
        if train_jobs:
            table.focus()
        else:
            self.query_one("#f-model").focus()

    def on_resize(self) -> None:
        self._layout()

    def _layout(self) -> None:
        narrow, short = self.size.width < NARROW, self.size.height < SHORT
        if (narrow, short) == (self._narrow, self._short):
            return
        self._narrow, self._short = narrow, short
        self.set_class(narrow, "-narrow")
        self.set_class(short, "-short")
        self.query_one("#train-body").can_focus = False
        table = self.query_one(RunTable)
        table.clear(columns=True)
        table.add_column(" ", key="mark")
        table.add_column("run", key="run")
        table.add_column("method", key="method")
        table.add_column("status", key="status")
        table.add_column("steps", key="steps")
        table.add_column("val loss", key="val")
        if not narrow or self.size.width >= 90:
            table.add_column("started", key="started")
        self._dirty = True

    def on_screen_resume(self) -> None:
        self._scan_workspace()
        self._dirty = True

    # following runs --------------------------------------------------------------------
    def train_jobs(self) -> list[JobInfo]:
        return [j for j in self.app.jobs if is_train_job(j)]

    def tick(self) -> None:
        """3 times a second: read what the runs appended, then redraw if anything changed."""
        if not self.is_current:
            return
        jobs = self.train_jobs()
        missing = [j for j in jobs if j.id not in self.histories and j.id not in self._loading]
        if missing:
            self._loading.update(j.id for j in missing)
            self.run_worker(partial(self._load, missing), thread=True, group="train-load")
        table_dirty = False
        for job in jobs:
            h = self.histories.get(job.id)
            if h is None or h.final:
                continue
            watched = job.id in (self.shown, self.overlay)
            was = h.job.status
            if watched:
                job = job_info(job.dir)  # fresher than the app's 2 Hz poll
            if h.update(job) or h.job.status != was:
                table_dirty = True
                self._dirty = self._dirty or watched
                if h.final and h.job.status == "done":
                    self._scan_workspace()  # a new adapter to mount
        self._follow_new(jobs)
        if table_dirty or self._dirty:
            self._sync_table(jobs)
        if self._dirty:
            self._dirty = False
            self._redraw()

    def _load(self, jobs: list[JobInfo]) -> None:
        """In a worker thread: read each run's history from its first event."""
        for job in jobs:
            try:
                h = load_history(job)
            except OSError:
                h = RunHistory(job)
            self.app.call_from_thread(self._loaded, h)

    def _loaded(self, h: RunHistory) -> None:
        self._loading.discard(h.job.id)
        self.histories[h.job.id] = h
        self._dirty = True
        if h.job.id in (self.shown, self.overlay) or self.shown is None:
            self.tick()
        else:
            self._sync_table(self.train_jobs())

    def _follow_new(self, jobs: list[JobInfo]) -> None:
        """A run that appears while the screen is open (started from the CLI or another app)
        is shown, unless the shown run is still going; an empty view shows the newest run."""
        new = [j for j in jobs if j.id not in self._known]
        self._known.update(j.id for j in new)
        if self.shown is None:
            if jobs:
                self.show(jobs[0].id)
            return
        shown = self.histories.get(self.shown)
        if new and shown is not None and shown.final and self.shown not in (j.id for j in new):
            self.show(new[0].id)

    def show(self, job_id: str | None) -> None:
        self.shown = job_id
        if self.overlay == job_id:
            self.overlay = None
        self._dirty = True
        self._sync_table(self.train_jobs())
        self._redraw()

    # drawing ----------------------------------------------------------------------------
    def _row(self, job: JobInfo, h: RunHistory) -> tuple:
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

    def _sync_table(self, jobs: list[JobInfo]) -> None:
        """The runs whose history is loaded, newest first; cells widen their column as they grow."""
        table = self.query_one(RunTable)
        rows = [(j.id, self._row(j, self.histories[j.id])) for j in jobs if j.id in self.histories]
        if [k for k, _ in rows] != [rk.value for rk in table.rows]:
            sync_table(table, rows)  # rebuilt: the widths are measured afresh
        else:
            columns = list(table.columns)
            for key, cells in rows:
                for col, new, was in zip(columns, cells, table.get_row(key)):
                    if new != was:
                        table.update_cell(key, col, new, update_width=True)
        heading = Text("Runs", style="bold")
        if jobs:
            heading.append("   enter: open · v: compare with the shown run · c: cancel", style="dim")
        self.query_one("#runs-heading", Static).update(heading)
        table.display = bool(jobs)

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
        """Narrow, the chart grid is as tall as its rows (it scrolls with the rest); wide, it fills."""
        charts = self.query_one("#charts")
        if self._narrow:
            rows = -(-sum(1 for c in CHARTS if method in c[3]) // 2)
            charts.styles.height = rows * (CHART_ROWS_SHORT if self._short else CHART_ROWS)
        else:
            charts.styles.height = "1fr"

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
        if job.status in ("running", "starting"):
            eta = (h.progress or {}).get("eta")
            if eta is not None:
                line.append(f"  ETA {fmt_duration(eta)}")
            if job.started:
                line.append(f"  running {fmt_duration(self.app.clock() - job.started)}", style="dim")
        elif job.started and job.ended:
            line.append(f"  {job.status} after {fmt_duration(job.ended - job.started)}", style="dim")
        if o is not None:
            line.append("\n")
            line.append("A", style="bold")
            line.append(f" = {h.name} (● ◆)  ")
            line.append("B", style="bold")
            line.append(f" = {o.name} (○ ◇)")
            line.append("   v on B: remove", style="dim")
        if job.status == "failed":
            err = h.error or {}
            line.append(f"\n✗ {err.get('message') or job.error or 'failed'}", style="bold red")
            if err.get("hint"):
                line.append(f"\n  hint: {err['hint']}", style="italic")
        elif job.status == "cancelled":
            line.append("\n⊘ cancelled: the last checkpoint is kept; tick resume to continue it", style="italic")
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

    # the runs table ---------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id != "runs-table":
            return
        event.stop()
        self.show(event.row_key.value)

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

    def action_focus_runs(self) -> None:
        table = self.query_one(RunTable)
        if table.display:
            table.focus()
            table.scroll_visible(animate=False)
        else:
            self.query_one("#f-model").focus()

    def action_new_run(self) -> None:
        self.query_one("#f-model").focus()

    # cancel ------------------------------------------------------------------------------
    def action_cancel_run(self) -> None:
        h = self.histories.get(self.shown) if self.shown else None
        job = job_info(h.job.dir) if h else None
        if job is None or job.status != "running":
            self.notify("the shown run is not running" if job else "no run shown", severity="warning")
            return

        confirm_cancel(
            self, job, f"Cancel training [b]{h.name}[/b] ({job.id})?\n\nIt saves a checkpoint and stops; "
            "tick resume in the form to continue it later.", yes="Cancel training", no="Keep training", after=self.tick)

    # the form: lists from the workspace ----------------------------------------------------
    def _scan_workspace(self) -> None:
        self.run_worker(self._scan, thread=True, group="train-scan", exclusive=True)

    def _scan(self) -> None:
        """In a worker thread: the models, and the SFT adapters that a run can mount."""
        from engine import adapters as A
        from engine.models import list_models

        try:
            models = list_models(self.app.ws)
        except Exception:  # a broken folder must not take the screen down
            models = []
        found = []
        folder = self.app.ws.adapters_dir
        for d in sorted(folder.iterdir()) if folder.is_dir() else []:
            if d.name.startswith(".") or not (d / A.ADAPTER_FILE).is_file():
                continue
            try:
                info = A.read_adapter(d)
            except HumanizerError:
                continue
            if info.method in ("sft", None) and not info.is_delta:
                found.append(info)
        self.app.call_from_thread(self._scanned, models, found)

    def _scanned(self, models: list, adapters: list) -> None:
        self.models, self.adapters = models, adapters
        select = self.query_one("#f-model", Select)
        current = select.value
        options = [(m.name, str(m.path)) for m in models]
        select.set_options(options)
        paths = [p for _, p in options]
        if current in paths:
            select.value = current
        elif options:
            chosen = next((str(m.path) for m in models if m.name == self.app.model), paths[0])
            select.value = chosen
        if models and hasattr(self.app, "models_changed"):
            self.app.models_changed([m.name for m in models])
        mount = self.query_one("#f-mount", Select)
        current = mount.value
        mount.set_options([("none", "")] + [(a.name, str(a.path)) for a in adapters])
        mount.value = current if current in [str(a.path) for a in adapters] else ""
        self._suggest_output()

    # the form: reacting to edits ---------------------------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        sid = event.select.id
        if sid == "f-method":
            self._method_changed()
            self._schedule_preview(0)
        elif sid in ("f-preset", "f-mount"):
            self._update_preset_info()
        if sid in ("f-model", "f-method"):
            self._suggest_output()
        self._clear_errors()

    def _method_changed(self) -> None:
        method = self._value("f-method") or "sft"
        self.query_one("#f-iters", Input).placeholder = f"{default_iters(method)} (default for {method.upper()})"
        self._update_preset_info()

    def _update_preset_info(self) -> None:
        method, preset = self._value("f-method") or "sft", self._value("f-preset") or "small"
        self.query_one("#f-preset-info", Static).update(preset_summary(method, preset, bool(self._value("f-mount"))))

    def _value(self, select_id: str) -> str | None:
        v = self.query_one(f"#{select_id}", Select).value
        return None if v is Select.NULL else v

    def _suggest_output(self) -> None:
        """Fill in output as <model>-<method>, a name no run holds yet, until the user types one."""
        field = self.query_one("#f-output", Input)
        if field.value and field.value != self._auto_output:
            return
        model = self._value("f-model")
        if not model:
            return
        base = f"{Path(model).name}-{self._value('f-method') or 'sft'}"
        name, n = base, 2
        while holds_run(self.app.ws.adapters_dir / name) or self._output_busy(self.app.ws.adapters_dir / name):
            name, n = f"{base}-{n}", n + 1
        self._auto_output = name
        field.value = name

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-data":
            self._schedule_preview(PREVIEW_DELAY)
        self._clear_errors()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "f-data":
            self._schedule_preview(0)
        self.focus_next()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "f-start":
            event.stop()
            self.action_start()

    def _clear_errors(self) -> None:
        box = self.query_one("#f-errors", Static)
        box.update("")
        box.display = False

    # the form: the dataset preview --------------------------------------------------------
    def _schedule_preview(self, delay: float) -> None:
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(delay or 0.01, self._start_preview)

    def _start_preview(self) -> None:
        spec = self.query_one("#f-data", Input).value.strip()
        if not spec:
            self.preview_result = None
            self._show_preview_hint()
            return
        method = self._value("f-method") or "sft"
        self.query_one("#preview-summary", Static).update(Text(f"reading {spec}…", style="dim"))
        self.run_worker(partial(self._preview, spec, method), thread=True, group="train-preview")

    def _preview(self, spec: str, method: str) -> None:
        """In a worker thread: the first rows, the row count and the row issues (no tokenizer)."""
        from engine.data import preview

        try:
            rows, total, issues = preview(spec, method, limit=PREVIEW_ROWS, ws=self.app.ws)
            result = (spec, method, rows, total, issues, None)
        except HumanizerError as e:
            result = (spec, method, [], 0, [], e.message + (f"\n  hint: {e.hint}" if e.hint else ""))
        except Exception as e:  # an unreadable file must not take the screen down
            result = (spec, method, [], 0, [], f"{type(e).__name__}: {e}")
        self.app.call_from_thread(self._previewed, result)

    def _previewed(self, result: tuple) -> None:
        spec, method = result[0], result[1]
        if spec != self.query_one("#f-data", Input).value.strip() or method != (self._value("f-method") or "sft"):
            return  # the form moved on since this was read
        self.preview_result = result
        _, _, rows, total, issues, error = result
        summary = self.query_one("#preview-summary", Static)
        table = self.query_one("#preview-table", DataTable)
        problems = self.query_one("#preview-issues", Static)
        table.clear(columns=True)
        if error:
            summary.update(Text(f"✗ {error}", style="bold red"))
            table.display = False
            problems.update("")
            return
        fatal = [i for i in issues if getattr(i, "fatal", True)]
        warnings = [i for i in issues if not getattr(i, "fatal", True)]
        line = Text.assemble((f"{total:,} rows", "bold"), f" · {method.upper()}")
        if fatal:
            line.append(f" · ✗ {len(fatal)} row error{'s' * (len(fatal) != 1)}", style="bold red")
        else:
            line.append(" · ✓ no row errors", style="green")
        if warnings:
            line.append(f" · {len(warnings)} warning{'s' * (len(warnings) != 1)}")
        if rows:
            line.append(f"   first {len(rows)}:", style="dim")
        summary.update(line)
        columns: list[str] = []
        for row in rows:
            for k in row:
                if k not in columns:
                    columns.append(k)
        for k in columns[:4]:
            table.add_column(k, key=k)
        for i, row in enumerate(rows):
            table.add_row(*(_cell(row.get(k, "")) for k in columns[:4]), key=str(i))
        table.display = bool(rows)
        text = Text()
        for issue in issues[:MAX_ISSUES]:
            text.append(("✗ " if getattr(issue, "fatal", True) else "! ") + str(issue) + "\n")
        if len(issues) > MAX_ISSUES:
            text.append(f"… and {len(issues) - MAX_ISSUES} more", style="italic")
        if fatal:
            text.append("Fix them, or add --skip-bad-rows to flags to train without them.", style="italic")
        problems.update(text)

    def _show_preview_hint(self) -> None:
        self.query_one("#preview-summary", Static).update(Text(
            "Dataset preview: type a path above. SFT rows: messages, prompt/completion or text; "
            "DPO rows: prompt, chosen, rejected.", style="dim"))
        self.query_one("#preview-table").display = False
        self.query_one("#preview-issues", Static).update("")

    # the form: start -----------------------------------------------------------------------
    def _output_busy(self, out: Path) -> JobInfo | None:
        for job in self.train_jobs():
            if job.status in ("running", "starting"):
                target = parse_train_argv(job.argv).get("output")
                if target and Path(target).expanduser().resolve() == out.resolve():
                    return job
        return None

    def validate_form(self) -> tuple[dict, list[tuple[str, str]]]:
        """The form's settings, and (field id, message) for each problem."""
        ws = self.app.ws
        errors: list[tuple[str, str]] = []
        model = self._value("f-model")
        method = self._value("f-method") or "sft"
        preset = self._value("f-preset") or "small"
        mount = self._value("f-mount") or ""
        data = self.query_one("#f-data", Input).value.strip()
        iters_text = self.query_one("#f-iters", Input).value.strip()
        name = self.query_one("#f-output", Input).value.strip()
        resume = self.query_one("#f-resume", Checkbox).value
        if not model:
            errors.append(("f-model", "model: required; pull or import one in Models (1)"))
        problem = check_dataset(ws, data)
        if problem:
            errors.append(("f-data", f"dataset: {problem}"))
        elif self.preview_result and self.preview_result[0] == data and self.preview_result[1] == method:
            _, _, _, total, issues, error = self.preview_result
            fatal = [i for i in issues if getattr(i, "fatal", True)]
            if error:
                errors.append(("f-data", f"dataset: {error.splitlines()[0]}"))
            elif fatal and "--skip-bad-rows" not in self.query_one("#f-extra", Input).value:
                errors.append(("f-data", f"dataset: {len(fatal)} row errors (see the preview); fix them or add "
                                         "--skip-bad-rows to flags"))
        iters = default_iters(method)
        if iters_text:
            try:
                iters = int(iters_text)
            except ValueError:
                iters = 0
            if iters < 1:
                errors.append(("f-iters", "iters: a whole number of steps, at least 1"))
        out = None
        if not name:
            errors.append(("f-output", "output: required: an adapter name or a folder"))
        else:
            out = output_path(ws, name)
            busy = self._output_busy(out)
            if busy is not None:
                errors.append(("f-output", f"output: run {busy.id} is writing {display_path(out, ws.home)}"))
            elif out.exists() and not out.is_dir():
                errors.append(("f-output", f"output: {display_path(out, ws.home)} is a file"))
            elif holds_run(out) and not resume:
                errors.append(("f-output", f"output: {display_path(out, ws.home)} already holds a training run; "
                                           "choose another name, or tick resume to continue it"))
        extra, problem = parse_extra(self.query_one("#f-extra", Input).value)
        if problem:
            errors.append(("f-extra", f"flags: {problem}"))
        settings = {"model": model, "data": data, "method": method, "preset": preset, "mount": mount,
                    "iters": iters, "output": out, "extra": extra, "resume": resume}
        return settings, errors

    def action_start(self) -> None:
        settings, errors = self.validate_form()
        box = self.query_one("#f-errors", Static)
        if errors:
            box.update(Text("\n".join(f"✗ {message}" for _, message in errors)))
            box.display = True
            self.query_one(f"#{errors[0][0]}").focus()
            self.call_after_refresh(box.scroll_visible, animate=False)
            self.notify(errors[0][1], title="cannot start", severity="error", timeout=6)
            return
        s = settings
        data = s["data"]
        p = Path(data).expanduser()
        if p.exists():
            data = str(p.resolve())  # the job may run from another folder than the one it was typed in
        args = ["lora", "train", s["model"], "--data", data, "--method", s["method"], "--preset", s["preset"],
                "--iters", str(s["iters"]), "--output", str(s["output"])]
        if s["mount"]:
            args += ["--mount-adapter", s["mount"]]
        args += s["extra"]
        if s["resume"]:
            args.append("--resume")
        kind = f"lora train {s['method']}"
        try:
            job = start_job(self.app.ws, kind, humanizer_argv(*args))
        except OSError as e:
            self.notify(f"could not start {kind}: {e}", severity="error")
            return
        self._clear_errors()
        self.histories[job.id] = RunHistory(job)
        self.app.poll_jobs()
        self.overlay = None
        self.show(job.id)
        self.notify(f"training {self.histories[job.id].name} ({job.id})", timeout=3)
        self._auto_output = None
        self.query_one("#f-output", Input).value = ""
        self._suggest_output()
        self.query_one(RunTable).focus()

    # the palette ---------------------------------------------------------------------------
    def palette_commands(self):
        cmds = [("Start training", "with the form's settings (ctrl+s)", self.action_start),
                ("New training run", "go to the form (n)", self.action_new_run)]
        h = self.histories.get(self.shown) if self.shown else None
        if h is not None and h.job.status == "running":
            cmds.insert(0, (f"Cancel training {h.name}", f"{h.job.id}: SIGTERM after a confirm (c)",
                            self.action_cancel_run))
        if self.overlay:
            cmds.append(("Stop comparing", "remove the overlaid run's curves", self.clear_overlay))
        for job in self.train_jobs()[:30]:
            other = self.histories.get(job.id)
            name = other.name if other else job.id
            if job.id != self.shown:
                cmds.append((f"Open run: {name}", f"{job.kind} · {job.status} · {job.id}",
                             lambda i=job.id: self.show(i)))
                cmds.append((f"Compare with run: {name}", f"overlay its curves · {job.id}",
                             lambda i=job.id: self._compare(i)))
        return cmds

    def _compare(self, job_id: str) -> None:
        self.overlay = job_id
        self._dirty = True
        self.tick()
