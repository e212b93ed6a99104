"""One call of engine.train.train(...) with the settings in argv[1] (JSON), as tests/test_train_distributed.py
runs it under mlx.launch (and, through `probe_train`, in its own process as the one-process run).
Every rank prints, on one RESULT line, its metric events (the global values every rank gets), a
digest of its LoRA weights at the end (so the ranks' weights can be compared), and how the call
ended. With "stop_at", every rank sends itself SIGTERM at that step, as a cancel of the whole run
does; with "other_data_on": r, rank r trains on its rows in another order (another host's data)."""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from engine.adapters import layers as lora
from engine.distributed.world import world
from engine.errors import HumanizerError
from engine.events import Cancelled, NullRun
from engine.train import loop, train
from engine.train.setup import load_tokenizer
from tests.test_train import make_dpo, make_sft


def probe_train(args: dict) -> dict:
    w = world()
    tok = load_tokenizer(Path(args["model"]))
    data = make_sft(tok) if args["method"] == "sft" else make_dpo(tok)
    if args.get("other_data_on") == w.rank:
        data.train.reverse()
    out = {"rank": w.rank, "size": w.size, "metrics": [], "status": "done"}

    def listen(ev):
        if ev["type"] == "metric":
            out["metrics"].append([ev["step"], ev["values"]])
        if ev["type"] == "progress" and not ev.get("phase") and ev.get("step") == args.get("stop_at"):
            os.kill(os.getpid(), signal.SIGTERM)

    real_finish = loop._finish

    def finish(s):  # the weights this rank ends with, before the writer saves them
        weights = lora.trainable_weights(s.model)
        h = hashlib.sha256()
        for k in sorted(weights):
            h.update(k.encode() + np.array(weights[k]).tobytes())
        out["weights_sha"] = h.hexdigest()
        return real_finish(s)

    loop._finish = finish
    try:
        train(args["model"], data, args["method"], args["out"], run=NullRun([listen]), **args["kw"])
    except Cancelled:
        out["status"] = "cancelled"
    except HumanizerError as e:
        out.update(status="error", error=e.message)
    finally:
        loop._finish = real_finish
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(probe_train(json.loads(sys.argv[1]))), flush=True)
