"""Settings of `humanizer lora train`: one dataclass with a field per setting of `train()`
and its help text (like mlx-lm's TrainingArgs), which the CLI flags and the Train form are
built from. Imports no MLX, so --help and the form load fast.

A setting left None takes its value from the preset or the defaults (config.resolve_config),
so only what the user gave overrides them."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from engine.distributed.settings import RANK_FIELDS, hosts_field, nproc_field
from engine.train.config import DEFAULTS, DPO_LOSSES, METHODS, PRESETS

# The positional arguments of train() besides MODEL; the rest are its keywords.
POSITIONAL = ("data", "method", "output")
TYPES = {"int": int, "float": float, "str": str}
LORA = "LoRA and learning rate (default: the preset's)"
CHECKS = "evaluation and checkpoints"


def _default(key: str) -> str:
    return f" (default {DEFAULTS[key]})"


def _opt(help: str, default=MISSING, *, choices=None, metavar: str | None = None, form: bool = False,
         group: str = "training"):
    """A settings field: its default and what the CLI and the form need to show it. `form`:
    the Train form has its own field for it (the others go in its free "flags" field)."""
    meta = {"help": help, "choices": choices, "flag": None, "metavar": metavar, "form": form, "group": group}
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class TrainSettings:
    """Everything `humanizer lora train MODEL` takes (MODEL itself is the command's argument)."""

    data: str = _opt("folder with train.jsonl [valid.jsonl], a .jsonl/.parquet file, a workspace dataset or an "
                     "HF dataset id", metavar="DATA", form=True)
    method: str = _opt("sft: learn the completions; dpo: prefer chosen over rejected (stacked on an SFT adapter "
                       "with --mount-adapter)", "sft", choices=METHODS, form=True)
    preset: str = _opt("rank, scale, layers, keys and learning rate (see the presets below)", "small",
                       choices=tuple(PRESETS), form=True)
    iters: int | None = _opt(f"training steps (default {DEFAULTS['iters']['sft']} for SFT, "
                             f"{DEFAULTS['iters']['dpo']} for DPO)", None, metavar="N", form=True)
    output: str = _opt("adapter folder to write", metavar="DIR", form=True)
    mount_adapter: str | None = _opt("a trained SFT adapter to mount frozen; the new adapter is a delta on top of it",
                                     None, metavar="ADAPTER", form=True)
    rank: int | None = _opt("LoRA rank", None, group=LORA)
    scale: float | None = _opt("LoRA scale (the update is scale x B A)", None, group=LORA)
    dropout: float | None = _opt("dropout on the LoRA input, in [0, 1)", None, group=LORA)
    num_layers: int | None = _opt("adapt the last K transformer blocks (-1: all)", None, metavar="K", group=LORA)
    keys: str | None = _opt("the layers of a block to adapt, comma-separated, e.g. q_proj,v_proj", None,
                            metavar="KEYS", group=LORA)
    learning_rate: float | None = _opt("peak learning rate (warmup, then cosine decay to "
                                       f"{DEFAULTS['min_lr_ratio']:.0%})", None, metavar="LR",
                                       group=LORA)
    batch_size: int | None = _opt("rows (SFT) or pairs (DPO) per step" + _default("batch_size"), None, metavar="N")
    max_seq_length: int | None = _opt("tokens per row; longer rows are cut" + _default("max_seq_length"), None,
                                      metavar="N")
    beta: float | None = _opt("DPO beta" + _default("beta"), None, group="DPO")
    dpo_loss: str | None = _opt("DPO loss" + _default("dpo_loss"), None, choices=DPO_LOSSES, group="DPO")
    val_batches: int | None = _opt("validation batches per eval (-1: all, 0: no eval)" + _default("val_batches"),
                                   None, metavar="N", group=CHECKS)
    steps_per_eval: int | None = _opt("validate every N steps" + _default("steps_per_eval"), None, metavar="N",
                                      group=CHECKS)
    steps_per_report: int | None = _opt("report the training metrics every N steps" + _default("steps_per_report"),
                                        None, metavar="N", group=CHECKS)
    steps_per_save: int | None = _opt("save a checkpoint every N steps" + _default("steps_per_save"), None,
                                      metavar="N", group=CHECKS)
    seed: int | None = _opt("seed of the LoRA init, data order and dropout" + _default("seed"), None)
    grad_checkpoint: bool = _opt("recompute each block's activations in the backward pass: far less memory "
                                 "for about half again the time a step (needs --dropout 0)", False)
    resume: bool = _opt("continue the run in --output from its last checkpoint", False, form=True)
    skip_bad_rows: bool = _opt("drop rows with errors instead of stopping", False)
    nproc: int = nproc_field(form=True)  # where it runs (the CLI's): not a keyword of train()
    hosts: str = hosts_field(form=True)

    def train_kwargs(self) -> dict:
        """train()'s keyword arguments (everything but DATA, METHOD and OUTPUT)."""
        return {k: v for k, v in asdict(self).items() if k not in POSITIONAL + RANK_FIELDS}


def setting_fields(form_only: bool = False) -> list:
    """The fields of TrainSettings (with their metadata), for the CLI and the form."""
    return [f for f in fields(TrainSettings) if not form_only or f.metadata["form"]]


def flag(f) -> str:
    """The CLI flag of a settings field: --max-seq-length for max_seq_length."""
    return "--" + f.name.replace("_", "-")


def value_type(f):
    """int, float or str for a field that takes a value; None for an on/off flag."""
    name = f.type.split("|")[0].strip()  # "int | None" -> "int"
    return None if name == "bool" else TYPES.get(name, str)
