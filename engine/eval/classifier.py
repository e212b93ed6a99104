"""The `classifier` detector: our own supervised detector, a linear head on sentence
embeddings and cheap style features, trained on a dataset's training split.

Features of a text (the same code at training and scoring time):

- its MiniLM sentence embedding (engine/eval/encoder.py: all-MiniLM-L6-v2, mean-pooled and
  L2-normalised, 384 numbers; the text cut to the encoder's 256 word pieces, counted), and
- `STYLE_FEATURES`, computed on words (runs of letters/digits, inner apostrophes kept) and
  sentences (split after . ! ? followed by white space):
    log_words             log(1 + words)
    sentence_words_mean   mean sentence length in words
    sentence_words_std    standard deviation of the sentence lengths in words (0 for one sentence)
    word_chars_mean       mean word length in characters
    type_token_ratio      distinct / all lower-cased words among the first 100 words
    stopword_share        share of words in `STOPWORDS` (a small list of English function words)
    commas                commas per word
    semicolons_colons     ; and : per word
    dashes                em/en dashes and " - " / "--" per word
    parentheses           opening brackets per word
    quotes                quotation marks per word
    questions_exclaims    ? and ! per sentence

every feature standardised with the mean and standard deviation of the texts it was fitted on.

The head: the direction of a shrinkage Fisher discriminant, w = S^-1 (mean_AI - mean_human),
S = (1 - alpha) * (pooled within-class covariance) + alpha * (its mean variance) * I, with
alpha picked by stratified k-fold AUROC on the fitting texts; then P(AI) = sigmoid(a * w.x + b),
(a, b) fitted by engine.eval.calibrate.fit_logistic (class-balanced, as the zero-shot profiles
are). The result is a logistic-regression head on the features: logit = coef . x + intercept,
coef = a * w. Score = that logit (higher = more AI), P(AI) = its sigmoid.

Training texts: human = the dataset's sft/train "completion" (and dpo/train "chosen" where the
chosen side is human text, i.e. not a preference set), AI = the sft/train "draft". The held-out
split is refused and never opened. Duplicates are dropped; 20% of the texts (by source
document, a human passage and its draft together) are held back, the head is fitted on the
rest, and its AUROC and TPR at 1% FPR on the held-back texts are stored with it: the saved head
is the one those numbers describe.

Saved atomically as `ws.home/detectors/NAME/classifier.json`, with what it was trained on
(dataset, split, source, licence, counts) and the encoder (name, path, weight fingerprint,
licence); scoring with another encoder is refused."""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import HumanizerError
from engine.eval import metrics
from engine.eval.calibrate import fit_logistic
from engine.eval.detectors import SIGN_CONVENTION, Progress, Scores
from engine.events import NullRun, Run
from engine.workspace import Workspace, atomic_dir

FORMAT = 1
FILE = "classifier.json"
MIN_PER_CLASS = 10
HELD_BACK = 0.2
SHRINKAGE = (0.05, 0.2, 0.5, 0.8, 0.95)
TTR_WORDS = 100
STOPWORDS = frozenset(
    "a about after all also an and any are as at be been being but by can could did do does for from had has "
    "have he her his i if in into is it its itself may might more most not of on or our she should so some "
    "such than that the their them then there these they this those through to very was we were what when "
    "which while who will with would you".split())
STYLE_FEATURES = ("log_words", "sentence_words_mean", "sentence_words_std", "word_chars_mean", "type_token_ratio",
                  "stopword_share", "commas", "semicolons_colons", "dashes", "parentheses", "quotes",
                  "questions_exclaims")
NOT_HUMAN_TEMPLATES = ("judgements", "preferences")  # their "chosen" is a model's text someone picked

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")


def detectors_dir(ws: Workspace) -> Path:
    return ws.home / "detectors"


# --- labelled texts of a dataset's training split ------------------------------------------------


