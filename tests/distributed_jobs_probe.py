"""Run by tests/test_distributed_jobs.py, under mlx.launch or as one plain process: a dpo-pairs
build whose rewrites the tiny llama writes (and, with --resume-too, the resume of an interrupted
one), then an eval of the built dataset's held-out drafts scored by fast-detectgpt. Each rank
prints what it generated and scored; the writer also where the outputs are.

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
from engine.generate import Engine
from engine.workspace import Workspace

home, model, adapter = sys.argv[1:4]
ws = Workspace.open(Path(home))
w = world()
submitted = []
submit = Engine.submit


def counted(engine, prompt, adapter=None, params=None, **k):
    submitted.append(params.seed)
    return submit(engine, prompt, adapter, params, **k)


Engine.submit = counted


def pairs(output: str, resume: bool = False) -> BuildSettings:
    return BuildSettings(template="dpo-pairs", source="st", output=output, model=model, adapter=adapter,
                         rejected="closest", samples=2, limit=5, rows=2, temperature=0.9, top_p=1.0,
                         max_tokens=10, seed=5, resume=resume)


t0 = time.time()
out = {"rank": w.rank, "size": w.size}
out["pairs"] = str(build(pairs("pairs"), ws))
out["pairs_s"] = round(time.time() - t0, 2)
out["pairs_generated"] = len(submitted)
if "--resume-too" in sys.argv:
    out["resumed"] = str(build(pairs("resumed", resume=True), ws))
before, t0 = len(submitted), time.time()
settings = EvalSettings(model=model, adapters=(adapter,), data="st", samples=4, seed=5, temperature=0.9,
                        top_p=1.0, max_tokens=0, rows=2, detector="fast-detectgpt", encoder="none",
                        score_max_tokens=48, batch_size=2)
out["eval"] = str(run_eval(settings, ws, out=ws.home / "eval-run").parent)
out["eval_generated"] = len(submitted) - before
out["eval_s"] = round(time.time() - t0, 2)
print("RESULT " + json.dumps(out), flush=True)
