"""A job's live progress in a screen: its events and log tailed from where they left off, the
progress box that shows them (redrawn on a timer, never per event), and starting a verb as a
job from a screen."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Label, ProgressBar

from engine.events import TERMINAL, read_events
from engine.jobs import JobInfo, job_info, last_progress
from screens.common.launch import start_verb
from screens.common.widgets import TAIL_HZ, status_text


class EventTail:
    """Reads a run's events.jsonl from where it left off."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "events.jsonl"
        self.offset = 0

    def read(self) -> list[dict]:
        events, self.offset = read_events(self.path, self.offset)
        return events


class LogTail:
    """Reads log.txt: its last `first` bytes at first, then whatever is appended."""

    def __init__(self, path: Path, first: int = 32_000):
        self.path, self.first, self.offset, self.rest = Path(path), first, None, b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                if self.offset is None:
                    size = f.seek(0, 2)
                    self.offset = max(0, size - self.first)
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.rest + data
        end = data.rfind(b"\n") + 1
        self.rest = data[end:]
        return data[:end].decode("utf-8", "replace").splitlines()


class JobProgress(Vertical):
    """One job's progress bar and latest message, tailed at TAIL_HZ until it ends;
    then the outcome (the error and its hint when it failed)."""

    DEFAULT_CSS = """
    JobProgress { height: auto; padding: 0 1; display: none; border-top: hkey $primary; }
    JobProgress.-shown { display: block; }
    JobProgress #jp-title { width: 1fr; text-style: bold; }
    JobProgress ProgressBar { width: 1fr; }
    JobProgress #jp-message { width: 1fr; color: $text-muted; }
    JobProgress.-failed #jp-message { color: $error; }
    """

    class Ended(Message):
        def __init__(self, job: JobInfo) -> None:
            super().__init__()
            self.job = job

    def __init__(self, job: JobInfo | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._initial = job
        self.job: JobInfo | None = job
        self._tail: EventTail | None = None
        self._timer: Timer | None = None
        self._last: dict | None = None
        self._error: dict | None = None

    def compose(self) -> ComposeResult:
        yield Label("", id="jp-title")
        yield ProgressBar(total=None, show_eta=False, id="jp-bar")
        yield Label("", id="jp-message")

    def on_mount(self) -> None:
        if self._initial is not None:
            self.follow(self._initial)

    def follow(self, job: JobInfo) -> None:
        """Show `job` from its first event, and keep following it."""
        self.job, self._tail, self._last, self._error = job, EventTail(job.dir), None, None
        self.set_class(False, "-failed")
        self.add_class("-shown")
        if self._timer is None:
            self._timer = self.set_interval(1 / TAIL_HZ, self.tick)
        else:
            self._timer.resume()
        self.tick()

    @property
    def following(self) -> bool:
        return self.job is not None and self.job.status not in TERMINAL

    def tick(self) -> None:
        if self.job is None or self._tail is None:
            return
        self.job = job_info(self.job.dir)  # the status first, then every event written before it
        events = self._tail.read()
        self._error = next((ev for ev in reversed(events) if ev.get("type") == "error"), self._error)
        self._last = last_progress(events) or self._last
        self._show()
        if self.job.status in TERMINAL:
            if self._timer is not None:
                self._timer.pause()
            self.post_message(self.Ended(self.job))

    def _show(self) -> None:
        job, last = self.job, self._last or {}
        self.query_one("#jp-title", Label).update(
            Text.assemble((f"{job.kind} ", "bold"), status_text(job.status), (f"  {job.id}", "dim")))
        bar = self.query_one(ProgressBar)
        if job.status == "done":
            bar.update(total=1, progress=1)
        elif last.get("total"):
            bar.update(total=last["total"], progress=last.get("step") or 0)
        message = last.get("message") or ("starting…" if job.running or job.status == "starting" else "")
        if job.status == "failed":
            err = self._error or {}
            message = f"✗ {err.get('message') or job.error or 'failed'}"
            if err.get("hint"):
                message += f"\n  hint: {err['hint']}"
            self.add_class("-failed")
        elif job.status == "cancelled":
            message = "⊘ cancelled"
        elif job.status == "done":
            message = "✓ done" + (f": {last['message']}" if last.get("message") else "")
        self.query_one("#jp-message", Label).update(message)


def start_humanizer_job(screen, kind: str, *args: str, settings: dict | None = None) -> JobInfo | None:
    """Start `humanizer ARGS` as a job; None (and the error notified) when it cannot start."""
    try:
        return start_verb(screen.app.ws, kind, list(args), settings)
    except OSError as e:
        screen.notify(f"could not start {kind}: {e}", severity="error")
        return None


def follow_job(box: Widget, job: JobInfo) -> None:
    """Add `job`'s progress to `box`, dropping the finished ones shown there."""
    for finished in [w for w in box.query(JobProgress) if w.job and not w.following]:
        finished.remove()
    box.mount(JobProgress(job))
