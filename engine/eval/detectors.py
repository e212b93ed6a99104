"""Zero-shot detectors in MLX: Fast-DetectGPT and Binoculars, behind one small interface.

Every detector takes texts and returns `Scores`: one score per text and, when a
calibration profile is attached (`detector.profile`, see engine/eval/calibrate.py),
one P(AI) per text.

Sign convention (one for every detector): **a higher score means more likely AI**.
Fast-DetectGPT's sampling discrepancy already points that way; Binoculars' B is lower
for machine text, so its score is -B (B itself is kept in `Scores.raw`).

Tokens: each text is tokenized once with the scorer's tokenizer (`tokenizer.encode`,
special tokens as the tokenizer is configured to add them). Position t of the score is
the prediction of token t from tokens < t, for t = 1..n-1: the first token is context
only, as in both papers' code. A text longer than the models' context is cut to its
first `max_tokens` tokens and counted in `Scores.truncated`; an empty or whitespace-only
text, or one of fewer than 2 tokens, is skipped with a reason (`Scores.skipped`) and
gets NaN, never a score of zero.

Batching: texts are sorted by length and run `batch_size` at a time, right-padded. The
models are causal, so padding after a text never changes its logits; the statistics
are then taken over each text's own positions only. One (batch, length, vocab) float32
logits array per model is materialised per batch, and the per-position statistics are
computed one row at a time from it. Models are loaded with `engine.adapters.layers.load_model`,
which on the CPU backend dequantizes to float32 (fast with OpenBLAS preloaded), as
training does.

This module imports no Textual or Rich code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import mlx.core as mx
import numpy as np

from engine.errors import HumanizerError

SIGN_CONVENTION = "higher score = more likely AI"
DEFAULT_CONTEXT = 2048  # when a model's config names no context length
MIN_TOKENS = 2  # one token of context, at least one token scored

Progress = Callable[[int, int], None]  # (texts done, texts total)


@dataclass
class Scores:
    """A detector's verdict on a list of texts, aligned with the input order.

    score:     (n,) float64, higher = more likely AI; NaN where the text was skipped.
    p_ai:      (n,) float64 P(AI) from the attached calibration profile (NaN where
               skipped), or None when the detector is uncalibrated.
    n_tokens:  (n,) int, tokens the text was scored on (after truncation); 0 if skipped.
    truncated: indices of texts cut to the context (counted, still scored).
    skipped:   index -> reason ("empty", "fewer than 2 tokens", ...), not scored.
    raw:       (n,) the detector's native statistic where it differs from `score`
               (Binoculars' B), else None."""

    detector: str
    score: np.ndarray
    p_ai: np.ndarray | None = None
    n_tokens: np.ndarray | None = None
    truncated: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    raw: np.ndarray | None = None
    max_tokens: int | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def n_truncated(self) -> int:
        return len(self.truncated)

    @property
    def scored(self) -> np.ndarray:
        """Boolean mask of the texts that have a score."""
        return np.isfinite(self.score)

    def valid_scores(self) -> np.ndarray:
        """The scores of the scored texts only (what metrics take)."""
        return self.score[self.scored]

    def valid_p_ai(self) -> np.ndarray:
        if self.p_ai is None:
            raise HumanizerError(f"{self.detector} is not calibrated: no P(AI)",
                                 "fit a profile with `humanizer detect calibrate` and load it")
        return self.p_ai[self.scored]

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for r in self.skipped.values():
            reasons[r] = reasons.get(r, 0) + 1
        return {"detector": self.detector, "texts": len(self), "scored": int(self.scored.sum()),
                "truncated": self.n_truncated, "max_tokens": self.max_tokens, "skipped": reasons}


@runtime_checkable
class Detector(Protocol):
    """Texts in; per-text score (higher = more AI) and P(AI) out; batched."""

    name: str
    profile: object | None  # a calibrate.Profile, attached after load_profile() checked it

    def describe(self) -> dict:
        """{"detector", "models": {role: {"name", "path", "fingerprint"}}, "settings", "max_tokens"}.
        A calibration profile must match "detector", every role's fingerprint, and "settings"."""
        ...

    def score(self, texts: Sequence[str], batch_size: int = 4, progress: Progress | None = None) -> Scores:
        ...


# --- models ---------------------------------------------------------------------------------


class LM:
    """A causal LM and its tokenizer, with where it came from (name, path, fingerprint)."""

    def __init__(self, model, tokenizer, info: dict | None = None, context: int | None = None):
        from engine.adapters.layers import base_identity

        self.model = model
        self.tokenizer = tokenizer
        self.info = dict(info or base_identity(model))
        self.context = int(context or _context_of(model, self.info.get("path")))

    @classmethod
    def load(cls, spec) -> "LM":
        """An LM from an MLX model folder (dequantized float32 on CPU), or an LM as is."""
        if isinstance(spec, LM):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2:
            return cls(*spec)
        from engine.adapters.layers import load_model

        folder = Path(spec)
        if not (folder / "config.json").is_file():
            raise HumanizerError(f"no model folder at {folder}",
                                 "give a local MLX model folder (resolve names with engine.models first)")
        return cls(*load_model(folder))

    @property
    def fingerprint(self) -> str | None:
        return self.info.get("fingerprint")

    def describe(self) -> dict:
        return {"name": self.info.get("name"), "path": self.info.get("path"),
                "fingerprint": self.fingerprint, "context": self.context}

    def vocab(self) -> dict:
        return dict(self.tokenizer.get_vocab())

    def pad_id(self) -> int:
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(self.tokenizer, attr, None)
            if isinstance(v, int):
                return v
        return 0

    def logits(self, batch: mx.array) -> mx.array:
        return self.model(batch).astype(mx.float32)


def _context_of(model, path) -> int:
    args = getattr(model, "args", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "context_length"):
        v = getattr(args, key, None)
        if isinstance(v, int) and v > 0:
            return v
    if path:
        try:
            cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "context_length"):
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return cfg[key]
    return DEFAULT_CONTEXT


