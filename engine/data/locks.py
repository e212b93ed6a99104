"""Facts that must survive a rewrite ("locks"): numbers, dates, names, URLs, currency and
quotations of a human passage.

People who use humanizers complain most about meaning drift and invented facts. So the
drafter is asked to keep the locks, drafts that drop too many are filtered out, and the
instruction in every SFT prompt names them: the trained model learns to keep them."""

from __future__ import annotations

import re

MAX_LOCKS = 8  # more would crowd the prompt; the first ones in reading order are kept
_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_PATTERNS = [
    ("url", re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;:!?]")),
    ("quote", re.compile(r"[\"“]([^\"“”]{12,160})[\"”]")),
    ("currency", re.compile(r"(?:[$£€¥]\s?\d(?:[\d,]*\d)?(?:\.\d+)?(?:\s?(?:bn|m|k|million|billion|trillion)\b)?"
                            r"|\b\d(?:[\d,]*\d)?(?:\.\d+)?\s?(?:dollars|pounds|euros)\b)")),
    ("date", re.compile(rf"\b(?:\d{{1,2}}\s+(?:{_MONTHS})\.?(?:,?\s+\d{{4}})?|(?:{_MONTHS})\.?\s+\d{{1,2}}"
                        rf"(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?|(?:{_MONTHS})\s+\d{{4}})\b")),
    ("number", re.compile(r"(?<![\w.])\d(?:[\d,]*\d)?(?:\.\d+)?%?(?![\w])")),
    ("name", re.compile(r"\b[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?(?:\s+(?:de|van|von|of|the|al|bin)?\s*"
                        r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?)+\b")),
]
_NOT_NAMES = {"The", "A", "An", "In", "On", "At", "But", "And", "It", "This", "That", "He", "She", "They", "We",
              "I", "If", "As", "For", "Mr", "Mrs", "Ms", "Dr"}


def extract_locks(text: str, limit: int = MAX_LOCKS) -> list[str]:
    """The passage's facts in reading order, each once; a fact inside a longer one (a number in a
    currency amount or a date, a name in a quotation) is not listed again."""
    found: list[tuple[int, int, str]] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            start, end = m.span(1) if kind == "quote" else m.span()
            value = text[start:end].strip()
            if kind == "name":
                words = value.split()
                while words and words[0] in _NOT_NAMES:  # a sentence-initial "The" is not part of a name
                    words.pop(0)
                    start = text.index(words[0], start) if words else end
                if len(words) < 2:
                    continue
                value = " ".join(words)
            if kind == "number" and len(value.strip("%").replace(",", "")) < 2 and "%" not in value:
                continue  # single digits are rarely facts worth locking ("one of 3 ...")
            if any(s <= start and end <= e for s, e, _ in found):
                continue
            found.append((start, end, value))
    found.sort()
    out: list[str] = []
    for _, _, value in found:
        if value not in out:
            out.append(value)
    return out[:limit]


def _norm(s: str) -> str:
    s = s.lower().replace("’", "'").replace("“", '"').replace("”", '"')
    s = re.sub(r"(?<=\d),(?=\d{3})", "", s)  # 1,200 == 1200
    return re.sub(r"\s+", " ", s)


def kept(locks: list[str], text: str) -> list[bool]:
    norm = _norm(text)
    return [_norm(lock) in norm for lock in locks]


def kept_share(locks: list[str], text: str) -> float:
    """Share of the locks found verbatim (case, spacing and thousands separators aside); 1.0 when none."""
    if not locks:
        return 1.0
    return sum(kept(locks, text)) / len(locks)


def locks_sentence(locks: list[str], template: str) -> str:
    return template.format(items="; ".join(locks)) if locks else ""
