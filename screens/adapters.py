"""Adapters mode: the workspace's adapters with their metadata (method, base, parent, rank,
layers, final metrics, whether they fit the selected model, whether the running server has
them mounted); the highlighted one's details; mount and unmount it on the running server
(HTTP); and the long steps as jobs with live progress: combine, fuse, export, push.

The list is read in a worker thread (fingerprints read the model's files) when the screen
opens, when the adapters folder changes, when the selected model changes and when a job
here ends."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.errors import HumanizerError
from engine.jobs import JobInfo, humanizer_argv, start_job
from screens.forms import Field, FormDialog
from screens.serving import ServerError, ServerMonitor, mount_adapter, unmount_adapter
from screens.widgets import JobProgress, LogTail, ModeHeader, StatusBar, cursor_key, display_path

REDRAW_HZ = 2
FULL = 110  # from here: every column
SIDE = 150  # from here: the details beside the table (below it when narrower)
JOB_KINDS = ("lora combine", "lora fuse", "export", "push")


def _engine_adapters():
    from engine import adapters as A  # imported late: the app starts fast

    return A


def fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def safe_name(text: str) -> str | None:
    """Why `text` cannot be a new folder name in the workspace, or None."""
    if not text:
        return "required"
    if "+" in text:
        return "no '+' in a name: the server joins stacked adapters with '+'"
    if text.startswith(".") or any(c in text for c in "\\\0"):
        return "not a valid folder name"
    return None


def output_path(base: Path, text: str) -> Path:
    """A plain name is a folder in `base`; a path (with / or ~) is used as it is."""
    if "/" in text or text.startswith("~"):
        return Path(text).expanduser().resolve()
    return base / text


def short_layers(info) -> str:
    """E.g. '2 blocks × 4' (blocks × keys per block); the details say which."""
    blocks, keys = _engine_adapters().layer_blocks(info)
    if not blocks:
        return f"{len(info.layers)} layers"
    return f"{len(blocks)} block{'s' * (len(blocks) != 1)} × {len(keys)}"


class AdapterTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Inspect", id="adapters_inspect", tooltip="Show all its details"),
    ]


class AdaptersScreen(Screen):
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Adapters"
        self.adapters: list = []
        self.skipped: list = []
        self.model_dir: Path | None = None
        self.models: list = []
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
            yield VerticalScroll(Static("", id="ad-detail-text"), id="ad-detail", can_focus=False)
        yield VerticalScroll(id="ad-jobs", can_focus=False)
        yield Footer(compact=True)

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

        A = _engine_adapters()
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

    def _fits(self, info) -> Text:
        if info.fits is None:
            return Text("—", style="dim")
        if not info.fits:
            return Text("✗ no", style="bold red")
        return Text("✓ with parent" if info.is_delta else "✓ yes", style="green")

    def _fill(self) -> None:
        if self._wide is None:
            return
        A = _engine_adapters()
        table = self.query_one(AdapterTable)
        keys = [str(c.value) for c in table.columns]
        rows = []
        for a in self.adapters:
            cells = {
                "mark": Text("●" if self.is_mounted(a) else "", style="bold"),
                "name": Text(a.name, style="bold"),
                "method": A.describe_method(a),
                "base": (a.base or {}).get("name", "?"),
                "parent": (a.parent or {}).get("name", "") or "—",
                "rank": Text(str(a.rank), justify="right"),
                "layers": short_layers(a),
                "metrics": A.metrics_summary(a.metrics, ("val_loss", "val_kl")) or "—",
                "fits": self._fits(a),
            }
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
        heading.append(f" · fits: {model}" if model else " · no model selected (Models, 1)", style="dim")
        if self.monitor.up:
            heading.append(f" · ● mounted on {self.monitor.label().split(' ', 1)[-1]}", style="dim")
        else:
            heading.append(" · server off", style="dim")
        self.query_one("#ad-heading", Static).update(heading)
        empty = self.query_one("#ad-empty", Static)
        text = Text()
        if not rows:
            text.append(f"No adapters in {display_path(self.app.ws.adapters_dir, self.app.ws.home)}. "
                        "Train one in Train (3), or copy an adapter folder there.\n")
        for path, reason in self.skipped:
            text.append(f"skipped {Path(path).name}: {reason}\n", style="italic")
        empty.update(text)
        empty.display = bool(text.plain)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self._detail()
        detail = self.query_one("#ad-detail")
        detail.scroll_home(animate=False)


    def _detail(self) -> None:
        info = self.selected()
        box = self.query_one("#ad-detail-text", Static)
        if info is None:
            box.update(Text("Highlight an adapter to see its details.", style="dim"))
            return
        box.update(self.details(info))

    def details(self, info) -> Text:
        A = _engine_adapters()
        t = Text()

        def row(label: str, value, style: str = "") -> None:
            t.append(f"{label:<11}", style="dim")
            t.append(f"{value}\n", style=style)

        t.append(f"{info.name}\n", style="bold")
        row("path", display_path(info.path, self.app.ws.home))
        row("method", A.describe_method(info))
        base = info.base or {}
        row("base", f"{base.get('name', 'unknown')}")
        if info.is_delta:
            p = info.parent
            here = self.by_fingerprint(p.get("fingerprint"))
            row("parent", f"{p.get('name')} (a delta: mounts only with it"
                          + (")" if here else "; not in this workspace)"))
        for s in (info.config.get("humanizer") or {}).get("combined_from") or []:
            row("from", f"{s.get('name')} ({s.get('method')}, rank {s.get('rank')}, scale {s.get('scale')})")
        row("lora", f"rank {info.rank} · scale {info.scale:g} · dropout {info.dropout:g}")
        row("layers", f"{len(info.layers)}: {A.layer_summary(info)}")
        if info.metrics:
            row("metrics", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in info.metrics.items()))
        training = {k: v for k, v in (info.training or {}).items() if not isinstance(v, (dict, list))}
        if training:
            row("training", ", ".join(f"{k} {v}" for k, v in training.items()))
        if info.fits is not None:
            model = Path(self.model_dir).name if self.model_dir else "?"
            row(f"fits {model}"[:10], ("yes" if info.fits else "no") + (f": {info.fit_reason}" if info.fit_reason
                                                                         else ""),
                "" if info.fits else "red")
        row("server", "mounted" if self.is_mounted(info) else ("not mounted (m mounts it)" if self.monitor.up
                                                                else "no server running (Server, 5)"))
        row("size", fmt_size(info.size_bytes))
        row("print", info.fingerprint, "dim")
        return t

    # mount / unmount ---------------------------------------------------------------------
    def action_mount(self) -> None:
        info = self.selected()
        if info is None:
            return
        if not self.monitor.up:
            self.notify("no server is up: start one in Server (5)", severity="warning")
            return
        if self.is_mounted(info):
            self.notify(f"{info.name} is mounted already", timeout=2)
            return
        parent = None
        if info.is_delta:
            p = self.by_fingerprint(info.parent.get("fingerprint"))
            if p is None:
                self.notify(f"{info.name} is a delta on '{info.parent.get('name')}', which is not in this "
                            "workspace", severity="error")
                return
            if not self.is_mounted(p):
                parent = p.name
        self.run_worker(self._mount(info.name, parent), group="adapters-mount", exit_on_error=False)

    async def _mount(self, name: str, parent: str | None) -> None:
        try:
            done = await mount_adapter(self.monitor, name, parent)
        except ServerError as e:
            self.notify(f"mount {name}: {e.message}", severity="error", timeout=8)
            return
        self.notify(f"mounted {', '.join(done)}", timeout=3)
        self.monitor.refresh_now()

    def action_unmount(self) -> None:
        info = self.selected()
        if info is None:
            return
        if not self.monitor.up:
            self.notify("no server is up", severity="warning")
            return
        name = next((a.get("name") for a in self.monitor.mounted if a.get("fingerprint") == info.fingerprint), None)
        if name is None:
            self.notify(f"{info.name} is not mounted", severity="warning", timeout=3)
            return
        self.run_worker(self._unmount(name), group="adapters-mount", exit_on_error=False)

    async def _unmount(self, name: str) -> None:
        try:
            await unmount_adapter(self.monitor, name)
        except ServerError as e:
            self.notify(f"unmount {name}: {e.message}", severity="error", timeout=8)
            return
        self.notify(f"unmounted {name}", timeout=3)
        self.monitor.refresh_now()

    # jobs -----------------------------------------------------------------------------------
    def _start(self, kind: str, *args: str) -> None:
        try:
            job = start_job(self.app.ws, kind, humanizer_argv(*args))
        except OSError as e:
            self.notify(f"could not start {kind}: {e}", severity="error")
            return
        self._follow(job)
        self.notify(f"{kind}: started ({job.id})", timeout=3)

    def _follow(self, job: JobInfo) -> None:
        box = self.query_one("#ad-jobs")
        for finished in [w for w in box.query(JobProgress) if w.job and not w.following]:
            finished.remove()
        box.mount(JobProgress(job))
        self.app.poll_jobs()

    def on_job_progress_ended(self, event: JobProgress.Ended) -> None:
        job = event.job
        self.app.poll_jobs()
        self.action_refresh()
        if job.status == "done":
            self.notify(f"{job.kind}: done", timeout=3)
        elif job.status == "failed":
            tail = [line for line in LogTail(job.dir / "log.txt", 2000).read() if line.strip()]
            why = next((line for line in reversed(tail) if line.startswith("error:")), tail[-1] if tail else "")
            self.notify(f"{job.kind} failed: {why or job.error}", severity="error", timeout=10)

    def _pair(self, info) -> list:
        """`info`, with its parent first when it is a delta whose parent is here."""
        if info.is_delta:
            p = self.by_fingerprint(info.parent.get("fingerprint"))
            if p is not None:
                return [p, info]
        return [info]

    def _need(self):
        info = self.selected()
        if info is None:
            self.notify("no adapter highlighted" if self.adapters else "no adapters yet: train one in Train (3)",
                        severity="warning")
        return info

    def _model_options(self) -> list[tuple[str, str]]:
        return [(m.name, str(m.path)) for m in self.models]

    def _current_model(self) -> str | None:
        return str(self.model_dir) if self.model_dir else (str(self.models[0].path) if self.models else None)

    def action_combine(self) -> None:
        info = self._need()
        if info is None:
            return
        others = [a for a in self.adapters if a.fingerprint != info.fingerprint]
        if not others:
            self.notify("combine needs a second adapter", severity="warning")
            return
        # the natural partner: its parent (for a delta) or a delta trained on it
        partner = self.by_fingerprint((info.parent or {}).get("fingerprint")) or next(
            (a for a in others if (a.parent or {}).get("fingerprint") == info.fingerprint), others[0])

        def validate(v: dict) -> list[tuple[str, str]]:
            problem = safe_name(v["output"])
            if problem:
                return [("output", f"output: {problem}")]
            out = output_path(self.app.ws.adapters_dir, v["output"])
            if out.exists():
                return [("output", f"output: {display_path(out, self.app.ws.home)} exists; choose another name")]
            return []

        def go(v: dict | None) -> None:
            if not v:
                return
            a, b = info, next(x for x in others if x.name == v["other"])
            if a.is_delta and (a.parent or {}).get("fingerprint") == b.fingerprint:
                a, b = b, a  # parent first
            out = output_path(self.app.ws.adapters_dir, v["output"])
            self._start("lora combine", "lora", "combine", str(a.path), str(b.path), "--output", str(out))

        first, second = (partner, info) if info.is_delta and partner.fingerprint == (info.parent or {}).get(
            "fingerprint") else (info, partner)
        self.app.push_screen(FormDialog(
            f"Combine {info.name} with…", [
                Field("other", "with", "select", partner.name, [(a.name, a.name) for a in others]),
                Field("output", "output", value=f"{first.name}-{second.name}",
                      help="a new adapter in adapters/ (or a path); its outputs equal the two stacked"),
            ], ok="Combine", validate=validate,
            intro="An exact merge: ranks concatenated, scales folded in. A DPO delta with its SFT parent "
                  "gives one plain adapter that loads in stock mlx-lm."), go)

    def action_fuse(self) -> None:
        info = self._need()
        if info is None:
            return
        pair = self._pair(info)
        model = self._current_model()
        if model is None:
            self.notify("no models: pull or import one in Models (1)", severity="error")
            return
        names = "+".join(a.name for a in pair)

        def validate(v: dict) -> list[tuple[str, str]]:
            if not v["model"]:
                return [("model", "model: choose one")]
            problem = safe_name(v["output"])
            if problem:
                return [("output", f"output: {problem}")]
            out = output_path(self.app.ws.models_dir, v["output"])
            if out.exists():
                return [("output", f"output: {display_path(out, self.app.ws.home)} exists; choose another name")]
            return []

        def go(v: dict | None) -> None:
            if not v:
                return
            args = ["lora", "fuse", v["model"]]
            for a in pair:
                args += ["--adapter", str(a.path)]
            args += ["--output", str(output_path(self.app.ws.models_dir, v["output"]))]
            if v["mode"] == "requantize":
                args.append("--requantize")
            elif v["mode"] == "float":
                args.append("--keep-float")
            self._start("lora fuse", *args)

        self.app.push_screen(FormDialog(
            f"Fuse {names} into a model", [
                Field("model", "model", "select", model, self._model_options()),
                Field("output", "output", value=f"{Path(model).name}-{pair[-1].name}-fused",
                      help="a new model in models/ (or a path)"),
                Field("mode", "weights", "select", "auto", [
                    ("as the model (re-quantize a quantized one)", "auto"),
                    ("re-quantize the fused layers", "requantize"), ("keep the fused layers float", "float")],
                      help="the job measures what re-quantizing costs on probe prompts"),
            ], ok="Fuse", validate=validate,
            intro="Bake the adapter" + ("s" if len(pair) > 1 else "") + f" ({names}) into a copy of the weights."),
            go)

    def action_export(self) -> None:
        info = self._need()
        if info is None:
            return
        pair = self._pair(info)
        model = self._current_model()
        if model is None:
            self.notify("no models: pull or import one in Models (1)", severity="error")
            return
        exports = self.app.ws.home / "exports"

        def validate(v: dict) -> list[tuple[str, str]]:
            if not v["model"]:
                return [("model", "model: choose one")]
            problem = safe_name(v["output"])
            if problem:
                return [("output", f"output: {problem}")]
            out = output_path(exports, v["output"])
            if out.exists() and not (out / "humanizer_bundle.json").exists() and any(out.iterdir()):
                return [("output", f"output: {display_path(out, self.app.ws.home)} exists and is not a bundle")]
            return []

        def go(v: dict | None) -> None:
            if not v:
                return
            out = output_path(exports, v["output"])
            args = ["export", v["model"]]
            for a in pair:
                args += ["--adapter", str(a.path)]
            args += ["--output", str(out)]
            if v["copy"]:
                args.append("--copy")
            self.last_bundle = str(out)
            self._start("export", *args)

        self.app.push_screen(FormDialog(
            f"Export a bundle: {' + '.join(a.name for a in pair)}", [
                Field("model", "model", "select", model, self._model_options()),
                Field("output", "output", value=f"{Path(model).name}-{pair[-1].name}",
                      help=f"a bundle folder in {display_path(exports, self.app.ws.home)} (or a path)"),
                Field("copy", "copy the model files (default: hard links)", "check", False),
            ], ok="Export", validate=validate,
            intro="A folder with the model, the adapters and a model card that says how to serve them stacked."),
            go)

    def action_push(self) -> None:
        exports = self.app.ws.home / "exports"
        default = self.last_bundle
        if default is None and exports.is_dir():
            bundles = sorted((d for d in exports.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
            default = str(bundles[-1]) if bundles else None

        def validate(v: dict) -> list[tuple[str, str]]:
            errors = []
            if not v["bundle"] or not Path(v["bundle"]).expanduser().is_dir():
                errors.append(("bundle", "bundle: a bundle folder (from Export, e)"))
            repo = v["repo"]
            if repo.count("/") != 1 or not all(repo.split("/")):
                errors.append(("repo", "repo: OWNER/NAME"))
            return errors

        def go(v: dict | None) -> None:
            if not v:
                return
            bundle = str(Path(v["bundle"]).expanduser().resolve())
            self.run_worker(partial(self._push_checked, bundle, v["repo"], v["private"], v["dry_run"]),
                            thread=True, group="adapters-push")

        self.app.push_screen(FormDialog(
            "Push a bundle to the Hugging Face Hub", [
                Field("bundle", "bundle", value=default or "", placeholder="a folder made by Export (e)"),
                Field("repo", "repo", placeholder="OWNER/NAME"),
                Field("private", "create the repo private", "check", True),
                Field("dry_run", "dry run: list what would be uploaded, send nothing", "check", False),
            ], ok="Push", validate=validate,
            intro="Needs a token (`hf auth login` or HF_TOKEN) and the network."), go)

    def _push_checked(self, bundle: str, repo: str, private: bool, dry_run: bool) -> None:
        """In a worker thread, no network: the quick checks (repo id, bundle, token) before a
        push job starts, so their errors come here and not as a failed job; a dry run
        lists the files a push would upload."""
        from engine.manage import bundle_files, check_repo_id, push, push_token

        try:
            if dry_run:
                result = push(bundle, repo, private=private, dry_run=True)
            else:
                check_repo_id(repo)
                bundle_files(bundle)
                push_token()
        except HumanizerError as e:
            self.app.call_from_thread(self.notify, e.message + (f"\nhint: {e.hint}" if e.hint else ""),
                                      title="push", severity="error", timeout=12)
            return
        if not dry_run:
            args = ["push", bundle, "--repo", repo] + (["--private"] if private else [])
            self.app.call_from_thread(self._start, "push", *args)
            return
        t = Text(f"dry run: {len(result.files)} files ({fmt_size(result.total_bytes)}) to {result.url} "
                 f"({'private' if result.private else 'public'}); nothing was sent\n", style="bold")
        for path, size in result.files:
            t.append(f"  {path}  ", style="")
            t.append(f"{fmt_size(size)}\n", style="dim")
        if not result.token_found:
            t.append("no Hugging Face token found: `hf auth login` or HF_TOKEN before pushing\n", style="italic")
        self.app.call_from_thread(self._show_dry_run, t, len(result.files))

    def _show_dry_run(self, listing: Text, n: int) -> None:
        self.query_one("#ad-detail-text", Static).update(listing)  # until the cursor moves
        self.notify(f"dry run: {n} files would be uploaded; the list is in the details pane", timeout=5)

    # the palette -----------------------------------------------------------------------------
    def palette_commands(self):
        info = self.selected()
        cmds = []
        if info is not None:
            cmds += [
                (f"Combine {info.name} with…", "an exact merge, as a job (c)", self.action_combine),
                (f"Fuse {info.name} into a model…", "as a job (f)", self.action_fuse),
                (f"Export a bundle with {info.name}…", "model + adapters + model card, as a job (e)",
                 self.action_export),
            ]
            if self.monitor.up:
                if self.is_mounted(info):
                    cmds.append((f"Unmount {info.name} from the server", "DELETE /v1/adapters (u)",
                                 self.action_unmount))
                else:
                    cmds.append((f"Mount {info.name} on the server", "POST /v1/adapters (m)", self.action_mount))
        cmds.append(("Push a bundle to the Hub…", "as a job, or a dry run (p)", self.action_push))
        return cmds

