"""Widgets and helpers shared by the screens: the status bar, a job's live progress,
the input and confirm dialogs, table syncing and event formatting.

Screens reach the app's shared state by duck typing (screens never import tui/):
  app.ws            the Workspace
  app.model         reactive: the selected model name, or None
  app.jobs          reactive: list[JobInfo], newest first, polled by the app at 2 Hz
  app.running_jobs  reactive: how many jobs are running
  app.server_state  reactive: "off" until a server exists
  app.clock()       the time now (tests pass a fixed clock)
  app.poll_jobs()   re-read runs/ now
  app.select_model(name)
  app.remember(table, values)   keep settings in config.toml ([server] host / port)
  app.keymap_overrides          the user's [keymap]: messages name keys with key_of / mode_ref
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar, Static
from textual.widgets._footer import FooterKey

from engine.events import TERMINAL, read_events
from engine.errors import HumanizerError
from engine.jobs import JobInfo, cancel_job, job_info, last_progress
from screens.common.event_text import BAD, DIM, HEAD, HINT, OK, STAMP, event_parts, fmt_duration  # fmt_duration: screens import it from here
from screens.common.launch import start_verb

TAIL_HZ = 4  # how often a screen re-reads a job it is showing (never per event)

STATUS_LOOK = {  # a symbol as well as a colour, so NO_COLOR still tells them apart
    "starting": ("…", "dim"),
    "running": ("●", "bold"),
    "done": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "cancelled": ("⊘", "italic dark_orange"),
    "stopped": ("■", "dim"),  # a rank the launcher stopped after another failed
}


# formatting --------------------------------------------------------------------
def one_line(text: str, width: int) -> str:
    """`text` on one line, cut to `width` with an ellipsis."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def display_path(path: str | os.PathLike, base: Path | None = None) -> str:
    """`path` relative to `base` when inside it, else with the home folder as ~."""
    p = Path(path)
    if base is not None:
        try:
            return str(p.relative_to(base))
        except ValueError:
            pass
    try:
        return "~/" + str(p.relative_to(Path.home()))
    except (ValueError, RuntimeError):
        return str(p)


def fmt_time(t: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(t)) if t else "—"


def status_text(status: str) -> Text:
    symbol, style = STATUS_LOOK.get(status, ("?", ""))
    return Text(f"{symbol} {status}", style=style)


def progress_pct(ev: dict | None) -> float | None:
    if not ev or not ev.get("total"):
        return None
    return max(0.0, min(100.0, 100.0 * (ev.get("step") or 0) / ev["total"]))


EVENT_STYLES = {STAMP: "dim", HEAD: "bold", OK: "bold green", BAD: "bold red", HINT: "italic", DIM: "dim"}


def format_event(ev: dict) -> Text:
    """One event as one log line, styled: the wording is screens.common.event_text's (the CLI's too)."""
    return Text.assemble(*((text, EVENT_STYLES.get(role, "")) for text, role in event_parts(ev)))


# data tables ------------------------------------------------------------------
class LiveTable(DataTable):
    """A DataTable whose column widths and rendered lines never disagree.

    Textual (8.2) widens columns on idle, after `add_row`/`update_cell`, without a new
    cache generation: a frame drawn in between (a loaded machine, a timer) leaves the
    header or rows cached at the old widths until the next change. Clearing the caches
    once the widths are settled fixes that; it costs one repaint per changed batch."""

    async def _on_idle(self, event) -> None:
        stale = bool(self._updated_cells) or self._require_update_dimensions
        await super()._on_idle(event)
        if stale:
            self._clear_caches()
            self.refresh()


def sync_table(table: DataTable, rows: list[tuple[str, tuple]], widen: bool = False) -> None:
    """Show `rows` (key, cells) in order, keeping the cursor on the same key.

    Only changed cells are updated (`widen`: a cell that grows widens its column); the
    table is rebuilt only when its set of keys or their order changes, so a live table
    neither flickers nor loses its place."""
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    if keys != current:
        cursor_key = current[table.cursor_row] if 0 <= table.cursor_row < len(current) else None
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if cursor_key in keys:
            table.move_cursor(row=keys.index(cursor_key), animate=False)
        return
    columns = list(table.columns)
    for key, cells in rows:
        old = table.get_row(key)
        for col, new, was in zip(columns, cells, old):
            if new != was:
                table.update_cell(key, col, new, update_width=widen)


