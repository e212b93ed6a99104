"""Long work as detached child processes, each with a run folder (see engine.events).

A job is started in its own session (`start_new_session`), so it survives the TUI
closing or SSH dropping. Its status is read from job.json and checked against the
process table: a job whose process died without finishing shows as failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.errors import HumanizerError
from engine.events import TERMINAL, Run, process_alive, read_events, read_json, write_json
from engine.workspace import Workspace

# Children we started from this process: polled so they do not linger as zombies.
_children: dict[int, subprocess.Popen] = {}


@dataclass
class JobInfo:
    id: str
    dir: Path
    kind: str
    argv: list[str]
    pid: int | None
    status: str
    started: float | None
    ended: float | None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def humanizer_argv(*args: str) -> list[str]:
    """The command line that runs `humanizer ARGS` with this interpreter."""
    return [sys.executable, "-m", "tui.cli", *args]


def start_job(ws: Workspace, kind: str, argv: list[str], env: dict | None = None) -> JobInfo:
    """Start `argv` detached, with HUMANIZER_RUN_DIR pointing at a new run folder."""
    run = Run.create(ws.runs_dir, kind, argv)
    write_json(run.dir / "job.json", {
        "id": run.id, "kind": kind, "argv": argv, "pid": None, "status": "starting",
        "started": time.time(), "ended": None,
    })
    child_env = {**os.environ, **(env or {}), "HUMANIZER_RUN_DIR": str(run.dir), "HUMANIZER_HOME": str(ws.home)}
    with open(run.dir / "log.txt", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=child_env, start_new_session=True, cwd=os.getcwd(),
        )
    _children[proc.pid] = proc
    info = read_json(run.dir / "job.json") or {}
    if info.get("pid") is None:  # the child may already have written its own
        info.update(pid=proc.pid, status="running")
        write_json(run.dir / "job.json", info)
    return job_info(run.dir)


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def job_info(run_dir: Path) -> JobInfo:
    """A run's state, with `running` checked against the process table."""
    _reap()
    info = read_json(run_dir / "job.json") or {}
    status = info.get("status") or "failed"
    error = info.get("error")
    if status in ("running", "starting"):
        alive = process_alive(info.get("pid"), info.get("pid_start"))
        if status == "starting" and time.time() - (info.get("started") or 0) < 10:
            alive = True  # the child has not written its pid yet
        if not alive:
            status = "failed"
            error = error or "the process ended without finishing (killed or crashed); see log.txt"
    return JobInfo(
        id=run_dir.name, dir=run_dir, kind=info.get("kind", "?"), argv=info.get("argv", []),
        pid=info.get("pid"), status=status, started=info.get("started"), ended=info.get("ended"), error=error,
    )


def list_jobs(ws: Workspace) -> list[JobInfo]:
    """Every run in runs/, newest first."""
    dirs = [d for d in ws.runs_dir.iterdir() if d.is_dir() and (d / "job.json").exists()]
    return sorted((job_info(d) for d in dirs), key=lambda j: j.started or 0, reverse=True)


def find_job(ws: Workspace, job_id: str) -> JobInfo:
    d = ws.runs_dir / job_id
    if (d / "job.json").exists():
        return job_info(d)
    matches = [j for j in list_jobs(ws) if j.id.startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise HumanizerError(f"no job {job_id!r} in {ws.runs_dir}", "run `humanizer jobs list` to see job ids")
    raise HumanizerError(f"job id {job_id!r} is ambiguous: {', '.join(j.id for j in matches)}", "give more of the id")


def cancel_job(ws: Workspace, job_id: str, timeout: float = 10.0) -> JobInfo:
    """SIGTERM the job's process group; the job saves what it can and marks itself cancelled."""
    job = find_job(ws, job_id)
    if not job.running:
        raise HumanizerError(f"job {job.id} is not running (status: {job.status})")
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        raise HumanizerError(f"cannot signal job {job.id} (pid {job.pid}): {e}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = job_info(job.dir)
        if not job.running:
            break
        time.sleep(0.05)
    info = read_json(job.dir / "job.json") or {}
    if not job.running and info.get("status") in ("running", "starting"):
        # Killed by the signal before it could record anything (e.g. still importing).
        info.update(status="cancelled", ended=time.time())
        write_json(job.dir / "job.json", info)
        job = job_info(job.dir)
    return job


def job_events(job: JobInfo, offset: int = 0) -> tuple[list[dict], int]:
    return read_events(job.dir / "events.jsonl", offset)


def follow(ws: Workspace, job_id: str, poll: float = 0.2) -> Iterator[dict]:
    """Yield a job's events from the start, then live, until it ends."""
    job = find_job(ws, job_id)
    offset = 0
    while True:
        events, offset = job_events(job, offset)
        yield from events
        job = job_info(job.dir)
        if job.status in TERMINAL:
            events, offset = job_events(job, offset)
            yield from events
            return
        time.sleep(poll)


def last_progress(events: list[dict]) -> dict | None:
    for ev in reversed(events):
        if ev.get("type") == "progress":
            return ev
    return None
