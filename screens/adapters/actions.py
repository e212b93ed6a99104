"""What the Adapters screen does to the highlighted adapter: mount and unmount it on the
running server (HTTP), and the long steps as jobs with live progress in #ad-jobs:
combine, fuse, export, push (a push checks first, and can be a dry run)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rich.text import Text
from textual.widgets import Static

from engine.errors import HumanizerError
from engine.jobs import JobInfo
from screens.common.mounting import mount_reported, unmount_reported
from screens.adapters.widgets import adapter_args, dry_run_listing, output_errors, output_path
from screens.common.forms import Field, FormDialog
from screens.common.progress import JobProgress, LogTail, follow_job, start_humanizer_job
from screens.common.widgets import display_path, mode_ref

if TYPE_CHECKING:
    from engine.adapters import AdapterInfo
    from screens.common.serving import ServerMonitor


class AdapterActions:
    """The Adapters screen's actions (a mixin: the screen has the bindings, the table and
    what Needs lists; tests/test_screen_mixins.py checks the screen has it all)."""

    class Needs(Protocol):
        adapters: list  # AdapterInfo, from the last scan
        models: list
        model_dir: Path | None  # the model the list is filtered for
        monitor: ServerMonitor | None

        def selected(self) -> AdapterInfo | None: ...
        def by_fingerprint(self, fp: str | None) -> AdapterInfo | None: ...
        def is_mounted(self, info: AdapterInfo) -> bool: ...
        def action_refresh(self) -> None: ...

    # mount / unmount ---------------------------------------------------------------------
    def _selected_when_up(self, off: str):
        """The highlighted adapter, if any, when a server is up; otherwise None (`off` notified)."""
        info = self.selected()
        if info is not None and not self.monitor.up:
            self.notify(off, severity="warning")
            return None
        return info

    def action_mount(self) -> None:
        info = self._selected_when_up(f"no server is up: start one in {mode_ref(self.app, 'server')}")
        if info is None:
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
        self.run_worker(mount_reported(self, info.name, parent), group="adapters-mount", exit_on_error=False)

    def action_unmount(self) -> None:
        info = self._selected_when_up("no server is up")
        if info is None:
            return
        name = next((a.get("name") for a in self.monitor.mounted if a.get("fingerprint") == info.fingerprint), None)
        if name is None:
            self.notify(f"{info.name} is not mounted", severity="warning", timeout=3)
            return
        self.run_worker(unmount_reported(self, name), group="adapters-mount", exit_on_error=False)

    # jobs -----------------------------------------------------------------------------------
    def _start(self, kind: str, *args: str) -> None:
        job = start_humanizer_job(self, kind, *args)
        if job is None:
            return
        self._follow(job)
        self.notify(f"{kind}: started ({job.id})", timeout=3)

    def _follow(self, job: JobInfo) -> None:
        follow_job(self.query_one("#ad-jobs"), job)
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
            self.notify("no adapter highlighted" if self.adapters
                        else f"no adapters yet: train one in {mode_ref(self.app, 'train')}", severity="warning")
        return info

    def _need_with_model(self) -> tuple[list, str] | None:
        """For fuse and export: the highlighted adapter (with its parent) and a model."""
        info = self._need()
        if info is None:
            return None
        pair = self._pair(info)
        model = self._current_model()
        if model is None:
            self.notify(f"no models: pull or import one in {mode_ref(self.app, 'models')}", severity="error")
            return None
        return pair, model

    def _validator(self, base: Path, with_model: bool = True, bundle: bool = False):
        """A form's check: a model chosen (`with_model`) and a usable output in `base`."""

        def validate(v: dict) -> list[tuple[str, str]]:
            if with_model and not v["model"]:
                return [("model", "model: choose one")]
            return output_errors(v["output"], base, self.app.ws.home, bundle)

        return validate

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
            ], ok="Combine", validate=self._validator(self.app.ws.adapters_dir, with_model=False),
            intro="An exact merge: ranks concatenated, scales folded in. A DPO delta with its SFT parent "
                  "gives one plain adapter that loads in stock mlx-lm."), go)

    def action_fuse(self) -> None:
        need = self._need_with_model()
        if need is None:
            return
        pair, model = need
        names = "+".join(a.name for a in pair)

        def go(v: dict | None) -> None:
            if not v:
                return
            args = ["lora", "fuse", v["model"], *adapter_args(pair)]
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
            ], ok="Fuse", validate=self._validator(self.app.ws.models_dir),
            intro="Bake the adapter" + ("s" if len(pair) > 1 else "") + f" ({names}) into a copy of the weights."),
            go)

    def action_export(self) -> None:
        need = self._need_with_model()
        if need is None:
            return
        pair, model = need
        exports = self.app.ws.home / "exports"

        def go(v: dict | None) -> None:
            if not v:
                return
            out = output_path(exports, v["output"])
            args = ["export", v["model"], *adapter_args(pair), "--output", str(out)]
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
            ], ok="Export", validate=self._validator(exports, bundle=True),
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
        from engine.adapters.push import bundle_files, check_repo_id, push, push_token

        try:
            if dry_run:
                result = push(bundle, repo, private=private, dry_run=True)
            else:
                check_repo_id(repo)
                bundle_files(bundle)
                push_token()
        except HumanizerError as e:
            self.app.call_from_thread(self.notify, str(e),
                                      title="push", severity="error", timeout=12)
            return
        if not dry_run:
            args = ["push", bundle, "--repo", repo] + (["--private"] if private else [])
            self.app.call_from_thread(self._start, "push", *args)
            return
        self.app.call_from_thread(self._show_dry_run, dry_run_listing(result), len(result.files))

    def _show_dry_run(self, listing: Text, n: int) -> None:
        self.query_one("#ad-detail-text", Static).update(listing)  # until the cursor moves
        self.notify(f"dry run: {n} files would be uploaded; the list is in the details pane", timeout=5)
