"""Long work as detached child processes, each with a run folder (see engine.events).

A job is started in its own session (`start_new_session`), so it survives the TUI
closing or SSH dropping. Its status is read from job.json and checked against the
process table: a job whose process died without finishing shows as failed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
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
    settings: dict = field(default_factory=dict)  # the verb's resolved settings (job.json; {} in older runs)
    ranks: list = field(default_factory=list)  # a run on several ranks: {rank, host, pid, status} each

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def start_job(ws: Workspace, kind: str, argv: list[str], env: dict | None = None,
              settings: dict | None = None) -> JobInfo:
    """Start `argv` (any command) detached, with HUMANIZER_RUN_DIR pointing at a new run folder.
    `settings` (JSON-serialisable, no secrets) go into job.json at once, so a screen knows
    what the job does before the child has parsed its flags; the child records its resolved
    settings there when it starts (Run.start)."""
    run = Run.create(ws.runs_dir, kind, argv)
    settings = json.loads(json.dumps(settings or {}, default=str))  # tuples, paths: as job.json keeps them
    write_json(run.dir / "job.json", {
        "id": run.id, "kind": kind, "argv": argv, "settings": settings, "pid": None,
        "status": "starting", "started": time.time(), "ended": None,
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
    if status in TERMINAL and info.get("finished_by") not in (None, info.get("pid")) \
            and process_alive(info.get("pid"), info.get("pid_start")):
        status = "running"  # rank 0 ended, but a run on several ranks ends with its own process (the supervisor)
    if status in ("running", "starting"):
        alive = process_alive(info.get("pid"), info.get("pid_start"))
        if status == "starting" and time.time() - (info.get("started") or 0) < 10:
            alive = True  # the child has not written its pid yet
        if not alive:
            status = "failed"
            error = error or "the process ended without finishing (killed or crashed); see log.txt"
    ranks = [r for r in info.get("ranks") or [] if isinstance(r, dict)]
    if status in TERMINAL:  # a rank still "running" in a run that ended (no supervisor set its end)
        ranks = [{**r, "status": status} if r.get("status") in ("starting", "running") else r for r in ranks]
    return JobInfo(
        id=run_dir.name, dir=run_dir, kind=info.get("kind", "?"), argv=info.get("argv", []),
        pid=info.get("pid"), status=status, started=info.get("started"), ended=info.get("ended"), error=error,
        settings=info.get("settings") if isinstance(info.get("settings"), dict) else {}, ranks=ranks,
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


CANCEL_GRACE = 30.0  # seconds a job gets to stop after SIGTERM (a training step, then a checkpoint)


def _signal_run(pid: int, sig: int) -> None:
    """Send `sig` to the run's own process, and to its whole group when it leads one of its
    own (a job we started in a new session: anything it spawned goes too). A run started
    from a shell script shares the script's group, so signalling a group by the run's pid
    would reach nothing; one leading a shell's pipeline (`humanizer ... | tee log`) leads a
    group that holds the pipe's reader, which must live for the run to save and report."""
    try:
        leads = os.getpgid(pid) == pid and os.getsid(pid) == pid
    except ProcessLookupError:
        return
    try:
        if leads:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _is_our_run(info: dict) -> bool:
    """The pid in job.json is still the run's process: its start time matches the one the
    run recorded (pids are reused). A job not yet started has no start time: its pid is the
    child we just spawned."""
    return process_alive(info.get("pid"), info.get("pid_start"))


def _kill_local_ranks(info: dict) -> None:
    """SIGKILL the ranks of this machine that still run (pid and start time as recorded): what a
    killed supervisor leaves behind."""
    here = socket.gethostname()
    for r in info.get("ranks") or []:
        if r.get("host") == here and r.get("pid") and process_alive(r["pid"], r.get("pid_start")):
            try:
                os.kill(r["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _wait_stopped(job: JobInfo, seconds: float) -> JobInfo:
    deadline = time.time() + seconds
    while True:
        job = job_info(job.dir)
        if not job.running or time.time() >= deadline:
            return job
        time.sleep(0.05)


def cancel_job(ws: Workspace, job_id: str, timeout: float = CANCEL_GRACE, kill_wait: float = 5.0) -> JobInfo:
    """SIGTERM the job's process (and its group when it leads one), which saves what it can
    and marks itself cancelled; after `timeout` seconds still running, SIGKILL. Raises when
    the process cannot be signalled or does not stop."""
    job = find_job(ws, job_id)
    if not job.running:
        raise HumanizerError(f"job {job.id} is not running (status: {job.status})")
    info = read_json(job.dir / "job.json") or {}
    if not job.pid:
        raise HumanizerError(f"job {job.id} has no process yet", "try again in a moment")
    if not _is_our_run(info):
        raise HumanizerError(f"job {job.id}: its process (pid {job.pid}) is not the run any more",
                             "it ended without recording it; `humanizer jobs show` has its last events")
    killed = False
    try:
        _signal_run(job.pid, signal.SIGTERM)
        job = _wait_stopped(job, timeout)
        if job.running and _is_our_run(read_json(job.dir / "job.json") or {}):
            _signal_run(job.pid, signal.SIGKILL)  # it did not stop in time: no checkpoint, --resume uses the last
            _kill_local_ranks(read_json(job.dir / "job.json") or {})
            killed = True
            job = _wait_stopped(job, kill_wait)
    except PermissionError as e:
        raise HumanizerError(f"cannot signal job {job.id} (pid {job.pid}): {e.strerror or e}",
                             "it runs as another user: cancel it as that user") from None
    if job.running:
        raise HumanizerError(f"job {job.id} (pid {job.pid}) is still running after SIGTERM"
                             + (" and SIGKILL" if killed else ""), f"check it with `ps -p {job.pid}`")
    info = read_json(job.dir / "job.json") or {}
    if info.get("status") in ("running", "starting"):
        # Killed before it could record anything (still importing, or by SIGKILL).
        info.update(status="cancelled", ended=time.time(),
                    **({"error": f"killed: it did not stop within {timeout:g} s of SIGTERM"} if killed else {}))
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