def require_shared_tokenizer(a: LM, b: LM, roles: tuple[str, str]) -> None:
    """Refuse two models whose tokenizers differ: their per-token distributions would be
    over different vocabularies and the statistics would compare unrelated tokens."""
    va, vb = a.vocab(), b.vocab()
    if va == vb:
        return
    diff = sum(1 for k, v in va.items() if vb.get(k) != v) + sum(1 for k in vb if k not in va)
    raise HumanizerError(
        f"the {roles[0]} ({a.info.get('name')}) and the {roles[1]} ({b.info.get('name')}) do not share a "
        f"tokenizer ({len(va)} vs {len(vb)} tokens, {diff} entries differ)",
        "pick two models of one family with the same tokenizer (e.g. a base model and its instruct tune)")


# --- shared batching ------------------------------------------------------------------------


@dataclass
class _Prepared:
    ids: dict[int, list[int]]  # index -> token ids (truncated), only for texts to score
    truncated: list[int]
    skipped: dict[int, str]


def _prepare(texts: Sequence[str], lm: LM, max_tokens: int) -> _Prepared:
    if isinstance(texts, str):
        raise HumanizerError("score() takes a list of texts, not one string", "wrap it: [text]")
    ids, truncated, skipped = {}, [], {}
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            skipped[i] = "empty"
            continue
        toks = list(lm.tokenizer.encode(text))
        if len(toks) > max_tokens:
            toks = toks[:max_tokens]
            truncated.append(i)
        if len(toks) < MIN_TOKENS:
            skipped[i] = f"fewer than {MIN_TOKENS} tokens"
            continue
        ids[i] = toks
    return _Prepared(ids, truncated, skipped)


def _batches(ids: dict[int, list[int]], batch_size: int):
    if batch_size < 1:
        raise HumanizerError(f"batch size must be at least 1, got {batch_size}")
    order = sorted(ids, key=lambda i: -len(ids[i]))
    for s in range(0, len(order), batch_size):
        yield order[s:s + batch_size]


def _padded(ids: dict[int, list[int]], rows: list[int], pad: int) -> mx.array:
    width = max(len(ids[i]) for i in rows)
    return mx.array([ids[i] + [pad] * (width - len(ids[i])) for i in rows], dtype=mx.int32)


