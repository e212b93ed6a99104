"""Padded batches and the data order: SFT and DPO batches with length masks, the
step -> batch mapping that makes a resumed run see the same data, the per-step seed, and
the fingerprint of the training rows."""

from __future__ import annotations

import hashlib

import mlx.core as mx
import numpy as np

PAD_TO = 8


def _pad(seqs: list[list[int]]) -> mx.array:
    width = max(len(s) for s in seqs)
    width = -(-width // PAD_TO) * PAD_TO
    arr = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return mx.array(arr)


def sft_batch(examples, max_len: int):
    """(tokens (B, L), lengths (B,), prompt_lens (B,)); loss on tokens[prompt_len:length]."""
    seqs = [list(e.tokens)[:max_len] for e in examples]
    return (
        _pad(seqs),
        mx.array([len(s) for s in seqs], mx.int32),
        mx.array([min(int(e.prompt_len), len(s)) for e, s in zip(examples, seqs)], mx.int32),
    )


def dpo_batch(pairs, max_len: int):
    """Chosen rows then rejected rows: prompt + response, as in `sft_batch`."""
    seqs, plens = [], []
    for which in ("chosen", "rejected"):
        for p in pairs:
            prompt, resp = list(p.prompt), list(getattr(p, which))
            prompt = prompt[-max(1, max_len - len(resp)):] if len(prompt) + len(resp) > max_len else prompt
            seq = (prompt + resp)[:max_len]
            seqs.append(seq)
            plens.append(min(len(prompt), len(seq)))
    return _pad(seqs), mx.array([len(s) for s in seqs], mx.int32), mx.array(plens, mx.int32)


class DataOrder:
    """Step -> indices of its batch. Each epoch is a permutation drawn from (seed, epoch),
    so the order is a pure function of the step: resuming at step s needs nothing else."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        g0 = step * self.batch_size
        return [int(self._perm(g // self.n)[g % self.n]) for g in range(g0, g0 + self.batch_size)]

    def state(self, step: int) -> dict:
        g = step * self.batch_size
        return {"seed": self.seed, "epoch": g // self.n, "position": g % self.n, "n": self.n}


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**32)


def data_fingerprint(items) -> str:
    h = hashlib.sha256()
    for it in items:
        if hasattr(it, "tokens"):
            h.update(np.asarray(it.tokens, np.int64).tobytes() + b"|%d;" % int(it.prompt_len))
        else:
            for part in (it.prompt, it.chosen, it.rejected):
                h.update(np.asarray(part, np.int64).tobytes() + b"|")
            h.update(b";")
    return "sha256:" + h.hexdigest()[:32]

