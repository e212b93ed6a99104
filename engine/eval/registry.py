"""Every detector by name, from DetectSettings: open one, calibrate one, list what exists.

    fast-detectgpt, binoculars   zero-shot, models resolved by engine.models.resolve_model;
                                 P(AI) from a calibration profile, attached when one exists
    classifier                   ours, trained by `humanizer detect train` (engine/eval/classifier.py)
    radar                        the reference's RoBERTa classifier (engine/eval/roberta.py)

Profiles live in `ws.home/detectors/`, one per detector and model(s), by default
`<detector>-<scorer>[+<sampler>].json` (model folder names); a profile fitted for other
models or settings is refused (engine/eval/calibrate.check_profile). Classifiers live in
`ws.home/detectors/NAME/classifier.json`.

Calibration reads a dataset's training split only (engine.eval.classifier.labelled_texts):
human = sft/train completions, AI = their drafts; the held-out split is never opened."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import HumanizerError
from engine.eval import calibrate
from engine.eval.classifier import detectors_dir, labelled_texts, list_classifiers, load_classifier
from engine.eval.detectors import SIGN_CONVENTION, Binoculars, FastDetectGPT, Progress, Scores
from engine.eval.settings import ZERO_SHOT, DetectSettings
from engine.events import NullRun, Run
from engine.workspace import Workspace


def label(name: str | None) -> str:
    """A model's name as it appears in a profile's file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name or "model")).strip("._") or "model"


def default_profile_path(ws: Workspace, description: dict) -> Path:
    """detectors/<detector>-<scorer>[+<sampler>].json for a zero-shot detector's describe()."""
    models = description.get("models", {})
    det = description["detector"]
    if det == "binoculars":
        names = [models["observer"]["name"], models["performer"]["name"]]
    else:
        names = [models["scorer"]["name"]]
        if not description.get("settings", {}).get("sampler_is_scorer", True):
            names.append(models["sampler"]["name"])
    return detectors_dir(ws) / (f"{det}-" + "+".join(label(n) for n in names) + ".json")


def profile_location(ws: Workspace, spec: str) -> Path:
    """--profile: a path (has a '/' or exists) or a name in detectors/ (.json added)."""
    path = Path(spec).expanduser()
    if "/" in spec or path.exists():
        return path
    return detectors_dir(ws) / (spec if spec.endswith(".json") else spec + ".json")


class Radar:
    """RADAR (engine/eval/roberta.py) as a Detector: score = the log-odds of its AI label,
    P(AI) = its own softmax probability (no profile)."""

    name = "radar"

    def __init__(self, classifier, max_tokens: int | None = None):
        self.clf = classifier
        if max_tokens:
            self.clf.max_tokens = min(self.clf.max_tokens, int(max_tokens))
        self.profile = None

    def describe(self) -> dict:
        from engine.adapters import model_fingerprint

        try:
            fp = model_fingerprint(self.clf.folder)
        except HumanizerError:
            fp = None
        folder = Path(self.clf.folder)
        return {"detector": self.name,
                "models": {"classifier": {"name": folder.name, "path": str(folder), "fingerprint": fp}},
                "settings": {"ai_label": self.clf.ai_label}, "max_tokens": self.clf.max_tokens,
                "sign": SIGN_CONVENTION + " (score = log-odds of the AI label)"}

    def score(self, texts: Sequence[str], batch_size: int = 8, progress: Progress | None = None) -> Scores:
        from engine.eval.encoder import tokenize

        if isinstance(texts, str):
            raise HumanizerError("score() takes a list of texts, not one string", "wrap it: [text]")
        texts = list(texts)
        n = len(texts)
        skipped = {i: "empty" for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()}
        kept = [i for i in range(n) if i not in skipped]
        score, p_ai = np.full(n, np.nan), np.full(n, np.nan)
        n_tokens, truncated = np.zeros(n, dtype=np.int64), []
        self.clf.batch_size = max(1, batch_size)
        chunk = self.clf.batch_size * 4
        if progress:
            progress(len(skipped), n)
        for s in range(0, len(kept), chunk):
            idx = kept[s:s + chunk]
            part = [texts[i] for i in idx]
            encs, _ = tokenize(self.clf.tokenizer, part, self.clf.max_tokens)
            logits = np.asarray(self.clf.logits(part), dtype=np.float64)
            z = logits - logits.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            ai = self.clf.ai_label
            others = np.delete(logp, ai, axis=1)
            log_not_ai = np.log(np.exp(others).sum(axis=1))
            for r, i in enumerate(idx):
                n_tokens[i] = len(encs[r].ids)
                if encs[r].overflowing:
                    truncated.append(i)
                score[i] = logp[r, ai] - log_not_ai[r]
                p_ai[i] = np.exp(logp[r, ai])
            if progress:
                progress(len(skipped) + s + len(idx), n)
        return Scores(detector=self.name, score=score, p_ai=p_ai, n_tokens=n_tokens, truncated=sorted(truncated),
                      skipped=dict(sorted(skipped.items())), max_tokens=self.clf.max_tokens)