def _log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def _run(texts, lm: LM, max_tokens: int, batch_size: int, progress: Progress | None,
         models: list[LM], per_row: Callable[[list[mx.array], mx.array], tuple]) -> tuple[_Prepared, dict]:
    """Tokenize, batch, run every model in `models` on each batch, and call
    per_row([logits (m, V) per model], labels (m,)) for each text's m = n-1 positions.
    Returns the preparation and index -> per_row's numpy result."""
    prep = _prepare(texts, lm, max_tokens)
    out, done, total = {}, 0, len(texts)
    if progress:
        progress(len(prep.skipped), total)
    for rows in _batches(prep.ids, batch_size):
        x = _padded(prep.ids, rows, lm.pad_id())
        logits = [m.logits(x)[:, :-1, :] for m in models]
        vocab = min(lg.shape[-1] for lg in logits)  # a padded embedding row is never a real token
        logits = [lg[..., :vocab] if lg.shape[-1] != vocab else lg for lg in logits]
        mx.eval(*logits)
        for r, i in enumerate(rows):
            m = len(prep.ids[i]) - 1
            labels = x[r, 1:m + 1]
            out[i] = per_row([lg[r, :m] for lg in logits], labels)
        done += len(rows)
        if progress:
            progress(len(prep.skipped) + done, total)
    return prep, out


def _scores(name: str, n: int, prep: _Prepared, values: dict[int, float], max_tokens: int,
            profile, raw: dict[int, float] | None = None) -> Scores:
    score = np.full(n, np.nan)
    ntok = np.zeros(n, dtype=np.int64)
    skipped = dict(prep.skipped)
    for i, v in values.items():
        if np.isfinite(v):
            score[i] = v
            ntok[i] = len(prep.ids[i])
        else:
            skipped[i] = "undefined score (zero variance or zero cross-entropy)"
    raw_arr = None
    if raw is not None:
        raw_arr = np.full(n, np.nan)
        for i, v in raw.items():
            if i not in skipped:
                raw_arr[i] = v
    p_ai = None
    if profile is not None:
        p_ai = np.asarray(profile.p_ai(score), dtype=np.float64)
    return Scores(detector=name, score=score, p_ai=p_ai, n_tokens=ntok, truncated=sorted(prep.truncated),
                  skipped=dict(sorted(skipped.items())), raw=raw_arr, max_tokens=max_tokens)


def _context(lms: list[LM], max_tokens: int | None) -> int:
    ctx = min(m.context for m in lms)
    if max_tokens is not None:
        if max_tokens < MIN_TOKENS:
            raise HumanizerError(f"max_tokens must be at least {MIN_TOKENS}, got {max_tokens}")
        ctx = min(ctx, int(max_tokens))
    return ctx


# --- Fast-DetectGPT -------------------------------------------------------------------------


class FastDetectGPT:
    """Fast-DetectGPT (Bao et al., ICLR 2024), the analytic sampling discrepancy.

    For a text of tokens x_0..x_{n-1}, at each scored position t = 1..n-1 let
    q_t = the scorer's next-token distribution (log-softmax of its logits given x_<t),
    p_t = the sampler's next-token distribution given the same x_<t. Then

        ll_t  = log q_t(x_t)                                  (the observed token)
        mu_t  = sum_v p_t(v) log q_t(v)                       (E over x~sampler of log q_t(x))
        var_t = sum_v p_t(v) (log q_t(v))^2 - mu_t^2          (its variance)

        score = (sum_t ll_t - sum_t mu_t) / sqrt(sum_t var_t)

    i.e. the observed log-likelihood's distance from the mean of texts sampled
    token-by-token from the sampler, in standard deviations of that sum (positions
    treated as independent, as in the paper's analytic form and its reference code,
    `get_sampling_discrepancy_analytic`). Machine text sits above that mean: higher =
    more AI. With no sampler, the scorer samples too (the paper's single-model setting).
    Sampler and scorer must share a tokenizer."""

    name = "fast-detectgpt"

    def __init__(self, scorer_model, sampler_model=None, *, max_tokens: int | None = None):
        self.scorer = LM.load(scorer_model)
        self.sampler = LM.load(sampler_model) if sampler_model is not None else None
        if self.sampler is not None and self.sampler.model is self.scorer.model:
            self.sampler = None
        if self.sampler is not None:
            require_shared_tokenizer(self.sampler, self.scorer, ("sampler", "scorer"))
        self.max_tokens = _context([self.scorer] + ([self.sampler] if self.sampler else []), max_tokens)
        self.profile = None

    def describe(self) -> dict:
        sampler = self.sampler or self.scorer
        return {"detector": self.name,
                "models": {"scorer": self.scorer.describe(), "sampler": sampler.describe()},
                "settings": {"criterion": "analytic", "sampler_is_scorer": self.sampler is None},
                "max_tokens": self.max_tokens, "sign": SIGN_CONVENTION}

    def score(self, texts: Sequence[str], batch_size: int = 4, progress: Progress | None = None) -> Scores:
        models = [self.scorer] + ([self.sampler] if self.sampler else [])

        def per_row(logits, labels):
            lq = _log_softmax(logits[0])
            p = mx.exp(lq) if len(logits) == 1 else mx.softmax(logits[1], axis=-1)
            ll = mx.take_along_axis(lq, labels[:, None], axis=-1)[:, 0]
            mu = (p * lq).sum(axis=-1)
            var = (p * lq * lq).sum(axis=-1) - mu * mu
            mx.eval(ll, mu, var)
            return np.array(ll, np.float64), np.array(mu, np.float64), np.array(var, np.float64)

        prep, stats = _run(texts, self.scorer, self.max_tokens, batch_size, progress, models, per_row)
        values = {}
        for i, (ll, mu, var) in stats.items():
            v = var.sum()
            values[i] = (ll.sum() - mu.sum()) / np.sqrt(v) if v > 0 else np.nan
        return _scores(self.name, len(texts), prep, values, self.max_tokens, self.profile)


