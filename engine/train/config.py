"""The training configuration: the presets, the defaults, and `resolve_config`, which
merges them with explicit settings and checks the result. Imports no MLX (the Train
form's preset summary and the CLI's --help read it)."""

from __future__ import annotations

from engine.errors import HumanizerError

METHODS = ("sft", "dpo")
DPO_LOSSES = ("sigmoid", "ipo")

PRESETS = {
    "small": {
        "rank": 8,
        "scale": 20.0,
        "dropout": 0.0,
        "num_layers": 8,
        "keys": ["q_proj", "v_proj"],
        "learning_rate": {"sft": 1e-4, "dpo": 1e-5},
    },
    "medium": {
        "rank": 16,
        "scale": 10.0,
        "dropout": 0.05,
        "num_layers": 16,
        "keys": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "learning_rate": {"sft": 1e-4, "dpo": 1e-5},
    },
    "large": {
        "rank": 32,
        "scale": 5.0,
        "dropout": 0.05,
        "num_layers": -1,
        "keys": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "learning_rate": {"sft": 5e-5, "dpo": 5e-6},
    },
}

DEFAULTS = {
    "iters": {"sft": 600, "dpo": 300},
    "batch_size": 4,
    "max_seq_length": 1024,
    "beta": 0.1,
    "dpo_loss": "sigmoid",
    "val_batches": 25,
    "steps_per_eval": 50,
    "steps_per_report": 10,
    "steps_per_save": 100,
    "seed": 0,
    "warmup_fraction": 0.05,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.0,
    "grad_checkpoint": False,
}


def layers_text(num_layers: int) -> str:
    """Which blocks get a LoRA, in words (the --help table and the Train form's preset line)."""
    return "every block" if num_layers <= 0 else f"last {num_layers} blocks"


def keys_text(keys) -> str:
    return " ".join(k.replace("_proj", "") for k in keys)


def _presets_table() -> str:
    """PRESETS as aligned rows, one per preset (made from PRESETS, so the help cannot drift from it)."""
    def lr(x: float) -> str:
        return f"{x:.0e}".replace("e-0", "e-")

    rows = [[name, f"rank {p['rank']}", f"scale {p['scale']:g}", f"dropout {p['dropout']:g}",
             layers_text(p["num_layers"]), keys_text(p["keys"]),
             f"lr SFT {lr(p['learning_rate']['sft'])}, DPO {lr(p['learning_rate']['dpo'])}"]
            for name, p in PRESETS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


PRESETS_DOC = f"""Presets (explicit flags override any field; keys: the _proj layers of each block):

{_presets_table()}

Why: rank x scale stays 160, mlx-lm's default LoRA (rank 8, scale 20), so a bigger
preset adds capacity (rank, layers, keys) without making each step's change to the
function much larger; the largest preset gets the lower learning rate because it adapts
every linear of every block. `small` is mlx-lm's own default placement (q/v of the last
blocks), cheap enough for the CPU. DPO learning rates are 10x below SFT: DPO continues
from a model that already writes well and only reweights it, and a high rate drives the
policy far from the reference (watch the KL metric). Dropout (on the trainable term's
input only) is off for `small`, whose few parameters barely overfit, and 0.05 above.
Common to all: AdamW without weight decay (= Adam, mlx-lm's default), learning-rate
warmup over the first {DEFAULTS['warmup_fraction']:.0%} of steps then cosine decay to {DEFAULTS['min_lr_ratio']:.0%}, \
batch {DEFAULTS['batch_size']}, sequences up to
{DEFAULTS['max_seq_length']} tokens, DPO beta {DEFAULTS['beta']} with the {DEFAULTS['dpo_loss']} loss."""

# Settings a resumed run must share with the run it continues.
STRUCTURAL = ("method", "rank", "scale", "dropout", "num_layers", "keys", "batch_size", "seed")


def resolve_config(method: str, preset: str | None = "small", **overrides) -> dict:
    """The full training config: DEFAULTS, then PRESETS[preset], then every override that
    is not None. `keys` may be a list or a comma-separated string."""
    if method not in METHODS:
        raise HumanizerError(f"unknown method '{method}'", "use --method sft or --method dpo")
    preset = preset or "small"
    if preset not in PRESETS:
        raise HumanizerError(f"unknown preset '{preset}'", f"presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    cfg = {k: (v[method] if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    cfg.update({k: (v[method] if isinstance(v, dict) else v) for k, v in p.items()})
    cfg["keys"] = list(cfg["keys"])
    cfg.update(method=method, preset=preset)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in cfg and k != "warmup_steps":
            raise HumanizerError(f"unknown training setting '{k}'")
        cfg[k] = v
    if isinstance(cfg["keys"], str):
        cfg["keys"] = [k.strip() for k in cfg["keys"].split(",") if k.strip()]
    for k in ("iters", "rank", "batch_size", "max_seq_length", "steps_per_eval", "steps_per_report",
              "steps_per_save"):
        if int(cfg[k]) < 1:
            raise HumanizerError(f"{k.replace('_', '-')} must be at least 1 (got {cfg[k]})")
        cfg[k] = int(cfg[k])
    if not 0.0 <= float(cfg["dropout"]) < 1.0:
        raise HumanizerError(f"dropout must be in [0, 1) (got {cfg['dropout']})")
    cfg["grad_checkpoint"] = bool(cfg["grad_checkpoint"])
    if cfg["grad_checkpoint"] and float(cfg["dropout"]) > 0:
        raise HumanizerError(
            f"--grad-checkpoint needs dropout 0 (this run has {float(cfg['dropout']):g}, preset '{preset}'): a "
            "recomputed block would draw other dropout masks in the backward pass than in the forward",
            "add --dropout 0, or leave out --grad-checkpoint")
    if float(cfg["learning_rate"]) <= 0 or float(cfg["beta"]) <= 0:
        raise HumanizerError("learning-rate and beta must be positive")
    if cfg["dpo_loss"] not in DPO_LOSSES:
        raise HumanizerError(f"unknown DPO loss '{cfg['dpo_loss']}'", f"use one of {', '.join(DPO_LOSSES)}")
    cfg["num_layers"] = int(cfg["num_layers"])
    cfg["val_batches"] = int(cfg["val_batches"])
    cfg["seed"] = int(cfg["seed"])
    for k in ("scale", "dropout", "learning_rate", "beta", "warmup_fraction", "min_lr_ratio", "weight_decay"):
        cfg[k] = float(cfg[k])
    if cfg.get("warmup_steps") is None:
        cfg["warmup_steps"] = max(1, round(cfg["iters"] * cfg["warmup_fraction"]))
    cfg["warmup_steps"] = max(1, min(int(cfg["warmup_steps"]), cfg["iters"]))
    return cfg

