"""A run on several ranks, supervised: the CLI process given --nproc N / --hosts FILE runs
`mlx.launch` over the ranks and stands for the whole run (no MLX here).

    mlx.launch --backend ring (-n N | --hostfile F) --starting-port P --env HUMANIZER_RUN_DIR=... -- COMMAND

COMMAND (the same verb without --nproc/--hosts) comes from the CLI; the engine never names the UI.
Each rank finds itself a rank (`launched()`); rank 0 records into the supervisor's run folder
(HUMANIZER_RUN_DIR) and announces every rank's host and pid (a "ranks" event, kept in job.json);
the others compute and record nothing. The supervisor copies the launcher's output into the
run's log.txt, shows rank 0's events, forwards SIGTERM/SIGINT to every rank (a cancel stops them
all, rank 0 saving what it can), and when a rank dies fails the run naming that rank's host.
mlx.launch itself exits 0 whatever the ranks did; what happened is in its lines
"Node with rank N exited with code C" / "was killed" (mlx/_distributed_utils/launch.py)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from engine.distributed.settings import RANK_FIELDS, Ranks
from engine.errors import HumanizerError

LAUNCHED_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")  # set by mlx.launch (ring) / mpirun
PASSED_ENV = ("HUMANIZER_RUN_DIR", "HUMANIZER_HOME")  # through --env: ssh'd ranks get no other environment
STOP_GRACE = 20.0  # seconds the ranks get to stop (rank 0: to save a checkpoint) before SIGKILL
_EXIT = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|(was killed)|completed)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def launched() -> bool:
    """Whether this process was started by mlx.launch / mpirun as one rank of several."""
    return any(k in os.environ for k in LAUNCHED_ENV)


def env_rank() -> int | None:
    """This process's rank as its launcher set it (None when not launched as a rank)."""
    for k in LAUNCHED_ENV:
        if os.environ.get(k, "").strip().lstrip("-").isdigit():
            return int(os.environ[k])
    return None


def strip_rank_flags(argv: list[str]) -> list[str]:
    """`argv` without --nproc N / --hosts F (either form, =VALUE too): the ranks' own command line."""
    flags = tuple("--" + f.replace("_", "-") for f in RANK_FIELDS)
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def free_ports(n: int) -> int:
    """A first port p with p..p+n-1 free on loopback (the ring backend listens on one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n >= 65535:
            continue
        socks = []
        try:
            for p in range(first, first + n):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise HumanizerError("no free ports on this machine for the ranks", "close some programs and try again")


def launcher() -> str:
    """mlx.launch of this Python's environment (the ranks run the same Python)."""
    beside = Path(sys.executable).parent / "mlx.launch"
    found = str(beside) if beside.exists() else shutil.which("mlx.launch")
    if not found:
        raise HumanizerError("mlx.launch not found beside this Python or on PATH", "pip install mlx (it ships mlx.launch)")
    return found