def cursor_key(table: DataTable) -> str | None:
    if not table.row_count or not (0 <= table.cursor_row < table.row_count):
        return None
    return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value


# keys as the user has them ---------------------------------------------------------
def key_of(app, binding_id: str, default: str) -> str:
    """The key bound to `binding_id` (config.toml's [keymap] may remap it), as a message
    names it: "ctrl+r", "s", "f5"."""
    keys = (getattr(app, "keymap_overrides", None) or {}).get(binding_id, default)
    key = keys.split(",")[0].strip()
    if "+" in key:
        return key
    try:
        return app.get_key_display(Binding(key, ""))
    except Exception:  # noqa: BLE001 - a message must not fail over a key name
        return key


def action_key(node, action: str, *args: str) -> str:
    """The key of `node`'s binding for `action` (with `args`: "view('build')"), from its
    class's BINDINGS, nearest first, as the user has it: palette hints say "(ctrl+s)" only
    where ctrl+s is still the key."""
    if args:
        action = f"{action}({', '.join(map(repr, args))})"
    for cls in type(node).__mro__:
        for b in cls.__dict__.get("BINDINGS", ()):
            if isinstance(b, Binding) and b.action == action:
                return key_of(node.app, b.id, b.key) if b.id else b.key.split(",")[0]
    return "?"


def mode_ref(app, mode: str) -> str:
    """'Models (1)': a mode's title and the key that opens it, as the keymap has it."""
    for name, title, key in app.mode_tabs() if hasattr(app, "mode_tabs") else []:
        if name == mode:
            return f"{title} ({key})"
    return mode.title()


class FitFooter(Footer):
    """The compact footer, cut to fit its width: when the keys do not fit, the last of the
    screen's are left out, never the help key (it lists them all) or quit. At 80 columns a
    long row otherwise ran under the palette key (`^t Dark▏^p palette`)."""

    KEEP = ("toggle_keys", "quit")

    def __init__(self) -> None:
        super().__init__(compact=True)
        self._width = 0

    @staticmethod
    def _cells(key: FooterKey) -> int:
        text = key.key_display + (f" {key.description}" if key.description else "")
        return Text(text).cell_len + 1  # + its margin

    def compose(self) -> ComposeResult:
        items = list(super().compose())
        self._width = self.app.size.width
        palette = [w for w in items if w.has_class("-command-palette")]
        keys = [w for w in items if w not in palette]
        room = self._width - sum(self._cells(w) + 1 for w in palette)  # + its border
        while sum(self._cells(w) for w in keys if isinstance(w, FooterKey)) > room:
            drop = next((w for w in reversed(keys) if getattr(w, "action", None) not in self.KEEP), None)
            if drop is None:
                break
            keys.remove(drop)
        yield from keys + palette

    def on_resize(self) -> None:
        if self.app.size.width != self._width and self.is_attached:
            self.call_after_refresh(self.recompose)


# the header and the status bar --------------------------------------------------
class ModeHeader(Widget):
    """The app's name and the modes with their keys, the current one highlighted."""

    DEFAULT_CSS = """
    ModeHeader { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def render(self) -> Text:
        # Narrow terminals: drop the app's name, then the other modes' titles (keys stay).
        width = self.size.width - 2
        for title, names in ((True, True), (False, True), (False, False)):
            line = self._line(title, names)
            if line.cell_len <= width:
                break
        return line

    def _line(self, with_title: bool, with_names: bool) -> Text:
        line = Text(f"{self.app.title}  " if with_title else "", style="bold")
        for mode, title, key in self.app.mode_tabs():
            if mode == self.mode:
                line.append(f" {key} {title} ", style="bold reverse")
            else:
                line.append(f" {key} ", style="bold")
                if with_names:
                    line.append(f"{title} ", style="dim")
        return line


class StatusBar(Widget):
    """Workspace, selected model, running jobs and server state: one line on every screen."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    """

    def on_mount(self) -> None:
        for attr in ("model", "running_jobs", "server_state"):
            self.watch(self.app, attr, lambda *_: self.refresh(), init=False)

    def render(self) -> Text:
        app = self.app
        model = getattr(app, "model", None)
        n = getattr(app, "running_jobs", 0)
        right = Text()
        right.append("model: ", style="dim")
        pull = f"none — press {key_of(app, 'models_pull', 'p')} to pull"
        right.append(model or pull, style="bold" if model else "italic")
        right.append(" │ ", style="dim")
        right.append(f"jobs: {n} running" if n else "jobs: none running", style="bold" if n else "")
        right.append(" │ ", style="dim")
        right.append(f"server: {getattr(app, 'server_state', 'off')}")
        home = display_path(app.ws.home)
        room = self.size.width - 2 - right.cell_len - 3
        if room < 8:  # too narrow: the workspace goes first
            return right
        if len(home) > room:
            home = "…" + home[-(room - 1):]
        left = Text(home, style="dim")
        left.append(" │ ", style="dim")
        return left + right


