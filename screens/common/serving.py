"""The running server, as the Adapters, Server and Chat screens and the status bar see it.

The server is a `humanizer serve` job (engine.jobs), so it outlives the app. One
ServerMonitor per app follows the newest running serve job: its URL comes from the job's
"ready" event, its health, mounted adapters and
model ids from the server's own HTTP API, polled once a second in an async worker (never
on the UI thread). Screens read the monitor's fields on their redraw timers; `version`
changes whenever anything they show does.

The HTTP client (ServerClient, ServerError) is engine/serve/client.py. server_defaults: the
[server] table of config.toml."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from rich.text import Text

from engine.events import read_events, server_url
from engine.jobs import JobInfo
from engine.serve.client import HTTP_TIMEOUT_S, ServerClient, ServerError
from engine.serve.settings import DEFAULT_HOST, DEFAULT_PORT
from screens.common.launch import start_verb

SERVE_KIND = "serve"
POLL_S = 1.0
API_KEY_ENV = "HUMANIZER_API_KEY"


# serve jobs ------------------------------------------------------------------------------
def is_serve_job(job: JobInfo) -> bool:
    return job.kind == SERVE_KIND


def serve_jobs(jobs: list[JobInfo]) -> list[JobInfo]:
    return [j for j in jobs if is_serve_job(j)]


def running_server(jobs: list[JobInfo]) -> JobInfo | None:
    """The newest serve job that is running (`jobs` newest first, as list_jobs gives them)."""
    return next((j for j in serve_jobs(jobs) if j.status in ("running", "starting")), None)


def serve_argv(model: str, adapters: list[str], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               max_concurrent: int | None = None) -> list[str]:
    """`humanizer serve` arguments (after the command)."""
    args = ["serve", "--model", model]
    for a in adapters:
        args += ["--adapter", a]
    args += ["--host", host, "--port", str(port)]
    if max_concurrent:
        args += ["--max-concurrent", str(max_concurrent)]
    return args


def start_server(ws, model: str, adapters: list[str], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 api_key: str | None = None, max_concurrent: int | None = None) -> JobInfo:
    """Start `humanizer serve` as a job. The API key goes in the environment, not argv (which
    job.json and `ps` show)."""
    env = {API_KEY_ENV: api_key} if api_key else {API_KEY_ENV: ""}
    return start_verb(ws, SERVE_KIND, serve_argv(model, adapters, host, port, max_concurrent),
                      serve_settings(model, adapters, host, port, api_key, max_concurrent), env=env)


def serve_settings(model: str, adapters: list[str], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                   api_key: str | None = None, max_concurrent: int | None = None) -> dict:
    """What job.json records of a server started here until its child records its own (the same
    keys as `humanizer serve`'s flags; of the key only whether one is set)."""
    settings = {"model": model, "adapters": list(adapters), "host": host, "port": port, "api_key_set": bool(api_key)}
    if max_concurrent:
        settings["max_concurrent"] = max_concurrent
    return settings


def host_port(url: str | None) -> str:
    return (url or "").split("://", 1)[-1]


# the monitor -----------------------------------------------------------------------------
@dataclass
class ServerView:
    """What the monitor knows, at one moment."""

    state: str = "off"  # off | starting | up | down | stopping
    job: JobInfo | None = None
    url: str | None = None
    health: dict = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    mounted: list[dict] = field(default_factory=list)
    error: str | None = None  # why it is down, or why the last server failed


class ServerMonitor:
    """Follows the newest running serve job; one per app (`ServerMonitor.of(app)`)."""

    client_class = ServerClient  # tests of the layout may put a stand-in here

    def __init__(self, app) -> None:
        self.app = app
        self.view = ServerView()
        self.version = 0
        self.last_failed: JobInfo | None = None  # the newest serve job that failed, with its error
        self._offset = 0
        self._keys: dict[str, str] = {}  # job id -> API key given when it was started here
        self._checking = False
        self._force = True
        self._last_check = 0.0
        self._stopping: set[str] = set()

    @classmethod
    def of(cls, app) -> "ServerMonitor":
        monitor = getattr(app, "_server_monitor", None)
        if monitor is None:
            monitor = cls(app)
            app._server_monitor = monitor
            app.set_interval(POLL_S / 2, monitor.tick)
            monitor.tick()
        return monitor

    # reading ------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.view.state

    @property
    def up(self) -> bool:
        return self.view.state == "up"

    @property
    def url(self) -> str | None:
        return self.view.url

    @property
    def models(self) -> list[str]:
        return self.view.models

    @property
    def mounted(self) -> list[dict]:
        return self.view.mounted

    def api_key(self, job: JobInfo | None = None) -> str | None:
        job = job or self.view.job
        if job is not None and job.id in self._keys:
            return self._keys[job.id] or None
        return os.environ.get(API_KEY_ENV) or None  # job.json keeps no key, only whether one is set

    def client(self, timeout: float = HTTP_TIMEOUT_S) -> ServerClient | None:
        if not self.view.url:
            return None
        return self.client_class(self.view.url, self.api_key(), timeout)

    def remember_key(self, job: JobInfo, key: str | None) -> None:
        self._keys[job.id] = key or ""

    def label(self) -> str:
        v = self.view
        if v.state in ("up", "down"):
            return f"{v.state} {host_port(v.url)}"
        return v.state

    # following ----------------------------------------------------------------------------
    def _set(self, **changes) -> None:
        changed = False
        for k, val in changes.items():
            if getattr(self.view, k) != val:
                setattr(self.view, k, val)
                changed = True
        if changed:
            self.version += 1
            self.app.server_state = self.label()

    def refresh_now(self) -> None:
        """Fetch health, models and adapters now (after a mount, an unmount, a start)."""
        self._force = True
        self._last_check = 0.0
        self.tick()

    def stopping(self, job: JobInfo) -> None:
        self._stopping.add(job.id)
        if self.view.job is not None and self.view.job.id == job.id:
            self._set(state="stopping")

    def tick(self) -> None:
        jobs = getattr(self.app, "jobs", [])
        job = running_server(jobs)
        failed = next((j for j in serve_jobs(jobs) if j.status == "failed"), None)
        if failed is not None and (job is None or (failed.started or 0) > (job.started or 0)):
            self.last_failed = failed
        if job is None:
            self._offset = 0
            self._set(state="off", job=None, url=None, health={}, models=[], mounted=[],
                      error=self.last_failed.error if self.last_failed else None)
            return
        if self.view.job is None or self.view.job.id != job.id:
            self._offset = 0
            self._force = True
            self._set(job=job, url=None, health={}, models=[], mounted=[], error=None, state="starting")
        else:
            self.view.job = job
        if self.view.url is None:
            events, self._offset = read_events(job.dir / "events.jsonl", self._offset)
            for ev in events:
                if server_url(ev):
                    self._set(url=server_url(ev))
                    self._force = True
                    break
        if job.id in self._stopping:
            self._set(state="stopping")
            return
        now = time.monotonic()
        if self.view.url and not self._checking and (self._force or now - self._last_check >= POLL_S):
            self._checking = True
            self._last_check = now
            self.app.run_worker(self._check(job.id, self.view.url), group="server-monitor", exit_on_error=False)

    async def _check(self, job_id: str, url: str) -> None:
        force, self._force = self._force, False
        client = self.client_class(url, self.api_key(self.view.job))
        try:
            health = await client.get("/health")
            changes: dict = {"health": health}
            names = [a.get("name") for a in self.view.mounted]
            if force or health.get("adapters") != names or not self.view.models:
                adapters = await client.get("/v1/adapters")
                changes["mounted"] = list(adapters.get("data") or [])
                models = adapters.get("models")
                if models is None:
                    models = [m.get("id") for m in (await client.get("/v1/models")).get("data") or []]
                changes["models"] = list(models)
            state, error = ("up" if health.get("status", "ok") == "ok" else str(health.get("status"))), None
        except ServerError as e:
            changes, state, error = {}, "down", e.message
            if e.status == 401:
                error = f"{e.message}: set {API_KEY_ENV} to the server's key before starting the app"
        except Exception as e:  # noqa: BLE001 - a broken reply must not take the app down
            changes, state, error = {}, "down", f"{type(e).__name__}: {e}"
        finally:
            self._checking = False
        if self.view.job is None or self.view.job.id != job_id or self.view.url != url:
            return  # another server since
        if job_id in self._stopping:
            return
        self._set(state=state, error=error, **changes)


# formatting ------------------------------------------------------------------------------
def adapter_choices(models: list[str]) -> list[str]:
    """The adapter choices a request can make: the server's model ids, base first. The server
    offers only real stacks (each delta on its own parent, no weights twice)."""
    out = [m for m in models if m == "base"] + [m for m in models if m != "base"]
    return out or ["base"]


def first_choice(monitor: ServerMonitor) -> str | None:
    """The choice Chat starts with: the deepest real stack the server offers."""
    from engine.adapters import deepest_stack

    return deepest_stack(monitor.models) if monitor.models else None


# mounting over HTTP ----------------------------------------------------------------------
def mounted_names(monitor: ServerMonitor) -> list[str]:
    return [str(a.get("name")) for a in monitor.mounted]


async def mount_adapter(monitor: ServerMonitor, name: str, parent: str | None = None) -> list[str]:
    """POST /v1/adapters for the workspace adapter `name` (its parent first when it is a
    delta whose parent is not mounted yet); returns the names mounted."""
    client = monitor.client()
    if client is None:
        raise ServerError("no server is running")
    done = []
    if parent and parent not in mounted_names(monitor):
        await client.request("POST", "/v1/adapters", {"path": parent})
        done.append(parent)
    await client.request("POST", "/v1/adapters", {"path": name})
    done.append(name)
    return done


async def unmount_adapter(monitor: ServerMonitor, name: str) -> None:
    client = monitor.client()
    if client is None:
        raise ServerError("no server is running")
    await client.request("DELETE", f"/v1/adapters/{name}")


def fit_lines(text: Text, width: int) -> Text:
    """Each line of `text` cut to `width` cells with an ellipsis (a status panel never wraps)."""
    if width <= 0:
        return text
    out = Text()
    for i, line in enumerate(text.split("\n", allow_blank=True)):
        if i:
            out.append("\n")
        line.truncate(width, overflow="ellipsis")
        out.append_text(line)
    return out


def pick_default_model(app) -> None:
    """In a worker thread: let the app choose a default model when none is chosen yet (the
    Models screen does this when it opens; a session may start in another mode)."""
    if getattr(app, "model", None) is not None or not hasattr(app, "models_changed"):
        return
    from engine.models import list_models

    try:
        names = [m.name for m in list_models(app.ws)]
    except Exception:  # noqa: BLE001 - a broken folder must not take the screen down
        return
    if names:
        app.call_from_thread(app.models_changed, names)


def server_defaults(ws) -> dict:
    """[server] host / port / max_concurrent from config.toml (defaults when absent or bad)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(ws.config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = data.get("server")
    if not isinstance(table, dict):
        return {}
    out = {}
    if isinstance(table.get("host"), str):
        out["host"] = table["host"]
    for key in ("port", "max_concurrent"):
        if isinstance(table.get(key), int) and not isinstance(table.get(key), bool):
            out[key] = table[key]
    return out
