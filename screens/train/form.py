"""The Train screen's new-run form: the settings of a `humanizer lora train` run, checked
before it starts, and a preview of the dataset's first rows and row errors (read in a
worker thread a moment after the last keystroke)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select, Static

from engine.distributed.settings import processes_flags
from engine.errors import HumanizerError
from engine.jobs import JobInfo
from engine.train.config import METHODS, PRESETS
from screens.common.forms import PickDialog, TickBox
from screens.common.run_form import FormHost, FormSubmitted, form_head
from screens.common.widgets import display_path, mode_ref
from screens.train.fields import (cell, check_dataset, dataset_methods, default_iters, holds_run, next_free_name,
                                  output_path, pick_method, preset_summary, read_extra)

PREVIEW_ROWS = 20
PREVIEW_DELAY = 0.35  # seconds after the last keystroke in the dataset field
MAX_ISSUES = 12
class TrainForm:
    """The form's half of TrainScreen (a mixin: its fields are the screen's own widgets,
    so the ids, the focus order and the CSS are the screen's). A start posts Submitted; the
    screen starts the job."""

    class Needs(FormHost, Protocol):
        def _suggest_output(self) -> None: ...  # RunsScreen's

    class Submitted(FormSubmitted):
        """values: validate_form's dict (model, data, method, preset, mount, iters, output, extra, resume,
        ranks: the --nproc/--hosts flags)."""

    preview_result: tuple | None  # (spec, method, rows, total, issues, error)
    _preview_timer: Timer | None
    _methods_spec: str | None = None  # the dataset whose rows last set the method

    def compose_form(self) -> ComposeResult:
        yield from form_head("New run", self.app)
        with Horizontal(classes="form-row"):
            yield Label("dataset")
            yield Input(placeholder="ctrl+o: pick, or a path / HF id", compact=True, id="f-data")
        with Horizontal(classes="form-row"):
            yield Label("method")
            yield Select([(m.upper(), m) for m in METHODS], value="sft", allow_blank=False, compact=True,
                         id="f-method")
        with Horizontal(classes="form-row"):
            yield Label("preset")
            yield Select([(p, p) for p in PRESETS], value="small", allow_blank=False,
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
        with Horizontal(classes="form-row"):
            yield Label("ranks")
            yield Input(placeholder="N processes here, or a hostfile", compact=True, id="f-ranks")
        yield TickBox("resume the run in output", compact=True, id="f-resume")
        yield Button("Start  ctrl+s", id="f-start", compact=True, variant="primary")
        yield Static("", id="preview-summary")
        yield DataTable(id="preview-table", cursor_type="row", zebra_stripes=True, show_cursor=False)
        yield Static("", id="preview-issues")

    def setup_form(self) -> None:
        self.query_one("#preview-table").display = False
        self._method_changed()
        self._show_preview_hint()

    # the workspace's lists ------------------------------------------------------------------
    def scan_more(self) -> list:
        """In the scan's worker thread: the SFT adapters that a run can mount."""
        from engine import adapters as A

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
        return found

    def form_scanned(self, adapters: list) -> None:
        self.adapters = adapters
        mount = self.query_one("#f-mount", Select)
        current = mount.value
        mount.set_options([("none", "")] + [(a.name, str(a.path)) for a in adapters])
        mount.value = current if current in [str(a.path) for a in adapters] else ""
        self._suggest_output()

    def output_base(self, model: str) -> str:
        return f"{Path(model).name}-{self._value('f-method') or 'sft'}"

    def output_taken(self, name: str) -> bool:
        folder = output_path(self.app.ws, name)
        return holds_run(folder) or self._output_busy(folder) is not None

    def _start_job(self, kind: str, args: list[str], settings: dict | None = None) -> None:
        """Start the run, then propose a fresh output for the next one: the other fields stay
        (for a variant), so the name just used would invite a duplicate run into it."""
        typed = self.query_one("#f-output", Input).value.strip()
        started = len(self.histories)
        super()._start_job(kind, args, settings)
        if len(self.histories) == started or not typed or typed == self._auto_output:
            return  # not started, or the name was the form's own: RunsScreen suggested the next one
        name = next_free_name(typed, self.output_taken)
        self._auto_output = name
        self.query_one("#f-output", Input).value = name
        self.query_one("#f-resume", Checkbox).value = False  # the run just started is the one resumed

    # reacting to edits ----------------------------------------------------------------------
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

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-data":
            self._schedule_preview(PREVIEW_DELAY)
        self._clear_errors()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "f-data":
            self._schedule_preview(0)
        self.focus_next()

    # the dataset preview -------------------------------------------------------------------
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
        infer = spec != self._methods_spec  # a new dataset: its rows say which method it feeds
        self.run_worker(partial(self._preview, spec, method, infer), thread=True, group="train-preview")

    def _preview(self, spec: str, method: str, infer: bool = False) -> None:
        """In a worker thread: the method the rows feed (for a new spec), then the first rows,
        the row count and the row issues (no tokenizer)."""
        from engine.data import preview

        if infer:
            try:
                wanted = pick_method(method, dataset_methods(self.app.ws, spec))
            except Exception:  # an unreadable file: the preview says why
                wanted = method
            if wanted != method:
                self.app.call_from_thread(self._method_inferred, spec, wanted)
                return  # the method's change reads the preview again
            self.app.call_from_thread(setattr, self, "_methods_spec", spec)
        try:
            rows, total, issues = preview(spec, method, limit=PREVIEW_ROWS, ws=self.app.ws)
            result = (spec, method, rows, total, issues, None)
        except HumanizerError as e:
            result = (spec, method, [], 0, [], str(e))  # the message, and its hint on a line
        except Exception as e:  # an unreadable file must not take the screen down
            result = (spec, method, [], 0, [], f"{type(e).__name__}: {e}")
        self.app.call_from_thread(self._previewed, result)

    def _method_inferred(self, spec: str, method: str) -> None:
        if spec != self.query_one("#f-data", Input).value.strip():
            return
        self._methods_spec = spec
        self.query_one("#f-method", Select).value = method
        self.notify(f"method: {method.upper()} (the rows of {Path(spec).name or spec} are {method.upper()} rows)",
                    timeout=3)

    # the dataset picker --------------------------------------------------------------------
    def action_pick_dataset(self) -> None:
        self.run_worker(self._list_datasets, thread=True, group="train-datasets", exclusive=True)

    def _list_datasets(self) -> None:
        from engine.data.catalog import list_datasets

        try:
            found = list_datasets(self.app.ws)
        except Exception as e:  # a broken folder must not take the screen down
            self.app.call_from_thread(self.notify, f"cannot list datasets: {e}", severity="error")
            return
        self.app.call_from_thread(self._offer_datasets, found)

    def _offer_datasets(self, found: list) -> None:
        from screens.data.widgets import dataset_line

        self.app.push_screen(PickDialog("Dataset: workspace datasets and the bundled examples",
                                        [(dataset_line(d), d) for d in found],
                                        empty=f"no datasets yet: build one in {mode_ref(self.app, 'data')}, "
                                              "or type a path"),
                             lambda d: d is not None and self.use_dataset(d.spec, d.methods))

    def use_dataset(self, spec: str, methods=()) -> None:
        """Train on `spec`: the dataset field, and the method its rows feed (kept when it feeds both)."""
        method = self._value("f-method") or "sft"
        wanted = pick_method(method, tuple(methods))
        self._methods_spec = spec
        if wanted != method:
            self.query_one("#f-method", Select).value = wanted
        field = self.query_one("#f-data", Input)
        field.value = spec
        field.focus()
        self._schedule_preview(0)
        if wanted != method:
            self.notify(f"method: {wanted.upper()} ({spec} feeds {'+'.join(m.upper() for m in methods)})", timeout=3)

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
            table.add_row(*(cell(row.get(k, "")) for k in columns[:4]), key=str(i))
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
            "Dataset preview: ctrl+o picks a workspace dataset or an example; or type a path. SFT rows: messages, prompt/completion or text; "
            "DPO rows: prompt, chosen, rejected.", style="dim"))
        self.query_one("#preview-table").display = False
        self.query_one("#preview-issues", Static).update("")

    # start -----------------------------------------------------------------------------------
    def _output_busy(self, out: Path) -> JobInfo | None:
        for job in self.run_jobs():
            if job.status in ("running", "starting"):
                target = job.settings.get("output")
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
            errors.append(("f-model", f"model: required; pull or import one in {mode_ref(self.app, 'models')}"))
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
        extra, extra_settings, problem = read_extra(self.query_one("#f-extra", Input).value)
        if problem:
            errors.append(("f-extra", f"flags: {problem}"))
        ranks, problem = processes_flags(self.query_one("#f-ranks", Input).value)  # --nproc N / --hosts FILE
        if problem:
            errors.append(("f-ranks", f"ranks: {problem}"))
        settings = {"model": model, "data": data, "method": method, "preset": preset, "mount": mount,
                    "iters": iters, "output": out, "extra": extra, "extra_settings": extra_settings, "resume": resume,
                    "ranks": ranks}
        return settings, errors

    def action_start(self) -> None:
        s, errors = self.validate_form()
        if self._show_errors(errors):
            return
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
        args += s["ranks"]
        settings = {"model": s["model"], "data": data, "method": s["method"], "preset": s["preset"],
                    "iters": s["iters"], "output": str(s["output"]), "mount_adapter": s["mount"] or None,
                    "resume": s["resume"], **s["extra_settings"]}
        if s["ranks"]:  # as the CLI records them: nproc an int, hosts the file
            flag, value = s["ranks"]
            settings[flag[2:]] = int(value) if flag == "--nproc" else value
        self.post_message(self.Submitted(s, f"lora train {s['method']}", args, settings))
