"""Adapters mode: the workspace's adapters with their metadata (method, base, parent, rank,
layers, final metrics, whether they fit the selected model, whether the running server has
them mounted); the highlighted one's details; mount and unmount it on the running server
(HTTP); and the long steps as jobs with live progress: combine, fuse, export, push.

The list is read in a worker thread (fingerprints read the model's files) when the screen
opens, when the adapters folder changes, when the selected model changes and when a job
here ends."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Static

from screens.adapters.actions import AdapterActions
from screens.adapters.widgets import AdapterTable, adapter_cells, adapter_details, engine_adapters
from screens.common.serving import ServerMonitor
from screens.common.widgets import FitFooter, ModeHeader, StatusBar, cursor_key, display_path, key_of, mode_ref

__all__ = ["AdaptersScreen", "AdapterTable"]

REDRAW_HZ = 2
FULL = 110  # from here: every column
SIDE = 150  # from here: the details beside the table (below it when narrower)
JOB_KINDS = ("lora combine", "lora fuse", "export", "push")


class AdaptersScreen(AdapterActions, Screen):
    DEFAULT_CSS = """
    AdaptersScreen #ad-body { height: 1fr; }
    AdaptersScreen #ad-left { width: 1fr; height: auto; max-height: 60%; }
    AdaptersScreen.-side #ad-left { height: 1fr; max-height: 100%; }
    AdaptersScreen #ad-heading { height: 1; padding: 0 1; background: $boost; }
    AdaptersScreen #ad-table { height: auto; max-height: 1fr; }
    AdaptersScreen #ad-empty { height: auto; padding: 0 1; color: $text-muted; }
    AdaptersScreen #ad-detail {
        height: 1fr; padding: 0 1; border-top: hkey $primary-background; scrollbar-size-vertical: 1;
    }
    AdaptersScreen #ad-detail:focus { border-top: hkey $primary; }
    AdaptersScreen #ad-jobs { height: auto; max-height: 40%; }
    AdaptersScreen #ad-body { layout: vertical; }
    AdaptersScreen.-side #ad-body { layout: horizontal; }
    AdaptersScreen.-side #ad-detail { width: 60; border-top: none; border-left: vkey $primary-background; }
    """
    BINDINGS = [
        Binding("m", "mount", "Mount", id="adapters_mount", tooltip="Mount it on the running server"),
        Binding("u", "unmount", "Unmount", id="adapters_unmount", tooltip="Unmount it from the running server"),
        Binding("c", "combine", "Combine", id="adapters_combine",
                tooltip="Merge it with another adapter, exactly (a job)"),
        Binding("f", "fuse", "Fuse", id="adapters_fuse", tooltip="Bake it into a copy of the model (a job)"),
        Binding("e", "export", "Export", id="adapters_export",
                tooltip="A bundle: model, adapters, model card (a job)"),
        Binding("p", "push", "Push", id="adapters_push", tooltip="Upload a bundle to the Hub (a job)"),
        Binding("r", "refresh", "Refresh", id="adapters_refresh", show=False, tooltip="Re-read adapters/"),
        Binding("d", "focus_detail", "Details", id="adapters_details", show=False,
                tooltip="Scroll the details with ↑↓ pgup pgdn; esc: back to the list"),
        Binding("escape", "focus_table", "List", id="adapters_list", show=False, tooltip="Back to the list"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Adapters"
        self.adapters: list = []
        self.skipped: list = []
        self.model_dir: Path | None = None
        self.models: list = []
        self.monitor: ServerMonitor | None = None  # the app's, from on_mount
        self._shown_rows: list = []
        self._wide: bool | None = None
        self._side: bool | None = None
        self._stamp = None
        self._seen_server = -1
        self._scanning = False
        self._rescan = False
        self.last_bundle: str | None = None

    def compose(self) -> ComposeResult:
        yield ModeHeader("adapters")
        yield StatusBar()
        with Horizontal(id="ad-body"):
            with Vertical(id="ad-left"):
                yield Static("", id="ad-heading")
                yield AdapterTable(id="ad-table", cursor_type="row", zebra_stripes=True)
                yield Static("", id="ad-empty")
            yield VerticalScroll(Static("", id="ad-detail-text"), id="ad-detail")  # d focuses it: keys scroll
        yield VerticalScroll(id="ad-jobs", can_focus=False)
        yield FitFooter()

    def on_mount(self) -> None:
        self.monitor = ServerMonitor.of(self.app)
        self._layout()
        self.action_refresh()
        self.watch(self.app, "model", lambda *_: self.action_refresh(), init=False)
        running = [j for j in self.app.jobs if j.kind in JOB_KINDS and j.status in ("running", "starting")]
        for job in reversed(running):  # reattach
            self._follow(job)
        self.set_interval(1 / REDRAW_HZ, self.tick)
        self.query_one(AdapterTable).focus()

    def on_resize(self) -> None:
        self._layout()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def _layout(self) -> None:
        side = self.size.width >= SIDE
        if side != self._side:
            self._side = side
            self.set_class(side, "-side")
        wide = self.size.width >= FULL
        if wide == self._wide:
            return
        self._wide = wide
        table = self.query_one(AdapterTable)
        table.clear(columns=True)
        cols = [(" ", "mark"), ("name", "name"), ("method", "method"), ("parent", "parent"), ("rank", "rank"),
                ("fits", "fits")]
        if wide:
            cols[3:3] = [("base", "base")]
            cols[-1:-1] = [("layers", "layers"), ("final metrics", "metrics")]
        for label, key in cols:
            table.add_column(label, key=key)
        self._shown_rows = []
        self._fill()

    # the list ---------------------------------------------------------------------------
    def _folder_stamp(self):
        d = self.app.ws.adapters_dir
        try:
            return d.stat().st_mtime_ns, tuple(sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir()))
        except OSError:
            return None

    def tick(self) -> None:
        if not self.is_current:
            return
        stamp = self._folder_stamp()
        if stamp != self._stamp:
            self.action_refresh()
        if self.monitor.version != self._seen_server:
            self._seen_server = self.monitor.version
            self._fill()

    def action_refresh(self) -> None:
        if self._scanning:
            self._rescan = True
            return
        self._scanning = True
        self._stamp = self._folder_stamp()
        self.run_worker(self._scan, thread=True, group="adapters-scan")

    def _scan(self) -> None:
        """In a worker thread: the models, and the adapters checked against the selected one."""
        from engine.models import list_models

        A = engine_adapters()
        try:
            models = list_models(self.app.ws)
        except Exception:  # noqa: BLE001 - a broken folder must not take the screen down
            models = []
        model = next((m for m in models if m.name == self.app.model), None)
        skipped: list = []
        try:
            found = A.list_adapters(self.app.ws, model.path if model else None, skipped)
            error = None
        except Exception as e:  # noqa: BLE001
            found, error = [], f"could not list adapters: {e}"
        self.app.call_from_thread(self._scanned, models, model, found, skipped, error)

    def _scanned(self, models, model, found, skipped, error) -> None:
        self._scanning = False
        if models and hasattr(self.app, "models_changed") and (model is None or self.app.model is None):
            self.app.models_changed([m.name for m in models])  # picks a default model: scanned again
        self.models = models
        self.model_dir = model.path if model else None
        self.adapters, self.skipped = found, skipped
        if error:
            self.notify(error, severity="error")
        self._fill()
        if self._rescan:
            self._rescan = False
            self.action_refresh()

    def selected(self):
        key = cursor_key(self.query_one(AdapterTable))
        return next((a for a in self.adapters if a.name == key), None)

    def by_fingerprint(self, fp: str | None):
        return next((a for a in self.adapters if a.fingerprint == fp), None) if fp else None

    def is_mounted(self, info) -> bool:
        prints = {a.get("fingerprint") for a in self.monitor.mounted}
        return info.fingerprint in prints

    def _fill(self) -> None:
        if self._wide is None:
            return
        table = self.query_one(AdapterTable)
        keys = [str(c.value) for c in table.columns]
        rows = []
        for a in self.adapters:
            cells = adapter_cells(a, self.is_mounted(a))
            rows.append((a.name, tuple(cells[k] for k in keys)))
        if [(k, tuple(map(str, c))) for k, c in rows] != self._shown_rows:
            self._shown_rows = [(k, tuple(map(str, c))) for k, c in rows]
            cursor = cursor_key(table)
            table.clear()  # rebuilt (a handful of rows): the column widths follow the new cells
            for key, cells in rows:
                table.add_row(*cells, key=key)
            keys = [k for k, _ in rows]
            if cursor in keys:
                table.move_cursor(row=keys.index(cursor), animate=False)
            self._detail()  # only when something shown changed: a dry-run listing stays until then
        table.display = bool(rows)
        model = Path(self.model_dir).name if self.model_dir else None
        heading = Text(f"{len(rows)} adapter{'s' * (len(rows) != 1)}", style="bold")
        heading.append(f" · fits: {model}" if model else f" · no model selected: {mode_ref(self.app, 'models')}",
                       style="dim")
        if self.monitor.up:
            heading.append(f" · ● mounted on {self.monitor.label().split(' ', 1)[-1]}", style="dim")
        else:
            heading.append(" · server off", style="dim")
        self.query_one("#ad-heading", Static).update(heading)
        empty = self.query_one("#ad-empty", Static)
        text = Text()
        if not rows:
            text.append(f"No adapters in {display_path(self.app.ws.adapters_dir, self.app.ws.home)}. "
                        f"Train one in {mode_ref(self.app, 'train')}, or copy an adapter folder there.\n")
        for path, reason in self.skipped:
            text.append(f"skipped {Path(path).name}: {reason}\n", style="italic")
        empty.update(text)
        empty.display = bool(text.plain)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self._detail()
        self.action_focus_detail()

    def _detail(self) -> None:
        """The highlighted adapter's details, from their top when it is another adapter."""
        info = self.selected()
        box = self.query_one("#ad-detail-text", Static)
        if info is None:
            box.update(Text("Highlight an adapter to see its details.", style="dim"))
            return
        box.update(self.details(info))
        if info.name != getattr(self, "_detail_name", None):
            self._detail_name = info.name
            self.query_one("#ad-detail").scroll_home(animate=False)

    def action_focus_detail(self) -> None:
        self.query_one("#ad-detail").focus()

    def action_focus_table(self) -> None:
        self.query_one(AdapterTable).focus()

    def details(self, info) -> Text:
        here = info.is_delta and self.by_fingerprint(info.parent.get("fingerprint")) is not None
        if self.is_mounted(info):
            server = "mounted"
        elif self.monitor.up:
            server = f"not mounted ({key_of(self.app, 'adapters_mount', 'm')} mounts it)"
        else:
            server = f"no server running: {mode_ref(self.app, 'server')}"
        return adapter_details(info, self.app.ws.home, self.model_dir, here, server)

    # the palette -----------------------------------------------------------------------------
    def palette_commands(self):
        info = self.selected()
        k = {b.id: key_of(self.app, b.id, b.key) for b in self.BINDINGS}  # as the user has them
        cmds = []
        if info is not None:
            cmds += [
                (f"Combine {info.name} with…", f"an exact merge, as a job ({k['adapters_combine']})",
                 self.action_combine),
                (f"Fuse {info.name} into a model…", f"as a job ({k['adapters_fuse']})", self.action_fuse),
                (f"Export a bundle with {info.name}…",
                 f"model + adapters + model card, as a job ({k['adapters_export']})", self.action_export),
            ]
            if self.monitor.up:
                if self.is_mounted(info):
                    cmds.append((f"Unmount {info.name} from the server",
                                 f"DELETE /v1/adapters ({k['adapters_unmount']})", self.action_unmount))
                else:
                    cmds.append((f"Mount {info.name} on the server", f"POST /v1/adapters ({k['adapters_mount']})",
                                 self.action_mount))
        cmds.append(("Push a bundle to the Hub…", f"as a job, or a dry run ({k['adapters_push']})", self.action_push))
        return cmds
