"""What the new-run forms (Train, Convert, Data, Eval) share: the form's head and CSS, the
Submitted message a checked form posts, and FormHost, what a form uses of its screen."""

from __future__ import annotations

from typing import Protocol

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, Select, Static

from engine.jobs import JobInfo
from screens.common.history import JobHistory
from screens.common.widgets import mode_ref

def form_head(title: str, app) -> ComposeResult:
    """The top of a new-run form: its title, the error box and the model to start from."""
    yield Static(title, classes="heading")
    yield Static("", id="f-errors")
    with Horizontal(classes="form-row"):
        yield Label("model")
        yield Select([], prompt=f"no models: pull one in {mode_ref(app, 'models')}", compact=True, id="f-model")


def form_css(screen: str, label: int = 12) -> str:
    """The new-run form's rules for `screen` (its labels `label` cells wide), shared by the
    screens whose form is made from a settings dataclass."""
    return f"""
    {screen} .field {{ height: auto; }}
    {screen} .form-row {{ height: 1; margin-top: 1; }}
    {screen} .form-row Label {{ width: {label}; color: $text-muted; }}
    {screen} .form-row Select, {screen} .form-row Input {{ width: 1fr; }}
    {screen} .hint {{ height: auto; color: $text-muted; padding-left: {label}; }}
    {screen} .field-help {{ display: none; }}
    {screen} Checkbox {{ margin: 1 0 0 {label}; }}
    {screen} Checkbox:focus {{ border: none !important; text-style: reverse; }}
    {screen} #f-start {{ margin: 1 0 0 {label}; }}
    {screen} #f-errors {{ height: auto; color: $error; }}
    {screen}.-narrow .hint {{ padding-left: 0; }}
    """


class FormSubmitted(Message):
    """A new-run form's values passed its checks: the screen holding the form handles it by
    starting the job (`humanizer *args`, listed as `kind`), so the form itself starts nothing.
    `values` are what the form checked: a settings dataclass (Data, Eval) or a dict (Train,
    Convert). `settings`: what job.json records of the job before its process records its own
    resolved settings (keyed as the verb's flags). Each form subclasses it as its own Submitted
    (handler on_<form>_submitted)."""

    def __init__(self, values, kind: str, args: list[str], settings: dict | None = None) -> None:
        super().__init__()
        self.values, self.kind, self.args, self.settings = values, kind, args, settings


class FormHost(Protocol):
    """What a new-run form mixin (Train, Convert, Data, Eval) uses of the RunsScreen it is
    mixed into; tests/test_screen_mixins.py checks each screen has it all."""

    models: list  # ModelInfo, from the last scan (the #f-model choices)
    histories: dict[str, JobHistory]

    def run_jobs(self) -> list[JobInfo]: ...
    def show(self, job_id: str | None) -> None: ...
    def _value(self, select_id: str): ...
    def _clear_errors(self) -> None: ...
    def _show_errors(self, errors: list[tuple[str, str]]) -> bool: ...
