"""What a choice's rewrites did to their drafts: meaning kept, length, degenerate outputs, slop.

Per rewrite (`RewriteRow`) and per choice (`ChoiceSummary`, from `summarize_choice`), plus
`summarize_texts` for the source drafts and the human references (slop and words only).

- Degenerate rewrites: `engine.data.filters.degenerate(rewrite, source=draft)` (empty,
  refusal, looping, too short < 0.4x or too long > 2.5x the draft's words), then "copy of
  the draft": the same text after normalising case, spacing and punctuation, or >= 90% of
  the rewrite's word 4-grams found in the draft (`filters.overlap`). The first reason that
  applies is the one counted. A row whose draft has no words is bad input, not a bad
  rewrite: it is counted under `skipped` ("empty draft") and left out of every share.
- Meaning kept: cosine of sentence embeddings, rewrite vs draft and rewrite vs human
  reference (rows without a reference are left out of that mean). The encoder is anything
  with `embed(texts) -> (n, dim)` rows, engine/eval/encoder.py's SentenceEncoder
  (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0) in the eval; rows are L2-normalised
  here again, so cosine = dot product either way. Texts longer than the encoder's limit
  (256 word pieces for MiniLM) are embedded from their start and counted in `n_truncated`.
- Length ratio: rewrite words / draft words (words as `filters.words` counts them); the
  summary gives the mean and the share within 0.8-1.25.
- Degenerate rewrites (and skipped rows) are counted and EXCLUDED from the meaning and
  length means: a refusal's cosine says nothing about how well meaning is kept.
- Slop per 1K words (engine/eval/slop.py) is over ALL the choice's rewrites, degenerate or
  not (a copied draft keeps its slop; that is the point of counting it).

Every aggregate is None when it would be computed over nothing, and `missing[field]` then
says why; no mean of an empty list, no division by zero. Mismatched input lengths are a
HumanizerError. Confidence intervals: engine.eval.metrics.bootstrap_ci (95%, seeded)."""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import numpy as np

from engine.data.filters import degenerate, normalise, overlap, words
from engine.errors import HumanizerError
from engine.eval.metrics import bootstrap_ci
from engine.eval.slop import slop_hits, slop_stats

COPY_OVERLAP = 0.9  # share of the rewrite's word 4-grams found in the draft: a copy
COPY = "copy of the draft"
EMPTY_DRAFT = "empty draft"
LENGTH_BAND = (0.8, 1.25)  # a length ratio in this band (inclusive) kept the draft's length


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def rewrite_problem(rewrite: str | None, draft: str) -> str | None:
    """Why a rewrite is unusable (filters.degenerate's reasons, or "copy of the draft"), or None."""
    reason = degenerate(rewrite or "", source=draft)
    if reason is not None:
        return reason
    if normalise(rewrite) == normalise(draft) or overlap(rewrite, draft, 4) >= COPY_OVERLAP:
        return COPY
    return None


@dataclass
class RewriteRow:
    """One rewrite. cos_* and length_ratio are None for skipped and degenerate rows (and
    cos_human for rows without a reference, cos_* when no encoder was given)."""

    index: int
    words: int
    draft_words: int
    length_ratio: float | None
    skipped: str | None  # bad input ("empty draft"), not scored
    degenerate: str | None  # why the rewrite is unusable, not scored
    cos_draft: float | None = None
    cos_human: float | None = None
    slop_hits: int = 0
    slop_weight: float = 0.0

    @property
    def scored(self) -> bool:
        return self.skipped is None and self.degenerate is None