@dataclass
class Labelled:
    """Human and AI texts with the group (source document) each came from."""

    human: list[str] = field(default_factory=list)
    ai: list[str] = field(default_factory=list)
    human_groups: list[str] = field(default_factory=list)
    ai_groups: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def dataset_folder(ws: Workspace, spec: str) -> Path:
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no dataset given", "pass --dataset NAME (humanizer data list shows them)")
    path = Path(text).expanduser()
    if "heldout" in path.name.lower() and (path.suffix or path.is_file()):
        raise HumanizerError(f"{path} is a held-out split: it is for evaluation only",
                             "detectors train and calibrate on a dataset's training split; pass the dataset's name")
    if path.is_file():
        raise HumanizerError(f"{path} is a file, not a dataset", "pass a workspace dataset name or its folder")
    if path.is_dir():
        return path
    if "/" not in text and (ws.datasets_dir / text).is_dir():
        return ws.datasets_dir / text
    raise HumanizerError(f"no dataset named {text!r}",
                         "see `humanizer data list`; build one with `humanizer data build`")


def labelled_texts(ws: Workspace, dataset: str, split: str = "train", limit: int = 0, seed: int = 0,
                   run: Run = NullRun()) -> Labelled:
    """Human and AI texts of `dataset`'s training split (see the module docstring). Only
    manifest.json, sft/train.jsonl and dpo/train.jsonl are opened; the held-out split is
    refused. `limit` keeps at most that many texts of each class (a seeded pick), 0 all."""
    from engine.data.catalog import read_part

    if split != "train":
        if "held" in str(split).lower():
            raise HumanizerError("the held-out split is for evaluation only: detectors never train or calibrate on it",
                                 "use the dataset's training split (the default)")
        raise HumanizerError(f"unknown split {split!r}: detectors train and calibrate on 'train'")
    folder = dataset_folder(ws, dataset)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    template = str(manifest.get("template") or "")
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    parts = [("sft/train", "completion", "draft")]
    if template not in NOT_HUMAN_TEMPLATES:
        parts.append(("dpo/train", "chosen", "draft"))
    rows: list[tuple[str, str | None, str | None]] = []  # (group, human, ai)
    bad: list[str] = []
    read = []
    for part, human_key, ai_key in parts:
        if not (folder / f"{part}.jsonl").is_file():
            continue
        found, errors = read_part(folder, part, limit=10**9)
        read.append(part)
        bad += errors
        for n, r in enumerate(found, 1):
            group = str(r.get("source_id") or r.get("key") or f"{part}:{n}")
            h, a = r.get(human_key), r.get(ai_key)
            rows.append((group, h if isinstance(h, str) and h.strip() else None,
                         a if isinstance(a, str) and a.strip() else None))
    if not read:
        raise HumanizerError(f"{folder} has no training split (sft/train.jsonl)",
                             "build one with `humanizer data build` (style-transfer or paired)")
    for line in bad[:5]:
        run.log(f"skipped {line}")
    out = Labelled()
    seen: set[str] = set()
    for group, h, a in rows:
        for text, texts, groups in ((h, out.human, out.human_groups), (a, out.ai, out.ai_groups)):
            if text is None or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            groups.append(group)
    if limit:
        for texts, groups in ((out.human, out.human_groups), (out.ai, out.ai_groups)):
            if len(texts) > limit:
                keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
                texts[:] = [texts[i] for i in keep]
                groups[:] = [groups[i] for i in keep]
    out.info = {
        "dataset": folder.name, "path": str(folder), "split": split, "template": template or None,
        "source": source.get("name") or source.get("spec"), "licence": source.get("licence"),
        "parts": read, "human": " + ".join(f"{p} {k}" for p, k, _ in parts if p in read),
        "ai": " + ".join(f"{p} {k}" for p, _, k in parts if p in read),
        "rows": len(rows), "limit": limit or None, "bad_lines": len(bad),
        "n_human": len(out.human), "n_ai": len(out.ai),
    }
    return out


# --- features --------------------------------------------------------------------------------------


def words_of(text: str) -> list[str]:
    return _WORD.findall(text)


