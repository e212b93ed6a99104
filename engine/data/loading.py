"""`load_data`: read, check and tokenize DATA into a `Dataset` (train and valid items, the issues
found, what was skipped); `preview` reads and checks without a tokenizer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.data.reading import read_spec
from engine.data.rows import RowIssue, check_rows, no_valid_rows, sort_issues
from engine.data.tokenizing import Pair, tokenize_rows
from engine.errors import DataError


@dataclass
class Dataset:
    method: str  # "sft" | "dpo"
    train: list  # Example or Pair
    valid: list
    issues: list[RowIssue]
    skipped: int  # bad rows dropped (only with skip_bad_rows)
    source: str  # what was loaded, for reports
    held_out: int = 0  # valid rows taken from train (no valid split given)
    template_fallbacks: int = 0  # rows where the templated prompt wasn't a prefix

    @staticmethod
    def _length(item) -> int:
        if isinstance(item, Pair):
            return len(item.prompt) + max(len(item.chosen), len(item.rejected))
        return len(item.tokens)

    def summary(self) -> str:
        kind = "examples" if self.method == "sft" else "pairs"
        lines = [f"{self.method.upper()} data from {self.source}: "
                 f"{len(self.train)} train / {len(self.valid)} valid {kind}"]
        if self.held_out:
            lines.append(f"  valid: {self.held_out} rows held out from train (no valid split given)")
        lengths = [self._length(x) for x in self.train]
        if lengths:
            lines.append(
                f"  {sum(lengths):,} train tokens, longest row {max(lengths)}, "
                f"mean {sum(lengths) / len(lengths):.0f}"
            )
        if self.skipped:
            lines.append(f"  skipped {self.skipped} bad row{'s' if self.skipped != 1 else ''}")
        warnings = sum(1 for i in self.issues if not i.fatal)
        if warnings:
            lines.append(f"  {warnings} warning{'s' if warnings != 1 else ''}")
        if self.template_fallbacks:
            lines.append(
                f"  {self.template_fallbacks} rows: chat template prompt was not a prefix of the "
                "full conversation; prompt and response were tokenized separately"
            )
        return "\n".join(lines)


def _hold_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    n = len(items)
    if fraction <= 0 or n < 2:
        return items, []
    k = min(n - 1, max(1, round(n * fraction)))
    chosen = set(random.Random(seed).sample(range(n), k))
    return [x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen]


def load_data(spec: str, method: str, tokenizer, max_seq_length: int, skip_bad_rows: bool = False,
              valid_fraction: float = 0.1, seed: int = 0, ws=None) -> Dataset:
    """Read, check and tokenize DATA for `method` ("sft" | "dpo").

    Raises DataError when any row has a fatal problem (unless skip_bad_rows, which drops
    those rows and counts them in `skipped`), and always when a file is empty or has no
    usable rows. Warnings never stop. Without a valid split, `valid_fraction` of the
    train rows (at least 1 when there are >= 2) is held out, chosen by `seed`."""
    splits, source = read_spec(spec, ws, method)
    good, issues, counts = check_rows(method, splits)

    tokenized: dict[str, list] = {}
    fallbacks = 0
    bad_after: dict[str, int] = {}
    for split, rows in good.items():
        items, fb = tokenize_rows(rows, tokenizer, max_seq_length, method)
        fallbacks += fb
        kept = []
        for it in items:
            if isinstance(it, RowIssue):
                issues.append(it)
                bad_after[it.file] = bad_after.get(it.file, 0) + 1
            else:
                kept.append(it)
        tokenized[split] = kept
    issues = sort_issues(issues)
    file_level = no_valid_rows(counts, bad_after)
    fatal = [i for i in issues if i.fatal]
    if file_level or any(i.line == 0 for i in fatal) or (fatal and not skip_bad_rows):
        raise DataError(file_level + issues, source)
    skipped = len({(i.file, i.line) for i in fatal})

    train = tokenized.get("train", [])
    valid = tokenized.get("valid")
    held_out = 0
    if valid is None:
        train, valid = _hold_out(train, valid_fraction, seed)
        held_out = len(valid)
    return Dataset(method, train, valid, issues, skipped, source, held_out=held_out, template_fallbacks=fallbacks)


def preview(spec: str, method: str, limit: int = 20, ws=None) -> tuple[list[dict], int, list[RowIssue]]:
    """First `limit` rows (as read), the total row count and the issues found without
    tokenizing (too-long rows need the tokenizer and show up only in load_data)."""
    splits, _ = read_spec(spec, ws, method)
    _, issues, counts = check_rows(method, splits)
    rows = [row for entries in splits.values() for _, _, row in entries if isinstance(row, dict)]
    total = sum(n for n, _ in counts.values())
    return rows[:limit], total, no_valid_rows(counts) + sort_issues(issues)