def open_detector(settings: DetectSettings, ws: Workspace, run: Run = NullRun(), *, attach_profile: bool = True,
                  action: str = "score"):
    """The detector the settings name, its models loaded. A zero-shot detector gets its profile
    (--profile, else the default path when that file exists), checked against its models and
    settings; `detector.profile_path` says which file (None: uncalibrated)."""
    settings.check(action)
    max_tokens = settings.max_tokens or None
    if settings.detector in ZERO_SHOT:
        from engine.models import resolve_model

        scorer = resolve_model(settings.scorer, ws, run)
        other = resolve_model(settings.sampler, ws, run) if str(settings.sampler).strip() else None
        run.log(f"loading {settings.detector}: {scorer.name}" + (f" + {other.name}" if other else ""))
        if settings.detector == "fast-detectgpt":
            det = FastDetectGPT(scorer, other if other is not None and other.resolve() != scorer.resolve() else None,
                                max_tokens=max_tokens)
        else:
            det = Binoculars(scorer, other, perplexity_of=settings.perplexity_of, max_tokens=max_tokens)
        det.profile_path = None
        if attach_profile:
            path = profile_location(ws, settings.profile) if settings.profile else default_profile_path(
                ws, det.describe())
            if settings.profile or path.is_file():
                try:
                    det.profile = calibrate.load_profile(path, det)
                except HumanizerError as e:
                    if "no detector profile" in e.message:
                        raise
                    raise HumanizerError(f"{e.message} (the profile {path})", e.hint) from None
                det.profile_path = path
        return det
    if settings.detector == "classifier":
        det = load_classifier(ws, settings.name, settings.encoder or None, run)
    else:
        from engine.eval.roberta import load_roberta_classifier

        det = Radar(load_roberta_classifier(settings.radar, ws, run, batch_size=settings.batch()), max_tokens)
    det.profile_path = None
    return det


def calibrate_on_dataset(settings: DetectSettings, ws: Workspace, run: Run = NullRun()) -> Path:
    """Fit and save a zero-shot detector's profile on `settings.dataset`'s training split
    (human = sft/train completions, AI = their drafts). Returns the profile's path."""
    settings.check("calibrate")
    data = labelled_texts(ws, settings.dataset, "train", limit=settings.limit, seed=settings.seed, run=run)
    for what, texts in (("human", data.human), ("AI", data.ai)):
        if len(texts) < calibrate.MIN_PER_CLASS:
            raise HumanizerError(
                f"too few {what} texts in {data.info['dataset']}'s training split to calibrate: {len(texts)}, "
                f"at least {calibrate.MIN_PER_CLASS} needed", "build a bigger dataset (a few hundred rows)")
    det = open_detector(settings, ws, run, attach_profile=False, action="calibrate")
    total = len(data.human) + len(data.ai)
    run.log(f"calibrating {det.name} on {len(data.human)} human and {len(data.ai)} AI texts of {data.info['dataset']}")
    hs = det.score(data.human, settings.batch(), lambda d, t: run.progress(d, total, "scoring human texts"))
    ais = det.score(data.ai, settings.batch(),
                    lambda d, t: run.progress(len(data.human) + d, total, "scoring AI texts"))
    counts = {"human": hs.summary(), "ai": ais.summary()}
    for side, s in (("human", hs), ("AI", ais)):
        if s.n_truncated or s.skipped:
            run.log(f"{side}: {s.n_truncated} cut to {s.max_tokens} tokens, {len(s.skipped)} skipped")
    profile = calibrate.profile_from_scores(det.describe(), hs.score, ais.score, data.info, counts)
    path = profile_location(ws, settings.profile) if settings.profile else default_profile_path(ws, det.describe())
    calibrate.save_profile(profile, path)
    run.metric(0, auroc=profile.auroc, tpr_at_1pct_fpr=profile.tpr_at_1pct_fpr)
    run.artifact(path, kind="detector profile")
    return path


def list_profiles(ws: Workspace) -> list[dict]:
    """Every profile in detectors/ (what it is for, what it was fitted on, its AUROC), or an "error"."""
    out = []
    root = detectors_dir(ws)
    if not root.is_dir():
        return out
    for f in sorted(root.glob("*.json")):
        if f.name.startswith("."):
            continue
        try:
            p = calibrate.load_profile(f)
        except HumanizerError as e:
            out.append({"file": f.name, "path": str(f), "error": e.message})
            continue
        models = {role: (m or {}).get("name") for role, m in (p.scorer.get("models") or {}).items()}
        out.append({"file": f.name, "path": str(f), "detector": p.detector, "models": models,
                    "settings": p.scorer.get("settings", {}), "calibrated_on": p.calibrated_on,
                    "auroc": p.auroc, "tpr_at_1pct_fpr": p.tpr_at_1pct_fpr, "n_human": p.n_human, "n_ai": p.n_ai,
                    "created": p.created})
    return out


def list_detectors(ws: Workspace) -> dict:
    return {"profiles": list_profiles(ws), "classifiers": list_classifiers(ws)}

