"""The Server screen's pieces: a serve run's request log read from its events, the
request log's cells and summary line, and the status panel's text."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text

from engine.events import read_events, server_url
from engine.jobs import JobInfo
from engine.serve.settings import DEFAULT_HOST, DEFAULT_PORT
from screens.common.event_text import fmt_duration
from screens.common.widgets import key_of, status_text

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
            elif kind in ("log", "ready"):
                self.message = str(ev.get("message") or "")
                self.url = server_url(ev) or self.url
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


def request_cells(r: dict) -> dict:
    """One request's cells in the request log, by column key."""
    status = str(r.get("status") or "?")
    symbol, style = STATUS_LOOK.get(status, ("?", ""))
    label = Text(f"{symbol} {status}", style=style)
    if status == "error" and r.get("http_status"):
        label.append(f" {r['http_status']}")
    tps = r.get("tokens_per_second")
    return {
        "time": fmt_clock(r.get("t")),
        "id": (str(r.get("id") or "—").split("-", 1)[-1])[:10],
        "adapter": str(r.get("adapter") or "—"),
        "in": Text(str(r.get("prompt_tokens", "—")), justify="right"),
        "out": Text(str(r.get("completion_tokens", "—")), justify="right"),
        "latency": Text(f"{float(r.get('latency_s') or 0):.2f}s", justify="right"),
        "ttft": Text(f"{float(r['ttft_s']):.2f}s" if r.get("ttft_s") is not None else "—", justify="right"),
        "tps": Text(f"{float(tps):.1f}" if tps else "—", justify="right"),
        "status": label,
    }


def server_status(monitor, run: ServeRun | None) -> Text:
    """The server's state (live), or a past run's outcome, with what it serves."""
    v = monitor.view
    live = v.job is not None and run is not None and run.job.id == v.job.id
    t = Text()
    if v.job is None:
        t.append("○ no server running", style="bold")
        t.append(f"   {key_of(monitor.app, 'server_start', 's')}: start one (a background job: it keeps serving "
                 "when the app closes)", style="dim")
    if run is not None and not live:
        job = run.job
        args = job.settings
        t.append("\n" if v.job is None else "")
        t.append("last run " if v.job is None else "past run ", style="dim")
        t.append(f"{job.id} ", style="bold")
        t.append_text(status_text(job.status))
        if job.started and job.ended:
            t.append(f" after {fmt_duration(job.ended - job.started)}", style="dim")
        t.append(f"\n{run.url or 'never listened'} · model {Path(str(args.get('model', '?'))).name}")
        if args.get("adapters"):
            t.append(" · adapters " + ", ".join(Path(a).name for a in args["adapters"]))
        if run.error:
            t.append(f"\n✗ {run.error.get('message')}", style="bold red")
            if run.error.get("hint"):
                t.append(f"\n  hint: {run.error['hint']}", style="italic")
        if v.job is not None:
            t.append(f"\n{monitor.label()} is running: {key_of(monitor.app, 'server_live', 'f')} shows it", style="dim")
    if v.job is None or not live:
        return t
    args = v.job.settings
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
        t.append(", ".join(Path(a).name for a in args.get("adapters") or []) or "none")
        t.append(f" · {args.get('host', DEFAULT_HOST)}:{args.get('port', DEFAULT_PORT)}", style="dim")
    return t