# a job's live progress --------------------------------------------------------
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


# dialogs ----------------------------------------------------------------------
class InputDialog(ModalScreen[str | None]):
    """Asks for one line; `validate` returns an error to show inline (the dialog stays)
    or None to accept. Enter submits, Escape cancels."""

    DEFAULT_CSS = """
    InputDialog { align: center middle; }
    InputDialog > Vertical {
        width: 72; max-width: 95%; height: auto; padding: 1 2;
        border: thick $primary; background: $surface;
    }
    InputDialog Static { width: 1fr; height: auto; }
    InputDialog .dlg-title { text-style: bold; margin-bottom: 1; }
    InputDialog #dlg-error { color: $error; }
    InputDialog #dlg-help { color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog_cancel", tooltip="Close, do nothing")]

    def __init__(self, title: str, placeholder: str = "", value: str = "",
                 validate: Callable[[str], str | None] | None = None, help: str = "") -> None:
        super().__init__()
        self.title_text, self.placeholder, self.value = title, placeholder, value
        self.validate = validate
        self.help = help or "enter: OK · escape: cancel"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="dlg-title")
            yield Input(value=self.value, placeholder=self.placeholder, id="dlg-input")
            yield Static("", id="dlg-error")
            yield Static(self.help, id="dlg-help")

    def on_input_changed(self) -> None:
        self.query_one("#dlg-error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        error = self.validate(value) if self.validate else None
        if error:
            self.query_one("#dlg-error", Static).update(f"✗ {error}")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question: y confirms, n or Escape declines."""

    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical {
        width: 64; max-width: 95%; height: auto; padding: 1 2;
        border: thick $warning; background: $surface;
    }
    ConfirmDialog Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmDialog Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm_yes", tooltip="Confirm"),
        Binding("n,escape", "answer(False)", "No", id="confirm_no", tooltip="Decline"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No", destructive: bool = True) -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no
        self.variant = "error" if destructive else "primary"  # red only for what cannot be undone

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            with Horizontal():
                yield Button(f"{self.yes} (y)", variant=self.variant, id="yes")
                yield Button(f"{self.no} (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)



def confirm_cancel(screen, job: JobInfo, question: str, yes: str, no: str, after: Callable | None = None) -> None:
    """Ask, then cancel `job` in a worker thread (cancel_job waits for it to stop, SIGKILL after a grace),
    then report its final status on the screen and call `after`."""

    def answered(ok: bool | None) -> None:
        if ok:
            screen.notify(f"cancelling {job.id}…", timeout=2)
            screen.run_worker(partial(_cancel_in_thread, screen, job.id, after), thread=True, group="cancel")

    screen.app.push_screen(ConfirmDialog(question, yes=yes, no=no), answered)


def _cancel_in_thread(screen, job_id: str, after: Callable | None) -> None:
    try:
        job = cancel_job(screen.app.ws, job_id)
    except HumanizerError as e:
        screen.app.call_from_thread(screen.notify, e.message, severity="error")
        return

    def cancelled() -> None:
        screen.app.poll_jobs()
        screen.notify(f"{job.id}: {job.status}", severity="information" if job.status == "cancelled" else "warning")
        if after:
            after()

    screen.app.call_from_thread(cancelled)