@dataclass
class ChoiceSummary:
    """One choice's rewrites (None = computed over nothing; see `missing`)."""

    choice: str
    n: int  # rows given
    n_scored: int  # rows neither skipped nor degenerate: the meaning and length means are over these
    cos_draft: float | None  # mean cosine, rewrite vs draft
    cos_draft_ci: tuple[float, float] | None
    cos_human: float | None  # mean cosine, rewrite vs human reference
    cos_human_ci: tuple[float, float] | None
    n_human: int  # scored rows with a human reference
    length_ratio: float | None  # mean rewrite words / draft words
    length_ratio_ci: tuple[float, float] | None
    length_within: float | None  # share of scored rows with a length ratio in LENGTH_BAND
    degenerate_share: float | None  # degenerate / (n - skipped)
    degenerate: dict[str, int]  # reason -> rewrites
    skipped: dict[str, int]  # reason -> rows (bad input)
    slop_per_1k: float | None  # weighted slop hits per 1,000 words, all rewrites
    slop_hits_per_1k: float | None  # unweighted
    slop_hits: int
    slop_by_phrase: dict[str, int]
    words: int  # words of all rewrites
    n_truncated: int = 0  # texts cut to the encoder's limit before embedding
    encoder: str | None = None
    missing: dict[str, str] = field(default_factory=dict)  # field -> why it is None
    rows: list[RewriteRow] = field(default_factory=list)

    def to_dict(self, rows: bool = False) -> dict:
        d = asdict(self)
        if not rows:
            d.pop("rows")
        return d


@dataclass
class TextsSummary:
    """Slop and length of a set of texts (the source drafts, the human references)."""

    label: str
    n: int
    n_empty: int  # texts without a word
    words: int
    mean_words: float | None  # over the texts with words
    slop_per_1k: float | None
    slop_hits_per_1k: float | None
    slop_hits: int
    slop_by_phrase: dict[str, int]
    missing: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _texts(values, what: str) -> list[str]:
    if isinstance(values, str):
        raise HumanizerError(f"the {what} must be a list of texts, not one string")
    return ["" if v is None else str(v) for v in values]


def _embed(encoder: Embedder, texts: list[str]) -> tuple[np.ndarray, int]:
    """Unit rows for `texts` and how many were truncated (when the encoder says)."""
    try:
        takes_flag = "with_truncated" in inspect.signature(encoder.embed).parameters
    except (TypeError, ValueError):
        takes_flag = False
    if takes_flag:
        vecs, truncated = encoder.embed(texts, with_truncated=True)
    else:
        vecs, truncated = encoder.embed(texts), 0
    vecs = np.asarray(vecs, dtype=np.float64)
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise HumanizerError(f"the sentence encoder returned shape {vecs.shape} for {len(texts)} texts",
                             "an encoder's embed(texts) must return one row per text")
    if not np.all(np.isfinite(vecs)):
        raise HumanizerError("the sentence encoder returned NaN or infinite embeddings")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12), int(truncated)


def _mean(values: list[float], what: str, missing: dict, key: str, with_ci: bool = True):
    if not values:
        missing[key] = what
        return None, None
    ci = bootstrap_ci(values) if with_ci else None
    return float(np.mean(values)), ci


