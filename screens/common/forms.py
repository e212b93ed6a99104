"""Small keyboard forms in a dialog, for the arguments of a job or a setting: text fields,
choices, check boxes, a multi-choice list and a multi-line text. ctrl+s (or enter in the
last one-line field) submits; escape cancels; tab moves between fields. `validate` returns
(field id, message) pairs shown inline, and the dialog stays open until they are fixed."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

from rich.segment import Segment
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Select, SelectionList, Static, TextArea
from textual.content import Content
from textual.strip import Strip
from textual.widgets.option_list import Option, OptionDoesNotExist


class TickBox(Checkbox):
    """A check box whose mark is a glyph, not only a colour: [x] / [ ] (with NO_COLOR the
    stock ▐X▌ looked the same ticked or not)."""

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("[", ("x" if self.value else " ", style), "]")


class TickList(SelectionList):
    """A SelectionList with the same [x] / [ ] marks."""

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        segments = list(strip)
        try:
            option = self.get_option_at_index(self.scroll_offset.y + y)
        except OptionDoesNotExist:
            return strip
        if len(segments) < 4:
            return strip
        mark = "x" if option.value in self._selected else " "
        for i, text in enumerate(("[", mark, "]")):  # the stock ▐X▌, one cell each
            segments[i] = Segment(text, segments[i].style, segments[i].control)
        return Strip(segments, strip.cell_length)


@dataclass
class Field:
    id: str
    label: str
    kind: str = "input"  # input | select | check | multi | text
    value: Any = None
    options: list[tuple[str, Any]] = field(default_factory=list)  # select / multi: (label, value)
    placeholder: str = ""
    help: str = ""
    password: bool = False


class FormDialog(ModalScreen[dict | None]):
    DEFAULT_CSS = """
    FormDialog { align: center middle; }
    FormDialog > VerticalScroll {
        width: 76; max-width: 96%; height: auto; max-height: 96%; padding: 0 1;
        border: thick $primary; background: $surface; scrollbar-size-vertical: 1;
    }
    FormDialog .fd-title { text-style: bold; height: auto; }
    FormDialog .fd-intro { color: $text-muted; height: auto; }
    FormDialog .fd-row { height: auto; margin-top: 1; }
    FormDialog .fd-row > Label { width: 16; color: $text-muted; }
    FormDialog .fd-row > Input, FormDialog .fd-row > Select { width: 1fr; }
    FormDialog .fd-row > SelectionList { width: 1fr; height: auto; max-height: 7; }
    FormDialog .fd-row > TextArea { width: 1fr; height: 5; }
    FormDialog Checkbox { margin: 1 0 0 16; }
    FormDialog Checkbox:focus { border: none !important; text-style: reverse; }
    FormDialog .fd-help { color: $text-muted; height: auto; padding-left: 16; }
    FormDialog.-short .fd-row, FormDialog.-short Checkbox, FormDialog.-short #fd-buttons { margin-top: 0; }
    FormDialog #fd-errors { color: $error; height: auto; margin-top: 1; }
    FormDialog #fd-buttons { height: auto; margin-top: 1; align-horizontal: right; }
    FormDialog #fd-buttons Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("ctrl+s", "submit", "OK", id="form_submit", priority=True, tooltip="Check the form and go"),
        Binding("escape", "cancel", "Cancel", id="form_cancel", tooltip="Close, do nothing"),
    ]

    def __init__(self, title: str, fields: list[Field], *, intro: str = "", ok: str = "OK",
                 validate: Callable[[dict], list[tuple[str, str]]] | None = None) -> None:
        super().__init__()
        self.title_text, self.fields, self.intro, self.ok = title, fields, intro, ok
        self.validate = validate

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.title_text, classes="fd-title")
            if self.intro:
                yield Static(self.intro, classes="fd-intro")
            for f in self.fields:
                if f.kind == "check":
                    yield TickBox(f.label, bool(f.value), compact=True, id=f"fd-{f.id}")
                else:
                    with Horizontal(classes="fd-row"):
                        yield Label(f.label)
                        yield self._widget(f)
                if f.help:
                    yield Static(f.help, classes="fd-help", id=f"fd-{f.id}-help")
            yield Static("", id="fd-errors")
            with Horizontal(id="fd-buttons"):
                yield Button(f"{self.ok}  ctrl+s", variant="primary", compact=True, id="fd-ok")
                yield Button("Cancel  esc", compact=True, id="fd-cancel")

    def _widget(self, f: Field):
        wid = f"fd-{f.id}"
        if f.kind == "select":
            values = [v for _, v in f.options]
            return Select(f.options, value=f.value if f.value in values else Select.NULL, compact=True,
                          allow_blank=not f.options, prompt=f.placeholder or "choose", id=wid)
        if f.kind == "multi":
            chosen = set(f.value or [])
            return TickList(*[(label, v, v in chosen) for label, v in f.options], compact=True, id=wid)
        if f.kind == "text":
            return TextArea(str(f.value or ""), compact=True, placeholder=f.placeholder, id=wid)
        return Input(str(f.value if f.value is not None else ""), placeholder=f.placeholder, password=f.password,
                     compact=True, id=wid)

    def on_mount(self) -> None:
        self.set_class(self.app.size.height < 30, "-short")
        self.query_one("#fd-errors").display = False
        first = next((w for w in self.query("Input, Select, SelectionList, TextArea, Checkbox") if w.focusable),
                     None)
        if first is not None:
            first.focus()

    def values(self) -> dict:
        out = {}
        for f in self.fields:
            w = self.query_one(f"#fd-{f.id}")
            if isinstance(w, Select):
                out[f.id] = None if w.value is Select.NULL else w.value
            elif isinstance(w, SelectionList):
                out[f.id] = list(w.selected)
            elif isinstance(w, TextArea):
                out[f.id] = w.text
            elif isinstance(w, Checkbox):
                out[f.id] = w.value
            else:
                out[f.id] = w.value.strip()
        return out

    def show_errors(self, errors: list[tuple[str, str]]) -> None:
        box = self.query_one("#fd-errors", Static)
        box.update(Text("\n".join(f"✗ {m}" for _, m in errors)))
        box.display = bool(errors)
        if errors:
            try:
                self.query_one(f"#fd-{errors[0][0]}").focus()
            except Exception:  # noqa: BLE001 - a form-wide problem names no field
                pass
            self.call_after_refresh(box.scroll_visible, animate=False)

    def action_submit(self) -> None:
        values = self.values()
        errors = self.validate(values) if self.validate else []
        if errors:
            self.show_errors(errors)
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        inputs = [w for w in self.query(Input)]
        if inputs and event.input is inputs[-1]:
            self.action_submit()
        else:
            self.focus_next()

    def on_input_changed(self) -> None:
        self.query_one("#fd-errors").display = False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "fd-ok":
            self.action_submit()
        else:
            self.dismiss(None)


