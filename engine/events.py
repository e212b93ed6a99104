"""A run's record: runs/<id>/job.json, events.jsonl and log.txt.

A `Run` is what long work writes to, whether started as a detached job or straight
from the CLI. Each event is one JSON line, appended and flushed as it happens, so a
reader (the TUI, `jobs attach`) can tail it while the run goes on."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.errors import HumanizerError

TERMINAL = ("done", "failed", "cancelled")

# Every event type and its required fields, each with the JSON kinds its value may take. Every
# event also has "t" (unix time) and "type"; more fields are allowed (a convert's layer carries
# many, a demo's progress its job), so readers use .get for anything not listed here.
_NUM, _OPT_NUM, _OPT_STR = (int, float), (int, float, type(None)), (str, type(None))
EVENT_SCHEMAS: dict[str, dict[str, tuple]] = {
    "progress": {"step": _NUM, "total": _OPT_NUM, "eta": _OPT_NUM, "message": _OPT_STR},
    "metric": {"step": _NUM, "values": (dict,)},
    "layer": {"path": (str,), "index": (int,), "total": (int,), "phase": (str,)},  # convert: one layer
    "log": {"message": (str,)},
    "artifact": {"path": (str,)},  # a file or folder written
    "sample": {"key": (str,)},  # the newest generated pair (data build, eval)
    "request": {"endpoint": (str,), "status": (str,)},  # serve: one finished request
    "ready": {"url": (str,)},  # serve: listening at url (the base URL, no /v1)
    "ranks": {"ranks": (list,)},  # a run on several ranks: each one's rank, host, pid (rank 0 at its start)
    "done": {},
    "error": {"message": (str,), "hint": _OPT_STR},
}


def event_problems(ev) -> list[str]:
    """What is wrong with `ev` as an event (empty when it is a valid one): not an object, no
    numeric "t" or string "type", an unknown type, a required field missing or of another kind."""
    if not isinstance(ev, dict):
        return [f"not an object: {type(ev).__name__}"]
    out = []
    if not isinstance(ev.get("t"), (int, float)) or isinstance(ev.get("t"), bool):
        out.append("t: a unix time is required")
    kind = ev.get("type")
    if not isinstance(kind, str):
        return out + ["type: a string is required"]
    schema = EVENT_SCHEMAS.get(kind)
    if schema is None:
        return out + [f"type: unknown event type {kind!r} (known: {', '.join(EVENT_SCHEMAS)})"]
    for name, kinds in schema.items():
        if name not in ev:
            out.append(f"{kind}.{name}: missing")
        elif not isinstance(ev[name], kinds) or (isinstance(ev[name], bool) and bool not in kinds):
            out.append(f"{kind}.{name}: {type(ev[name]).__name__}, expected "
                       + " or ".join("null" if k is type(None) else k.__name__ for k in kinds))
    return out


def is_event(ev) -> bool:
    """An event a reader can use: an object with a string "type" (a torn-and-joined or foreign
    line is not). Unknown types pass: a newer writer's events must not vanish for an older reader."""
    return isinstance(ev, dict) and isinstance(ev.get("type"), str)


def server_url(ev: dict) -> str | None:
    """The URL a serve run listens on, from its "ready" event (runs recorded before there was
    one: the log event that carried it)."""
    if ev.get("type") == "ready" or (ev.get("type") == "log" and ev.get("url")):
        return str(ev["url"]) if ev.get("url") else None
    return None


class Cancelled(Exception):
    """Raised inside a run when it receives SIGTERM; the work saves what it can and exits."""


def new_run_id(kind: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind.replace(' ', '-')}-{secrets.token_hex(2)}"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events from byte `offset` on, and the offset to continue from.

    Only whole lines count: a torn last line (a writer killed mid-write, or one still
    writing) is left for the next call; an undecodable whole line is skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if is_event(ev):
            events.append(ev)
    return events, offset + end


