"""What a run starts from: the model folder, the tokenizer alone (so the data is checked
before the model loads), the dataset, and the model with the parent adapter mounted and
a trainable LoRA on it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlx.core as mx

from engine.adapters import layers as lora
from engine.errors import HumanizerError
from engine.fastops import cpu_fast_ops
from engine.train.losses import logits_head
from engine.train.recompute import recompute_blocks


def resolve_model_dir(model_spec, ws, run) -> Path:
    from engine.models import resolve_model

    return Path(resolve_model(model_spec, ws, run)).resolve()


def load_dataset(data_spec, method, tokenizer, cfg, skip_bad_rows, ws, run):
    if hasattr(data_spec, "train"):
        ds = data_spec
    else:
        from engine.data import load_data

        ds = load_data(str(data_spec), method, tokenizer, cfg["max_seq_length"], skip_bad_rows=skip_bad_rows,
                       seed=cfg["seed"], ws=ws)
    if getattr(ds, "method", method) != method:
        raise HumanizerError(f"the data was loaded for {ds.method}, not {method}")
    want = "tokens" if method == "sft" else "chosen"
    for split in ("train", "valid"):
        for item in getattr(ds, split, None) or []:
            if not hasattr(item, want):
                raise HumanizerError(
                    f"{method.upper()} needs {'prompt/completion examples' if method == 'sft' else 'preference pairs'}"
                    f", but the {split} data holds {type(item).__name__} rows"
                )
    if not ds.train:
        raise HumanizerError("no training rows", "check the data")
    if hasattr(ds, "summary"):
        for line in ds.summary().splitlines():
            run.log(line)
    return ds



def load_tokenizer(model_dir: Path):
    """The model's tokenizer as mlx_lm.load gives it, without loading the weights."""
    from mlx_lm.utils import load_config, load_tokenizer

    try:
        config = load_config(model_dir)
    except (OSError, ValueError) as e:
        raise HumanizerError(f"can't read {model_dir / 'config.json'}: {e}", "is it an MLX model folder?") from e
    return load_tokenizer(model_dir, eos_token_ids=config.get("eos_token_id"))


def prepare_model(model_dir: Path, parent_info, method: str, cfg: dict, scope: contextlib.ExitStack, run):
    """(model, head, base identity, parent metadata or None): the model loaded (CPU fast ops
    entered into `scope`), the parent adapter mounted frozen (folded into float32 weights
    where that is exact) and a trainable LoRA placed as `cfg` says. Sets cfg["keys"] and
    cfg["num_layers"] to what was placed."""
    run.log(f"loading {model_dir}")
    model, _ = lora.load_model(model_dir)
    scope.enter_context(cpu_fast_ops(model))
    on_cpu = mx.default_device() == mx.cpu
    run.log("CPU backend: training on float32 (quantized layers dequantized)" if on_cpu
            else "Metal backend: training on the model's own weights (QLoRA if quantized)")
    base = lora.base_identity(model)
    parent_meta = None
    if parent_info is not None:
        lora.mount_adapter(model, parent_info.path, name="parent", model_dir=model_dir)
        parent_meta = {"name": parent_info.name, "path": str(parent_info.path.resolve()),
                       "fingerprint": parent_info.fingerprint, "method": parent_info.method}
        run.log(f"mounted {parent_info.name} frozen; training a {method.upper()} delta on top of it")
        if lora.fold_adapter(model, "parent"):
            # exact on float32 weights; the reference (trainable term off) is still base + parent
            run.log(f"{parent_info.name} folded into the float32 base weights for training")
    elif method == "dpo":
        run.log("no --mount-adapter: DPO runs on the base model, whose reference is the base itself")

    head = logits_head(model)

    paths = lora.apply_lora(model, cfg["num_layers"], cfg["keys"], cfg["rank"], cfg["scale"], cfg["dropout"],
                            seed=cfg["seed"])
    n_blocks = len(model.layers)
    cfg["keys"] = lora.resolve_keys(model, cfg["keys"])
    cfg["num_layers"] = n_blocks if cfg["num_layers"] <= 0 or cfg["num_layers"] > n_blocks else cfg["num_layers"]
    n_params = sum(v.size for v in lora.trainable_weights(model).values())
    run.log(f"LoRA rank {cfg['rank']} on {len(paths)} layers ({n_params:,} trainable parameters)")
    if cfg["grad_checkpoint"]:
        run.log(f"gradient checkpointing: {recompute_blocks(model)} blocks recompute their activations in the "
                "backward pass")
    return model, head, base, parent_meta