def style_features(text: str) -> np.ndarray:
    """The STYLE_FEATURES of one text (which must have at least one word)."""
    words = words_of(text)
    n = max(len(words), 1)
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if words_of(s)] or [text]
    lengths = np.array([len(words_of(s)) for s in sentences], dtype=np.float64)
    lower = [w.lower() for w in words]
    head = lower[:TTR_WORDS]
    dashes = text.count("—") + text.count("–") + text.count(" - ") + text.count("--")
    quotes = sum(text.count(q) for q in ('"', "“", "”", "«", "»"))
    return np.array([
        math.log1p(len(words)),
        lengths.mean(),
        lengths.std(),
        sum(len(w) for w in words) / n,
        len(set(head)) / max(len(head), 1),
        sum(w in STOPWORDS for w in lower) / n,
        text.count(",") / n,
        (text.count(";") + text.count(":")) / n,
        dashes / n,
        (text.count("(") + text.count("[")) / n,
        quotes / n,
        (text.count("?") + text.count("!")) / len(sentences),
    ], dtype=np.float64)


@dataclass
class Featurized:
    X: np.ndarray  # (kept, features) float64, unstandardised
    kept: list[int]  # input index of each row of X
    n_tokens: np.ndarray  # (n,) word pieces the encoder read (0 where skipped)
    truncated: list[int]
    skipped: dict[int, str]


def featurize(encoder, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> Featurized:
    """Embedding + style features of every text that has words; the others are skipped with a
    reason. Texts longer than the encoder's limit are cut (counted in `truncated`)."""
    from engine.eval.encoder import tokenize

    if isinstance(texts, str):
        raise HumanizerError("score() takes a list of texts, not one string", "wrap it: [text]")
    texts = list(texts)
    skipped: dict[int, str] = {}
    kept: list[int] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            skipped[i] = "empty"
        elif not words_of(t):
            skipped[i] = "no words"
        else:
            kept.append(i)
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    truncated: list[int] = []
    dim = encoder.dim + len(STYLE_FEATURES)
    X = np.zeros((len(kept), dim), dtype=np.float64)
    if progress:
        progress(len(skipped), len(texts))
    chunk = max(1, batch_size) * 4
    encoder.batch_size = max(1, batch_size)
    for s in range(0, len(kept), chunk):
        idx = kept[s:s + chunk]
        part = [texts[i] for i in idx]
        encs, _ = tokenize(encoder.tokenizer, part, encoder.max_tokens)
        for i, e in zip(idx, encs):
            n_tokens[i] = len(e.ids)
            if e.overflowing:
                truncated.append(i)
        X[s:s + len(idx), :encoder.dim] = encoder.embed(part)
        X[s:s + len(idx), encoder.dim:] = np.stack([style_features(t) for t in part])
        if progress:
            progress(len(skipped) + s + len(idx), len(texts))
    return Featurized(X, kept, n_tokens, sorted(truncated), skipped)


# --- the head ----------------------------------------------------------------------------------------


def _standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)


