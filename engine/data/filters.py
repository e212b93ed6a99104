"""Row filters of the dataset builder, each a plain function, each counted in the manifest.

- duplicates: exact (after normalising case and spacing) and near (word 5-gram Jaccard,
  found through MinHash buckets so a large source is not compared pair by pair);
- copies: a draft that shares most of its word 4-grams with its source passage teaches
  nothing about style;
- degenerate generations: empty, far too short or long, looping repeats, refusals.
The eval issue scores rewrites with the same `degenerate` rule."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

_WORD = re.compile(r"\w+(?:['’]\w+)*")
REFUSALS = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can not|i won'?t|i'?m unable|i am unable|"
    r"as an ai\b|i apologi[sz]e|unfortunately,? i)", re.I)
MIN_LENGTH_RATIO = 0.4  # a generation under 40% of its source's words lost most of it
MAX_LENGTH_RATIO = 2.5
MAX_REPEAT_SHARE = 0.3  # share of repeated word 4-grams above which a text loops


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def normalise(text: str) -> str:
    return " ".join(words(text))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def overlap(text: str, reference: str, n: int = 4) -> float:
    """Share of `text`'s word n-grams found in `reference` (1.0 = every phrase copied)."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    ref = set(ngrams(words(reference), n))
    return sum(g in ref for g in grams) / len(grams)


def similarity(a: str, b: str, n: int = 3) -> float:
    """Word n-gram Jaccard similarity: how close two texts are in wording."""
    return jaccard(set(ngrams(words(a), n)), set(ngrams(words(b), n)))


def repeat_share(text: str, n: int = 4) -> float:
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def degenerate(text: str, source: str | None = None) -> str | None:
    """Why a generation is unusable ("empty", "refusal", "looping", "too short", "too long"), or None."""
    stripped = (text or "").strip()
    if not words(stripped):
        return "empty"
    if REFUSALS.match(stripped):
        return "refusal"
    if repeat_share(stripped) > MAX_REPEAT_SHARE:
        return "looping"
    if source is not None:
        ratio = len(words(stripped)) / max(1, len(words(source)))
        if ratio < MIN_LENGTH_RATIO:
            return "too short"
        if ratio > MAX_LENGTH_RATIO:
            return "too long"
    return None


def _minhash(shingles: set, seeds: int = 24) -> list[int]:
    hashes = [int.from_bytes(hashlib.blake2b(" ".join(s).encode(), digest_size=8).digest(), "little")
              for s in shingles]
    return [min(((h ^ (0x9E3779B97F4A7C15 * (k + 1))) & 0xFFFFFFFFFFFFFFFF) for h in hashes) for k in range(seeds)]


def dedupe(texts: list[str], near: float, bands: int = 8) -> tuple[list[int], int, int]:
    """Indices of the texts to keep (first of each group), exact duplicates and near duplicates.

    Candidates for near duplicates share a MinHash band; each candidate pair is then checked
    with the real word 5-gram Jaccard, so the count is exact for the pairs found."""
    keep: list[int] = []
    seen: set[str] = set()
    buckets: dict[tuple, list[int]] = defaultdict(list)
    shingles: dict[int, set] = {}
    exact = close = 0
    rows = 24 // bands
    for i, text in enumerate(texts):
        norm = normalise(text)
        if norm in seen:
            exact += 1
            continue
        grams = set(ngrams(norm.split(), 5)) or {tuple(norm.split())}
        sig = _minhash(grams)
        keys = [(b, tuple(sig[b * rows:(b + 1) * rows])) for b in range(bands)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        if near < 1.0 and any(jaccard(grams, shingles[j]) >= near for j in candidates):
            close += 1
            continue
        seen.add(norm)
        shingles[i] = grams
        for key in keys:
            buckets[key].append(i)
        keep.append(i)
    return keep, exact, close
