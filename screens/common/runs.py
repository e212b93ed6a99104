"""RunsScreen, what the run modes (Train, Convert, Data, Eval) share: a screen that follows
one kind of job (the run shown, a table of runs, the new-run form beside them). A job's
history is history.py's; the form's shared pieces are run_form.py's.

A job's whole history is read once, in a worker thread, when it first appears; after
that only what was appended since the last read, REDRAW_HZ times a second, and the view
is redrawn from what has accumulated (never once per event). A job that appears while
the screen is open (started from the CLI or another app) is shown, unless the shown one
is still going."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.screen import Screen
from textual.widgets import Button, DataTable, Input, Select, Static

from engine.jobs import JobInfo, job_info
from screens.common.launch import start_verb
from screens.common.dialogs import confirm_cancel
from screens.common.history import JobHistory
from screens.common.widgets import LiveTable, action_key, sync_table

REDRAW_HZ = 3  # the view is redrawn at most this often
NARROW = 110  # below this many columns: narrow layouts (Train, Convert: one pane at a time)


class RunsTable(LiveTable):
    """The table of a RunsScreen's jobs, newest first (subclasses add the bindings)."""


class RunsScreen(Screen):
    """A screen that follows one kind of job: the run shown, the runs table (a RunsTable
    under #runs-heading) and the new-run form (#f-model first, #f-output, #f-errors,
    #f-start). Subclasses fill in the hooks below and the class attributes."""

    history_class: type[JobHistory] = JobHistory
    noun = "run"  # in messages: "no run shown"
    group = "runs"  # prefix of the worker groups
    body_id = "runs-body"
    short_rows: int | None = None  # below this many rows: the -short layout (None: no such layout)
    widen_columns = False  # a cell that grows widens its column
    heading = ("Runs", "enter: open")  # the table's title and its keys
    palette_names = ("Start", "New run", "Cancel")  # command palette: start, new, "Cancel <name>"
    cancel_texts = ("Cancel [b]{name}[/b] ({id})?", "Cancel", "Keep going")  # the confirm: question, yes, no
    started_verb = "started"  # notified: "<verb> <name> (<id>)"

    def __init__(self, sub_title: str) -> None:
        super().__init__()
        self.sub_title = sub_title
        self.histories: dict[str, JobHistory] = {}
        self._loading: set[str] = set()
        self._known: set[str] = set()  # the runs seen so far (a new one gets shown)
        self.shown: str | None = None
        self.overlay: str | None = None  # a second run drawn over the shown one (Train)
        self._dirty = True
        self._narrow: bool | None = None
        self._short: bool | None = None
        self.models: list = []
        self._auto_output: str | None = None

    # hooks ---------------------------------------------------------------------------------
    def is_job(self, job: JobInfo) -> bool:
        raise NotImplementedError

    def runs_columns(self, narrow: bool) -> list[tuple[str, str]]:
        """The runs table's columns as (key, label)."""
        raise NotImplementedError

    def run_row(self, job: JobInfo, h: JobHistory) -> tuple:
        raise NotImplementedError

    def _redraw(self) -> None:
        raise NotImplementedError

    def setup_form(self) -> None:
        """On mount, before the workspace is read."""

    def scan_more(self):
        """In the scan's worker thread, after the models: more for the form to offer."""
        return None

    def form_scanned(self, more) -> None:
        """The models are in the form; `more` is what scan_more read."""

    def output_base(self, model: str) -> str:
        """The output name suggested for `model` (a number is added while it is taken)."""
        raise NotImplementedError

    def output_taken(self, name: str) -> bool:
        raise NotImplementedError

    def job_commands(self, job: JobInfo, name: str) -> list[tuple]:
        """Palette commands for a run that is not the shown one."""
        return []

    def more_commands(self) -> list[tuple]:
        return []

    # layout ----------------------------------------------------------------------------------
    def on_mount(self) -> None:
        self._layout()
        self._clear_errors()
        self.setup_form()
        self._scan_workspace()
        jobs = self.run_jobs()
        self._known = {j.id for j in jobs}
        running = [j for j in jobs if j.status in ("running", "starting")]
        if jobs:
            self.shown = (running or jobs)[0].id
        self.tick()
        self.set_interval(1 / REDRAW_HZ, self.tick)
        if jobs:
            self.query_one(RunsTable).focus()
        else:
            self.query_one("#f-model").focus()

    def on_resize(self) -> None:
        self._layout()

    def _layout(self) -> None:
        narrow = self.size.width < NARROW
        short = self.short_rows is not None and self.size.height < self.short_rows
        if (narrow, short) == (self._narrow, self._short):
            return
        self._narrow, self._short = narrow, short
        self.set_class(narrow, "-narrow")
        self.set_class(short, "-short")
        self.query_one(f"#{self.body_id}").can_focus = False
        table = self.query_one(RunsTable)
        table.clear(columns=True)
        for key, label in self.runs_columns(narrow):
            table.add_column(label, key=key)
        self._dirty = True

    def on_screen_resume(self) -> None:
        self._scan_workspace()
        self._dirty = True

    # following runs ----------------------------------------------------------------------------
    def run_jobs(self) -> list[JobInfo]:
        return [j for j in self.app.jobs if self.is_job(j)]

    def tick(self) -> None:
        """REDRAW_HZ times a second: read what the runs appended, then redraw if anything changed."""
        if not self.is_current:
            return
        jobs = self.run_jobs()
        missing = [j for j in jobs if j.id not in self.histories and j.id not in self._loading]
        if missing:
            self._loading.update(j.id for j in missing)
            self.run_worker(partial(self._load, missing), thread=True, group=f"{self.group}-load")
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
                    self._scan_workspace()  # what it made, for the form
        self._follow_new(jobs)
        if table_dirty or self._dirty:
            self._sync_table(jobs)
        if self._dirty:
            self._dirty = False
            self._redraw()

    def _load(self, jobs: list[JobInfo]) -> None:
        """In a worker thread: read each run's history from its first event."""
        for job in jobs:
            self.app.call_from_thread(self._loaded, self.history_class.read(job))

    def _loaded(self, h: JobHistory) -> None:
        self._loading.discard(h.job.id)
        self.histories[h.job.id] = h
        self._dirty = True
        if h.job.id in (self.shown, self.overlay) or self.shown is None:
            self.tick()
        else:
            self._sync_table(self.run_jobs())

    def _follow_new(self, jobs: list[JobInfo]) -> None:
        """A run that appears while the screen is open is shown, unless the shown run is
        still going; an empty view shows the newest run."""
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
        self._sync_table(self.run_jobs())
        self._redraw()

    def _sync_table(self, jobs: list[JobInfo]) -> None:
        """The runs whose history is loaded, newest first."""
        table = self.query_one(RunsTable)
        rows = [(j.id, self.run_row(j, self.histories[j.id])) for j in jobs if j.id in self.histories]
        sync_table(table, rows, widen=self.widen_columns)
        title, keys = self.heading
        heading = Text(title, style="bold")
        if jobs:
            heading.append(f"   {keys}", style="dim")
        self.query_one("#runs-heading", Static).update(heading)
        table.display = bool(jobs)

    # the runs table and the actions --------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if isinstance(event.data_table, RunsTable):
            event.stop()
            self.show(event.row_key.value)

    def action_focus_runs(self) -> None:
        table = self.query_one(RunsTable)
        if table.display:
            table.focus()
            table.scroll_visible(animate=False)
        else:
            self.query_one("#f-model").focus()

    def action_new_run(self) -> None:
        self.query_one("#f-model").focus()

    def action_cancel_run(self) -> None:
        h = self.histories.get(self.shown) if self.shown else None
        job = job_info(h.job.dir) if h else None
        if job is None or job.status != "running":
            self.notify(f"the shown {self.noun} is not running" if job else f"no {self.noun} shown",
                        severity="warning")
            return
        question, yes, no = self.cancel_texts
        confirm_cancel(self, job, question.format(name=h.name, id=job.id), yes=yes, no=no, after=self.tick)

    def palette_commands(self):
        start, new, cancel = self.palette_names
        k = partial(action_key, self)
        cmds = [(start, f"with the form's settings ({k('start')})", self.action_start),
                (new, f"go to the form ({k('new_run')})", self.action_new_run)]
        h = self.histories.get(self.shown) if self.shown else None
        if h is not None and h.job.status == "running":
            cmds.insert(0, (f"{cancel} {h.name}", f"{h.job.id}: SIGTERM after a confirm ({k('cancel_run')})", self.action_cancel_run))
        cmds += self.more_commands()
        for job in self.run_jobs()[:30]:
            other = self.histories.get(job.id)
            if job.id != self.shown:
                cmds += self.job_commands(job, other.name if other else job.id)
        return cmds

    # the form: the workspace's lists -----------------------------------------------------------
    def _scan_workspace(self) -> None:
        self.run_worker(self._scan, thread=True, group=f"{self.group}-scan", exclusive=True)

    def _scan(self) -> None:
        """In a worker thread: the models, and whatever else the form offers."""
        from engine.models import list_models

        try:
            models = list_models(self.app.ws)
        except Exception:  # a broken folder must not take the screen down
            models = []
        more = self.scan_more()
        self.app.call_from_thread(self._scanned, models, more)

    def _scanned(self, models: list, more) -> None:
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
        self.form_scanned(more)

    # the form: shared pieces ---------------------------------------------------------------------
    def _value(self, select_id: str):
        v = self.query_one(f"#{select_id}", Select).value
        return None if v is Select.NULL else v

    def _suggest_output(self) -> None:
        """Fill in output from the model, a name not taken yet, until the user types one."""
        field = self.query_one("#f-output", Input)
        if field.value and field.value != self._auto_output:
            return
        model = self._value("f-model")
        if not model:
            return
        base = self.output_base(model)
        name, n = base, 2
        while self.output_taken(name):
            name, n = f"{base}-{n}", n + 1
        self._auto_output = name
        field.value = name

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "f-start":
            event.stop()
            self.action_start()

    def _clear_errors(self) -> None:
        box = self.query_one("#f-errors", Static)
        box.update("")
        box.display = False

    def _show_errors(self, errors: list[tuple[str, str]]) -> bool:
        """Show the form's problems, (field id, message) each, and focus the first; False if none."""
        if not errors:
            return False
        box = self.query_one("#f-errors", Static)
        box.update(Text("\n".join(f"✗ {message}" for _, message in errors)))
        box.display = True
        self.query_one(f"#{errors[0][0]}").focus()
        self.call_after_refresh(box.scroll_visible, animate=False)
        self.notify(errors[0][1], title="cannot start", severity="error", timeout=6)
        return True

    def _start_job(self, kind: str, args: list[str], settings: dict | None = None) -> None:
        """Start `humanizer ARGS` as a job (`settings`: what the view shows of it, keyed as the
        verb's flags), show it and get the form ready for the next one."""
        try:
            job = start_verb(self.app.ws, kind, args, settings)
        except OSError as e:
            self.notify(f"could not start {kind}: {e}", severity="error")
            return
        self._clear_errors()
        self.histories[job.id] = h = self.history_class(job)
        self._known.add(job.id)
        self.app.poll_jobs()
        self.overlay = None
        self.show(job.id)
        self.notify(f"{self.started_verb} {h.name} ({job.id})", timeout=3)
        self._auto_output = None
        self.query_one("#f-output", Input).value = ""
        self._suggest_output()
        self.query_one(RunsTable).focus()
