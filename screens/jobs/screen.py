"""Jobs mode: every run in runs/ (from the app or the CLI), live; the highlighted run's
events (or its log.txt) tail below the table; cancel a running job."""

from __future__ import annotations

from pathlib import PurePath

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, RichLog, Static

from engine.events import TERMINAL
from engine.jobs import JobInfo, last_progress
from screens.common.dialogs import confirm_cancel
from screens.common.progress import EventTail, LogTail
from screens.common.event_text import fmt_duration
from screens.common.widgets import (
    TAIL_HZ, FitFooter, LiveTable, ModeHeader, StatusBar, cursor_key, fmt_time, format_event, progress_pct,
    status_text, sync_table,
)

NARROW = 100  # below: no kind or started column (the id carries both)
MAX_LINES = 2000
NAME_CELLS = 18  # a longer name is cut with an ellipsis
STATUS_CELLS = max(status_text(s).cell_len for s in ("starting", "running", "done", "failed", "cancelled"))


def job_name(job: JobInfo) -> str:
    """What a job makes or works on, from its settings (job.json): its output's name, the name it
    pulls or fits (`name`), the file it imports (its stem names the model), else its model or dataset."""
    s = job.settings
    value = next((str(s[k]) for k in ("output", "name") if s.get(k)), None)
    if not value and s.get("file"):
        value = PurePath(str(s["file"])).stem
    value = value or next((str(s[k]) for k in ("model", "dataset", "data") if s.get(k)), None)
    if not value:
        return "—"
    name = PurePath(value.rstrip("/")).name or value
    return name if len(name) <= NAME_CELLS else name[:NAME_CELLS - 1] + "…"


def ranks_text(job: JobInfo) -> Text:
    """A run on several ranks: a line per rank (host, pid, status) from job.json; empty otherwise."""
    out = Text()
    for r in job.ranks:
        out.append(f"\n  rank {r.get('rank', '?')}  ", style="dim")
        out.append(f"{r.get('host') or '?'}  pid {r.get('pid') or '—'}  ")
        out.append_text(status_text(str(r.get("status") or "?")))
        if r.get("exit_code"):
            out.append(f"  exit code {r['exit_code']}", style="dim")
    return out


class JobTable(LiveTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Events", id="jobs_events",
                tooltip="Follow its events below"),
    ]


