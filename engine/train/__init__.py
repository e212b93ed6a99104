"""LoRA training: SFT, and DPO stacked on a frozen SFT adapter.

`train()` is the whole run: resolve the model, load and check the data, put a
trainable LoRA on the model (beside a mounted, frozen parent adapter for DPO), then
our own loop: AdamW on the LoRA weights only, warmup + cosine learning rate, padded
batches with length masks, metrics and progress into the `Run`, checkpoints and the
best-on-validation adapter, the final adapter in OUTPUT.

The DPO reference is the same model with only the trainable term switched off
(`lora.reference_mode`), i.e. base + SFT: no second model copy. Reference log-probs
of every training pair are computed once before the first step and cached (also on
disk, so a resumed run reuses them).

Layout of OUTPUT:

    adapters.safetensors, adapter_config.json    the final adapter (written last)
    checkpoints/step-000100/                     adapter + optimizer.safetensors + state.json
    checkpoints/best/                            the adapter with the lowest validation loss
    checkpoints/reference_logps.safetensors      DPO: cached reference log-probs

Started by `mlx.launch` as several ranks (`engine.distributed.world`), `train()` is
data-parallel: every rank loads the model and the data and runs its share of each global
batch; the loss is the global mean and the gradients are summed over the ranks, so the global
batch, learning-rate schedule, seed and data order, and (with dropout 0) the adapter, are those
of one process. Rank 0 alone writes OUTPUT and events; validation and the DPO reference
log-probs are computed by shards; a resume may use another number of ranks (`parallel.py`).

Every folder is written atomically; a run killed at any point leaves only complete
checkpoints, and `resume=True` continues from the newest one with the same step
count, optimizer state, data order and dropout randomness, so it ends with the same
adapter as a run that was never interrupted.

On the CPU backend a quantized base is dequantized to float32 in memory and trained
that way (the same function; MLX's CPU quantized kernels are slow); on Metal the
quantized weights are trained as they are (QLoRA). The adapter is the same either way.

Where the time and memory go, and what we do about it (figures in bench/README.md):
- the loss needs log-probs at response positions only, so the LM head and the
  log-softmax over the vocabulary run there only, a chunk of positions at a time, and
  the backward pass rebuilds each chunk's logits instead of keeping them
  (`chunked_logps`): the full (batch, length, vocab) logits never exist;
- for DPO on float32 weights the frozen parent is folded into the base weights
  (`lora.fold_adapter`): the same function with fewer matmuls;
- LoRA dropout keeps only its 1-byte mask for the backward pass (`lora.dropout_lora`);
- on the CPU backend, attention softmax and SwiGLU use a faster exp
  (`engine.fastops`).

Where each part lives (mlx-lm's tuner/ style, one job per module):

    settings.py      TrainSettings: every setting with its help (the CLI flags and the Train form); no MLX
    config.py        presets, defaults, resolve_config; no MLX
    setup.py         the model folder, tokenizer, dataset, and the model with its LoRA
    batches.py       padded SFT / DPO batches, the data order, step seeds, the data fingerprint
    losses.py        response log-probs (chunked LM head), SFT / DPO losses, KL, validation metrics
    reference.py     DPO reference log-probs, computed once and cached
    checkpoints.py   checkpoints, the final adapter, OUTPUT's lock and resume checks
    parallel.py      several ranks (mlx.launch): shares, summed gradients, what the writer alone does
    step.py          one update over the global batch (this rank's share of it)
    loop.py          train(): its stages over one TrainState

Every name other code uses is importable from here (`from engine.train import train`),
loaded on first use: importing `engine.train.settings` or `.config` loads no MLX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "settings": ("TrainSettings", "setting_fields"),
    "config": ("METHODS", "DPO_LOSSES", "PRESETS", "PRESETS_DOC", "DEFAULTS", "STRUCTURAL", "resolve_config"),
    "batches": ("PAD_TO", "sft_batch", "dpo_batch", "DataOrder", "step_seed", "data_fingerprint"),
    "losses": ("HEAD_CHUNK", "response_mask", "logits_head", "response_positions", "logps_of", "chunked_logps",
               "response_logps", "row_sums", "make_sft_loss", "dpo_terms", "pair_accuracy", "make_dpo_loss",
               "kl_per_token", "validation_metrics"),
    "reference": ("reference_logps",),
    "checkpoints": ("KEEP_CHECKPOINTS", "RESUME_HINT", "list_checkpoints", "save_checkpoint", "load_checkpoint",
                    "write_final_adapter"),
    "loop": ("train", "lr_schedule", "TrainState"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    # PEP 562: the MLX modules load when one of their names is first asked for
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'engine.train' has no attribute '{name}'")
    return getattr(importlib.import_module(f"engine.train.{_MODULE_OF[name]}"), name)


def __dir__():
    return sorted({*globals(), *__all__})