def launch_argv(ranks: Ranks, command: list[str], port: int, env: dict[str, str] | None = None) -> list[str]:
    """The mlx.launch command line that runs `command` once per rank, ring backend."""
    where = ["--hostfile", ranks.hosts] if ranks.hosts else ["-n", str(ranks.nproc)]
    passed = [x for k, v in (env or {}).items() for x in ("--env", f"{k}={v}")]
    return [launcher(), "--backend", "ring", *where, "--starting-port", str(port), *passed, "--", *command]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the ranks, or the ssh clients of remote ones)."""
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(a) for a, b in (line.split() for line in out.splitlines() if len(line.split()) == 2) if int(b) == pid]


class Supervisor:
    """Runs the ranks of `run` (started, this process's) and ends the run as they end.

    `command`: each rank's command line; `show(event)`: the live view of rank 0's events."""

    def __init__(self, run, ranks: Ranks, command: list[str], show: Callable[[dict], None] | None = None,
                 grace: float = STOP_GRACE):
        self.run, self.ranks, self.command, self.show, self.grace = run, ranks.check(), command, show, grace
        self.plan = ranks.plan(socket.gethostname())
        self.exits: dict[int, tuple[int | None, bool]] = {}  # rank -> (exit code, killed), in report order
        self.cancelled = False
        self._forwarded = False  # the ranks got their SIGTERM
        self.stop_by: float | None = None  # when the ranks are SIGKILLed if still running
        self.proc: subprocess.Popen | None = None
        self._offset = 0
        self.done_event: dict | None = None

    # the run -----------------------------------------------------------------------------
    def __call__(self) -> str | None:
        """Launch, follow, and end the run: rank 0's result; Cancelled or a HumanizerError otherwise."""
        from engine.events import Cancelled

        self.run._update(ranks=[self._planned(h) for h in self.plan])
        env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)} | {"HUMANIZER_RUN_DIR": str(self.run.dir)}
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            with open(self.run.dir / "log.txt", "ab") as log:
                try:
                    argv = launch_argv(self.ranks, self.command, free_ports(len(self.plan)), env)
                    log.write(f"$ {shlex.join(argv)}\n".encode())
                    log.flush()
                    # its own session: a Ctrl-C or a group signal reaches the ranks only through us, once
                    self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd())
                except (HumanizerError, OSError) as e:
                    message = getattr(e, "message", None) or f"cannot start mlx.launch: {e}"
                    self.run.emit("error", message=message, hint=getattr(e, "hint", None))
                    self._follow_events()
                    self.run.finish("failed", error=message)
                    err = HumanizerError(message, getattr(e, "hint", None))
                    err.reported = self.show is not None
                    raise err from None
                reader = threading.Thread(target=self._copy_output, args=(log,), daemon=True)
                reader.start()
                if self.cancelled:  # cancelled while it started
                    self._on_signal(signal.SIGTERM, None)
                while self.proc.poll() is None or reader.is_alive():
                    self._follow_events()
                    if self.stop_by is not None and time.time() > self.stop_by:
                        self._kill_all()
                    time.sleep(0.1)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self._follow_events()
        status, error, hint, ours = self._outcome()
        if ours:  # rank 0 could not say it: the error event is the supervisor's
            self.run.emit("error", message=error, hint=hint)
            self._follow_events()
        self.run.finish(status, ranks=self._final_ranks(status), **({"error": error} if error else {}))
        if status == "cancelled":
            raise Cancelled()
        if status == "failed":
            e = HumanizerError(error or "the run failed", hint)
            e.reported = self.show is not None
            raise e
        return self.done_event.get("result") if self.done_event else None

    def _planned(self, h) -> dict:
        out = {"rank": h.rank, "host": h.ssh, "pid": None, "status": "starting"}
        return out | ({"ssh": h.ssh} if self.ranks.hosts else {})

    def _copy_output(self, log) -> None:
        """The launcher's (and so every rank's) output into log.txt, noting each rank's end."""
        for line in iter(self.proc.stdout.readline, b""):
            log.write(line)
            log.flush()
            m = _EXIT.search(_ANSI.sub("", line.decode(errors="replace")))
            if m:
                rank, code, killed = int(m.group(1)), m.group(2), bool(m.group(3))
                self.exits[rank] = (0 if code is None and not killed else (int(code) if code else None), killed)
                if (killed or self.exits[rank][0]) and self.stop_by is None:
                    self.stop_by = time.time() + self.grace  # mlx.launch stops the others; a hung one is killed

    def _follow_events(self) -> None:
        from engine.events import read_events

        events, self._offset = read_events(self.run.dir / "events.jsonl", self._offset)
        for ev in events:
            if ev["type"] == "done":
                self.done_event = ev
            if self.show is not None:
                self.show(ev)

    # stopping ----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        """SIGTERM (cancel) or Ctrl-C: every rank gets SIGTERM once (rank 0 saves and stops); a
        second one, or the grace running out, kills them."""
        self.cancelled = True
        if self.proc is None:  # not started yet: forwarded once it is
            return
        if self._forwarded:
            self._kill_all()
            return
        self._forwarded = True
        self.stop_by = time.time() + self.grace
        for pid in _children(self.proc.pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill_all(self) -> None:
        if self.proc is not None:  # the launcher's session: it, its local ranks and ssh clients
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.stop_by = None

    # the ending --------------------------------------------------------------------------
    def _host(self, rank: int) -> str:
        from engine.events import read_json

        recorded = (read_json(self.run.dir / "job.json") or {}).get("ranks") or []
        r = next((r for r in recorded if r.get("rank") == rank), None)
        if r and r.get("host"):
            return r["host"] + (f" (ssh {r['ssh']})" if r.get("ssh") and r["ssh"] != r["host"] else "")
        return next((h.ssh for h in self.plan if h.rank == rank), "?")

    def _outcome(self) -> tuple[str, str | None, str | None, bool]:
        """(status, error, hint, whether the error is ours to report)."""
        from engine.events import read_json

        failed = [(r, code, killed) for r, (code, killed) in self.exits.items() if killed or code]
        if self.cancelled and not (self.done_event and not failed):
            return "cancelled", None, None, False
        if failed:
            rank, code, killed = failed[0]  # the first to end badly; the launcher stopped the others
            info = read_json(self.run.dir / "job.json") or {}
            said = info.get("status") == "failed" and info.get("error")
            # rank 0 said why: it failed first, or it stopped on a reasoned error (a HumanizerError: exit
            # code 2, or recorded as such when the launcher killed it on its way out) and another rank,
            # with nothing to write (or its collective broken by rank 0's exit), was quicker to exit
            reasoned = self.exits.get(0, (None, False))[0] == 2 or info.get("reasoned") is True
            if said and (rank == 0 or (reasoned and not killed and code > 0)):
                return "failed", info["error"], None, False
            how = ("was killed" if killed else f"was killed by signal {-code}" if code < 0
                   else f"exited with code {code}")
            return ("failed", f"rank {rank} on host {self._host(rank)} {how}; the other ranks were stopped",
                    "its output is in the run's log.txt; rerun, or continue a training run with --resume", True)
        if self.done_event is None:
            code = self.proc.returncode if self.proc else None
            return ("failed", f"the ranks ended without finishing (mlx.launch exit code {code})",
                    "its output is in the run's log.txt", True)
        return "done", None, None, False

    def _final_ranks(self, status: str) -> list[dict]:
        from engine.events import read_json

        recorded = (read_json(self.run.dir / "job.json") or {}).get("ranks") or [self._planned(h) for h in self.plan]
        failed = next((r for r, (code, killed) in self.exits.items() if killed or code), None)
        out = []
        for r in recorded:
            code, killed = self.exits.get(r.get("rank"), (None, False))
            if status == "done":
                state = "done"
            elif status == "cancelled":
                state = "cancelled"
            elif r.get("rank") == failed or code == 2:  # the first to fail, or one that stopped on its own error
                state = "failed"
            else:
                state = "stopped" if (code or killed or code is None) else "done"
            out.append({**r, "status": state, "exit_code": code})
        return out
