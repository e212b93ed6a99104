"""The help dialog (`?` or f1): the keys of the screen under it as the user has them
(config.toml's [keymap] applied), what each does, and the binding id to remap it with.
Replaces Textual's key panel, which docked beside the screen and squeezed it at 80x24."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

Row = tuple[str, str, str, str]  # keys, description, tooltip, binding id
PALETTE = ("Command palette", "Every command of this screen and the app, searchable")


def help_rows(screen) -> list[Row]:
    """The screen's active bindings (focused widget, screen, app), one row per binding id,
    the screen's own first, the mode keys last; bindings without an id (a table's arrow
    keys) are left out, except the palette and ctrl+q."""
    app = screen.app
    rows: dict[str, list] = {}
    modes: dict[str, list] = {}
    for _node, binding, enabled, tooltip in screen.active_bindings.values():
        if binding.action == "command_palette":
            slot, bid, desc, tip = "palette", "—", *PALETTE
        elif binding.id:
            slot, bid, desc, tip = binding.id, binding.id, binding.description, tooltip or binding.tooltip
        elif binding.action == "quit":  # Textual's ctrl+q: beside our q
            slot, bid, desc, tip = "quit", "quit", "Quit", "Jobs keep running"
        else:
            continue
        target = modes if bid.startswith("mode_") else rows
        entry = target.setdefault(slot, [[], desc, tip, bid, enabled])
        key = binding.key if "+" in binding.key else app.get_key_display(binding)
        if key not in entry[0]:
            entry[0].append(key)
    out = [(", ".join(k), d, t + ("" if on else " (not now)"), b) for k, d, t, b, on in rows.values()]
    if modes:  # one row for all of them: 24 lines is little room
        firsts = [k[0] for k, *_ in modes.values()]
        out.append((f"{firsts[0]}…{firsts[-1]}", "Modes",
                    " · ".join(f"{k[0]} {d}" for k, d, *_ in modes.values()), "mode_NAME"))
    return out


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 78; max-width: 100%; height: auto; max-height: 100%; padding: 0 1;
        border: thick $primary; background: $surface; scrollbar-size-vertical: 1;
    }
    HelpScreen .help-title { text-style: bold; height: auto; }
    HelpScreen .help-foot { color: $text-muted; height: auto; }
    """
    BINDINGS = [Binding("escape,question_mark,f1,q", "close", "Close", id="help_close", tooltip="Close the help")]

    def __init__(self, title: str, rows: list[Row]) -> None:
        super().__init__()
        self.title_text, self.rows = title, rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("key", no_wrap=True, style="bold")
        table.add_column("does", ratio=1)
        table.add_column(Text("id in [keymap]"), no_wrap=True, style="dim")
        for keys, desc, tip, bid in self.rows:
            what = Text(desc, style="bold")
            if tip:
                what.append(f": {tip}")
            table.add_row(keys, what, bid)
        with VerticalScroll():
            yield Static(f"Keys: {self.title_text}", classes="help-title")
            yield Static(table, id="help-table")
            yield Static(Text("Remap any key in config.toml: [keymap] then id = \"key\" (README: Workspace). "
                              "↑↓ scroll · esc closes"), classes="help-foot")

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
