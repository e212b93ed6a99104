"""Slop: a weighted list of phrases typical of AI-written prose, and how often a text uses them.

How the list was chosen. By hand, from phrases widely reported as over-used by chat
models: the "excess vocabulary" that rose in scientific abstracts after ChatGPT (Kobak et
al. 2024, "Delving into ChatGPT usage in academic writing through excess vocabulary":
"delves", "underscores", "showcasing", "pivotal", "intricate", ...), the adjectives that
rose in peer reviews (Liang et al. 2024, ICML: "commendable", "meticulous", "intricate"),
the stock openers and closers of chat answers ("in today's fast-paced world", "I hope this
helps"), and a rewriter's own leaks ("here is the rewritten version"). The list was not
tuned on any eval set, so the metric is not fitted to the texts it measures. It is ours
(no third-party list is copied) and it is meant to grow: pass `extra` entries (below).

Weights (0 < weight <= 1) say how much one occurrence is evidence of AI style:
    1.0   the phrase alone marks AI style ("a testament to", "delve into");
    0.5   strongly AI-leaning, though people write it too ("in the realm of", "multifaceted");
    0.25  common in human prose as well; it only counts in bulk ("shed light on").
`slop_per_1k` is the sum of the weights of the hits per 1,000 words (words as
engine.data.filters.words counts them); `hits` counts occurrences regardless of weight.

Patterns. Each entry is a display phrase, its weight, and an optional regex (the phrase
itself when none). In a pattern a space matches any run of whitespace, an apostrophe
matches ' and ’ (and ʼ), and a hyphen between two letters matches a hyphen, a non-breaking
hyphen, or a space ("fast-paced", "fast paced"). Matching is case-insensitive and on
whole words (no hit inside a longer word). Simple inflections are written into the
pattern where a verb or noun takes them ("underscor(?:e|es|ed|ing)"). Patterns must not
use character ranges between letters (a-z); write alternatives with (?:...|...).
Overlapping hits count once: the longest span wins (then the higher weight, then the
earlier entry), so "stands as a testament to" is one hit, not two.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from engine.data.filters import words
from engine.errors import HumanizerError

# (display phrase, weight, pattern or None = the phrase itself)
SLOP: list[tuple[str, float, str | None]] = [
    # --- 1.0: alone marks AI style -------------------------------------------------------------
    ("a testament to", 1.0, r"(?:stands? as |serves? as )?an? testament to"),
    ("underscores the importance of", 1.0, r"underscor(?:e|es|ed|ing) the (?:importance|significance) of"),
    ("delve into", 1.0, r"delv(?:e|es|ed|ing) (?:deeper |deeply )?into"),
    ("in today's fast-paced world", 1.0,
     r"(?:in )?today's fast-paced (?:world|society|environment|landscape|digital age|digital world)"),
    ("it is important to note that", 1.0, r"it(?: is|'s) important to (?:note|remember)(?: that)?"),
    ("plays a crucial role", 1.0, r"play(?:s|ed|ing)? (?:a|an) (?:crucial|pivotal|instrumental) role"),
    ("navigate the complexities", 1.0, r"navigat(?:e|es|ed|ing) the (?:complexities|complexity|intricacies) of"),
    ("rich tapestry", 1.0, r"(?:an? )?(?:rich|intricate|vibrant|diverse) tapestry(?: of)?"),
    ("ever-evolving landscape", 1.0, r"(?:the )?ever-(?:evolving|changing) landscape(?: of)?"),
    ("embark on a journey", 1.0, r"embark(?:s|ed|ing)? on (?:a|an|this|the) (?:\w+ )?journey"),
    ("harness the power of", 1.0, r"harness(?:es|ed|ing)? the (?:full )?power of"),
    ("unleash the potential", 1.0, r"unleash(?:es|ed|ing)? the (?:full )?(?:potential|power)"),
    ("I hope this helps", 1.0, r"i hope (?:this|that) helps"),
    ("as an AI language model", 1.0, r"as an ai (?:language model|assistant)"),
    ("here is the rewritten version", 1.0,
     r"here(?: is|'s) (?:a |the |your )?(?:rewritten|revised|humani[sz]ed|paraphrased|reworded) "
     r"(?:version|text|paragraph|passage)"),
    ("a symphony of", 1.0, r"an? symphony of"),
    ("an intricate dance", 1.0, r"(?:an? )?(?:intricate|delicate|complex) dance (?:of|between)"),
    ("let's dive in", 1.0, r"let's (?:dive|delve)(?: in| into| deeper)?"),
    # --- 0.75 ----------------------------------------------------------------------------------
    ("it's worth noting that", 0.75, r"it(?: is|'s) worth (?:noting|mentioning)(?: that)?"),
    ("in the realm of", 0.75, r"(?:in|within) the realm of"),
    ("unlock the potential", 0.75, r"unlock(?:s|ed|ing)? the (?:full |true )?potential"),
    ("a nuanced understanding", 0.75, r"an? (?:nuanced|deeper|comprehensive) understanding of"),
    ("fostering a sense of", 0.75, r"foster(?:s|ed|ing)? a (?:sense|culture) of"),
    ("serves as a reminder", 0.75, r"serv(?:e|es|ed|ing) as a (?:powerful |stark |poignant |timely )?reminder"),
    ("seamlessly integrate", 0.75, r"seamless(?:ly)? integrat(?:e|es|ed|ing|ion)"),
    ("navigating the challenges of", 0.75,
     r"navigat(?:e|es|ed|ing) the (?:challenges|landscape|world|waters|nuances) of"),
    ("in today's digital age", 0.75,
     r"in today's (?:digital|modern|interconnected|rapidly changing) (?:age|world|era|landscape)"),
    ("commitment to excellence", 0.75, r"commitment to (?:excellence|innovation)"),
    ("ever-evolving", 0.75, r"ever-evolving"),
    ("a pivotal moment", 0.75, r"an? pivotal (?:moment|point|step|role|turning point)"),
    # --- 0.5 -----------------------------------------------------------------------------------
    ("multifaceted", 0.5, None),
    ("tapestry", 0.5, r"tapestr(?:y|ies)"),
    ("a beacon of", 0.5, r"an? beacon of"),
    ("the intricacies of", 0.5, r"the intricacies of"),
    ("a myriad of", 0.5, r"an? myriad of"),
    ("a plethora of", 0.5, r"an? plethora of"),
    ("in conclusion", 0.5, None),
    ("in summary", 0.5, None),
    ("in essence", 0.5, None),
    ("it is crucial to", 0.5, r"it(?: is|'s) (?:crucial|essential|vital|imperative) to"),
    ("plays a vital role", 0.5, r"play(?:s|ed|ing)? (?:a|an) (?:vital|significant|key|critical) role"),
    ("a crucial aspect of", 0.5, r"an? (?:crucial|key|vital|essential) aspect of"),
    ("holistic approach", 0.5, r"(?:a )?holistic approach"),
    ("game-changer", 0.5, r"game-chang(?:er|ers|ing)"),
    ("resonates with", 0.5, r"resonat(?:e|es|ed|ing) (?:deeply )?with"),
    ("a deep dive", 0.5, r"(?:a )?deep dive(?: into)?"),
    ("in the digital age", 0.5, r"in the (?:digital|modern) age"),
    ("whether you're a", 0.5, r"whether you(?:'re| are) an?"),
    ("it's not just about", 0.5, r"it(?: is|'s) not (?:just|only|merely) about"),
    ("nestled in", 0.5, r"nestl(?:e|es|ed|ing) (?:in|among|between|within)"),
    ("treasure trove", 0.5, r"(?:a )?treasure troves?"),
    ("key takeaway", 0.5, r"key takeaways?"),
    ("paving the way for", 0.5, r"pav(?:e|es|ed|ing) the way (?:for|to)"),
    ("elevate your", 0.5, r"elevat(?:e|es|ed|ing) your"),
    ("commendable", 0.5, None),
    ("meticulously", 0.5, r"meticulous(?:ly)?"),
    # --- 0.25: common in human prose too ---------------------------------------------------------
    ("shed light on", 0.25, r"shed(?:s|ding)? (?:new )?light on"),
    ("dive into", 0.25, r"div(?:e|es|ed|ing) (?:deep |deeper )?into"),
    ("at the heart of", 0.25, None),
    ("in stark contrast", 0.25, r"(?:in )?stark contrast"),
    ("cutting-edge", 0.25, None),
    ("in an era of", 0.25, r"in an era (?:of|where|when)"),
    ("showcasing", 0.25, r"showcas(?:e|es|ed|ing)"),
    ("boasts", 0.25, r"boast(?:s|ed|ing)"),
    ("bustling", 0.25, None),
    ("pivotal", 0.25, None),
    ("to sum up", 0.25, None),
]

_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_]|\()")


@dataclass(frozen=True)
class Phrase:
    phrase: str
    weight: float
    pattern: str
    regex: re.Pattern = field(compare=False, repr=False)


class Hit(NamedTuple):
    """One occurrence: the entry's display phrase, its span text[start:end], its weight."""

    phrase: str
    start: int
    end: int
    weight: float


