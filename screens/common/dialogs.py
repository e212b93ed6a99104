"""The input and confirm dialogs, and the confirmed cancel of a job (in a thread: a job that
takes its time to stop never blocks the UI)."""

from __future__ import annotations

from functools import partial
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from engine.errors import HumanizerError
from engine.jobs import JobInfo, cancel_job


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
