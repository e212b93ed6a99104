"""Widgets and helpers shared by the screens: the header, footer and status bar, table
syncing, keys as the user has them, and formatting. A job's live progress is progress.py's,
the dialogs are dialogs.py's.

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
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import DataTable, Footer
from textual.widgets._footer import FooterKey

from screens.common.event_text import BAD, DIM, HEAD, HINT, OK, STAMP, event_parts

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