def summarize_choice(drafts, rewrites, humans=None, encoder: Embedder | None = None, choice: str = "",
                     phrases=None, encoder_name: str | None = None) -> ChoiceSummary:
    """Metrics of `rewrites[i]` (of `drafts[i]`, with reference `humans[i]`, which may be None or
    "" where a row has none; `humans=None` for no references). `encoder=None` skips the cosines
    (they are then None with a reason)."""
    drafts, rewrites = _texts(drafts, "drafts"), _texts(rewrites, "rewrites")
    refs = [""] * len(drafts) if humans is None else _texts(humans, "human references")
    if not len(drafts) == len(rewrites) == len(refs):
        raise HumanizerError(f"{len(drafts)} drafts, {len(rewrites)} rewrites and {len(refs)} human references: "
                             "each rewrite needs its draft (and reference)",
                             "pass the lists aligned row by row; use None for a row without a reference")
    rows: list[RewriteRow] = []
    for i, (d, r) in enumerate(zip(drafts, rewrites)):
        dw, rw = len(words(d)), len(words(r))
        hits = slop_hits(r, phrases)
        row = RewriteRow(index=i, words=rw, draft_words=dw, length_ratio=None, skipped=None, degenerate=None,
                         slop_hits=len(hits), slop_weight=float(sum(h.weight for h in hits)))
        if dw == 0:
            row.skipped = EMPTY_DRAFT
        else:
            row.degenerate = rewrite_problem(r, d)
            if row.degenerate is None:
                row.length_ratio = rw / dw
        rows.append(row)

    scored = [row for row in rows if row.scored]
    missing: dict[str, str] = {}
    n_truncated = 0
    nothing = "no rewrites given" if not rows else "every rewrite is degenerate or its row skipped"
    if encoder is None:
        for key in ("cos_draft", "cos_human"):
            missing[key] = "no sentence encoder given"
    elif scored:
        with_ref = [row for row in scored if words(refs[row.index])]
        texts = ([rewrites[row.index] for row in scored] + [drafts[row.index] for row in scored]
                 + [refs[row.index] for row in with_ref])
        vecs, n_truncated = _embed(encoder, texts)
        k = len(scored)
        cos_d = np.einsum("ij,ij->i", vecs[:k], vecs[k:2 * k])
        for row, c in zip(scored, cos_d):
            row.cos_draft = float(c)
        at = {row.index: j for j, row in enumerate(scored)}
        for j, row in enumerate(with_ref):
            row.cos_human = float(vecs[at[row.index]] @ vecs[2 * k + j])

    cos_draft, cos_draft_ci = (None, None) if encoder is None else _mean(
        [row.cos_draft for row in scored], nothing, missing, "cos_draft")
    human_cos = [row.cos_human for row in scored if row.cos_human is not None]
    if encoder is None:
        cos_human, cos_human_ci = None, None
    elif humans is None:
        cos_human, cos_human_ci = _mean([], "no human references given", missing, "cos_human")
    else:
        why = nothing if not scored else "no scored rewrite has a human reference with words"
        cos_human, cos_human_ci = _mean(human_cos, why, missing, "cos_human")
    ratios = [row.length_ratio for row in scored]
    length_ratio, length_ratio_ci = _mean(ratios, nothing, missing, "length_ratio")
    lo, hi = LENGTH_BAND
    length_within = (sum(lo <= x <= hi for x in ratios) / len(ratios)) if ratios else None
    if length_within is None:
        missing["length_within"] = nothing

    skipped = Counter(row.skipped for row in rows if row.skipped)
    bad = Counter(row.degenerate for row in rows if row.degenerate)
    judged = len(rows) - sum(skipped.values())
    degenerate_share = sum(bad.values()) / judged if judged else None
    if degenerate_share is None:
        missing["degenerate_share"] = "no rewrites given" if not rows else "every row was skipped (empty drafts)"

    slop = slop_stats(rewrites, phrases)
    if slop.per_1k is None:
        missing["slop_per_1k"] = missing["slop_hits_per_1k"] = "the rewrites hold no words"
    return ChoiceSummary(
        choice=choice, n=len(rows), n_scored=len(scored),
        cos_draft=cos_draft, cos_draft_ci=cos_draft_ci, cos_human=cos_human, cos_human_ci=cos_human_ci,
        n_human=len(human_cos), length_ratio=length_ratio, length_ratio_ci=length_ratio_ci,
        length_within=length_within, degenerate_share=degenerate_share, degenerate=dict(bad.most_common()),
        skipped=dict(skipped), slop_per_1k=slop.per_1k, slop_hits_per_1k=slop.hits_per_1k,
        slop_hits=slop.hits, slop_by_phrase=slop.by_phrase, words=slop.words, n_truncated=n_truncated,
        encoder=encoder_name, missing=missing, rows=rows)


def summarize_texts(texts, label: str = "", phrases=None) -> TextsSummary:
    """Slop per 1K words and word counts of the source drafts or the human references."""
    texts = _texts(texts, label or "texts")
    counts = [len(words(t)) for t in texts]
    with_words = [c for c in counts if c]
    slop = slop_stats(texts, phrases)
    missing = {}
    why = "no texts given" if not texts else "the texts hold no words"
    if not with_words:
        missing["mean_words"] = missing["slop_per_1k"] = missing["slop_hits_per_1k"] = why
    return TextsSummary(
        label=label, n=len(texts), n_empty=len(counts) - len(with_words), words=slop.words,
        mean_words=float(np.mean(with_words)) if with_words else None, slop_per_1k=slop.per_1k,
        slop_hits_per_1k=slop.hits_per_1k, slop_hits=slop.hits, slop_by_phrase=slop.by_phrase, missing=missing)
