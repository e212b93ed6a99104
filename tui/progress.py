"""The CLI's view of run events: a Rich progress bar plus log lines, or raw JSON lines."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from screens.common.event_text import event_line


def format_event(ev: dict) -> str:
    """One line of plain text for an event (the wording is screens.common.event_text's, shared with the Jobs screen)."""
    return event_line(ev)


class EventPrinter:
    """Callable that shows each event as it arrives; use as a context manager.

    On a terminal progress is a live bar. Piped to a log there is no bar, so a progress event
    becomes a line only when a phase starts or ends, or as a heartbeat every HEARTBEAT_S:
    a build of 200 rows leaves a readable log, yet a long stage still shows it is alive."""

    HEARTBEAT_S = 30.0

    def __init__(self, as_json: bool = False):
        self.as_json = as_json
        self.console = Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self._last_line: tuple[float, object, object] | None = None  # (t, step, total) of the last progress line

    def __enter__(self) -> "EventPrinter":
        if not self.as_json and self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, ev: dict) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(ev, default=str) + "\n")
            sys.stdout.flush()
            return
        if ev.get("type") == "progress" and self.progress:
            desc = (ev.get("message") or "working")[:max(40, self.console.width - 60)]  # room for the bar
            if self.task is None:
                self.task = self.progress.add_task(desc, total=ev.get("total"))
            done = (ev.get("step") or 0) + (ev.get("stage_fraction") or 0)  # the demo: stages plus the current one's share
            self.progress.update(self.task, completed=done, total=ev.get("total"), description=desc)
            return
        if ev.get("type") == "progress" and not self._worth_a_line(ev):
            return
        self.console.print(format_event(ev), markup=False, highlight=False)

    def _worth_a_line(self, ev: dict) -> bool:
        t, step, total = float(ev.get("t") or 0.0), ev.get("step"), ev.get("total")
        last = self._last_line
        starts = last is None or total != last[2] or (step == 0 and last[1] != 0)
        ends = bool(total) and step == total and (last is None or last[1] != step)
        if starts or ends or t - last[0] >= self.HEARTBEAT_S:
            self._last_line = (t, step, total)
            return True
        return False


def print_table(headers: list[str], rows: list[list[str]], empty: str = "") -> None:
    console = Console() if sys.stdout.isatty() else Console(width=250)  # pipes get whole ids
    if not rows:
        console.print(empty)
        return
    table = Table(*headers, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    console.print(table)