def compile_pattern(pattern: str) -> re.Pattern:
    """A pattern as the docstring says: spaces -> whitespace runs, apostrophes -> ' or ’, hyphens
    between letters -> hyphen or space, whole words, case-insensitive."""
    p = _HYPHEN.sub(lambda _: "(?:-|\u2010|\u2011|\\s)", pattern)
    p = p.replace("'", "['\u2019\u02bc]").replace(" ", r"\s+")
    return re.compile(rf"(?<!\w)(?:{p})(?!\w)", re.IGNORECASE)


def _entry(item, where: str) -> tuple[str, float, str | None]:
    if isinstance(item, dict):
        item = (item.get("phrase"), item.get("weight", 1.0), item.get("pattern"))
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise HumanizerError(f"{where}: a slop entry is (phrase, weight) or (phrase, weight, pattern), got {item!r}",
                             'write e.g. ["a testament to", 1.0] or {"phrase": ..., "weight": ..., "pattern": ...}')
    phrase, weight, pattern = (*item, None) if len(item) == 2 else item
    if not isinstance(phrase, str) or not phrase.strip():
        raise HumanizerError(f"{where}: a slop entry has no phrase ({item!r})")
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise HumanizerError(f"{where}: '{phrase}' has weight {weight!r}, not a number") from None
    if not 0.0 <= weight <= 1.0:
        raise HumanizerError(f"{where}: '{phrase}' has weight {weight}; weights are in [0, 1]",
                             "1 = the phrase alone marks AI style; 0 removes a built-in phrase")
    if pattern is not None and (not isinstance(pattern, str) or not pattern.strip()):
        raise HumanizerError(f"{where}: '{phrase}' has an empty or non-text pattern")
    return phrase.strip(), weight, pattern


