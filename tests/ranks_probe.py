"""A small job on several ranks for the supervisor's tests (tests/test_distributed_launch.py),
needing no trainer: each step is an all_sum over the ranks and a progress event.

    ranks_probe.py supervise N STEPS   this process supervises N ranks (engine.distributed.launch)
    ranks_probe.py rank STEPS          one rank, recording as the CLI's verbs do (tui.cli.common.run_long)

STEPS < 0: rank 0 fails with a HumanizerError at the first step."""

from __future__ import annotations

import json
import os
import sys
import time
from argparse import Namespace


def work(run, steps: int) -> str:
    import mlx.core as mx

    from engine.distributed.world import all_sum, world
    from engine.errors import HumanizerError

    w = world()
    for step in range(abs(steps)):
        if steps < 0 and w.writer:
            raise HumanizerError("probe: rank 0 failed on purpose", "a hint")
        total = all_sum(mx.array([1.0]), w)
        mx.eval(total)
        run.progress(step + 1, abs(steps), f"ranks {int(total.item())}")
        time.sleep(0.05)
    return f"probe ran {steps} steps"


def main() -> int:
    from engine.errors import HumanizerError
    from engine.events import Cancelled, open_run
    from engine.workspace import Workspace

    mode, *rest = sys.argv[1:]
    ws = Workspace.open(None)
    if mode == "rank":
        from tui.cli.common import remember_settings, run_long

        with remember_settings(Namespace(nproc=1, hosts="", steps=int(rest[0]))):
            try:
                print("RESULT", run_long(ws, "probe", sys.argv[1:], True, lambda run: work(run, int(rest[0]))))
            except HumanizerError:
                return 2
            except Cancelled:
                return 130
        return 0
    from engine.distributed.launch import Supervisor
    from engine.distributed.settings import Ranks

    n, steps = int(rest[0]), rest[1]
    run = open_run(ws.runs_dir, "probe", ["probe", *sys.argv[1:]], settings={"nproc": n}).start()
    show = lambda ev: print(json.dumps(ev), flush=True)  # noqa: E731
    try:
        print("RESULT", Supervisor(run, Ranks(nproc=n), [sys.executable, os.path.abspath(__file__), "rank", steps], show)())
    except Cancelled:
        return 130
    except HumanizerError as e:
        print("ERROR", e.message)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
