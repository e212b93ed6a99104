"""Convert mode: sensitivity-aware mixed-precision quantization (`humanizer convert`) as a
job, with the per-layer bit map filling in live.

The form picks a workspace model, the target bits per weight (with what that means in
MB for this model: engine.convert.model_plan, in a worker thread), the candidate bits,
the group size and the output name. While a convert runs: a grid of blocks (rows) by
module (columns) whose cells show each layer's chosen bits (a digit on a colour; ? once
measured, before the allocation), the budget gauge (bpw now against the target), the
phase with its ETA, and each layer's sensitivity as a bar. At the end: size on disk,
achieved bpw, and the held-out perplexity of the result against the source.

The job's events.jsonl is read whole (in a worker thread) when a convert first appears,
then tailed 3 times a second, so a restarted app shows a running or past convert with
its whole history. Layout: the run on the left and the form on the right at 110 columns
and more; narrower, one scrolling column."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Checkbox, DataTable, Footer, Input, Label, Select, Static

from engine.convert import (
    DEFAULT_GROUP_SIZE, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, GROUP_SIZES, check_settings, layer_bpw, parse_bits,
)
from engine.errors import HumanizerError
from engine.jobs import JobInfo, humanizer_argv, job_info, start_job
from screens.convert_widgets import (
    ConvertHistory, is_convert_job, legend, render_gauge, render_grid, render_sensitivity,
)
from screens.train import bar
from screens.widgets import (
    ModeHeader, StatusBar, confirm_cancel, display_path, fmt_duration, fmt_time, status_text, sync_table,
)

REDRAW_HZ = 3
NARROW = 110
PLAN_DELAY = 0.3  # seconds after the last change of model, bits or group size
PHASES = {"load": "loading", "statistics": "calibration pass", "measure": "measuring layers",
          "allocate": "allocating bits", "write": "writing", "evaluate": "held-out perplexity"}


def fmt_size(n: float | None) -> str:
    if n is None:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} KB"


def plan_hint(plan: dict, target: float | None) -> Text:
    """What the target means for this model: its size, and the range the candidates allow."""
    per = plan["bytes_per_bpw"]
    lo, hi = plan["min_bpw"], plan["max_bpw"]
    line = Text()
    if target is not None:
        line.append(f"{target:g} bpw ≈ {fmt_size(target * per)}", style="bold")
        line.append(" · ")
    line.append(f"{lo:.2f}–{hi:.2f} bpw here = {fmt_size(lo * per)}–{fmt_size(hi * per)}; "
                f"float16 {fmt_size(16 * per)}; {plan['params']:,} params, {len(plan['layers'])} layers",
                style="dim")
    return line


class ConvertTable(DataTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="convert_open", tooltip="Show this convert")]


class ConvertScreen(Screen):
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
    ConvertScreen.-narrow #cv-body { layout: vertical; overflow-y: auto; scrollbar-size-vertical: 1; }
    ConvertScreen.-narrow #cv-main { height: auto; overflow-y: hidden; }
    ConvertScreen.-narrow #cv-form {
        width: 1fr; height: auto; border-left: none; border-top: hkey $primary-background; margin-top: 1;
    }
    ConvertScreen.-narrow .hint { padding-left: 0; }
    """

    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="convert_start", tooltip="Start converting with the form's settings"),
        Binding("c", "cancel_run", "Cancel", id="convert_cancel", tooltip="Stop the shown convert, after a confirm"),
        Binding("n", "new_run", "New convert", id="convert_new", tooltip="Go to the form"),
        Binding("r", "focus_runs", "Converts", id="convert_runs", show=False, tooltip="Go to the converts table"),
        Binding("escape", "focus_runs", "Converts", id="convert_escape", show=False,
                tooltip="Back to the converts table"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Convert"
        self.histories: dict[str, ConvertHistory] = {}
        self._loading: set[str] = set()
        self._known: set[str] = set()
        self.shown: str | None = None
        self._dirty = True
        self._narrow: bool | None = None
        self.models: list = []
        self.plans: dict[tuple, dict | str] = {}  # (model path, group, bits) -> model_plan() or an error
        self._plan_timer: Timer | None = None
        self._auto_output: str | None = None

    # layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield ModeHeader("convert")
        yield StatusBar()
        with ScrollableContainer(id="cv-body", can_focus=False):
            with Vertical(id="cv-main"):
                yield Static("", id="cv-title")
                yield Static("", id="cv-gauge")
                yield Static("", id="cv-result")
                yield Static("", id="cv-grid")
                yield Static("", id="cv-legend")
                yield Static("", id="runs-heading")
                yield ConvertTable(id="cv-runs", cursor_type="row", zebra_stripes=True)
                yield Static("", id="cv-sens")
            with Vertical(id="cv-form"):
                yield Static("New convert", classes="heading")
                yield Static("", id="f-errors")
                with Horizontal(classes="form-row"):
                    yield Label("model")
                    yield Select([], prompt="no models: pull one in Models (1)", compact=True, id="f-model")
                with Horizontal(classes="form-row"):
                    yield Label("target")
                    yield Input("5.0", placeholder="bits per weight, e.g. 5.0", compact=True, id="f-target")
                yield Static("", id="f-plan", classes="hint")
                with Horizontal(classes="form-row"):
                    yield Label("bits")
                    yield Input("4,8", placeholder="candidates from 2,3,4,5,6,8", compact=True, id="f-bits")
                with Horizontal(classes="form-row"):
                    yield Label("group")
                    yield Select([(str(g), g) for g in GROUP_SIZES], value=DEFAULT_GROUP_SIZE, allow_blank=False,
                                 compact=True, id="f-group")
                with Horizontal(classes="form-row"):
                    yield Label("output")
                    yield Input(placeholder="model name (in models/) or a path", compact=True, id="f-output")
                with Horizontal(classes="form-row"):
                    yield Label("samples")
                    yield Input(placeholder=f"{DEFAULT_SAMPLES} calibration sequences", type="integer",
                                compact=True, id="f-samples")
                with Horizontal(classes="form-row"):
                    yield Label("seq len")
                    yield Input(placeholder=f"{DEFAULT_SEQ_LEN} tokens each", type="integer", compact=True,
                                id="f-seqlen")
                yield Checkbox("resume an interrupted convert", compact=True, id="f-resume")
                yield Button("Start  ctrl+s", id="f-start", compact=True, variant="primary")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._layout()
        self._clear_errors()
        self._scan_workspace()
        jobs = self.convert_jobs()
        self._known = {j.id for j in jobs}
        running = [j for j in jobs if j.status in ("running", "starting")]
        if jobs:
            self.shown = (running or jobs)[0].id
        self.tick()
        self.set_interval(1 / REDRAW_HZ, self.tick)
        if jobs:
            self.query_one(ConvertTable).focus()
        else:
            self.query_one("#f-model").focus()

    def on_resize(self) -> None:
        self._layout()

    def _layout(self) -> None:
        narrow = self.size.width < NARROW
        if narrow == self._narrow:
            return
        self._narrow = narrow
        self.set_class(narrow, "-narrow")
        table = self.query_one(ConvertTable)
        table.clear(columns=True)
        for key, label in (("output", "output"), ("status", "status"), ("target", "target"), ("bpw", "bpw"),
                           ("size", "size"), ("started", "started")):
            table.add_column(label, key=key)
        self._dirty = True

    def on_screen_resume(self) -> None:
        self._scan_workspace()
        self._dirty = True

    # following converts ----------------------------------------------------------------
    def convert_jobs(self) -> list[JobInfo]:
        return [j for j in self.app.jobs if is_convert_job(j)]

    def tick(self) -> None:
        if not self.is_current:
            return
        jobs = self.convert_jobs()
        missing = [j for j in jobs if j.id not in self.histories and j.id not in self._loading]
        if missing:
            self._loading.update(j.id for j in missing)
            self.run_worker(partial(self._load, missing), thread=True, group="convert-load")
        table_dirty = False
        for job in jobs:
            h = self.histories.get(job.id)
            if h is None or h.final:
                continue
            was = h.job.status
            if job.id == self.shown:
                job = job_info(job.dir)  # fresher than the app's 2 Hz poll
            if h.update(job) or h.job.status != was:
                table_dirty = True
                self._dirty = self._dirty or job.id == self.shown
                if h.final and h.job.status == "done":
                    self._scan_workspace()  # the new model
        new = [j for j in jobs if j.id not in self._known]
        self._known.update(j.id for j in new)
        shown = self.histories.get(self.shown) if self.shown else None
        if (self.shown is None and jobs) or (new and shown is not None and shown.final):
            self.shown = (new or jobs)[0].id
            self._dirty = True
        if table_dirty or self._dirty:
            self._sync_table(jobs)
        if self._dirty:
            self._dirty = False
            self._redraw()

    def _load(self, jobs: list[JobInfo]) -> None:
        """In a worker thread: each convert's history from its first event."""
        for job in jobs:
            h = ConvertHistory(job)
            try:
                h.update(job_info(job.dir))
            except OSError:
                pass
            self.app.call_from_thread(self._loaded, h)

    def _loaded(self, h: ConvertHistory) -> None:
        self._loading.discard(h.job.id)
        self.histories[h.job.id] = h
        self._dirty = True
        self.tick()

    def show(self, job_id: str | None) -> None:
        self.shown = job_id
        self._dirty = True
        self.tick()

    # drawing ---------------------------------------------------------------------------
    def _sync_table(self, jobs: list[JobInfo]) -> None:
        table = self.query_one(ConvertTable)
        rows = []
        for j in jobs:
            h = self.histories.get(j.id)
            if h is None:
                continue
            bpw = h.bpw_now() if h.allocated() or h.done else None
            size = (h.done or {}).get("size_bytes")
            mark = "● " if j.id == self.shown else "  "
            rows.append((j.id, (Text(mark + h.name), status_text(j.status), Text(f"{h.target or 0:g}", justify="right"),
                                Text(f"{bpw:.3f}" if bpw is not None else "—", justify="right"),
                                Text(fmt_size(size) if size else "—", justify="right"), fmt_time(j.started))))
        sync_table(table, rows)
        heading = Text("Converts", style="bold")
        if jobs:
            heading.append("   enter: open · c: cancel · n: new", style="dim")
        self.query_one("#runs-heading", Static).update(heading)
        table.display = bool(rows)

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
            if p.get("eta") is not None:
                line.append(f"  ETA {fmt_duration(p['eta'])}")
            if job.started:
                line.append(f"  running {fmt_duration(self.app.clock() - job.started)}", style="dim")
        else:
            line.append(f"{h.measured()}/{total or h.measured()} layers", style="bold")
            if job.started and job.ended:
                line.append(f"  {job.status} after {fmt_duration(job.ended - job.started)}", style="dim")
        if job.status == "failed":
            err = h.error or {}
            line.append(f"\n✗ {err.get('message') or job.error or 'failed'}", style="bold red")
            if err.get("hint"):
                line.append(f"\n  hint: {err['hint']}", style="italic")
        elif job.status == "cancelled":
            line.append("\n⊘ cancelled: the measurements are kept; tick resume to continue", style="italic")
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

    # the table ------------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "cv-runs":
            event.stop()
            self.show(event.row_key.value)

    def action_focus_runs(self) -> None:
        table = self.query_one(ConvertTable)
        if table.display:
            table.focus()
            table.scroll_visible(animate=False)
        else:
            self.query_one("#f-model").focus()

    def action_new_run(self) -> None:
        self.query_one("#f-model").focus()

    # cancel ----------------------------------------------------------------------------
    def action_cancel_run(self) -> None:
        h = self.histories.get(self.shown) if self.shown else None
        job = job_info(h.job.dir) if h else None
        if job is None or job.status != "running":
            self.notify("the shown convert is not running" if job else "no convert shown", severity="warning")
            return

        confirm_cancel(
            self, job, f"Cancel converting [b]{h.name}[/b] ({job.id})?\n\nIts measurements are kept; tick resume in the "
            "form to continue it later.", yes="Cancel convert", no="Keep going", after=self.tick)

    # the form --------------------------------------------------------------------------
    def _scan_workspace(self) -> None:
        self.run_worker(self._scan, thread=True, group="convert-scan", exclusive=True)

    def _scan(self) -> None:
        from engine.models import list_models

        try:
            models = list_models(self.app.ws)
        except Exception:  # a broken folder must not take the screen down
            models = []
        self.app.call_from_thread(self._scanned, models)

    def _scanned(self, models: list) -> None:
        self.models = models
        select = self.query_one("#f-model", Select)
        current = select.value
        options = [(m.name, str(m.path)) for m in models]
        select.set_options(options)
        paths = [p for _, p in options]
        if current in paths:
            select.value = current
        elif options:
            select.value = next((str(m.path) for m in models if m.name == self.app.model), paths[0])
        if models and hasattr(self.app, "models_changed"):
            self.app.models_changed([m.name for m in models])
        self._suggest_output()
        self._schedule_plan()

    def _value(self, select_id: str):
        v = self.query_one(f"#{select_id}", Select).value
        return None if v is Select.NULL else v

    def _text(self, input_id: str) -> str:
        return self.query_one(f"#{input_id}", Input).value.strip()

    def _suggest_output(self) -> None:
        field = self.query_one("#f-output", Input)
        if field.value and field.value != self._auto_output:
            return
        model = self._value("f-model")
        if not model:
            return
        target = self._text("f-target") or "x"
        base = f"{Path(model).name}-{target}bpw"
        name, n = base, 2
        while (self.app.ws.models_dir / name).exists():
            name, n = f"{base}-{n}", n + 1
        self._auto_output = name
        field.value = name

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id in ("f-model", "f-group"):
            self._schedule_plan()
        if event.select.id == "f-model":
            self._suggest_output()
        self._clear_errors()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-bits":
            self._schedule_plan()
        elif event.input.id == "f-target":
            self._show_plan()
            self._suggest_output()
        self._clear_errors()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "f-start":
            event.stop()
            self.action_start()

    def _clear_errors(self) -> None:
        box = self.query_one("#f-errors", Static)
        box.update("")
        box.display = False

    # what a target means: model_plan in a worker ----------------------------------------
    def _plan_key(self) -> tuple | None:
        model = self._value("f-model")
        try:
            bits = tuple(parse_bits(self._text("f-bits")))
        except HumanizerError:
            return None
        return (model, self._value("f-group") or DEFAULT_GROUP_SIZE, bits) if model else None

    def _schedule_plan(self) -> None:
        if self._plan_timer is not None:
            self._plan_timer.stop()
        self._plan_timer = self.set_timer(PLAN_DELAY, self._start_plan)

    def _start_plan(self) -> None:
        key = self._plan_key()
        if key is not None and key not in self.plans:
            self.query_one("#f-plan", Static).update(Text("reading the model's layers…", style="dim"))
            self.run_worker(partial(self._plan, key), thread=True, group="convert-plan")
        else:
            self._show_plan()

    def _plan(self, key: tuple) -> None:
        from engine.convert import model_plan

        model, group, bits = key
        try:
            plan: dict | str = model_plan(model, group, list(bits), ws=self.app.ws)
        except HumanizerError as e:
            plan = e.message
        except Exception as e:  # an unreadable model must not take the screen down
            plan = f"{type(e).__name__}: {e}"
        self.app.call_from_thread(self._planned, key, plan)

    def _planned(self, key: tuple, plan) -> None:
        self.plans[key] = plan
        self._show_plan()

    def _show_plan(self) -> None:
        box = self.query_one("#f-plan", Static)
        key = self._plan_key()
        plan = self.plans.get(key) if key else None
        try:
            target = float(self._text("f-target"))
        except ValueError:
            target = None
        if isinstance(plan, dict):
            box.update(plan_hint(plan, target))
        elif isinstance(plan, str):
            box.update(Text(f"✗ {plan}", style="bold red"))
        else:
            box.update(Text("bits per weight over the whole model, scales and biases included", style="dim"))

    # start ------------------------------------------------------------------------------
    def validate_form(self) -> tuple[dict, list[tuple[str, str]]]:
        errors: list[tuple[str, str]] = []
        ws = self.app.ws
        model = self._value("f-model")
        if not model:
            errors.append(("f-model", "model: required; pull or import one in Models (1)"))
        ints = {}
        for fid, name, default in (("f-samples", "samples", DEFAULT_SAMPLES), ("f-seqlen", "seq len", DEFAULT_SEQ_LEN)):
            text = self._text(fid)
            try:
                ints[fid] = int(text) if text else default
            except ValueError:
                ints[fid] = default
                errors.append((fid, f"{name}: a whole number"))
        group = self._value("f-group") or DEFAULT_GROUP_SIZE
        target_text, bits_text = self._text("f-target"), self._text("f-bits")
        target = bits = None
        try:
            target, bits, group = check_settings(target_text, bits_text, group, ints["f-samples"], ints["f-seqlen"])
        except HumanizerError as e:
            msg = e.message
            fid = ("f-target" if "target" in msg else "f-group" if "group size" in msg else "f-samples"
                   if "--samples" in msg else "f-seqlen" if "--seq-len" in msg else "f-bits")
            errors.append((fid, f"{fid[2:]}: {msg}" + (f" ({e.hint})" if e.hint else "")))
        key = self._plan_key()
        plan = self.plans.get(key) if key else None
        if target is not None and isinstance(plan, dict) and target < plan["min_bpw"] - 1e-9:
            errors.append(("f-target", f"target: this model reaches at least {plan['min_bpw']:.3f} bits per weight "
                                       f"with every layer at {bits[0]} bits (norms stay in float16)"))
        name = self._text("f-output")
        out = None
        resume = self.query_one("#f-resume", Checkbox).value
        if not name:
            errors.append(("f-output", "output: required: a model name or a folder"))
        else:
            out = (Path(name).expanduser().resolve() if "/" in name or name.startswith("~")
                   else ws.models_dir / name)
            if out.exists() and (not out.is_dir() or any(out.iterdir())) and not resume:
                errors.append(("f-output", f"output: {display_path(out, ws.home)} already exists; choose another "
                                           "name"))
            busy = next((j for j in self.convert_jobs() if j.status in ("running", "starting")
                         and self.histories.get(j.id) and self.histories[j.id].args.get("output") == str(out)), None)
            if busy is not None:
                errors.append(("f-output", f"output: convert {busy.id} is writing it"))
        return {"model": model, "target": target, "bits": bits, "group": group, "output": out,
                "samples": ints["f-samples"], "seq_len": ints["f-seqlen"], "resume": resume}, errors

    def action_start(self) -> None:
        s, errors = self.validate_form()
        box = self.query_one("#f-errors", Static)
        if errors:
            box.update(Text("\n".join(f"✗ {message}" for _, message in errors)))
            box.display = True
            self.query_one(f"#{errors[0][0]}").focus()
            self.call_after_refresh(box.scroll_visible, animate=False)
            self.notify(errors[0][1], title="cannot start", severity="error", timeout=6)
            return
        args = ["convert", s["model"], "--target-bpw", f"{s['target']:g}", "--candidate-bits",
                ",".join(map(str, s["bits"])), "--group-size", str(s["group"]), "--output", str(s["output"])]
        if s["samples"] != DEFAULT_SAMPLES:
            args += ["--samples", str(s["samples"])]
        if s["seq_len"] != DEFAULT_SEQ_LEN:
            args += ["--seq-len", str(s["seq_len"])]
        if s["resume"]:
            args.append("--resume")
        try:
            job = start_job(self.app.ws, "convert", humanizer_argv(*args))
        except OSError as e:
            self.notify(f"could not start convert: {e}", severity="error")
            return
        self._clear_errors()
        self.histories[job.id] = ConvertHistory(job)
        self._known.add(job.id)
        self.app.poll_jobs()
        self.show(job.id)
        self.notify(f"converting {self.histories[job.id].name} ({job.id})", timeout=3)
        self._auto_output = None
        self.query_one("#f-output", Input).value = ""
        self._suggest_output()
        self.query_one(ConvertTable).focus()

    # the palette --------------------------------------------------------------------------
    def palette_commands(self):
        cmds = [("Start converting", "with the form's settings (ctrl+s)", self.action_start),
                ("New convert", "go to the form (n)", self.action_new_run)]
        h = self.histories.get(self.shown) if self.shown else None
        if h is not None and h.job.status == "running":
            cmds.insert(0, (f"Cancel convert {h.name}", f"{h.job.id}: SIGTERM after a confirm (c)",
                            self.action_cancel_run))
        for job in self.convert_jobs()[:30]:
            other = self.histories.get(job.id)
            if job.id != self.shown:
                cmds.append((f"Open convert: {other.name if other else job.id}", f"{job.status} · {job.id}",
                             lambda i=job.id: self.show(i)))
        return cmds