def _direction(Z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Shrinkage Fisher discriminant direction on standardised features Z (labels 1 = AI)."""
    z0, z1 = Z[y == 0], Z[y == 1]
    m0, m1 = z0.mean(axis=0), z1.mean(axis=0)
    c0, c1 = z0 - m0, z1 - m1
    cov = 0.5 * (c0.T @ c0) / len(z0) + 0.5 * (c1.T @ c1) / len(z1)
    d = Z.shape[1]
    target = np.trace(cov) / d or 1.0
    S = (1 - alpha) * cov + alpha * target * np.eye(d)
    return np.linalg.solve(S, m1 - m0)


def _pick_shrinkage(Z: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, dict]:
    """alpha with the best mean AUROC over stratified folds (ties: the larger alpha)."""
    k = int(min(5, (y == 0).sum(), (y == 1).sum()))
    if k < 2:
        return 0.5, {}
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(y), dtype=np.int64)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        folds[rng.permutation(idx)] = np.arange(len(idx)) % k
    results = {}
    for alpha in SHRINKAGE:
        aucs = []
        for f in range(k):
            fit, val = folds != f, folds == f
            w = _direction(Z[fit], y[fit], alpha)
            s = Z[val] @ w
            aucs.append(metrics.auroc(s[y[val] == 0], s[y[val] == 1]))
        results[alpha] = float(np.mean(aucs))
    best = max(SHRINKAGE, key=lambda a: (results[a], a))
    return best, {str(a): round(v, 4) for a, v in results.items()}


def fit_head(X: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """The head (see the module docstring) as a JSON-ready dict."""
    mean, std = _standardizer(X)
    Z = (X - mean) / std
    alpha, cv = _pick_shrinkage(Z, y, seed)
    w = _direction(Z, y, alpha)
    s = Z @ w
    spread = s.std()
    if spread > 0:
        w, s = w / spread, s / spread
    a, b = fit_logistic(s, y)
    return {"kind": "shrinkage Fisher discriminant direction, scaled by calibrate.fit_logistic",
            "shrinkage": alpha, "cv_auroc": cv, "scale": a, "mean": mean.tolist(), "std": std.tolist(),
            "coef": (a * w).tolist(), "intercept": b}


def head_logits(head: dict, X: np.ndarray) -> np.ndarray:
    mean, std = np.asarray(head["mean"]), np.asarray(head["std"])
    return ((X - mean) / std) @ np.asarray(head["coef"]) + float(head["intercept"])


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-z)), np.exp(z) / (1.0 + np.exp(z)))


# --- the encoder ---------------------------------------------------------------------------------------


def open_encoder(spec, ws: Workspace, run: Run = NullRun()):
    """A SentenceEncoder: as given (an object with embed()), a folder / workspace model / repo id,
    or (None / "") all-MiniLM-L6-v2 pulled into the workspace."""
    from engine.eval.encoder import load_encoder, pull_encoder

    if spec is not None and hasattr(spec, "embed"):
        return spec
    if spec is None or not str(spec).strip():
        spec = pull_encoder(ws, run)
    return load_encoder(spec, ws, run)


def encoder_identity(encoder) -> dict:
    from engine.adapters import model_fingerprint
    from engine.eval.encoder import MINILM, transformer_folder

    root = Path(encoder.folder)
    try:
        fingerprint = model_fingerprint(transformer_folder(root))
    except HumanizerError:
        fingerprint = None  # pytorch_model.bin only
    licence, repo = None, None
    try:
        src = json.loads((root / "source.json").read_text(encoding="utf-8"))
        licence, repo = src.get("license") or src.get("licence"), src.get("hf_repo")
    except (OSError, ValueError):
        pass
    if licence is None and root.name == MINILM["name"]:
        licence, repo = MINILM["license"], MINILM["hf_repo"]
    return {"name": root.name, "path": str(root), "fingerprint": fingerprint,
            "license": licence or "unknown: see the model's card", "hf_repo": repo,
            "max_tokens": int(encoder.max_tokens), "dim": int(encoder.dim)}


# --- the detector --------------------------------------------------------------------------------------


class Classifier:
    """A trained classifier (classifier.json) with its encoder: the Detector interface."""

    name = "classifier"

    def __init__(self, record: dict, encoder, path: Path | None = None):
        self.record, self.encoder, self.path = record, encoder, path
        self.head = record["head"]
        self.profile = None  # P(AI) is the head's own
        if len(self.head["coef"]) != encoder.dim + len(STYLE_FEATURES):
            raise HumanizerError(f"classifier {record.get('name')} expects {len(self.head['coef'])} features, "
                                 f"its encoder gives {encoder.dim + len(STYLE_FEATURES)}",
                                 "use the encoder it was trained with, or train it again")

    @property
    def max_tokens(self) -> int:
        return int(self.encoder.max_tokens)

    def describe(self) -> dict:
        enc = self.record["encoder"]
        return {"detector": self.name,
                "models": {"encoder": {k: enc.get(k) for k in ("name", "path", "fingerprint")}},
                "settings": {"name": self.record.get("name"),
                             "trained_on": (self.record.get("trained_on") or {}).get("dataset")},
                "max_tokens": self.max_tokens, "sign": SIGN_CONVENTION + " (score = the head's logit)"}

    def score(self, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> Scores:
        f = featurize(self.encoder, texts, batch_size, progress)
        n = len(f.n_tokens)
        score = np.full(n, np.nan)
        if f.kept:
            score[f.kept] = head_logits(self.head, f.X)
        p = sigmoid(score)
        return Scores(detector=self.name, score=score, p_ai=p, n_tokens=f.n_tokens, truncated=f.truncated,
                      skipped=dict(sorted(f.skipped.items())), max_tokens=self.max_tokens)


def classifier_path(ws: Workspace, name: str) -> Path:
    return detectors_dir(ws) / name / FILE


def list_classifiers(ws: Workspace) -> list[dict]:
    """Every trained classifier's record without its weights (unreadable ones with an "error")."""
    out = []
    root = detectors_dir(ws)
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        f = d / FILE
        if not d.is_dir() or d.name.startswith(".") or not f.is_file():
            continue
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            rec = {k: v for k, v in rec.items() if k != "head"}
        except (OSError, ValueError) as e:
            rec = {"name": d.name, "error": f"cannot read {f}: {e}"}
        out.append({**rec, "path": str(f)})
    return out


def load_classifier(ws: Workspace, name: str = "", encoder=None, run: Run = NullRun()) -> Classifier:
    """A trained classifier by name (the only one when `name` is empty) with its encoder: the
    one recorded (its folder, or MiniLM pulled again) unless `encoder` is given; an encoder
    with other weights than the recorded one is refused."""
    if not name:
        found = [c["name"] for c in list_classifiers(ws) if "error" not in c]
        if len(found) != 1:
            raise HumanizerError("which classifier? " + (f"there are {len(found)}: {', '.join(found)}" if found
                                                         else "none is trained yet"),
                                 "pass --name NAME" if found else
                                 "train one: humanizer detect train --dataset NAME --name NAME")
        name = found[0]
    path = classifier_path(ws, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HumanizerError(f"no classifier named {name!r} ({path})",
                             "see `humanizer detect list`; train one with `humanizer detect train`") from None
    except (OSError, ValueError) as e:
        raise HumanizerError(f"cannot read {path}: {e}", "train it again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "head" not in record:
        raise HumanizerError(f"{path} is not a classifier (format {FORMAT})", "train it again")
    want = record.get("encoder") or {}
    if encoder is None or (isinstance(encoder, str) and not encoder.strip()):
        from engine.eval.encoder import MINILM

        recorded = Path(want.get("path") or "")
        if want.get("path") and recorded.is_dir():
            encoder = str(recorded)
        elif want.get("name") == MINILM["name"]:
            encoder = None  # pulled again
        else:
            raise HumanizerError(f"classifier {name} was trained with the encoder {want.get('name')} at "
                                 f"{want.get('path')}, which is gone",
                                 "pass --encoder FOLDER with that same model")
    enc = open_encoder(encoder, ws, run)
    have = encoder_identity(enc)
    if want.get("fingerprint") and have["fingerprint"] and want["fingerprint"] != have["fingerprint"]:
        raise HumanizerError(f"classifier {name} was trained on the encoder {want.get('name')} "
                             f"({want['fingerprint']}), not {have['name']} ({have['fingerprint']})",
                             "score with the encoder it was trained with, or train it again on this one")
    return Classifier(record, enc, path)


def _held_back(groups: list[str], labels: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """Boolean mask of the held-back texts: whole groups (source documents) when there are
    at least 5 with both classes, else single texts, stratified; about HELD_BACK of each class."""
    rng = random.Random(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    both = [g for g, idx in members.items() if {int(labels[i]) for i in idx} == {0, 1}]
    mask = np.zeros(len(labels), dtype=bool)
    if len(both) >= 5:
        order = sorted(members)
        rng.shuffle(order)
        target = HELD_BACK * len(labels)
        for g in order:
            if mask.sum() >= target:
                break
            mask[members[g]] = True
        ok = all(2 <= (mask & (labels == c)).sum() <= (labels == c).sum() - 2 for c in (0, 1))
        if ok:
            return mask, "source document"
        mask[:] = False
    for c in (0, 1):
        idx = list(np.flatnonzero(labels == c))
        rng.shuffle(idx)
        take = max(2, int(round(HELD_BACK * len(idx))))
        mask[idx[:take]] = True
    return mask, "text"


def train_classifier(ws: Workspace, dataset: str, name: str, run: Run = NullRun(), *, encoder=None,
                     limit: int = 0, seed: int = 0, batch_size: int = 32) -> Path:
    """Train the classifier NAME on `dataset`'s training split; returns its classifier.json."""
    from engine.eval.settings import NAME_RE

    if not NAME_RE.match(name or "") or name.lower().endswith(".json"):
        raise HumanizerError(f"{name!r} is not a classifier name",
                             "use letters, digits, '.', '_' or '-', not ending in .json")
    data = labelled_texts(ws, dataset, "train", limit=limit, seed=seed, run=run)
    for what, texts in (("human", data.human), ("AI", data.ai)):
        if len(texts) < MIN_PER_CLASS:
            raise HumanizerError(
                f"too few {what} texts in {data.info['dataset']}'s training split to train a classifier: "
                f"{len(texts)}, at least {MIN_PER_CLASS} needed",
                "build a bigger dataset (a few hundred rows make a useful classifier)")
    run.log(f"{data.info['dataset']}: {len(data.human)} human and {len(data.ai)} AI texts from {data.info['parts']}")
    enc = open_encoder(encoder, ws, run)
    texts = data.human + data.ai
    labels = np.array([0] * len(data.human) + [1] * len(data.ai))
    groups = data.human_groups + data.ai_groups
    feats = featurize(enc, texts, batch_size,
                      lambda done, total: run.progress(done, total, "embedding texts"))
    y = labels[feats.kept]
    g = [groups[i] for i in feats.kept]
    for c, what in ((0, "human"), (1, "AI")):
        if (y == c).sum() < MIN_PER_CLASS:
            raise HumanizerError(f"too few {what} texts with words: {(y == c).sum()}, at least {MIN_PER_CLASS} needed",
                                 "build a bigger dataset")
    held, split_by = _held_back(g, y, seed)
    head = fit_head(feats.X[~held], y[~held], seed)
    s_fit = head_logits(head, feats.X[~held])
    s_back = head_logits(head, feats.X[held])
    h_back, a_back = s_back[y[held] == 0], s_back[y[held] == 1]
    evaluation = {
        "held_back_share": HELD_BACK, "split_by": split_by,
        "auroc": metrics.auroc(h_back, a_back), "tpr_at_1pct_fpr": metrics.tpr_at_fpr(h_back, a_back, 0.01),
        "n_human": int(len(h_back)), "n_ai": int(len(a_back)),
        "fit_auroc": metrics.auroc(s_fit[y[~held] == 0], s_fit[y[~held] == 1]),
    }
    run.metric(0, auroc=evaluation["auroc"], tpr_at_1pct_fpr=evaluation["tpr_at_1pct_fpr"])
    skipped: dict[str, int] = {}
    for r in feats.skipped.values():
        skipped[r] = skipped.get(r, 0) + 1
    record = {
        "format": FORMAT, "detector": "classifier", "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trained_on": {**data.info, "counts": {
            "human": int((y == 0).sum()), "ai": int((y == 1).sum()),
            "fit": {"human": int((y[~held] == 0).sum()), "ai": int((y[~held] == 1).sum())},
            "held_back": {"human": int(len(h_back)), "ai": int(len(a_back))},
            "skipped": skipped, "truncated": len(feats.truncated)}},
        "evaluation": evaluation,
        "encoder": encoder_identity(enc),
        "features": {"embedding": int(enc.dim), "style": list(STYLE_FEATURES),
                     "note": "standardised; see engine/eval/classifier.py"},
        "head": head,
    }
    final = detectors_dir(ws) / name
    if (final / FILE).is_file():
        run.log(f"replacing the classifier {name}")
    with atomic_dir(final) as tmp:
        (tmp / FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    path = final / FILE
    run.artifact(path, kind="classifier")
    run.log(f"classifier {name}: AUROC {evaluation['auroc']:.3f}, TPR at 1% FPR {evaluation['tpr_at_1pct_fpr']:.3f} "
            f"on {len(h_back)} human + {len(a_back)} AI held-back texts")
    return path
