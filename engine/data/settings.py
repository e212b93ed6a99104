"""Settings of `humanizer data build`: one dataclass that the CLI flags and the Data
screen's form are both built from (like mlx-lm's TrainingArgs). Imports no MLX, so the
CLI's --help and the form load fast.

The prompts are part of the templates: they are shown in --help and stored in every
dataset's manifest, so a dataset says exactly how its AI drafts were made."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields

from engine.distributed.settings import hosts_field, nproc_field

TEMPLATES = {
    "style-transfer": "back-translation: a drafter model rewrites each human passage the way an AI "
    "assistant writes; SFT learns draft -> human, DPO prefers the human text over the draft",
    "dpo-pairs": "on-policy DPO: the model with --adapter (an SFT adapter) rewrites each SFT prompt "
    "--samples times; chosen = the human passage, rejected = its own rewrite",
    "paired": "a dataset that already links human and AI texts by source id (the EditLens schema: "
    "text, text_type, source_id, split) becomes SFT / DPO / held-out rows, no generation",
    "judgements": "A/B picks recorded in Chat (a preference set) become DPO rows",
}

REJECTED_RULES = {
    "closest": "the rewrite closest to the AI draft (word-trigram overlap): the most AI-like of the "
    "model's own attempts, so DPO pushes away from what SFT left unchanged",
    "farthest": "the rewrite farthest from the human passage",
    "draft": "the AI draft itself (off-policy, no generation needed)",
}

# What the drafter is asked (style-transfer). {locks} is the sentence naming the facts to keep.
DRAFT_PROMPT = (
    "Rewrite the following passage the way an AI assistant writes: polished, formal and even, "
    "with smooth transitions and a neat concluding sentence. Keep the meaning and every fact.{locks} "
    "Reply with the rewritten passage only.\n\nPassage:\n{passage}"
)
# The SFT / DPO prompt: the instruction the humanizer learns to follow, with the AI draft.
REWRITE_INSTRUCTION = (
    "Rewrite this text so it reads as if a person wrote it. Keep the meaning.{locks} "
    "Reply with the rewritten text only.\n\n{draft}"
)
LOCKS_SENTENCE = " Keep these exactly: {items}."

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _opt(help: str, default=MISSING, *, choices=None, flag: str | None = None, metavar: str | None = None,
         form: bool = True, group: str = "build"):
    """A settings field: its default and what the CLI and the form need to show it."""
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "form": form, "group": group}
    return field(default=default, metadata=meta)


@dataclass
class BuildSettings:
    """Everything `humanizer data build` takes. Defaults suit the embedded 135M drafter on a CPU."""

    template: str = _opt("how rows are made: " + "; ".join(f"{k}: {v}" for k, v in TEMPLATES.items()),
                         choices=tuple(TEMPLATES))
    source: str = _opt("human text: a corpus name (humanizer data corpus list), a folder of .txt/.md, "
                       "a .jsonl/.csv/.parquet file, a workspace dataset, or a Hugging Face dataset id",
                       metavar="SRC")
    output: str = _opt("name of the workspace dataset to write (datasets/NAME)", metavar="NAME")
    model: str = _opt("drafter (style-transfer) or rewriter (dpo-pairs) model spec", "smollm2-135m",
                      metavar="MODEL")
    adapter: str = _opt("dpo-pairs: the adapter the rewriter uses (an SFT adapter folder or workspace name; "
                        "with --endpoint, the server's adapter id)", "", metavar="ADAPTER")
    endpoint: str = _opt("an OpenAI-compatible server to generate with instead of --model "
                         "(ours, mlx_lm.server, llama.cpp, Ollama), e.g. http://127.0.0.1:8080", "",
                         metavar="URL", group="generation")
    endpoint_model: str = _opt("model name to send to --endpoint (default: its first /v1/models id)", "",
                               metavar="ID", group="generation", form=False)
    api_key: str = _opt("API key for --endpoint (default $OPENAI_API_KEY)", "", metavar="KEY",
                        group="generation", form=False)
    text_column: str = _opt("column holding the text in .jsonl/.csv/.parquet and dataset sources", "text",
                            metavar="COL")
    limit: int = _opt("use at most this many passages (0: all)", 0, metavar="N")
    heldout: int = _opt("source documents held out for evaluation (default 10%, at least one)", -1, metavar="N")
    valid_share: float = _opt("share of the remaining documents for the valid split", 0.05, metavar="F")
    per_document: int = _opt("passages taken from one document at most (0: all), so the rows span "
                             "many documents", 2, metavar="N")
    min_words: int = _opt("shortest passage in words", 40, metavar="N", group="filters")
    max_words: int = _opt("longest passage in words (longer paragraphs are split at sentences)", 120,
                          metavar="N", group="filters")
    near_duplicate: float = _opt("passages whose word-5-gram Jaccard similarity to an earlier one is at "
                                 "least this are dropped as near duplicates", 0.7, metavar="F", group="filters")
    max_copy: float = _opt("drafts sharing at least this share of their word 4-grams with the source "
                           "passage are dropped as copies", 0.6, metavar="F", group="filters")
    min_locks_kept: float = _opt("drafts must keep at least this share of the passage's locked facts "
                                 "(numbers, dates, names, URLs, currency, quotations)", 0.5, metavar="F",
                                 group="filters")
    samples: int = _opt("dpo-pairs: rewrites per prompt", 2, metavar="K", group="generation")
    rejected: str = _opt("dpo-pairs: which text is rejected: " + "; ".join(f"{k}: {v}" for k, v in
                                                                           REJECTED_RULES.items()),
                         "closest", choices=tuple(REJECTED_RULES), group="generation")
    temperature: float = _opt("sampling temperature", 0.7, metavar="T", group="generation")
    top_p: float = _opt("nucleus sampling", 0.95, metavar="P", group="generation")
    max_tokens: int = _opt("longest generation in tokens (default: about twice the passage)", 0,
                           metavar="N", group="generation")
    rows: int = _opt("generations decoded together", 16, metavar="N", group="generation")
    seed: int = _opt("seed of the split and of every sample", 0, metavar="S")
    resume: bool = _opt("continue an interrupted build of the same NAME (same rows)", False, form=False)
    nproc: int = nproc_field()  # where it runs (the CLI's): the CLI hands build() the defaults
    hosts: str = hosts_field()

    def problems(self) -> list[tuple[str, str, str]]:
        """Every bad value as (flag, message, hint), so a form can mark all of them at once."""
        out: list[tuple[str, str, str]] = []

        def bad(name: str, what: str, hint: str = "") -> None:
            flag = name.replace("_", "-")
            out.append((flag, f"--{flag}: {what}", hint))

        if self.template not in TEMPLATES:
            bad("template", f"unknown template {self.template!r}", "one of: " + ", ".join(TEMPLATES))
        if not str(self.source).strip():
            bad("source", "no source given", "pass --source: a corpus, folder, file or dataset")
        if not NAME_RE.match(self.output or ""):
            bad("output", f"{self.output!r} is not a dataset name",
                "use letters, digits, '.', '_' or '-' (it becomes the folder datasets/NAME)")
        if self.template == "dpo-pairs" and not self.adapter and self.rejected != "draft":
            bad("adapter", "dpo-pairs needs the adapter that writes the on-policy rewrites",
                "pass --adapter humanizer-sft (or --rejected draft for off-policy pairs)")
        for name in ("min_words", "max_words", "samples", "rows"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        if 1 <= self.max_words < self.min_words:
            bad("min_words", f"{self.min_words} is above --max-words {self.max_words}")
        for name in ("near_duplicate", "max_copy", "min_locks_kept", "top_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must be between 0 and 1")
        if not 0.0 <= self.valid_share < 1.0:
            bad("valid_share", "must be at least 0 and below 1")
        for name in ("limit", "per_document", "max_tokens"):
            if getattr(self, name) < 0:
                bad(name, "must not be negative")
        if not 0.0 <= self.temperature <= 10.0:
            bad("temperature", "must be between 0 and 10")
        if self.endpoint and not re.match(r"^https?://", self.endpoint):
            bad("endpoint", f"{self.endpoint!r} is not an http(s) URL", "e.g. http://127.0.0.1:8080")
        return out

    def check(self) -> "BuildSettings":
        """The first bad value as a HumanizerError naming its flag: before any work starts."""
        from engine.errors import HumanizerError

        for _, message, hint in self.problems()[:1]:
            raise HumanizerError(message, hint or None)
        return self

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d.get("api_key"):
            d["api_key"] = "(set)"  # never stored in a manifest
        return d

    def argv(self) -> list[str]:
        """The `humanizer data build` arguments that reproduce these settings (non-defaults only)."""
        from engine.flags import flags_of

        return flags_of(self, fields(self))


def setting_fields(group: str | None = None, form_only: bool = False) -> list:
    """The dataclass fields of BuildSettings (with their metadata), for the CLI and the form."""
    return [f for f in fields(BuildSettings)
            if (group is None or f.metadata["group"] == group) and (not form_only or f.metadata["form"])]


def default_of(f):
    return None if f.default is MISSING else f.default
