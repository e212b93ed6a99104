"""Per-request sampling on the host: one draw from a row's logits with its own random generator,
so a seeded request draws the same numbers whatever else runs beside it."""

from __future__ import annotations

import numpy as np

NUCLEUS_GUESS = 256  # candidates sorted first; the full vocabulary only when they don't reach top_p


def _nucleus_order(p: np.ndarray, top_p: float) -> np.ndarray:
    """Indices by descending probability, ties by index (a stable sort of -p), at least as
    far as the top_p nucleus reaches. Sorting a whole 50k vocabulary per row per step cost
    more than the decode step itself; the head holds the nucleus almost always, and every
    index tied with the head's last value is in it, so the prefix is the full sort's."""
    if len(p) > NUCLEUS_GUESS:
        cut = np.partition(p, len(p) - NUCLEUS_GUESS)[len(p) - NUCLEUS_GUESS]
        head = np.flatnonzero(p >= cut)
        order = head[np.lexsort((head, -p[head]))]
        if p[order].sum() >= top_p or len(order) == len(p):
            return order
    return np.argsort(-p, kind="stable")


def sample_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One draw from softmax(logits / temperature), restricted to the top_p nucleus."""
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = _nucleus_order(p, top_p)
        sp = p[order]
        keep = min(int(np.searchsorted(np.cumsum(sp), top_p)) + 1, len(sp))
        cand, probs = order[:keep], sp[:keep]
    else:
        cand, probs = None, p
    cum = np.cumsum(probs)
    j = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(probs) - 1)
    return int(cand[j]) if cand is not None else j