# --- Binoculars -----------------------------------------------------------------------------


class Binoculars:
    """Binoculars (Hans et al., ICML 2024), the paper's definition:

        B(s) = log PPL_M1(s) / log X-PPL_M1,M2(s)

    with M1 = the observer and M2 = the performer, over the scored positions t = 1..n-1
    (L of them):

        log PPL_M1(s)     = -(1/L) sum_t log M1_t(x_t)
        log X-PPL_M1,M2(s) = -(1/L) sum_t sum_v M1_t(v) log M2_t(v)

    (the cross-entropy of the performer's next-token distribution under the observer's,
    averaged over positions). The paper's pair is Falcon-7B (observer) and
    Falcon-7B-instruct (performer). Machine text has a low B, so score = -B (higher =
    more AI); B is in `Scores.raw`.

    The authors' released code takes the perplexity from the performer instead
    (ahans30/Binoculars issue #27); `perplexity_of="performer"` reproduces that variant.
    The choice is part of the detector's settings, so a profile fitted with one is
    refused for the other."""

    name = "binoculars"

    def __init__(self, observer, performer, *, perplexity_of: str = "observer", max_tokens: int | None = None):
        if perplexity_of not in ("observer", "performer"):
            raise HumanizerError(f"perplexity_of must be 'observer' or 'performer', not {perplexity_of!r}")
        self.observer = LM.load(observer)
        self.performer = LM.load(performer)
        require_shared_tokenizer(self.observer, self.performer, ("observer", "performer"))
        self.perplexity_of = perplexity_of
        self.max_tokens = _context([self.observer, self.performer], max_tokens)
        self.profile = None

    def describe(self) -> dict:
        return {"detector": self.name,
                "models": {"observer": self.observer.describe(), "performer": self.performer.describe()},
                "settings": {"perplexity_of": self.perplexity_of},
                "max_tokens": self.max_tokens, "sign": SIGN_CONVENTION + " (score = -B)"}

    def score(self, texts: Sequence[str], batch_size: int = 4, progress: Progress | None = None) -> Scores:
        ppl_idx = 0 if self.perplexity_of == "observer" else 1

        def per_row(logits, labels):
            lo, lp = _log_softmax(logits[0]), _log_softmax(logits[1])
            nll = -mx.take_along_axis((lo, lp)[ppl_idx], labels[:, None], axis=-1)[:, 0]
            xent = -(mx.exp(lo) * lp).sum(axis=-1)
            mx.eval(nll, xent)
            return float(np.array(nll, np.float64).mean()), float(np.array(xent, np.float64).mean())

        prep, stats = _run(texts, self.observer, self.max_tokens, batch_size, progress,
                           [self.observer, self.performer], per_row)
        b = {i: (nll / x if x > 0 else np.nan) for i, (nll, x) in stats.items()}
        return _scores(self.name, len(texts), prep, {i: -v for i, v in b.items()}, self.max_tokens,
                       self.profile, raw=b)
