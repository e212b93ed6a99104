"""Server mode: start and stop `humanizer serve` as a background job (it outlives the app;
stop = cancel the job), choose its model and adapters, see its URL, health, mounted
adapters and model ids, mount and unmount adapters on it, and follow a live log of its
requests (adapter, tokens, latency, tok/s) from the job's "request" events.

The live state comes from the app's ServerMonitor (screens.serving); the request log is
this screen's tail of the shown serve run's events.jsonl, redrawn twice a second. Past
serve runs can be shown too (command palette), with their whole request log."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.errors import HumanizerError
from engine.events import TERMINAL, read_events
from engine.jobs import JobInfo, cancel_job, job_info
from screens.forms import Field, FormDialog, PickDialog
from screens.serving import (
    DEFAULT_HOST, DEFAULT_PORT, ServerError, ServerMonitor, fit_lines, mount_adapter, mounted_names,
    parse_serve_argv, pick_default_model, serve_jobs, start_server, unmount_adapter,
)
from screens.widgets import ConfirmDialog, ModeHeader, StatusBar, fmt_duration, status_text

REDRAW_HZ = 2
NARROW = 100  # below: fewer request-log columns
MAX_ROWS = 2000  # request-log rows kept in the table
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

STATUS_LOOK = {  # request status -> (symbol, style); a symbol too, so NO_COLOR tells them apart
    "stop": ("✓", "green"), "length": ("✓", "green"), "disconnected": ("⊘", "dark_orange"),
    "cancelled": ("⊘", "dark_orange"), "error": ("✗", "bold red"),
}


def fmt_clock(t) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "--:--:--"


def describe_mounted(a: dict) -> str:
    method = (a.get("method") or "?").upper()
    if a.get("is_delta") and a.get("parent"):
        method += f" Δ on {a['parent']}"
    rank = f", r{a['rank']}" if a.get("rank") else ""
    return f"{a.get('name')} ({method}{rank})"


class ServeRun:
    """One serve run's events, read incrementally: its requests, log lines and error."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.offset = 0
        self.requests: list[dict] = []
        self.url: str | None = None
        self.message: str | None = None
        self.error: dict | None = None

    def update(self) -> int:
        """Read what was appended; returns how many new requests arrived."""
        events, self.offset = read_events(self.job.dir / "events.jsonl", self.offset)
        before = len(self.requests)
        for ev in events:
            kind = ev.get("type")
            if kind == "request":
                self.requests.append(ev)
            elif kind == "log":
                self.message = str(ev.get("message") or "")
                if ev.get("url"):
                    self.url = str(ev["url"])
            elif kind == "error":
                self.error = ev
        return len(self.requests) - before


def request_summary(requests: list[dict]) -> Text:
    line = Text()
    n = len(requests)
    line.append(f"{n} request{'s' * (n != 1)}", style="bold")
    if not n:
        return line
    failed = sum(1 for r in requests if r.get("status") == "error")
    stopped = sum(1 for r in requests if r.get("status") in ("disconnected", "cancelled"))
    if failed:
        line.append(f" · ✗ {failed} failed", style="bold red")
    if stopped:
        line.append(f" · ⊘ {stopped} stopped")
    ok = [r for r in requests if r.get("status") not in ("error",)]
    if ok:
        lat = sum(float(r.get("latency_s") or 0) for r in ok) / len(ok)
        tps = [float(r.get("tokens_per_second") or 0) for r in ok if r.get("completion_tokens")]
        line.append(f" · latency avg {lat:.2f}s")
        if tps:
            line.append(f" · {sum(tps) / len(tps):.1f} tok/s avg")
        tokens = sum(int(r.get("completion_tokens") or 0) for r in ok)
        line.append(f" · {tokens:,} tokens out")
    by: dict[str, int] = {}
    for r in requests:
        if r.get("adapter"):
            by[r["adapter"]] = by.get(r["adapter"], 0) + 1
    if by:
        line.append("   ")
        line.append(" · ".join(f"{a} {c}" for a, c in by.items()), style="dim")
    return line