class JobsScreen(Screen):
    BINDINGS = [
        Binding("c", "cancel_job", "Cancel job", id="jobs_cancel",
                tooltip="SIGTERM it, after a confirm"),
        Binding("l", "show_log", "log.txt", id="jobs_log", tooltip="Its stdout/stderr, live"),
        Binding("e", "show_events", "Events", id="jobs_show_events", show=False,
                tooltip="Back to its events"),
        Binding("escape", "focus_table", "Table", id="jobs_focus_table", show=False,
                tooltip="Back to the table"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Jobs"
        self.narrow: bool | None = None
        self._progress: dict[str, tuple[EventTail, float | None, str]] = {}
        self.shown: str | None = None  # the job whose events/log are in the pane
        self.view = "events"
        self._tail: EventTail | LogTail | None = None

    def compose(self) -> ComposeResult:
        yield ModeHeader("jobs")
        yield StatusBar()
        yield JobTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="jobs-empty")
        yield Static("", id="detail-title")
        yield RichLog(id="detail", max_lines=MAX_LINES, wrap=True, min_width=20, auto_scroll=True)
        yield FitFooter()

    def on_mount(self) -> None:
        self._columns()
        self.tick()
        self.set_interval(1 / TAIL_HZ, self.tick)
        self.query_one(JobTable).focus()

    def on_resize(self) -> None:
        self._columns()

    def _columns(self) -> None:
        narrow = self.size.width < NARROW
        if narrow == self.narrow:
            return
        self.narrow = narrow
        table = self.query_one(JobTable)
        table.clear(columns=True)
        table.add_column("id", key="id")
        if not narrow:
            table.add_column("kind", key="kind")
        table.add_column("name", key="name")
        # status at its widest from the start: cells update in place without widening (was "⊘ cancell")
        table.add_column("status", key="status", width=STATUS_CELLS)
        table.add_column("%" if narrow else "progress", key="progress")
        if not narrow:
            table.add_column("started", key="started")
        table.add_column("duration", key="duration")
        self._sync()

    # the table --------------------------------------------------------------
    def tick(self) -> None:
        if not self.is_current:  # another mode is showing: no work
            return
        self._sync()
        self._tail_detail()

    def _pct(self, job: JobInfo) -> str:
        entry = self._progress.get(job.id)
        if entry is None or entry[2] not in TERMINAL:  # read on until the job ends (and once after)
            tail, pct = (entry[0], entry[1]) if entry else (EventTail(job.dir), None)
            new = progress_pct(last_progress(tail.read()))
            entry = (tail, pct if new is None else new, job.status)
            self._progress[job.id] = entry
        pct = entry[1]
        if job.status == "done":
            return "100%"
        return f"{pct:.0f}%" if pct is not None else "—"

    def _row(self, job: JobInfo) -> tuple:
        end = job.ended if job.status in TERMINAL else self.app.clock()
        cells = {"id": job.id, "kind": job.kind, "name": job_name(job), "status": status_text(job.status),
                 "progress": Text(self._pct(job), justify="right"), "started": fmt_time(job.started),
                 "duration": fmt_duration(end - job.started if job.started and end else None)}
        return tuple(cells[str(c.value)] for c in self.query_one(JobTable).columns)

    def _sync(self) -> None:
        jobs = self.app.jobs
        sync_table(self.query_one(JobTable), [(j.id, self._row(j)) for j in jobs])
        empty = self.query_one("#jobs-empty", Static)
        empty.display = not jobs
        self.query_one("#detail-title").display = self.query_one("#detail").display = bool(jobs)
        empty.update("No runs yet. Jobs started here or from the CLI (`humanizer models pull`, …) "
                     "show up as they start.")
        if self.shown is None and jobs:
            self._show(cursor_key(self.query_one(JobTable)), "events")

    def selected(self) -> JobInfo | None:
        key = cursor_key(self.query_one(JobTable))
        return next((j for j in self.app.jobs if j.id == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value != self.shown:
            self._show(event.row_key.value, "events")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self._show(event.row_key.value, "events", force=self.view != "events")

    # the detail pane ------------------------------------------------------------
    def _show(self, job_id: str | None, view: str, force: bool = False) -> None:
        if job_id == self.shown and view == self.view and not force:
            return
        self.shown, self.view = job_id, view
        log = self.query_one("#detail", RichLog)
        log.clear()
        job = next((j for j in self.app.jobs if j.id == job_id), None)
        if job is None:
            self._tail = None
            self.query_one("#detail-title", Static).update("")
            return
        self._tail = EventTail(job.dir) if view == "events" else LogTail(job.dir / "log.txt")
        self._tail_detail()

    def _tail_detail(self) -> None:
        job = next((j for j in self.app.jobs if j.id == self.shown), None)
        if job is None or self._tail is None:
            return
        title = Text.assemble(("events" if self.view == "events" else "log.txt", "bold"), " · ", job.id, "  ",
                              status_text(job.status))
        if job.status == "failed" and job.error:
            title.append(f"  {job.error}", style="red")
        title.append("   (l: log.txt)" if self.view == "events" else "   (e: events)", style="dim")
        title.append_text(ranks_text(job))
        self.query_one("#detail-title", Static).update(title)
        log = self.query_one("#detail", RichLog)
        items = self._tail.read()[-MAX_LINES:]
        for item in items:
            log.write(format_event(item) if self.view == "events" else Text(item))

    def action_show_events(self) -> None:
        self._show(cursor_key(self.query_one(JobTable)), "events")

    def action_show_log(self) -> None:
        self._show(cursor_key(self.query_one(JobTable)), "log")

    def action_focus_table(self) -> None:
        self.query_one(JobTable).focus()

    # cancel -----------------------------------------------------------------------
    def action_cancel_job(self) -> None:
        job = self.selected()
        if job is None:
            self.notify("no job selected", severity="warning")
            return
        if not job.running:
            self.notify(f"{job.id} is not running ({job.status})", severity="warning")
            return

        confirm_cancel(self, job, f"Cancel job [b]{job.id}[/b] ({job.kind})?\n\nIt is sent SIGTERM, saves what it "
                       "can and stops.", yes="Cancel job", no="Keep running")

    def palette_commands(self):
        job = self.selected()
        if job is None:
            return []
        cmds = [(f"Show events of {job.id}", "in the pane below the table", self.action_show_events),
                (f"Show log.txt of {job.id}", "stdout/stderr of the job", self.action_show_log)]
        if job.running:
            cmds.insert(0, (f"Cancel selected job {job.id}", f"{job.kind}: SIGTERM after a confirm",
                            self.action_cancel_job))
        return cmds
