"""Data mode: the workspace's datasets (rows per split, template, source, licence), a row
browser (AI draft | human | model rewrite, with the part's row errors), and the build form
(`humanizer data build` as a job) with its live progress: the newest sample pairs side by
side as the drafter writes them.

The main area shows one of three views: datasets (d), a dataset's rows (enter on one) and
builds (b: the shown build, then the builds table). Lists and rows are read in worker
threads (engine.data.catalog); a build's events.jsonl is tailed 3 times a second and the
view redrawn from what accumulated (never per event), as Train and Convert do. Layout: the
view on the left and the form on the right at 110 columns and more; narrower, one column."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.widgets import ContentSwitcher, DataTable, Static

from engine.jobs import JobInfo
from screens.data.form import DataForm
from screens.data.widgets import (
    BuildTable, DataHistory, DatasetTable, RowTable, is_data_job, methods_text, one_line, parts_text, samples_view,
    sides_table, source_label,
)
from screens.common.history import append_outcome, append_timing, bar
from screens.common.run_form import form_css
from screens.common.runs import RunsScreen
from screens.common.widgets import (
    FitFooter, ModeHeader, StatusBar, action_key, cursor_key, display_path, fmt_time, status_text, sync_table,
)

PAGE = 100  # rows read at a time in the browser


class DataScreen(DataForm, RunsScreen):
    DEFAULT_CSS = """
    DataScreen #data-body { layout: horizontal; height: 1fr; }
    DataScreen #data-main { width: 1fr; height: 1fr; padding: 0 1; }
    DataScreen #data-main > ContentSwitcher, DataScreen #data-main > ContentSwitcher > Vertical { height: auto; }
    DataScreen #data-form {
        width: 46; height: 1fr; padding: 0 1; border-left: vkey $primary-background; scrollbar-size-vertical: 1;
    }
    DataScreen .heading, DataScreen #runs-heading { height: 1; text-style: bold; }
    DataScreen #runs-heading { margin-top: 1; }
    DataScreen #ds-table, DataScreen #build-runs { height: auto; max-height: 10; }
    DataScreen #br-table { height: auto; max-height: 8; }
    DataScreen #ds-detail, DataScreen #ds-building, DataScreen #br-row, DataScreen #br-errors,
    DataScreen #build-title, DataScreen #build-samples { height: auto; }
    DataScreen #ds-detail, DataScreen #br-row, DataScreen #build-samples { margin-top: 1; }
    DataScreen #br-errors { color: $error; }
    DataScreen.-narrow #data-body { layout: vertical; overflow-y: auto; scrollbar-size-vertical: 1; }
    DataScreen.-narrow #data-main { height: auto; }
    DataScreen.-narrow #data-form {
        width: 1fr; height: auto; border-left: none; border-top: hkey $primary-background; margin-top: 1;
    }
    DataScreen.-short .form-row, DataScreen.-short Checkbox, DataScreen.-short #f-start { margin-top: 0; }
    """ + form_css("DataScreen")

    BINDINGS = [
        Binding("ctrl+s", "start", "Build", id="data_start", tooltip="Start building with the form's settings"),
        Binding("ctrl+o", "pick_source", "Source", id="data_pick",
                tooltip="Choose the human text: a corpus, a workspace dataset, a folder or an example"),
        Binding("b", "view('build')", "Builds", id="data_builds", tooltip="The shown build's progress, the builds"),
        Binding("d", "view('datasets')", "Datasets", id="data_datasets", show=False, tooltip="The workspace's datasets"),
        Binding("n", "new_run", "New", id="data_new", tooltip="Go to the build form"),
        Binding("c", "cancel_run", "Cancel", id="data_cancel", show=False, tooltip="Stop the shown build"),
        Binding("escape", "back", "Back", id="data_escape", show=False, tooltip="Back to the list"),
    ]

    history_class = DataHistory
    noun = "build"
    group = "data"
    body_id = "data-body"
    short_rows = 30
    heading = ("Builds", "enter: open · c: cancel · n: new")
    palette_names = ("Build the dataset", "New dataset build", "Cancel build")
    cancel_texts = ("Cancel building [b]{name}[/b] ({id})?\n\nWhat it wrote so far is kept: start the same build "
                    "with --resume from the CLI to continue it.", "Cancel build", "Keep building")
    started_verb = "building"

    def __init__(self) -> None:
        super().__init__("Data")
        self.datasets, self.corpora, self.folders = [], [], []  # the form's lists, from the last scan
        self.view = "datasets"
        self.browsing = None  # the DatasetInfo whose rows are shown
        self.part: str | None = None
        self.rows: list[dict] = []
        self.row_errors: list[str] = []
        self._consumed = 0  # lines of the part read so far (rows and bad lines)
        self._reading = False
        self._cell = 20

    # layout ------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield ModeHeader("data")
        yield StatusBar()
        with ScrollableContainer(id="data-body", can_focus=False):
            with Vertical(id="data-main"):
                with ContentSwitcher(initial="view-datasets"):
                    with Vertical(id="view-datasets"):
                        yield Static("", id="ds-building")
                        yield Static(Text.assemble(("Datasets", "bold"), ("   enter: rows · t: train on it",
                                                                           "dim")), classes="heading")
                        yield DatasetTable(id="ds-table", cursor_type="row", zebra_stripes=True)
                        yield Static("", id="ds-detail")
                    with Vertical(id="view-rows"):
                        yield Static("", id="br-title")
                        yield RowTable(id="br-table", cursor_type="row", zebra_stripes=True)
                        yield Static("", id="br-errors")
                        yield Static("", id="br-row")
                    with Vertical(id="view-build"):
                        yield Static("", id="build-title")
                        yield Static("", id="build-samples")
                        yield Static("", id="runs-heading")
                        yield BuildTable(id="build-runs", cursor_type="row", zebra_stripes=True)
            with Vertical(id="data-form"):
                yield from self.compose_form()
        yield FitFooter()

    def on_mount(self) -> None:
        table = self.query_one(DatasetTable)
        for key, label in (("name", "name"), ("kind", "kind"), ("rows", "rows per split"), ("methods", "feeds")):
            table.add_column(label, key=key)
        self.call_after_refresh(table.focus)  # after RunsScreen.on_mount's focus

    def is_job(self, job: JobInfo) -> bool:
        return is_data_job(job)

    def runs_columns(self, narrow: bool) -> list[tuple[str, str]]:
        return [(k, k) for k in ("dataset", "template", "status", "progress", "started")]

    def set_view(self, view: str) -> None:
        self.view = view
        self.query_one(ContentSwitcher).current = f"view-{view}"
        table = {"datasets": DatasetTable, "rows": RowTable, "build": BuildTable}[view]
        # focus without scrolling: at 80x24 the build view's progress, not its table, belongs on screen
        self.query_one(table).focus(scroll_visible=False)
        self._dirty = True

    def action_view(self, view: str) -> None:
        self.set_view(view)

    def action_back(self) -> None:
        focused = self.focused
        in_form = focused is not None and any(a.id == "data-form" for a in focused.ancestors)
        self.set_view(self.view if in_form else "datasets")

    def action_new_run(self) -> None:
        self.query_one("#f-template").focus()

    def on_data_form_submitted(self, message: DataForm.Submitted) -> None:
        self.set_view("build")
        self._start_job(message.kind, message.args, message.settings)

    # the datasets -----------------------------------------------------------------------------
    def datasets_scanned(self) -> None:
        rows = [(str(d.path), (Text(d.name if d.kind != "example" else f"examples/{d.name}", style="bold"), d.kind,
                               parts_text(d.counts), methods_text(d.methods))) for d in self.datasets]
        sync_table(self.query_one(DatasetTable), rows, widen=True)
        self._show_detail()
        if self.browsing is not None:  # a rebuilt list: the browsed dataset's counts may have changed
            self.browsing = next((d for d in self.datasets if d.path == self.browsing.path), self.browsing)

    def selected_dataset(self):
        key = cursor_key(self.query_one(DatasetTable))
        return next((d for d in self.datasets if str(d.path) == key), None)

    def _show_detail(self) -> None:
        d = self.selected_dataset()
        box = self.query_one("#ds-detail", Static)
        if d is None:
            box.update(Text("No datasets yet: fill in the form (n), then build with ctrl+s.", style="dim"))
            return
        text = Text.assemble((d.name, "bold"), f"  {d.kind} · template {d.template} · feeds {methods_text(d.methods)}")
        text.append(f"\nsource: {d.source}\nlicence: {d.licence}\nrows: ")
        text.append(" · ".join(f"{part} {n:,}" for part, n in d.counts.items()), style="bold")
        text.append(f"\n{display_path(d.path, self.app.ws.home)}" + (f" · {fmt_time(d.created)}" if d.created else ""),
                    style="dim")
        box.update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if isinstance(event.data_table, DatasetTable):
            self._show_detail()
        elif isinstance(event.data_table, RowTable):
            self._show_row()
            if event.cursor_row >= len(self.rows) - 5:
                self._read_more()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if isinstance(event.data_table, DatasetTable):
            event.stop()
            d = self.selected_dataset()
            if d is not None:
                self.open_rows(d)

    async def action_train_on(self) -> None:
        d = self.selected_dataset()
        if d is None:
            return
        await self.app.switch_mode("train")
        self.app.screen.use_dataset(d.spec, d.methods)

    # the row browser ------------------------------------------------------------------------------
    def open_rows(self, d, part: str | None = None) -> None:
        self.browsing, self.part = d, part or next(iter(d.counts), None)
        self.rows, self.row_errors, self._consumed, self._reading = [], [], 0, False
        table = self.query_one(RowTable)
        table.clear(columns=True)
        width = max(24, (self.query_one("#data-main").size.width or 76) - 2)
        self._cell = max(8, (width - 6 - 8) // 3)
        table.add_column("#", key="n")
        for key in ("draft", "human", "rewrite"):
            table.add_column({"draft": "AI draft", "rewrite": "model rewrite"}.get(key, key), key=key,
                             width=self._cell)
        self.set_view("rows")
        self._show_rows_title()
        self.query_one("#br-row", Static).update("")
        self.query_one("#br-errors", Static).update("")
        self._read_more()

    def _read_more(self) -> None:
        d = self.browsing
        if d is None or self._reading or self._consumed >= d.counts.get(self.part, 0):
            return
        self._reading = True
        self.run_worker(partial(self._read_part, d, self.part, self._consumed), thread=True, group="data-rows")

    def _read_part(self, d, part: str, offset: int) -> None:
        from engine.data.catalog import read_part, row_sides

        rows, errors = read_part(d.path, part, limit=PAGE, offset=offset)
        self.app.call_from_thread(self._part_read, d, part, offset, [row_sides(r) | {"_row": r} for r in rows],
                                  errors)

    def _part_read(self, d, part: str, offset: int, rows: list[dict], errors: list[str]) -> None:
        self._reading = False
        if d is not self.browsing or part != self.part or offset != self._consumed:
            return  # the browser moved on
        # every line read is a row or an error; nothing read means the end (or an unreadable file)
        self._consumed += (len(rows) + len(errors)) or d.counts.get(part, 0)
        table = self.query_one(RowTable)
        for i, r in enumerate(rows, len(self.rows)):
            table.add_row(Text(str(i + 1), style="dim"), *(one_line(r[k], self._cell) or "—" for k in
                                                            ("draft", "human", "rewrite")), key=str(i))
        self.rows += rows
        self.row_errors += errors
        box = self.query_one("#br-errors", Static)
        box.update(Text("\n".join(f"✗ {e}" for e in self.row_errors[:12])
                        + (f"\n… and {len(self.row_errors) - 12} more" if len(self.row_errors) > 12 else "")))
        box.display = bool(self.row_errors)
        self._show_rows_title()
        if offset == 0:
            self._show_row()

    def _show_rows_title(self) -> None:
        d = self.browsing
        n = d.counts.get(self.part, 0)
        table = self.query_one(RowTable)
        line = Text.assemble((d.name, "bold"), " · ", (self.part or "no rows", "bold"))
        if self.rows:
            line.append(f"  row {min(table.cursor_row, len(self.rows) - 1) + 1} of {n:,}")
        else:
            line.append(f"  {n:,} rows")
        if self.row_errors:
            line.append(f" · ✗ {len(self.row_errors)} bad line{'s' * (len(self.row_errors) != 1)}", style="bold red")
        others = [p for p in d.counts if p != self.part]
        line.append(f"\np: next part ({', '.join(others) or 'none'}) · esc: back", style="dim")
        self.query_one("#br-title", Static).update(line)

    def _show_row(self) -> None:
        table = self.query_one(RowTable)
        box = self.query_one("#br-row", Static)
        if not self.rows or not (0 <= table.cursor_row < len(self.rows)):
            box.update(Text("no rows" if not self._reading else "reading…", style="dim"))
            return
        r = self.rows[table.cursor_row]
        keys = ["draft", "human"] + (["rewrite"] if r.get("rewrite") else [])
        box.update(sides_table([r], keys))
        self._show_rows_title()

    def action_next_part(self) -> None:
        d = self.browsing
        if d is None or not d.counts:
            return
        parts = list(d.counts)
        self.open_rows(d, parts[(parts.index(self.part) + 1) % len(parts)] if self.part in parts else parts[0])

    # builds ----------------------------------------------------------------------------------------
    def run_row(self, job: JobInfo, h: DataHistory) -> tuple:
        p = h.progress or {}
        step, total = p.get("step"), p.get("total")
        done = job.status == "done"
        progress = "100%" if done else f"{step}/{total}" if total else "—"
        mark = "● " if job.id == self.shown else "  "
        return (Text(mark + h.name), h.template, status_text(job.status), Text(progress, justify="right"),
                fmt_time(job.started))

    def _sync_table(self, jobs: list[JobInfo]) -> None:
        super()._sync_table(jobs)
        running = [self.histories[j.id] for j in jobs if j.status in ("running", "starting") and j.id in self.histories]
        line = Text()
        for h in running[:2]:
            p = h.progress or {}
            line.append(f"● {h.name} ", style="bold")
            line.append(f"{p.get('message') or 'starting…'}  ")
        if running:
            line.append("b: watch", style="dim")
        box = self.query_one("#ds-building", Static)
        box.update(line)
        box.display = bool(running)

    def _redraw(self) -> None:
        h = self.histories.get(self.shown) if self.shown else None
        title, samples = self.query_one("#build-title", Static), self.query_one("#build-samples", Static)
        if h is None:
            title.update(Text.assemble(("No builds yet. ", "bold"), "Fill in the form (n), then build with ctrl+s. "
                                       "Builds started with `humanizer data build` show up here too.")
                         if self.shown is None else Text(f"loading {self.shown}…", style="dim"))
            samples.display = False
            return
        title.update(self._title(h))
        samples.display = not h.pull
        if not h.pull:
            width = self.query_one("#data-main").size.width or 76
            samples.update(samples_view(h.samples, limit=2 if width < 100 else 3, chars=240 if self._short else 400))

    def _title(self, h: DataHistory) -> Text:
        job, a = h.job, h.args
        line = Text.assemble(status_text(job.status), "  ", (h.name, "bold"))
        if not h.pull:
            line.append(f" ← {source_label(str(a.get('source', '?')))} · {h.template}", style="dim")
            if a.get("model") or a.get("endpoint"):
                line.append(f" · {source_label(str(a.get('endpoint') or a['model']))}", style="dim")
        line.append("\n")
        p = h.progress or {}
        step, total = p.get("step") or 0, p.get("total") or 0
        if job.status == "done":
            step = total = total or 1
        if total or job.status in ("running", "starting"):
            line.append_text(bar(step / total if total else 0, 16))
            line.append(f" {step}/{total}" if total else " starting…", style="bold")
        if p.get("message"):
            line.append(f" · {one_line(p['message'], 60)}")
        append_timing(line, h, self.app.clock())
        if job.status == "done" and h.artifact:
            line.append(f"\n✓ {display_path(h.artifact, self.app.ws.home)}", style="green")
            line.append("  d: datasets, enter on it to browse its rows", style="dim")
        if job.status == "done" and h.message:
            line.append(f"\n{one_line(h.message, 400)}", style="dim")
        append_outcome(line, h, "what was written is kept; continue with --resume")
        return line

    # the palette -----------------------------------------------------------------------------------
    def more_commands(self) -> list[tuple]:
        k = partial(action_key, self)
        cmds = [("Pick a source…", f"a corpus, a workspace dataset, a folder or an example ({k('pick_source')})",
                 self.action_pick_source),
                ("Show datasets", f"the workspace's datasets ({k('view', 'datasets')})",
                 lambda: self.set_view("datasets")),
                ("Show builds", f"the shown build's progress and the builds table ({k('view', 'build')})",
                 lambda: self.set_view("build"))]
        d = self.selected_dataset()
        if d is not None:
            cmds.append((f"Browse rows of {d.name}", "draft | human | model rewrite, with row errors (enter)",
                         lambda: self.open_rows(d)))
        for c in self.corpora:
            if not c.get("pulled"):
                cmds.append((f"Pull corpus {c['name']}", f"{c.get('register', '')}: a job",
                             partial(self.pull_corpus, c["name"])))
        return cmds

    def job_commands(self, job: JobInfo, name: str) -> list[tuple]:
        return [(f"Open build: {name}", f"{job.status} · {job.id}", lambda i=job.id: self._open_build(i))]

    def _open_build(self, job_id: str) -> None:
        self.show(job_id)
        self.set_view("build")
