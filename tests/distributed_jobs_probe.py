"""A dpo-pairs build whose rewrites the tiny llama writes (and, with resume_too, the resume of an
interrupted one), then an eval of the built dataset's held-out drafts scored by fast-detectgpt.
tests/test_distributed_jobs.py runs it on two ranks (mlx.launch) and in its own process (`probe`);
each rank reports what it generated; the writer's outputs land in HOME.

    python tests/distributed_jobs_probe.py HOME MODEL ADAPTER [--resume-too]"""

import json
import sys
import time
from pathlib import Path

from engine.data.build import build
from engine.data.settings import BuildSettings
from engine.distributed.world import world
from engine.eval.run import run_eval
from engine.eval.settings import EvalSettings
from engine.events import NullRun
from engine.generate import Engine
from engine.workspace import Workspace


def probe(home, model, adapter, resume_too: bool = False) -> dict:
    ws, w = Workspace.open(Path(home)), world()
    submitted, submit, events = [], Engine.submit, []
    run = NullRun(listeners=[events.append])  # what a rank would show and record

    def counted(engine, prompt, adapter=None, params=None, **k):
        submitted.append(params.seed)
        return submit(engine, prompt, adapter, params, **k)

    def pairs(output: str, resume: bool = False) -> BuildSettings:
        return BuildSettings(template="dpo-pairs", source="st", output=output, model=str(model), adapter=str(adapter),
                             rejected="closest", samples=2, limit=5, rows=2, temperature=0.9, top_p=1.0,
                             max_tokens=10, seed=5, resume=resume)

    Engine.submit = counted
    try:
        t0 = time.time()
        out = {"rank": w.rank, "size": w.size, "pairs": str(build(pairs("pairs"), ws, run))}
        out["pairs_s"], out["pairs_generated"] = round(time.time() - t0, 2), len(submitted)
        out["pairs_progress"] = [[e["step"], e["total"]] for e in events if e["type"] == "progress"]
        if resume_too:
            out["resumed"] = str(build(pairs("resumed", resume=True), ws, run))
        before, t0 = len(submitted), time.time()
        settings = EvalSettings(model=str(model), adapters=(str(adapter),), data="st", samples=4, seed=5,
                                temperature=0.9, top_p=1.0, max_tokens=0, rows=2, detector="fast-detectgpt",
                                encoder="none", score_max_tokens=48, batch_size=2)
        out["eval"] = str(run_eval(settings, ws, run, out=ws.home / "eval-run").parent)
        out["eval_s"], out["eval_generated"] = round(time.time() - t0, 2), len(submitted) - before
        out["events"] = len(events)
    finally:
        Engine.submit = submit
    return out


if __name__ == "__main__":
    result = probe(*sys.argv[1:4], resume_too="--resume-too" in sys.argv)
    print("RESULT " + json.dumps(result), flush=True)
