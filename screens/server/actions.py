"""What the Server screen does: start a server (the dialog: model, adapters, host, port,
API key), stop it after a confirm, and mount and unmount adapters on it."""

from __future__ import annotations

import itertools
from functools import partial
from typing import TYPE_CHECKING, Protocol

from rich.text import Text

from engine import adapters as A
from engine.errors import HumanizerError
from engine.serve.settings import DEFAULT_HOST, DEFAULT_PORT, is_loopback
from engine.jobs import JobInfo, cancel_job
from screens.common.mounting import mount_reported, unmount_reported
from screens.common.forms import Field, FormDialog, PickDialog
from screens.server.widgets import describe_mounted
from screens.common.serving import mounted_names, server_defaults, start_server
from screens.common.dialogs import ConfirmDialog
from screens.common.widgets import key_of, mode_ref

if TYPE_CHECKING:
    from screens.common.serving import ServerMonitor



class ServerActions:
    """The Server screen's actions (a mixin: the screen has the bindings and what Needs
    lists; tests/test_screen_mixins.py checks it has it all)."""

    class Needs(Protocol):
        monitor: ServerMonitor | None

        def show(self, job: JobInfo, pinned: bool = False) -> None: ...  # shows a serve run
        def tick(self) -> None: ...  # redraws from the monitor

    # start and stop ------------------------------------------------------------------------
    def action_start(self) -> None:
        if self.monitor.view.job is not None:
            self.notify(f"a server is already running ({self.monitor.label()}); "
                        f"{key_of(self.app, 'server_stop', 'x')} stops it", severity="warning")
            return
        self.run_worker(self._gather, thread=True, group="server-gather", exclusive=True)

    def _gather(self) -> None:
        """In a worker thread: the models, the adapters (with fit against the current model),
        and the server defaults ([server] host / port in config.toml)."""
        from engine.models import list_models

        try:
            models = list_models(self.app.ws)
        except Exception:  # noqa: BLE001 - a broken folder must not take the screen down
            models = []
        current = next((m for m in models if m.name == self.app.model), models[0] if models else None)
        try:
            adapters = A.list_adapters(self.app.ws, current.path if current else None)
        except Exception:  # noqa: BLE001
            adapters = []
        self.app.call_from_thread(self._start_dialog, models, current, adapters, server_defaults(self.app.ws))

    def _start_dialog(self, models: list, current, adapters: list, defaults: dict) -> None:
        if not models:
            self.notify(f"no models yet: pull or import one in {mode_ref(self.app, 'models')}", severity="error")
            return
        by_name = {a.name: a for a in adapters}
        # ticked: the deepest real stack only (never copies or a combined adapter with its sources)
        fitting = {a.name: a for a in adapters if a.fits is not False}
        chosen = [n for n in A.deepest_stack(A.real_stacks(fitting)).split("+") if n in fitting]
        options = []
        for a in adapters:
            label = f"{a.name}  {(a.method or '?').upper()}"
            if a.is_delta:
                label += f" Δ on {a.parent.get('name')}"
            if a.fits is False and current is not None:
                label += f"  (does not fit {current.name})"
            options.append((label, a.name))

        def validate(v: dict) -> list[tuple[str, str]]:
            errors = []
            if not v["model"]:
                errors.append(("model", "model: choose one"))
            names = set(v["adapters"])
            ticked = {m: by_name[m] for m in names}
            for n in v["adapters"]:
                a = by_name[n]
                if a.is_delta and A.find_parent(a, ticked) is None:
                    errors.append(("adapters", f"adapters: '{n}' is a delta on '{a.parent.get('name')}': "
                                               "choose its parent too"))
            why = next(filter(None, (A.repeated_weights(a, by_name[a], b, by_name[b])
                                     for a, b in itertools.combinations(v["adapters"], 2))), None)
            if why:
                errors.append(("adapters", f"adapters: {why}: tick one of them"))
            host = v["host"] or DEFAULT_HOST
            if not v["port"].isdigit() or int(v["port"]) > 65535:
                errors.append(("port", "port: a number from 0 (any free port) to 65535"))
            if not is_loopback(host) and not v["api_key"]:
                errors.append(("api_key", f"API key: required to serve on {host} (anyone on the network "
                                          "could use it otherwise)"))
            if not v["max_concurrent"].isdigit() or int(v["max_concurrent"]) < 1:
                errors.append(("max_concurrent", "max concurrent: a whole number, at least 1"))
            return errors

        fields = [
            Field("model", "model", "select", str(current.path) if current else None,
                  [(m.name, str(m.path)) for m in models]),
            Field("adapters", "adapters", "multi", chosen, options,
                  help="space: tick · a delta (DPO) mounts with its parent · ticked: the deepest stack"
                  if options else
                  "no adapters in the workspace: it serves the base model only"),
            Field("host", "host", value=defaults.get("host", DEFAULT_HOST)),
            Field("port", "port", value=str(defaults.get("port", DEFAULT_PORT)), help="0: any free port"),
            Field("api_key", "API key", password=True, placeholder="none on 127.0.0.1; required on other hosts"),
            Field("max_concurrent", "max concurrent", value=str(defaults.get("max_concurrent", 8))),
        ]

        def submitted(v: dict | None) -> None:
            if v:
                self._start(v, [by_name[n] for n in v["adapters"]])

        self.app.push_screen(FormDialog("Start a server", fields, ok="Start", validate=validate,
                                        intro="An OpenAI-compatible server, run as a background job."), submitted)

    def _start(self, v: dict, adapters: list) -> None:
        from engine.adapters import stack_order

        try:
            ordered = stack_order(adapters)
        except HumanizerError as e:
            self.notify(e.message, severity="error")
            return
        try:
            job = start_server(self.app.ws, v["model"], [str(a.path) for a in ordered], v["host"] or DEFAULT_HOST,
                               int(v["port"]), v["api_key"] or None, int(v["max_concurrent"]))
        except OSError as e:
            self.notify(f"could not start the server: {e}", severity="error")
            return
        self.monitor.remember_key(job, v["api_key"] or None)
        if hasattr(self.app, "remember"):  # the next start offers the same (never the API key)
            self.app.remember("server", {"host": v["host"] or DEFAULT_HOST, "port": int(v["port"]),
                                         "max_concurrent": int(v["max_concurrent"])})
        self.app.poll_jobs()
        self.monitor.refresh_now()
        self.show(job)
        self.notify(f"starting the server ({job.id})", timeout=3)

    def action_stop(self) -> None:
        job = self.monitor.view.job
        if job is None:
            self.notify("no server is running", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.monitor.stopping(job)
                self.run_worker(partial(self._stop, job.id), thread=True, group="server-stop")

        self.app.push_screen(ConfirmDialog(
            f"Stop the server [b]{self.monitor.url or job.id}[/b]?\n\nRunning requests get a few seconds to "
            "finish; clients then lose it.", yes="Stop", no="Keep serving"), answered)

    def _stop(self, job_id: str) -> None:
        """In a worker thread: cancel_job waits for the server to exit (SIGKILL after a grace)."""
        try:
            job = cancel_job(self.app.ws, job_id)
        except HumanizerError as e:
            self.app.call_from_thread(self.notify, e.message, severity="error")
            return
        self.app.call_from_thread(self._stopped, job)

    def _stopped(self, job: JobInfo) -> None:
        self.app.poll_jobs()
        self.monitor.tick()
        self.notify(f"server {job.id}: {job.status}", timeout=3)
        self.tick()

    def action_follow_live(self) -> None:
        if self.monitor.view.job is not None:
            self.show(self.monitor.view.job)

    # mount and unmount -------------------------------------------------------------------------
    def action_mount(self) -> None:
        if not self.monitor.up:
            self.notify(f"no server is up: {key_of(self.app, 'server_start', 's')} starts one", severity="warning")
            return
        self.run_worker(self._gather_mountable, thread=True, group="server-gather", exclusive=True)

    def _gather_mountable(self) -> None:

        try:
            adapters = A.list_adapters(self.app.ws)
        except Exception:  # noqa: BLE001
            adapters = []
        self.app.call_from_thread(self._mount_dialog, adapters)

    def _mount_dialog(self, adapters: list) -> None:
        mounted = set(mounted_names(self.monitor))
        held = {fp for m in self.monitor.mounted for fp in m.get("holds") or [m.get("fingerprint")] if fp}
        options = []
        for a in adapters:
            if a.name in mounted or A.weight_fingerprints(a) & held:
                continue  # mounted already, or its weights are (a copy, a combined one's source)
            label = Text(a.name, style="bold")
            label.append(f"  {(a.method or '?').upper()}")
            parent = None
            if a.is_delta:
                parent = next((p.name for p in adapters if p.fingerprint == a.parent.get("fingerprint")), None)
                label.append(f" Δ on {a.parent.get('name')}", style="dim")
                if parent and parent not in mounted:
                    label.append("  (mounts its parent first)", style="dim")
            options.append((label, (a.name, parent)))
        self.app.push_screen(PickDialog("Mount an adapter on the server", options,
                                        empty="every workspace adapter is mounted already"), self._mount)

    def _mount(self, choice) -> None:
        if not choice:
            return
        name, parent = choice
        self.run_worker(mount_reported(self, name, parent), group="server-mount", exit_on_error=False)

    def action_unmount(self) -> None:
        if not self.monitor.up:
            self.notify("no server is up", severity="warning")
            return
        options = [(Text(describe_mounted(a)), a.get("name")) for a in self.monitor.mounted]
        self.app.push_screen(PickDialog("Unmount an adapter", options, empty="no adapters are mounted"),
                             self._unmount)

    def _unmount(self, name) -> None:
        if name:
            self.run_worker(unmount_reported(self, name), group="server-mount", exit_on_error=False)