class ServerScreen(Screen):
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
        yield Footer(compact=True)

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
            status = str(r.get("status") or "?")
            symbol, style = STATUS_LOOK.get(status, ("?", ""))
            label = Text(f"{symbol} {status}", style=style)
            if status == "error" and r.get("http_status"):
                label.append(f" {r['http_status']}")
            tps = r.get("tokens_per_second")
            cells = {
                "time": fmt_clock(r.get("t")),
                "id": (str(r.get("id") or "—").split("-", 1)[-1])[:10],
                "adapter": str(r.get("adapter") or "—"),
                "in": Text(str(r.get("prompt_tokens", "—")), justify="right"),
                "out": Text(str(r.get("completion_tokens", "—")), justify="right"),
                "latency": Text(f"{float(r.get('latency_s') or 0):.2f}s", justify="right"),
                "ttft": Text(f"{float(r['ttft_s']):.2f}s" if r.get("ttft_s") is not None else "—",
                             justify="right"),
                "tps": Text(f"{float(tps):.1f}" if tps else "—", justify="right"),
                "status": label,
            }
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
            empty.update("No requests yet. Talk to it in Chat (6), or with any OpenAI client: "
                         "POST /v1/chat/completions with \"adapter\": \"base\", \"sft\", \"sft+dpo\"…")
        else:
            empty.update("This server run served no requests.")

    def _status(self) -> Text:
        mon = self.monitor
        v = mon.view
        run = self.run
        live = v.job is not None and run is not None and run.job.id == v.job.id
        t = Text()
        if v.job is None:
            t.append("○ no server running", style="bold")
            t.append("   s: start one (a background job: it keeps serving when the app closes)", style="dim")
        if run is not None and not live:
            job = run.job
            args = parse_serve_argv(job.argv)
            t.append("\n" if v.job is None else "")
            t.append("last run " if v.job is None else "past run ", style="dim")
            t.append(f"{job.id} ", style="bold")
            t.append_text(status_text(job.status))
            if job.started and job.ended:
                t.append(f" after {fmt_duration(job.ended - job.started)}", style="dim")
            t.append(f"\n{run.url or 'never listened'} · model {Path(str(args.get('model', '?'))).name}")
            if args["adapters"]:
                t.append(" · adapters " + ", ".join(Path(a).name for a in args["adapters"]))
            if run.error:
                t.append(f"\n✗ {run.error.get('message')}", style="bold red")
                if run.error.get("hint"):
                    t.append(f"\n  hint: {run.error['hint']}", style="italic")
            if v.job is not None:
                t.append(f"\n{self.monitor.label()} is running: f shows it", style="dim")
        if v.job is None or not live:
            return t
        args = parse_serve_argv(v.job.argv)
        model = v.health.get("model") or Path(str(args.get("model", "?"))).name
        if v.state == "up":
            t.append("● up  ", style="bold green")
            t.append(f"{v.url}/v1", style="bold")
        elif v.state == "starting":
            t.append("… starting  ", style="bold")
            t.append((run.message if run and run.message else "loading the model") + "…", style="dim")
        elif v.state == "stopping":
            t.append("⊘ stopping  ", style="bold dark_orange")
            t.append(f"{v.url or ''}")
        else:
            t.append("✗ down  ", style="bold red")
            t.append(f"{v.url or ''}  {v.error or ''}")
        t.append(f"  model {model}")
        if v.health.get("uptime_s") is not None and v.state == "up":
            t.append(f" · up {fmt_duration(v.health['uptime_s'])}", style="dim")
        t.append("\n")
        if v.state == "up":
            h = v.health
            t.append("load ", style="dim")
            t.append(f"{h.get('active', 0)} active · {h.get('queued', 0)} queued · "
                     f"{h.get('tokens_generated', 0):,} tokens generated")
            if h.get("mode"):
                t.append(f" · {h['mode']}, up to {h.get('max_rows', '?')} rows", style="dim")
            t.append("\nmounted ", style="dim")
            t.append(" · ".join(describe_mounted(a) for a in v.mounted) or "none (base only)")
            t.append("\nmodels ", style="dim")
            t.append(" · ".join(v.models), style="bold")
            t.append("   (\"adapter\" or \"model\" in a request)", style="dim")
        else:
            t.append("adapters ", style="dim")
            t.append(", ".join(Path(a).name for a in args["adapters"]) or "none")
            t.append(f" · {args.get('host', DEFAULT_HOST)}:{args.get('port', DEFAULT_PORT)}", style="dim")
        return t

    # start and stop ------------------------------------------------------------------------
    def action_start(self) -> None:
        if self.monitor.view.job is not None:
            self.notify(f"a server is already running ({self.monitor.label()}); x stops it", severity="warning")
            return
        self.run_worker(self._gather, thread=True, group="server-gather", exclusive=True)

    def _gather(self) -> None:
        """In a worker thread: the models, the adapters (with fit against the current model),
        and the server defaults ([server] host / port in config.toml)."""
        from engine import adapters as A
        from engine.models import list_models

        try:
            models = list_models(self.app.ws)
        except Exception:  # noqa: BLE001 - a broken folder must not take the screen down
            models = []
        current = next((m for m in models if m.name == self.app.model), models[0] if models else None)
        try:
            adapters = A.list_adapters(self.app.ws, current.path if current else None)
        except Exception:  # noqa: BLE001
            adapters = []
        self.app.call_from_thread(self._start_dialog, models, current, adapters, server_defaults(self.app.ws))

    def _start_dialog(self, models: list, current, adapters: list, defaults: dict) -> None:
        if not models:
            self.notify("no models yet: pull or import one in Models (1)", severity="error")
            return
        by_name = {a.name: a for a in adapters}
        chosen = [a.name for a in adapters if a.fits is not False]
        options = []
        for a in adapters:
            label = f"{a.name}  {(a.method or '?').upper()}"
            if a.is_delta:
                label += f" Δ on {a.parent.get('name')}"
            if a.fits is False and current is not None:
                label += f"  (does not fit {current.name})"
            options.append((label, a.name))

        def validate(v: dict) -> list[tuple[str, str]]:
            errors = []
            if not v["model"]:
                errors.append(("model", "model: choose one"))
            names = set(v["adapters"])
            for n in v["adapters"]:
                a = by_name[n]
                if a.is_delta and not any(by_name[m].fingerprint == a.parent.get("fingerprint") for m in names):
                    errors.append(("adapters", f"adapters: '{n}' is a delta on '{a.parent.get('name')}': "
                                               "choose its parent too"))
            host = v["host"] or DEFAULT_HOST
            if not v["port"].isdigit() or int(v["port"]) > 65535:
                errors.append(("port", "port: a number from 0 (any free port) to 65535"))
            if host not in LOOPBACK and not v["api_key"]:
                errors.append(("api_key", f"API key: required to serve on {host} (anyone on the network "
                                          "could use it otherwise)"))
            if not v["max_concurrent"].isdigit() or int(v["max_concurrent"]) < 1:
                errors.append(("max_concurrent", "max concurrent: a whole number, at least 1"))
            return errors

        fields = [
            Field("model", "model", "select", str(current.path) if current else None,
                  [(m.name, str(m.path)) for m in models]),
            Field("adapters", "adapters", "multi", chosen, options,
                  help="space: tick · a delta (DPO) mounts with its parent" if options else
                  "no adapters in the workspace: it serves the base model only"),
            Field("host", "host", value=defaults.get("host", DEFAULT_HOST)),
            Field("port", "port", value=str(defaults.get("port", DEFAULT_PORT)), help="0: any free port"),
            Field("api_key", "API key", password=True, placeholder="none on 127.0.0.1; required on other hosts"),
            Field("max_concurrent", "max concurrent", value=str(defaults.get("max_concurrent", 8))),
        ]

        def submitted(v: dict | None) -> None:
            if v:
                self._start(v, [by_name[n] for n in v["adapters"]])

        self.app.push_screen(FormDialog("Start a server", fields, ok="Start", validate=validate,
                                        intro="An OpenAI-compatible server, run as a background job."), submitted)

    def _start(self, v: dict, adapters: list) -> None:
        from engine.adapters import stack_order

        try:
            ordered = stack_order(adapters)
        except HumanizerError as e:
            self.notify(e.message, severity="error")
            return
        try:
            job = start_server(self.app.ws, v["model"], [str(a.path) for a in ordered], v["host"] or DEFAULT_HOST,
                               int(v["port"]), v["api_key"] or None, int(v["max_concurrent"]))
        except OSError as e:
            self.notify(f"could not start the server: {e}", severity="error")
            return
        self.monitor.remember_key(job, v["api_key"] or None)
        self.app.poll_jobs()
        self.monitor.refresh_now()
        self.show(job)
        self.notify(f"starting the server ({job.id})", timeout=3)

    def action_stop(self) -> None:
        job = self.monitor.view.job
        if job is None:
            self.notify("no server is running", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.monitor.stopping(job)
                self.run_worker(partial(self._stop, job.id), thread=True, group="server-stop")

        self.app.push_screen(ConfirmDialog(
            f"Stop the server [b]{self.monitor.url or job.id}[/b]?\n\nRunning requests get a few seconds to "
            "finish; clients then lose it.", yes="Stop", no="Keep serving"), answered)

    def _stop(self, job_id: str) -> None:
        """In a worker thread: cancel_job waits for the server to exit (up to 10 s)."""
        try:
            job = cancel_job(self.app.ws, job_id)
        except HumanizerError as e:
            self.app.call_from_thread(self.notify, e.message, severity="error")
            return
        self.app.call_from_thread(self._stopped, job)

    def _stopped(self, job: JobInfo) -> None:
        self.app.poll_jobs()
        self.monitor.tick()
        self.notify(f"server {job.id}: {job.status}", timeout=3)
        self.tick()

    def action_follow_live(self) -> None:
        if self.monitor.view.job is not None:
            self.show(self.monitor.view.job)

    # mount and unmount -------------------------------------------------------------------------
    def action_mount(self) -> None:
        if not self.monitor.up:
            self.notify("no server is up: s starts one", severity="warning")
            return
        self.run_worker(self._gather_mountable, thread=True, group="server-gather", exclusive=True)

    def _gather_mountable(self) -> None:
        from engine import adapters as A

        try:
            adapters = A.list_adapters(self.app.ws)
        except Exception:  # noqa: BLE001
            adapters = []
        self.app.call_from_thread(self._mount_dialog, adapters)

    def _mount_dialog(self, adapters: list) -> None:
        mounted = set(mounted_names(self.monitor))
        prints = {a.get("fingerprint") for a in self.monitor.mounted}
        options = []
        for a in adapters:
            if a.name in mounted or a.fingerprint in prints:
                continue
            label = Text(a.name, style="bold")
            label.append(f"  {(a.method or '?').upper()}")
            parent = None
            if a.is_delta:
                parent = next((p.name for p in adapters if p.fingerprint == a.parent.get("fingerprint")), None)
                label.append(f" Δ on {a.parent.get('name')}", style="dim")
                if parent and parent not in mounted:
                    label.append("  (mounts its parent first)", style="dim")
            options.append((label, (a.name, parent)))
        self.app.push_screen(PickDialog("Mount an adapter on the server", options,
                                        empty="every workspace adapter is mounted already"), self._mount)

    def _mount(self, choice) -> None:
        if not choice:
            return
        name, parent = choice
        self.run_worker(self._mount_async(name, parent), group="server-mount", exit_on_error=False)

    async def _mount_async(self, name: str, parent: str | None) -> None:
        try:
            done = await mount_adapter(self.monitor, name, parent)
        except ServerError as e:
            self.notify(f"mount {name}: {e.message}", severity="error", timeout=8)
            return
        self.notify(f"mounted {', '.join(done)}", timeout=3)
        self.monitor.refresh_now()

    def action_unmount(self) -> None:
        if not self.monitor.up:
            self.notify("no server is up", severity="warning")
            return
        options = [(Text(describe_mounted(a)), a.get("name")) for a in self.monitor.mounted]
        self.app.push_screen(PickDialog("Unmount an adapter", options, empty="no adapters are mounted"),
                             self._unmount)

    def _unmount(self, name) -> None:
        if name:
            self.run_worker(self._unmount_async(name), group="server-mount", exit_on_error=False)

    async def _unmount_async(self, name: str) -> None:
        try:
            await unmount_adapter(self.monitor, name)
        except ServerError as e:
            self.notify(f"unmount {name}: {e.message}", severity="error", timeout=8)
            return
        self.notify(f"unmounted {name}", timeout=3)
        self.monitor.refresh_now()

    # the palette ---------------------------------------------------------------------------------
    def palette_commands(self):
        cmds = []
        if self.monitor is not None and self.monitor.view.job is not None:
            cmds += [("Stop the server", f"{self.monitor.label()} (x)", self.action_stop),
                     ("Mount an adapter on the server…", "POST /v1/adapters (m)", self.action_mount),
                     ("Unmount an adapter from the server…", "DELETE /v1/adapters (u)", self.action_unmount)]
        else:
            cmds.append(("Start a server…", "model, adapters, port: a background job (s)", self.action_start))
        for job in serve_jobs(self.app.jobs)[:20]:
            if self.run is None or job.id != self.run.job.id:
                cmds.append((f"Show server run: {job.id}", f"{job.status} · its request log",
                             lambda j=job: self.show(j, pinned=j.status in TERMINAL)))
        return cmds


def server_defaults(ws) -> dict:
    """[server] host / port / max_concurrent from config.toml (defaults when absent or bad)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(ws.config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = data.get("server")
    if not isinstance(table, dict):
        return {}
    out = {}
    if isinstance(table.get("host"), str):
        out["host"] = table["host"]
    for key in ("port", "max_concurrent"):
        if isinstance(table.get(key), int) and not isinstance(table.get(key), bool):
            out[key] = table[key]
    return out
