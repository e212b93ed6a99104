"""The DPO reference: log-probs of every training pair under the reference (the same model
with the trainable term off), computed once before the first step (by shards, on several
ranks) and cached on disk by the writer, so a resumed run reuses them."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from engine.adapters import layers as lora
from engine.distributed.world import ONE, World, fill_rows, from_writer
from engine.train.batches import dpo_batch
from engine.train.checkpoints import RESUME_HINT, nbytes
from engine.train.losses import response_logps, row_sums
from engine.train.parallel import writer_does
from engine.workspace import disk_errors


def reference_logps(model, head, pairs, cfg, ckpt_dir: Path, base, parent, data_fp, run, w: World = ONE):
    """Sum of response log-probs and response token counts under the reference (trainable
    term off, no dropout) for every training pair: rows 0..n-1 chosen, n..2n-1 rejected.
    Computed once and cached in checkpoints/reference_logps.safetensors. On several ranks each
    computes its share of the pairs and all get all of them; the writer reads and writes the
    cache and the others get its values."""
    path = ckpt_dir / "reference_logps.safetensors"
    key = {"base": base["fingerprint"], "parent": (parent or {}).get("fingerprint") or "",
           "data": data_fp, "max_seq_length": str(cfg["max_seq_length"])}
    n = len(pairs)
    cached, found = writer_does(lambda: _cached(path, key, n), w, share=lambda got: got is not None)
    if found:
        run.log("reusing cached reference log-probs")
        zeros = mx.zeros(2 * n, mx.float32)
        return from_writer(cached or (zeros, zeros), w)
    t0 = time.perf_counter()
    bs = cfg["batch_size"]

    def compute(indices: list[int]) -> mx.array:
        """Rows [chosen sum, rejected sum, chosen count, rejected count] of these pairs."""
        out = np.zeros((len(indices), 4), np.float32)
        for i in range(0, len(indices), bs):
            chunk = [pairs[j] for j in indices[i:i + bs]]
            toks = dpo_batch(chunk, cfg["max_seq_length"])
            logp, rows = response_logps(model, head, *toks)
            s, c = row_sums(logp, rows, toks[0].shape[0])
            mx.eval(s, c)
            s, c = np.array(s), np.array(c)
            k = len(chunk)
            out[i:i + k] = np.stack([s[:k], s[k:], c[:k], c[k:]], axis=1)
            # this rank's share: the writer's progress stands for the others'
            run.progress(min(i + bs, len(indices)), len(indices), "reference log-probs", eta=None, phase="reference")
        return mx.array(out)

    model.eval()
    with lora.reference_mode(model):
        rows = fill_rows(n, compute, w)
    model.train()
    out = {"sum": mx.concatenate([rows[:, 0], rows[:, 1]]), "count": mx.concatenate([rows[:, 2], rows[:, 3]])}
    mx.eval(out)
    writer_does(lambda: _save(path, out, key), w, share=lambda _: None)
    run.log(f"reference log-probs for {n} pairs in {time.perf_counter() - t0:.1f}s (cached)")
    return out["sum"], out["count"]


def _cached(path: Path, key: dict, n: int):
    """(sums, counts) from the cache when it is this run's, else None."""
    if not path.is_file():
        return None
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        if all(meta.get(k) == v for k, v in key.items()) and arrays["sum"].shape[0] == 2 * n:
            return arrays["sum"], arrays["count"]
    except (OSError, ValueError, RuntimeError, KeyError):
        pass
    return None


def _save(path: Path, out: dict, key: dict) -> None:
    ckpt_dir = path.parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with disk_errors(path, nbytes(out), RESUME_HINT):
        fd, tmp = tempfile.mkstemp(prefix=".reference-", suffix=".safetensors", dir=ckpt_dir)
    os.close(fd)
    try:
        with disk_errors(path, nbytes(out), RESUME_HINT):
            mx.save_safetensors(tmp, out, metadata=key)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
