"""Run by tests/test_distributed_jobs.py under mlx.launch: in_rounds and on_writer when one rank
fails (a HumanizerError on rank 1 in the second round, one on the writer alone)."""

import json

from engine.distributed.spread import in_rounds, on_writer
from engine.distributed.world import world
from engine.errors import HumanizerError

w = world()
out = {"rank": w.rank, "rounds": []}


def compute(part):
    if w.rank == 1 and "g" in part:  # the second round: e f on rank 0, g here
        raise HumanizerError("rank 1 failed on g", "see rank 1")
    return [x.upper() for x in part]


try:
    in_rounds(list("abcdefg"), 2, compute, w, lambda chunk, rows: out["rounds"].append([chunk, rows]))
except HumanizerError as e:
    out["in_rounds"] = [e.message, e.hint]


def writer_only():
    raise HumanizerError("only the writer knows", "look on rank 0")


out["on_writer_ok"] = on_writer(lambda: {"from": w.rank}, w)
try:
    on_writer(writer_only, w)
except HumanizerError as e:
    out["on_writer"] = [e.message, e.hint]
print("RESULT " + json.dumps(out), flush=True)