@dataclass
class Run:
    """Writes one run's events. Use as a context manager around the work."""

    dir: Path
    kind: str = ""
    argv: list[str] = field(default_factory=list)
    settings: dict | None = None  # the verb's resolved settings, recorded in job.json by start()
    listeners: list[Callable[[dict], None]] = field(default_factory=list)  # e.g. the CLI's progress view
    _events: Any = None
    _done: dict | None = None  # the run's one "done" event, once emitted

    @classmethod
    def create(cls, runs_dir: Path, kind: str, argv: list[str], settings: dict | None = None) -> "Run":
        run_id = new_run_id(kind)
        d = runs_dir / run_id
        d.mkdir(parents=True)
        return cls(d, kind, argv, settings)

    @property
    def id(self) -> str:
        return self.dir.name

    # job.json -------------------------------------------------------------
    def _update(self, **fields) -> dict:
        info = read_json(self.dir / "job.json") or {}
        info.update(fields)
        write_json(self.dir / "job.json", info)
        return info

    def start(self) -> "Run":
        from engine.distributed.launch import launched

        info = read_json(self.dir / "job.json") or {}
        if launched() and info.get("pid") and info.get("status") in ("starting", "running"):
            # rank 0 of ranks started for this run (by --nproc/--hosts, or a job running mlx.launch):
            # the run stays that process's, which stands for all ranks (cancel, liveness), and keeps
            # its command line and settings (the ranks' own lack --nproc/--hosts)
            self._update(status="running", started=info.get("started") or time.time(), ended=None)
        else:
            self._update(
                id=self.id,
                kind=self.kind or info.get("kind", ""),
                argv=self.argv or info.get("argv", []),
                settings=self.settings if self.settings is not None else info.get("settings", {}),
                pid=os.getpid(),
                pid_start=process_start_time(os.getpid()),
                host=socket.gethostname(),
                status="running",
                started=info.get("started") or time.time(),
                ended=None,
            )
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")
        return self

    def finish(self, status: str, **fields) -> None:
        self._update(status=status, ended=time.time(), finished_by=os.getpid(), **fields)
        if self._events:
            self._events.close()
            self._events = None

    def __enter__(self) -> "Run":
        if self._events is None:
            self.start()
        self._old_term = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _raise_cancelled)
        except ValueError:  # not the main thread: cancel then only kills
            self._old_term = None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        if exc_type is None:
            self.finish("done")
        elif issubclass(exc_type, (Cancelled, KeyboardInterrupt)):
            self.emit("log", message="cancelled")
            self.finish("cancelled")
        else:
            self.emit("error", message=getattr(exc, "message", str(exc)), hint=getattr(exc, "hint", None))
            exc.reported = bool(self.listeners)  # shown to the user already; the caller need not repeat it
            # "reasoned": a HumanizerError (bad input, a refused setting), not a crash; a supervisor of
            # ranks trusts it over another rank's exit that it caused (distributed/launch.py)
            self.finish("failed", error=getattr(exc, "message", str(exc)), reasoned=isinstance(exc, HumanizerError))
        return False

    # events ---------------------------------------------------------------
    def emit(self, type: str, **fields) -> dict:
        ev = {"t": time.time(), "type": type, **fields}
        if self._events is not None:
            self._events.write(json.dumps(ev, default=str) + "\n")
            self._events.flush()
        for listener in self.listeners:
            listener(ev)
        return ev

    def progress(self, step: int, total: int | None, message: str | None = None, eta: float | None = None, **extra):
        return self.emit("progress", step=step, total=total, eta=eta, message=message, **extra)

    def metric(self, step: int, **values):
        return self.emit("metric", step=step, values=values)

    def log(self, message: str):
        return self.emit("log", message=message)

    def artifact(self, path: str | os.PathLike, **extra):
        return self.emit("artifact", path=str(path), **extra)

    def done(self, **summary):
        """The run's summary, emitted once: readers see one terminal event. The work's own (a
        trainer's adapter and metrics, a convert's figures, each with "result", the path it
        made) comes first; the CLI's generic `done(result=...)` after it then adds nothing."""
        if self._done is not None:
            return self._done
        self._done = self.emit("done", **summary)
        return self._done

    def record_ranks(self, ranks: list[dict]) -> dict:
        """A run on several ranks: each one's rank, host and pid, as a "ranks" event and in
        job.json (status running; the supervisor sets each rank's end)."""
        planned = {r.get("rank"): r for r in (read_json(self.dir / "job.json") or {}).get("ranks") or []}
        ranks = [{**planned.get(r["rank"], {}), **r, "status": "running"} for r in ranks]
        self._update(ranks=ranks)
        return self.emit("ranks", ranks=ranks)


class NullRun(Run):
    """A Run that records nothing: for library calls and tests that need no run folder."""

    def __init__(self, listeners: list | None = None):
        super().__init__(Path(os.devnull), listeners=listeners or [])

    def start(self):
        return self

    def finish(self, status, **fields):
        pass

    def record_ranks(self, ranks):
        return {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class RankRun(NullRun):
    """A rank other than 0 of a run on several ranks: it records nothing (rank 0 does), but stops
    on SIGTERM as a Run does, at the same point of the work as rank 0."""

    __enter__ = Run.__enter__
    __exit__ = Run.__exit__


def _raise_cancelled(signum, frame):
    # once: a second SIGTERM (mlx.launch stopping the ranks after one stopped) must not break
    # off the checkpoint the first one is saving; SIGKILL still ends a run that does not stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Cancelled()


def process_start_time(pid: int) -> str | None:
    """An identity for a process beyond its pid (pids are reused): its start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    try:
        import subprocess

        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def process_alive(pid: int | None, pid_start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie has exited; it only waits to be reaped
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return pid_start is None or process_start_time(pid) in (None, pid_start)


def current_run_dir() -> Path | None:
    """The run folder a job runner made for this process, if any."""
    d = os.environ.get("HUMANIZER_RUN_DIR")
    return Path(d) if d else None


def open_run(runs_dir: Path, kind: str, argv: list[str], settings: dict | None = None) -> Run:
    """The run to record into: the job runner's folder if this process is a job, else a new one,
    so runs started from a shell show up in the TUI too. `settings`: the verb's resolved
    settings (JSON-serialisable, no secrets), recorded in job.json for the screens."""
    d = current_run_dir()
    return Run(d, kind, argv, settings) if d else Run.create(runs_dir, kind, argv, settings)


class ChunkProgress:
    """Progress of generations written a chunk at a time (a dataset build's drafts, an eval's
    rewrites): after each chunk, a progress event with rows/s and the ETA, and at most every
    `sample_every` seconds a "sample" event the screens show as the newest pair."""

    def __init__(self, run: Run, total: int, already: int, label: str, sample_every: float = 8.0):
        self.run, self.total, self.already, self.label = run, total, already, label
        self.sample_every = sample_every
        self.started, self.done, self._last_sample = time.time(), 0, 0.0

    @property
    def rate(self) -> float:
        """Rows per second so far."""
        elapsed = time.time() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, rows: int, sample: Callable[[], dict] | None = None) -> None:
        self.done += rows
        rate = self.rate
        left = self.total - self.already - self.done
        self.run.progress(self.already + self.done, self.total, f"{self.label}: {rate:.2f} rows/s",
                          eta=left / rate if rate > 0 else None, rows_per_s=round(rate, 3))
        if sample is not None and time.time() - self._last_sample >= self.sample_every:
            self._last_sample = time.time()
            self.run.emit("sample", **sample())
