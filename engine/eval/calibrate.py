"""Calibration profiles: P(AI) for a zero-shot detector, fitted on labelled texts.

A zero-shot score has no probability scale of its own, and published thresholds do not
transfer between scorer models (a 135M scorer puts human text below zero), so each
scorer model gets its own profile, fitted by `humanizer detect calibrate`:

    P(AI | score) = sigmoid(a * score + b)

a logistic regression fitted by Newton's method (IRLS) in plain numpy, with the two
classes weighted equally (so P(AI) = 0.5 means "even odds at an even prior", whatever
the counts of human and AI texts) and a small L2 penalty on `a`, which keeps the fit
finite when the calibration scores separate perfectly.

A profile records what it was fitted for (the detector's name, settings and every
model's fingerprint) and refuses to be used with anything else, plus what it was
fitted on (a free-form dict from the caller), the AUROC and TPR at 1% FPR on its own
calibration texts, and the class counts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import HumanizerError
from engine.eval import metrics
from engine.workspace import atomic_write_text

FORMAT = 1
MIN_PER_CLASS = 4
L2 = 1e-3  # on `a`, relative to the (equal) total weight of each class


@dataclass
class Profile:
    detector: str
    scorer: dict  # the detector's describe(): models (name, path, fingerprint), settings
    a: float
    b: float
    auroc: float
    tpr_at_1pct_fpr: float
    n_human: int
    n_ai: int
    calibrated_on: dict
    created: str
    score_stats: dict = field(default_factory=dict)  # mean/std of each class's scores
    counts: dict = field(default_factory=dict)  # skipped/truncated while scoring
    format: int = FORMAT

    def p_ai(self, scores) -> np.ndarray:
        """sigmoid(a * score + b); NaN stays NaN (a skipped text has no P(AI))."""
        s = np.asarray(scores, dtype=np.float64)
        z = self.a * s + self.b
        with np.errstate(over="ignore", invalid="ignore"):
            return np.where(z >= 0, 1.0 / (1.0 + np.exp(-z)), np.exp(z) / (1.0 + np.exp(z)))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def fit_logistic(scores, labels, l2: float = L2, iters: int = 100) -> tuple[float, float]:
    """(a, b) maximising the class-balanced log-likelihood of labels (1 = AI) under
    sigmoid(a * score + b), minus l2/2 * a^2 (per unit of class weight), by Newton steps."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    n1, n0 = y.sum(), (1 - y).sum()
    w = np.where(y == 1, 0.5 / n1, 0.5 / n0)  # each class weighs 1/2 in all
    X = np.stack([s, np.ones_like(s)], axis=1)
    theta = np.zeros(2)
    reg = np.array([l2, 0.0])
    for _ in range(iters):
        z = X @ theta
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        grad = X.T @ (w * (p - y)) + reg * theta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(reg) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-10 * (1 + np.abs(theta).max()):
            break
    return float(theta[0]), float(theta[1])


def _finite(values, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) < MIN_PER_CLASS:
        raise HumanizerError(
            f"too few {what} texts to calibrate: {len(v)} scored, at least {MIN_PER_CLASS} needed",
            "give more labelled texts of each class (a few hundred make a stable profile)")
    return v


def profile_from_scores(description: dict, human_scores, ai_scores, calibrated_on: dict,
                        counts: dict | None = None) -> Profile:
    """A profile from scores already computed (NaN = skipped, left out) by the detector
    that `description` (its describe()) names."""
    h = _finite(human_scores, "human")
    ai = _finite(ai_scores, "AI")
    s = np.concatenate([h, ai])
    y = np.concatenate([np.zeros(len(h)), np.ones(len(ai))])
    a, b = fit_logistic(s, y)
    return Profile(
        detector=description["detector"], scorer=description, a=a, b=b,
        auroc=metrics.auroc(h, ai), tpr_at_1pct_fpr=metrics.tpr_at_fpr(h, ai, 0.01),
        n_human=len(h), n_ai=len(ai), calibrated_on=dict(calibrated_on),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        score_stats={"human": {"mean": float(h.mean()), "std": float(h.std())},
                     "ai": {"mean": float(ai.mean()), "std": float(ai.std())}},
        counts=dict(counts or {}),
    )


def fit_profile(detector, human_texts: Sequence[str], ai_texts: Sequence[str], calibrated_on: dict,
                batch_size: int = 4, progress=None) -> Profile:
    """Score labelled texts with `detector` and fit its profile. Skipped texts (empty,
    too short) are left out and counted; truncated ones are counted."""
    if not human_texts or not ai_texts:
        raise HumanizerError(
            f"calibration needs human and AI texts (got {len(human_texts or [])} human, {len(ai_texts or [])} AI)",
            "give both labelled sets")
    hs = detector.score(list(human_texts), batch_size=batch_size, progress=progress)
    ais = detector.score(list(ai_texts), batch_size=batch_size, progress=progress)
    counts = {"human": hs.summary(), "ai": ais.summary()}
    return profile_from_scores(detector.describe(), hs.score, ais.score, calibrated_on, counts)


def save_profile(profile: Profile, path) -> Path:
    path = Path(path)
    atomic_write_text(path, profile.to_json() + "\n")
    return path


def check_profile(profile: Profile, detector) -> None:
    """Raise unless `profile` was fitted for this detector: same name, same settings, and
    the same model (by weight fingerprint) in every role."""
    mine = detector.describe()
    hint = (f"fit a profile for this scorer: humanizer detect calibrate --detector {mine['detector']} "
            "(published or other models' calibrations do not transfer)")
    if profile.detector != mine["detector"]:
        raise HumanizerError(f"this profile is for the {profile.detector} detector, not {mine['detector']}", hint)
    theirs = profile.scorer.get("models", {})
    for role, info in mine.get("models", {}).items():
        fp, pfp = info.get("fingerprint"), (theirs.get(role) or {}).get("fingerprint")
        if not fp or not pfp:
            raise HumanizerError(f"cannot tell which {role} model the profile was fitted on", hint)
        if fp != pfp:
            raise HumanizerError(
                f"this profile was calibrated for another {role} model: {(theirs.get(role) or {}).get('name')} "
                f"({pfp}), not {info.get('name')} ({fp})", hint)
    if set(theirs) != set(mine.get("models", {})):
        raise HumanizerError(f"this profile's models ({', '.join(sorted(theirs))}) are not this detector's", hint)
    if profile.scorer.get("settings", {}) != mine.get("settings", {}):
        raise HumanizerError(
            f"this profile was fitted with other {mine['detector']} settings: "
            f"{profile.scorer.get('settings')} vs {mine.get('settings')}", hint)


def load_profile(path, detector=None) -> Profile:
    """Read a profile; with `detector`, refuse one fitted for another detector or model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HumanizerError(f"no detector profile at {path}", "fit one with `humanizer detect calibrate`") from None
    except (OSError, ValueError) as e:
        raise HumanizerError(f"cannot read the detector profile {path}: {e}", "fit it again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HumanizerError(f"{path} is not a detector profile (format {FORMAT})", "fit it again")
    try:
        profile = Profile(**data)
    except TypeError as e:
        raise HumanizerError(f"{path} is not a detector profile: {e}", "fit it again") from None
    if detector is not None:
        check_profile(profile, detector)
    return profile


def apply(profile: Profile, scores) -> np.ndarray:
    """P(AI) per text for a detector's Scores (or a plain array of scores); NaN where skipped."""
    values = getattr(scores, "score", scores)
    p = profile.p_ai(values)
    if hasattr(scores, "p_ai"):
        scores.p_ai = p
    return p
