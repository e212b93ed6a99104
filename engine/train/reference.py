"""The DPO reference: log-probs of every training pair under the reference (the same model
with the trainable term off), computed once before the first step and cached on disk, so a
resumed run reuses them."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from engine.adapters import layers as lora
from engine.train.batches import dpo_batch
from engine.train.checkpoints import RESUME_HINT, nbytes
from engine.train.losses import response_logps, row_sums
from engine.workspace import disk_errors


def reference_logps(model, head, pairs, cfg, ckpt_dir: Path, base, parent, data_fp, run):
    """Sum of response log-probs and response token counts under the reference (trainable
    term off, no dropout) for every training pair: rows 0..n-1 chosen, n..2n-1 rejected.
    Computed once and cached in checkpoints/reference_logps.safetensors."""
    path = ckpt_dir / "reference_logps.safetensors"
    key = {"base": base["fingerprint"], "parent": (parent or {}).get("fingerprint") or "",
           "data": data_fp, "max_seq_length": str(cfg["max_seq_length"])}
    if path.is_file():
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
            if all(meta.get(k) == v for k, v in key.items()) and arrays["sum"].shape[0] == 2 * len(pairs):
                run.log("reusing cached reference log-probs")
                return arrays["sum"], arrays["count"]
        except (OSError, ValueError, RuntimeError, KeyError):
            pass
    t0 = time.perf_counter()
    model.eval()
    sums, counts = np.zeros(2 * len(pairs), np.float32), np.zeros(2 * len(pairs), np.float32)
    bs = cfg["batch_size"]
    n = len(pairs)
    with lora.reference_mode(model):
        for i in range(0, n, bs):
            chunk = pairs[i:i + bs]
            toks = dpo_batch(chunk, cfg["max_seq_length"])
            logp, rows = response_logps(model, head, *toks)
            s, c = row_sums(logp, rows, toks[0].shape[0])
            mx.eval(s, c)
            s, c = np.array(s), np.array(c)
            k = len(chunk)
            sums[i:i + k], sums[n + i:n + i + k] = s[:k], s[k:]
            counts[i:i + k], counts[n + i:n + i + k] = c[:k], c[k:]
            run.progress(min(i + bs, n), n, "reference log-probs", eta=None, phase="reference")
    model.train()
    out = {"sum": mx.array(sums), "count": mx.array(counts)}
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
    run.log(f"reference log-probs for {n} pairs in {time.perf_counter() - t0:.1f}s (cached)")
    return out["sum"], out["count"]
