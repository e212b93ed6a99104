"""A job's history read from its events (JobHistory: read whole once, then only what was
appended), and the pieces of a run's title line drawn from it (bar, timing, outcome)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from engine.events import TERMINAL
from engine.jobs import JobInfo, job_events, job_info
from screens.common.event_text import fmt_duration

class JobHistory:
    """One job's events, read incrementally: its settings (job.json), the latest progress,
    and the error or done event. Subclasses keep what their view needs (feed)."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        self.args = dict(job.settings)  # the verb's settings (job.json), keyed as its flags
        self.name = Path(self.args["output"]).name if self.args.get("output") else job.id
        self.offset = 0
        self.progress: dict | None = None
        self.error: dict | None = None
        self.done: dict | None = None
        self.message: str | None = None
        self.final = False  # the job ended and every event it wrote has been read

    @classmethod
    def read(cls, job: JobInfo):
        """The whole history so far (call it in a worker thread: the file may be long)."""
        h = cls(job)
        try:
            h.update(job_info(job.dir))
        except OSError:
            h = cls(job)
        return h

    def update(self, job: JobInfo | None = None) -> bool:
        """Read what was appended since the last call (the job's status first, so a job
        seen as ended is read to its end); True if anything new arrived."""
        if self.final:
            return False
        if job is not None:
            self.job = job
        events, self.offset = job_events(self.job, self.offset)
        for ev in events:
            self.feed(ev)
        if self.job.status in TERMINAL:
            self.final = True
        return bool(events)

    def feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "progress":
            self.progress = ev
        elif kind == "error":
            self.error = ev
        elif kind == "done" and self.done is None:
            self.done = ev
        elif kind == "log" and ev.get("message"):
            self.message = str(ev["message"])


# pieces of a run's title ------------------------------------------------------------------
def bar(fraction: float, width: int) -> Text:
    """A progress bar of `width` cells; the filled and empty parts differ in glyph too."""
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return Text.assemble(("━" * full, "bold"), ("─" * (width - full), "dim"))


def append_timing(line: Text, h: JobHistory, now: float) -> None:
    """The ETA and time running so far, or how long the job took."""
    job = h.job
    if job.status in ("running", "starting"):
        eta = (h.progress or {}).get("eta")
        if eta is not None:
            line.append(f"  ETA {fmt_duration(eta)}")
        if job.started:
            line.append(f"  running {fmt_duration(now - job.started)}", style="dim")
    elif job.started and job.ended:
        line.append(f"  {job.status} after {fmt_duration(job.ended - job.started)}", style="dim")


def append_outcome(line: Text, h: JobHistory, cancelled: str) -> None:
    """The error and its hint for a failed job; `cancelled` for a cancelled one."""
    if h.job.status == "failed":
        err = h.error or {}
        line.append(f"\n✗ {err.get('message') or h.job.error or 'failed'}", style="bold red")
        if err.get("hint"):
            line.append(f"\n  hint: {err['hint']}", style="italic")
    elif h.job.status == "cancelled":
        line.append(f"\n⊘ cancelled: {cancelled}", style="italic")
