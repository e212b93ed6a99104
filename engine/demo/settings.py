"""Settings of `humanizer demo` and its two sizes. Imports no MLX (the CLI's --help and the
app's form read it).

The sizes are set by what this project's 2-core CPU reference machine does in the time
allowed (measured quiet: drafting 0.52 rows/s for 35-70-word passages with SmolLM2-135M, SFT
5 min, DPO 3 min): `quick` finishes in a few minutes and only proves every stage works;
`default` took 22m37s on that machine when quiet (under 30 minutes, as asked)
and gives a table worth reading, though on a few dozen held-out drafts. Its figures are
limited by the size: say so when quoting them (bench/bench_humanizer.py runs the same table
on 100+ drafts)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,60}$")


@dataclass(frozen=True)
class Size:
    """One demo size: how much of each stage."""

    passages: int  # human passages drafted (data build --limit)
    heldout_documents: int  # documents whose passages are held out for the eval
    min_words: int
    max_words: int
    sft_iters: int
    sft_batch: int
    dpo_prompts: int  # SFT prompts the SFT model rewrites for on-policy pairs
    dpo_iters: int
    dpo_batch: int
    eval_samples: int  # held-out drafts rewritten per choice (0: all)


SIZES = {
    # about a third of the drafts survive the builder's filters (copies of the passage, dropped
    # facts, loops), so the held-out documents are many: at least a few held-out rows even here
    "quick": Size(passages=60, heldout_documents=12, min_words=30, max_words=55, sft_iters=6, sft_batch=2,
                  dpo_prompts=6, dpo_iters=2, dpo_batch=2, eval_samples=4),
    "default": Size(passages=200, heldout_documents=45, min_words=35, max_words=70, sft_iters=40, sft_batch=4,
                    dpo_prompts=24, dpo_iters=12, dpo_batch=2, eval_samples=0),
}


def _opt(help: str, default, *, choices=None, metavar: str | None = None):
    return field(default=default, metadata={"help": help, "choices": choices, "flag": None, "metavar": metavar,
                                            "form": True, "group": "demo"})


@dataclass
class DemoSettings:
    """Everything `humanizer demo` takes."""

    quick: bool = _opt("the small size for CI and a first look: every stage on a few rows, a few minutes; its "
                       "figures mean nothing", False)
    name: str = _opt("prefix of everything the demo writes: datasets NAME-st and NAME-dpo, adapters NAME-sft and "
                     "NAME-dpo, detectors NAME-fast-detectgpt and NAME-classifier (default: demo, or demo-quick "
                     "with --quick)", "", metavar="NAME")
    model: str = _opt("the model that drafts, is trained and scores (fast-detectgpt's scorer)", "smollm2-135m",
                      metavar="MODEL")
    corpus: str = _opt("the human corpus (humanizer data corpus list)", "bbc-news", metavar="CORPUS")
    rows: int = _opt("generations decoded together in the drafting, pair and eval stages", 24, metavar="N")
    seed: int = _opt("seed of every stage", 0, metavar="S")

    @property
    def size(self) -> Size:
        return SIZES["quick" if self.quick else "default"]

    @property
    def prefix(self) -> str:
        return self.name or ("demo-quick" if self.quick else "demo")

    def problems(self) -> list[tuple[str, str, str]]:
        """Every bad value as (flag, message, hint)."""
        out = []
        if self.name and not NAME_RE.match(self.name):
            out.append(("--name", f"bad name {self.name!r}", "letters, digits, '.', '_' and '-', up to 61"))
        if not str(self.model).strip():
            out.append(("--model", "no model given", "e.g. smollm2-135m"))
        if not str(self.corpus).strip():
            out.append(("--corpus", "no corpus given", "see `humanizer data corpus list`"))
        if self.rows < 1:
            out.append(("--rows", f"--rows must be at least 1 (got {self.rows})", "e.g. --rows 24"))
        return out

    def check(self) -> "DemoSettings":
        from engine.errors import HumanizerError

        found = self.problems()
        if found:
            flag, message, hint = found[0]
            raise HumanizerError(message if message.startswith(flag) else f"{flag}: {message}", hint)
        return self

    @staticmethod
    def flag_fields():
        return list(fields(DemoSettings))