def phrase_list(extra=None, where: str = "extra slop phrases") -> list[Phrase]:
    """The built-in list plus `extra` entries ((phrase, weight[, pattern]) tuples or dicts). An
    extra entry with a built-in's phrase (case-insensitive) replaces it; weight 0 removes it."""
    entries: dict[str, tuple[str, float, str | None]] = {}
    for p, w, pat in SLOP:
        entries[p.lower()] = (p, w, pat)
    for i, item in enumerate(extra or ()):
        p, w, pat = _entry(item, f"{where}, entry {i + 1}")
        entries[p.lower()] = (p, w, pat)
    out = []
    for p, w, pat in entries.values():
        if w == 0.0:
            continue
        pattern = pat if pat is not None else re.escape(p).replace("\\ ", " ").replace("\\-", "-").replace("\\'", "'")
        try:
            regex = compile_pattern(pattern)
        except re.error as e:
            raise HumanizerError(f"{where}: the pattern of '{p}' is not a valid regex ({e})") from None
        if regex.search(""):
            raise HumanizerError(f"{where}: the pattern of '{p}' matches the empty string")
        out.append(Phrase(p, w, pattern, regex))
    return out


def load_phrases(path) -> list[Phrase]:
    """The built-in list plus a user's JSON file: a list of [phrase, weight] / [phrase, weight,
    pattern] or {"phrase", "weight", "pattern"} entries."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HumanizerError(f"no slop phrase file {path}") from None
    except (OSError, ValueError) as e:
        raise HumanizerError(f"cannot read the slop phrase file {path}: {e}",
                             "it must be a JSON list of [phrase, weight] or {phrase, weight, pattern}") from None
    if not isinstance(data, list):
        raise HumanizerError(f"{path} is not a JSON list of slop entries")
    return phrase_list(data, where=str(path))


@lru_cache(maxsize=1)
def default_phrases() -> tuple[Phrase, ...]:
    return tuple(phrase_list())


def _phrases(phrases) -> tuple[Phrase, ...] | list[Phrase]:
    return default_phrases() if phrases is None else phrases


def slop_hits(text: str, phrases=None) -> list[Hit]:
    """The slop in `text`, as (phrase, start, end, weight) hits sorted by position, overlaps
    resolved (longest span, then higher weight, then list order)."""
    if not text:
        return []
    found = []
    for order, ph in enumerate(_phrases(phrases)):
        for m in ph.regex.finditer(text):
            found.append((m.start(), m.end(), ph.weight, order, ph.phrase))
    found.sort(key=lambda h: (-(h[1] - h[0]), -h[2], h[3], h[0]))
    kept: list[tuple] = []
    for h in found:
        if all(h[1] <= k[0] or h[0] >= k[1] for k in kept):
            kept.append(h)
    kept.sort()
    return [Hit(h[4], h[0], h[1], h[2]) for h in kept]


@dataclass
class SlopStats:
    """Slop over a set of texts. per_1k / hits_per_1k are None when the texts have no words."""

    texts: int
    words: int
    hits: int  # occurrences, unweighted
    weighted: float  # sum of the hits' weights
    per_1k: float | None  # weighted hits per 1,000 words
    hits_per_1k: float | None  # unweighted hits per 1,000 words
    by_phrase: dict[str, int]  # phrase -> occurrences, most frequent first

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _as_texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    return ["" if t is None else str(t) for t in texts]


def slop_stats(texts, phrases=None) -> SlopStats:
    texts = _as_texts(texts)
    n_words = hits = 0
    weighted = 0.0
    counts: Counter = Counter()
    for t in texts:
        n_words += len(words(t))
        for h in slop_hits(t, phrases):
            hits += 1
            weighted += h.weight
            counts[h.phrase] += 1
    def per_1k(x: float) -> float | None:
        return 1000.0 * x / n_words if n_words else None

    return SlopStats(len(texts), n_words, hits, weighted, per_1k(weighted), per_1k(hits), dict(counts.most_common()))


def slop_per_1k(texts, weighted: bool = True, phrases=None) -> float | None:
    """Slop hits per 1,000 words over all `texts` together (weighted by default; weighted=False
    counts occurrences). None when the texts hold no words: never a division by zero."""
    s = slop_stats(texts, phrases)
    return s.per_1k if weighted else s.hits_per_1k