class PickDialog(ModalScreen[Any]):
    """Choose one of a list: enter picks, escape cancels."""

    DEFAULT_CSS = """
    PickDialog { align: center middle; }
    PickDialog > VerticalScroll {
        width: 76; max-width: 96%; height: auto; max-height: 90%; padding: 0 1;
        border: thick $primary; background: $surface;
    }
    PickDialog .fd-title { text-style: bold; height: auto; }
    PickDialog OptionList { height: auto; max-height: 16; margin-top: 1; }
    PickDialog .fd-help { color: $text-muted; height: auto; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="pick_cancel", tooltip="Close, do nothing")]

    def __init__(self, title: str, options: list[tuple[Text | str, Any]], help: str = "",
                 empty: str = "nothing to choose") -> None:
        super().__init__()
        self.title_text, self.options, self.help, self.empty = title, options, help, empty

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.title_text, classes="fd-title")
            yield OptionList(*[Option(label, id=str(i)) for i, (label, _) in enumerate(self.options)],
                             compact=True, id="pick-list")
            yield Static(self.help or ("enter: choose · escape: cancel" if self.options else self.empty),
                         classes="fd-help")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.options[int(event.option.id)][1])

    def action_cancel(self) -> None:
        self.dismiss(None)


# forms made from a settings dataclass (the Data and Eval new-run forms) -----------------------
def field_id(name: str) -> str:
    return "f-" + name.replace("_", "-")


def default_placeholder(f) -> str:
    """What an empty settings field means: the default as its help words it ('10%', '0: all'), else the value."""
    m = re.search(r"\(default:? ([^,)]+)", f.metadata["help"]) or re.search(rf"\(({f.default}: [^)]+)\)",
                                                                              f.metadata["help"])
    return m.group(1) if m else "" if f.default in (MISSING, "") else str(f.default)


def field_help(f) -> str:
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-") + (f" {meta['metavar']}" if meta.get("metavar") else "")
    default = "" if f.default in (MISSING, "", None) else f" (default {f.default})"
    return f"{flag}: {meta['help']}{default}"


def settings_rows(fields, labels: dict[str, str], widget, infos: dict[str, str], all_after: str) -> ComposeResult:
    """A form's rows made from settings fields (the Data and Eval forms): a label and
    `widget(f)`, or a checkbox for a flag; the field's help (shown while it has focus); an
    empty info line where `infos` names its id; "show all settings" after `all_after`."""
    for f in fields:
        with Vertical(id=f"row-{f.name}", classes="field"):
            if f.type in (bool, "bool"):
                yield TickBox(f.name.replace("_", " "), bool(f.default), compact=True, id=field_id(f.name))
            else:
                with Horizontal(classes="form-row"):
                    yield Label(labels.get(f.name, f.name.replace("_", " ")))
                    yield widget(f)
            yield Static(field_help(f), id=f"help-{f.name}", classes="hint field-help")
            if f.name in infos:
                yield Static("", id=infos[f.name], classes="hint")
        if f.name == all_after:
            yield TickBox("show all settings", compact=True, id="f-all")
