"""Server mode: start and stop `humanizer serve` as a background job (it outlives the app;
stop = cancel the job), choose its model and adapters, see its URL, health, mounted
adapters and model ids, mount and unmount adapters on it, and follow a live log of its
requests (adapter, tokens, latency, tok/s) from the job's "request" events.

The live state comes from the app's ServerMonitor (screens.common.serving); the request log is
this screen's tail of the shown serve run's events.jsonl, redrawn twice a second. Past
serve runs can be shown too (command palette), with their whole request log."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from engine.events import TERMINAL
from engine.jobs import JobInfo, job_info
from screens.server.actions import ServerActions
from screens.server.widgets import ServeRun, request_cells, request_summary, server_status
from screens.common.serving import (
    ServerMonitor, adapter_choices, fit_lines, pick_default_model, serve_jobs, server_defaults,
)
from screens.common.widgets import FitFooter, ModeHeader, StatusBar, key_of, mode_ref

__all__ = ["ServerScreen", "ServeRun", "request_summary", "server_defaults"]

REDRAW_HZ = 2
NARROW = 100  # below: fewer request-log columns
MAX_ROWS = 2000  # request-log rows kept in the table


class ServerScreen(ServerActions, Screen):
    DEFAULT_CSS = """
    ServerScreen #srv-status { height: auto; padding: 0 1; }
    ServerScreen #srv-summary { height: 1; padding: 0 1; background: $boost; }
    ServerScreen #srv-requests { height: 1fr; }
    ServerScreen #srv-empty { height: auto; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("s", "start", "Start", id="server_start", tooltip="Start a server: model, adapters, port (a job)"),
        Binding("x", "stop", "Stop", id="server_stop", tooltip="Stop the running server, after a confirm"),
        Binding("m", "mount", "Mount", id="server_mount", tooltip="Mount a workspace adapter on the server"),
        Binding("u", "unmount", "Unmount", id="server_unmount", tooltip="Unmount an adapter from the server"),
        Binding("f", "follow_live", "Live", id="server_live", show=False,
                tooltip="Show the running server (after opening a past run)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Server"
        self.monitor: ServerMonitor | None = None
        self.run: ServeRun | None = None
        self.pinned = False  # a past run chosen from the palette: do not jump to the live one
        self._seen_version = -1
        self._narrow: bool | None = None
        self._loading = False
        self._rows = 0

    def compose(self) -> ComposeResult:
        yield ModeHeader("server")
        yield StatusBar()
        yield Static("", id="srv-status")
        yield Static("", id="srv-summary")
        yield DataTable(id="srv-requests", cursor_type="row", zebra_stripes=True)
        yield Static("", id="srv-empty")
        yield FitFooter()

    def on_mount(self) -> None:
        self.monitor = ServerMonitor.of(self.app)
        self.run_worker(partial(pick_default_model, self.app), thread=True, group="server-model")
        self._columns()
        self.tick()
        self.set_interval(1 / REDRAW_HZ, self.tick)
        self.query_one("#srv-requests").focus()

    def on_resize(self) -> None:
        self._columns()

    def on_screen_resume(self) -> None:
        self._seen_version = -1
        self.tick()

    def _columns(self) -> None:
        narrow = self.size.width < NARROW
        if narrow == self._narrow:
            return
        self._narrow = narrow
        table = self.query_one("#srv-requests", DataTable)
        table.clear(columns=True)
        cols = [("time", "time"), ("adapter", "adapter"), ("in", "in"), ("out", "out"), ("latency", "latency"),
                ("tok/s", "tps"), ("status", "status")]
        if not narrow:
            cols[1:1] = [("request", "id")]
            cols.insert(-1, ("ttft", "ttft"))
        for label, key in cols:
            table.add_column(label, key=key)
        self._rows = 0
        if self.run is not None:
            self._append(self.run.requests)

    # following -------------------------------------------------------------------------
    def tick(self) -> None:
        if not self.is_current or self.monitor is None:
            return
        live = self.monitor.view.job
        if live is not None and (self.run is None or (self.run.job.id != live.id and not self.pinned)):
            self.show(live)
        elif self.run is None and not self._loading:
            past = serve_jobs(self.app.jobs)
            if past:
                self.show(past[0])
        if self.run is not None and not self._loading:
            self.run.job = job_info(self.run.job.dir)
            new = self.run.update()
            if new:
                self._append(self.run.requests[-new:])
        self._draw()

    def show(self, job: JobInfo, pinned: bool = False) -> None:
        """Show a serve run: its whole request log is read in a worker thread first."""
        self.pinned = pinned
        self.run = None
        self._loading = True
        self.query_one("#srv-requests", DataTable).clear()
        self._rows = 0
        self.run_worker(partial(self._load, job), thread=True, group="server-load", exclusive=True)
        self._draw()

    def _load(self, job: JobInfo) -> None:
        run = ServeRun(job)
        try:
            run.update()
        except OSError:
            pass
        self.app.call_from_thread(self._loaded, run)

    def _loaded(self, run: ServeRun) -> None:
        self._loading = False
        self.run = run
        table = self.query_one("#srv-requests", DataTable)
        table.clear()
        self._rows = 0
        self._append(run.requests)
        self._seen_version = -1
        self._draw()

    def _append(self, requests: list[dict]) -> None:
        table = self.query_one("#srv-requests", DataTable)
        at_end = table.cursor_row >= table.row_count - 1
        for r in requests[-MAX_ROWS:]:
            cells = request_cells(r)
            table.add_row(*(cells[str(c.key.value)] for c in table.columns.values()), key=f"r{self._rows}")
            self._rows += 1
        while table.row_count > MAX_ROWS:
            table.remove_row(next(iter(table.rows)))
        if at_end and table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)

    # drawing -----------------------------------------------------------------------------
    def _draw(self) -> None:
        width = self.size.width - 2
        self.query_one("#srv-status", Static).update(fit_lines(self._status(), width))
        run = self.run
        summary = self.query_one("#srv-summary", Static)
        empty = self.query_one("#srv-empty", Static)
        table = self.query_one("#srv-requests", DataTable)
        summary.update(fit_lines(request_summary(run.requests), width) if run else Text(""))
        summary.display = run is not None
        has_rows = bool(run and run.requests)
        table.display = has_rows
        empty.display = not has_rows
        if run is None:
            empty.update("")
        elif run.job.status in ("running", "starting"):
            live = self.monitor.view.job is not None and self.monitor.view.job.id == run.job.id
            ids = adapter_choices(self.monitor.models) if live and self.monitor.models else []
            example = (", ".join(f'"{m}"' for m in ids[:4]) + (", …" if len(ids) > 4 else "") if ids
                       else '"base", or the mounted adapters\' names joined with "+"')  # the real ids, not "sft"
            empty.update(f"No requests yet. Talk to it in {mode_ref(self.app, 'chat')}, or with any OpenAI "
                         f"client: POST /v1/chat/completions with \"adapter\": {example}")
        else:
            empty.update("This server run served no requests.")

    def _status(self) -> Text:
        return server_status(self.monitor, self.run)

    # the palette ---------------------------------------------------------------------------------
    def palette_commands(self):
        cmds = []
        if self.monitor is not None and self.monitor.view.job is not None:
            k = {b: key_of(self.app, f"server_{b}", d) for b, d in (("stop", "x"), ("mount", "m"), ("unmount", "u"))}
            cmds += [("Stop the server", f"{self.monitor.label()} ({k['stop']})", self.action_stop),
                     ("Mount an adapter on the server…", f"POST /v1/adapters ({k['mount']})", self.action_mount),
                     ("Unmount an adapter from the server…", f"DELETE /v1/adapters ({k['unmount']})",
                      self.action_unmount)]
        else:
            cmds.append(("Start a server…", f"model, adapters, port: a background job "
                         f"({key_of(self.app, 'server_start', 's')})", self.action_start))
        for job in serve_jobs(self.app.jobs)[:20]:
            if self.run is None or job.id != self.run.job.id:
                cmds.append((f"Show server run: {job.id}", f"{job.status} · its request log",
                             lambda j=job: self.show(j, pinned=j.status in TERMINAL)))
        return cmds
