"""Detection metrics over detector scores (higher = more AI) and the eval table's gap.

All functions refuse empty or non-finite input with a HumanizerError: a metric is
never computed over nothing. Pass `Scores.valid_scores()` (skipped texts left out)."""

from __future__ import annotations

import math

import numpy as np

from engine.errors import HumanizerError


def _side(values, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise HumanizerError(f"no {what} scores: the metric would be computed over nothing",
                             "check that the texts were scored (none empty or skipped)")
    if not np.all(np.isfinite(v)):
        raise HumanizerError(f"{int((~np.isfinite(v)).sum())} {what} score(s) are NaN or infinite",
                             "leave skipped texts out (Scores.valid_scores())")
    return v


def auroc(human_scores, ai_scores) -> float:
    """P(score of a random AI text > score of a random human text), ties counted half:
    the Mann-Whitney U of the AI scores over n_human * n_ai, from average ranks."""
    h, a = _side(human_scores, "human"), _side(ai_scores, "AI")
    allv = np.concatenate([h, a])
    uniq, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last of each tie group
    avg_rank = upper - (counts - 1) / 2.0
    ranks = avg_rank[inv]
    r_ai = ranks[len(h):].sum()
    u = r_ai - len(a) * (len(a) + 1) / 2.0
    return float(u / (len(h) * len(a)))


def threshold_at_fpr(human_scores, fpr: float = 0.01) -> float:
    """The decision threshold t (flag AI when score > t, strictly) that flags at most
    floor(fpr * n_human) human texts: the (k+1)-th largest human score, k = floor(fpr * n).
    Human scores tied with t are not flagged. With fewer than 1/fpr human texts k = 0 and
    t is the highest human score, so the realised FPR is 0 (never above fpr)."""
    if not 0.0 <= fpr < 1.0:
        raise HumanizerError(f"the false-positive rate must be in [0, 1), got {fpr}")
    h = np.sort(_side(human_scores, "human"))[::-1]
    k = int(math.floor(fpr * len(h) + 1e-9))
    return float(h[k])


def tpr_at_fpr(human_scores, ai_scores, fpr: float = 0.01) -> float:
    """Share of AI texts scored strictly above `threshold_at_fpr(human_scores, fpr)` (AI
    scores equal to the threshold count as not detected)."""
    t = threshold_at_fpr(human_scores, fpr)
    a = _side(ai_scores, "AI")
    return float((a > t).mean())


def gap_closed(p_source, p_choice, p_human, eps: float = 1e-3) -> float | None:
    """(P_source - P_choice) / (P_source - P_human): 1 = the rewrites read as human as
    the human references, 0 = no better than the source drafts. None (not inf or NaN)
    when |P_source - P_human| < eps (no gap to close) or any input is missing."""
    vals = (p_source, p_choice, p_human)
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    gap = float(p_source) - float(p_human)
    if abs(gap) < eps:
        return None
    return (float(p_source) - float(p_choice)) / gap


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for the mean of `values` (resampled with
    replacement, `n_boot` times, numpy Generator seeded with `seed`)."""
    v = _side(values, "input")
    if not 0.0 < level < 1.0:
        raise HumanizerError(f"the confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
