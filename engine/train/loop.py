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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from engine import adapters as A
from engine import lora
from engine.errors import HumanizerError
from engine.events import Cancelled, NullRun, Run
from engine.fastops import cpu_fast_ops
from engine.workspace import atomic_dir, disk_errors

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
PRESETS_DOC = """Presets (explicit flags override any field):

  small   rank 8,  scale 20, dropout 0,    last 8 blocks,  q_proj v_proj,                 lr SFT 1e-4, DPO 1e-5
  medium  rank 16, scale 10, dropout 0.05, last 16 blocks, q/k/v/o_proj,                  lr SFT 1e-4, DPO 1e-5
  large   rank 32, scale 5,  dropout 0.05, every block,    attention and MLP (all 7),     lr SFT 5e-5, DPO 5e-6

Why: rank x scale stays 160, mlx-lm's default LoRA (rank 8, scale 20), so a bigger
preset adds capacity (rank, layers, keys) without making each step's change to the
function much larger; the largest preset gets the lower learning rate because it adapts
every linear of every block. `small` is mlx-lm's own default placement (q/v of the last
blocks), cheap enough for the CPU. DPO learning rates are 10x below SFT: DPO continues
from a model that already writes well and only reweights it, and a high rate drives the
policy far from the reference (watch the KL metric). Dropout (on the trainable term's
input only) is off for `small`, whose few parameters barely overfit, and 0.05 above.
Common to all: AdamW without weight decay (= Adam, mlx-lm's default), learning-rate
warmup over the first 5% of steps then cosine decay to 10%, batch 4, sequences up to
1024 tokens, DPO beta 0.1 with the sigmoid loss."""

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
}
# Settings a resumed run must share with the run it continues.
STRUCTURAL = ("method", "rank", "scale", "dropout", "num_layers", "keys", "batch_size", "seed")
KEEP_CHECKPOINTS = 2
PAD_TO = 8
HEAD_CHUNK = 64  # positions whose full-vocabulary logits exist at once (peak memory; no slower than more)


# --- configuration -------------------------------------------------------------------


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


def lr_schedule(lr: float, iters: int, warmup: int, min_ratio: float):
    """Linear warmup from lr/warmup to lr over `warmup` steps, then cosine to lr*min_ratio."""
    decay = max(1, iters - warmup)

    def schedule(step):
        s = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        t = mx.clip((s - warmup) / decay, 0.0, 1.0)
        cos = lr * min_ratio + 0.5 * lr * (1 - min_ratio) * (1 + mx.cos(math.pi * t))
        return mx.where(s < warmup, lr * (s + 1) / warmup, cos)

    return schedule


# --- batches and losses --------------------------------------------------------------


def _pad(seqs: list[list[int]]) -> mx.array:
    width = max(len(s) for s in seqs)
    width = -(-width // PAD_TO) * PAD_TO
    arr = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return mx.array(arr)


def sft_batch(examples, max_len: int):
    """(tokens (B, L), lengths (B,), prompt_lens (B,)); loss on tokens[prompt_len:length]."""
    seqs = [list(e.tokens)[:max_len] for e in examples]
    return (
        _pad(seqs),
        mx.array([len(s) for s in seqs], mx.int32),
        mx.array([min(int(e.prompt_len), len(s)) for e, s in zip(examples, seqs)], mx.int32),
    )


def dpo_batch(pairs, max_len: int):
    """Chosen rows then rejected rows: prompt + response, as in `sft_batch`."""
    seqs, plens = [], []
    for which in ("chosen", "rejected"):
        for p in pairs:
            prompt, resp = list(p.prompt), list(getattr(p, which))
            prompt = prompt[-max(1, max_len - len(resp)):] if len(prompt) + len(resp) > max_len else prompt
            seq = (prompt + resp)[:max_len]
            seqs.append(seq)
            plens.append(min(len(prompt), len(seq)))
    return _pad(seqs), mx.array([len(s) for s in seqs], mx.int32), mx.array(plens, mx.int32)


def response_mask(tokens: mx.array, lengths: mx.array, prompt_lens: mx.array) -> mx.array:
    """Mask over target positions (tokens[:, 1:]) that are response tokens."""
    pos = mx.arange(1, tokens.shape[1])[None, :]
    return (pos >= prompt_lens[:, None]) & (pos < lengths[:, None])


def logits_head(model):
    """The model's LM head as a function hidden -> logits when its forward is just
    body (`model.model`) then head, as in most mlx-lm architectures; None when the forward
    does more (Gemma 2's softcap, Granite's scaling). Checked on a few tokens, so an
    architecture that does something else falls back to the whole forward."""
    body = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if head is None:
        head = getattr(getattr(body, "embed_tokens", None), "as_linear", None)
    if body is None or head is None:
        return None
    training = model.training
    model.eval()  # no dropout in the check
    try:
        x = mx.array([[1, 2, 3, 4, 5]])
        with lora.reference_mode(model):
            same = mx.allclose(head(body(x)), model(x), rtol=1e-4, atol=1e-5).item()
    except Exception:  # noqa: BLE001  any surprise: use the plain forward
        same = False
    finally:
        model.train(training)
    return head if same else None


def response_positions(model, head, tokens, lengths, prompt_lens):
    """The model's output at the response positions only: (x (N, ...), to_logits, targets (N,),
    the batch row of each position as a numpy array (N,)). With `head` (`logits_head`), x is
    the hidden state there and to_logits the LM head, so the (B, L, vocab) logits of every
    position, most of a step's memory and much of its time, are never built; without, x is
    already the logits."""
    mask = np.array(response_mask(tokens, lengths, prompt_lens))
    rows, cols = np.nonzero(mask)
    r, c = mx.array(rows.astype(np.int32)), mx.array(cols.astype(np.int32))
    targets = tokens[:, 1:][r, c]
    if head is None:
        return model(tokens[:, :-1])[r, c], (lambda x: x), targets, rows
    return model.model(tokens[:, :-1])[r, c], head, targets, rows


def logps_of(logits: mx.array, targets: mx.array) -> mx.array:
    return -nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")


def chunked_logps(head, x: mx.array, targets: mx.array, chunk: int = HEAD_CHUNK) -> mx.array:
    """log p(targets) from hidden states x (N, D), the head's (chunk, vocab) logits built one
    chunk at a time and built again in the backward pass instead of being kept: memory for
    one chunk's logits rather than all N positions', for one more head forward."""
    n = x.shape[0]
    spans = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]

    def in_turn(parts: list, i: int, j: int, x: mx.array) -> mx.array:
        # chunk i:j only after the one before: without the edge MLX may build all chunks' logits at once
        return x[i:j] if not parts else mx.depends(x[i:j], parts[-1])

    @mx.custom_function
    def logps(x):
        parts = []
        for i, j in spans:
            parts.append(logps_of(head(in_turn(parts, i, j, x)), targets[i:j]))
        return mx.concatenate(parts)

    @logps.vjp
    def logps_vjp(x, cotangent, _):
        grads = []
        for i, j in spans:
            t = targets[i:j]
            _, (g,) = mx.vjp(lambda z: logps_of(head(z), t), [in_turn(grads, i, j, x)], [cotangent[i:j]])
            grads.append(g)
        return (mx.concatenate(grads),)

    return logps(x)


def response_logps(model, head, tokens, lengths, prompt_lens):
    """(log p of each response token (N,), its batch row (N,) as a numpy array)."""
    x, to_logits, targets, rows = response_positions(model, head, tokens, lengths, prompt_lens)
    if head is None or rows.size == 0:
        return logps_of(to_logits(x), targets), rows
    return chunked_logps(head, x, targets), rows


def row_sums(values: mx.array, rows: np.ndarray, n_rows: int) -> tuple[mx.array, mx.array]:
    """(sum of `values` per batch row, count per row) for values tagged with their row."""
    onehot = mx.array((rows[None, :] == np.arange(n_rows)[:, None]).astype(np.float32))
    return onehot @ values, onehot.sum(-1)


def make_sft_loss(head):
    def loss_fn(model, tokens, lengths, prompt_lens):
        logp, _ = response_logps(model, head, tokens, lengths, prompt_lens)
        ntok = logp.shape[0]
        return -logp.sum() / max(ntok, 1), mx.array(ntok)

    return loss_fn


def dpo_terms(pol_sum, pol_n, ref_sum, ref_n, beta: float, kind: str):
    """Per-pair DPO loss and the quantities it reports. Rows: chosen first, then rejected.
    IPO uses per-token average log-probs (as its reference implementation does)."""
    if kind == "ipo":
        pol, ref = pol_sum / mx.maximum(pol_n, 1), ref_sum / mx.maximum(ref_n, 1)
    else:
        pol, ref = pol_sum, ref_sum
    n = pol.shape[0] // 2
    d_c, d_r = pol[:n] - ref[:n], pol[n:] - ref[n:]
    margin = d_c - d_r
    if kind == "ipo":
        losses = (margin - 1.0 / (2 * beta)) ** 2
    else:
        losses = mx.logaddexp(mx.zeros_like(margin), -beta * margin)  # -log sigmoid(beta * margin)
    return losses, {
        "chosen_reward": beta * d_c,
        "rejected_reward": beta * d_r,
        "chosen_logp": pol[:n],
        "rejected_logp": pol[n:],
    }


def pair_accuracy(margin: mx.array) -> mx.array:
    """Per pair: 1 when the chosen reward is above the rejected one, 0 when below, 0.5 for a
    tie (equal rewards are no win: at step 0 the policy is the reference and every pair ties)."""
    return (margin > 0).astype(mx.float32) + 0.5 * (margin == 0).astype(mx.float32)


def make_dpo_loss(beta: float, kind: str, head):
    def loss_fn(model, tokens, lengths, prompt_lens, ref_sum, ref_n):
        logp, rows = response_logps(model, head, tokens, lengths, prompt_lens)
        pol_sum, pol_n = row_sums(logp, rows, tokens.shape[0])
        losses, terms = dpo_terms(pol_sum, pol_n, ref_sum, ref_n, beta, kind)
        return losses.mean(), terms, mx.array(logp.shape[0])

    return loss_fn


def kl_per_token(p_logits: mx.array, q_logits: mx.array) -> mx.array:
    """KL(p || q) over the full vocabulary at each position."""
    lp = p_logits - mx.logsumexp(p_logits, axis=-1, keepdims=True)
    lq = q_logits - mx.logsumexp(q_logits, axis=-1, keepdims=True)
    return (mx.exp(lp) * (lp - lq)).sum(-1)


# --- data order ------------------------------------------------------------------------


class DataOrder:
    """Step -> indices of its batch. Each epoch is a permutation drawn from (seed, epoch),
    so the order is a pure function of the step: resuming at step s needs nothing else."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        g0 = step * self.batch_size
        return [int(self._perm(g // self.n)[g % self.n]) for g in range(g0, g0 + self.batch_size)]

    def state(self, step: int) -> dict:
        g = step * self.batch_size
        return {"seed": self.seed, "epoch": g // self.n, "position": g % self.n, "n": self.n}


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**32)


def data_fingerprint(items) -> str:
    h = hashlib.sha256()
    for it in items:
        if hasattr(it, "tokens"):
            h.update(np.asarray(it.tokens, np.int64).tobytes() + b"|%d;" % int(it.prompt_len))
        else:
            for part in (it.prompt, it.chosen, it.rejected):
                h.update(np.asarray(part, np.int64).tobytes() + b"|")
            h.update(b";")
    return "sha256:" + h.hexdigest()[:32]


# --- checkpoints -----------------------------------------------------------------------


def _step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:06d}"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first (atomic writes: a visible one is complete)."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        d for d in ckpt_dir.iterdir()
        if d.is_dir() and d.name.startswith("step-") and (d / "state.json").is_file()
    ]
    return sorted(found, key=lambda d: d.name, reverse=True)


def _remove_dir(d: Path) -> None:
    """Hide then delete, so a crash mid-delete never leaves a half folder that looks whole."""
    hidden = d.with_name(f".del-{d.name}-{os.getpid()}")
    try:
        os.rename(d, hidden)
    except OSError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, adapter_cfg: dict, metadata: dict,
                    state: dict) -> Path:
    d = _step_dir(ckpt_dir, step)
    weights = lora.trainable_weights(model)
    opt_state = dict(tree_flatten(optimizer.state))
    need = _nbytes(weights) + _nbytes(opt_state)
    with atomic_dir(d, need, RESUME_HINT) as tmp:
        A.write_adapter_files(tmp, weights, A.adapter_config(adapter_cfg, metadata))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    for old in list_checkpoints(ckpt_dir)[KEEP_CHECKPOINTS:]:
        _remove_dir(old)
    return d


RESUME_HINT = ("free space on that disk (or train into another --output); nothing half-written was left, and "
               "the same command with --resume continues from the last checkpoint, if the run saved one")


def _nbytes(arrays: dict) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in arrays.values())


def load_checkpoint(d: Path) -> tuple[dict, dict, dict]:
    """(state, lora weights, optimizer state tree)."""
    state = json.loads((d / "state.json").read_text(encoding="utf-8"))
    weights = A.load_weights(d)
    opt = tree_unflatten(list(mx.load(str(d / "optimizer.safetensors")).items()))
    return state, weights, opt


def write_final_adapter(output: Path, weights: dict, config: dict) -> None:
    """Put the two adapter files into OUTPUT (which also holds checkpoints/): staged in a
    temp folder inside it, the old config removed first and the new config moved in last,
    so OUTPUT looks like an adapter only when both new files are in place."""
    output.mkdir(parents=True, exist_ok=True)
    with disk_errors(output, _nbytes(weights), RESUME_HINT):
        stage = Path(tempfile.mkdtemp(prefix=".final-", dir=output))
    try:
        with disk_errors(output / A.ADAPTER_FILE, _nbytes(weights), RESUME_HINT):
            A.write_adapter_files(stage, weights, config)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(output / A.CONFIG_FILE)
        os.replace(stage / A.ADAPTER_FILE, output / A.ADAPTER_FILE)
        os.replace(stage / A.CONFIG_FILE, output / A.CONFIG_FILE)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# --- cancellation ------------------------------------------------------------------------


class _ForcedStop(Cancelled):
    """A second SIGTERM / SIGINT: stop now, without a checkpoint (the state may be mid-update)."""


class _StopRequest:
    """While training, SIGTERM / SIGINT only set a flag, checked between steps, so a
    cancel never lands in the middle of an update or a write. A second one stops at once."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise _ForcedStop()
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# --- the run -----------------------------------------------------------------------------


def _resolve_model_dir(model_spec, ws, run) -> Path:
    p = Path(str(model_spec)).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p.resolve()
    from engine.models import resolve_model
    from engine.workspace import Workspace

    return Path(resolve_model(model_spec, ws or Workspace.open(), run)).resolve()


def _load_dataset(data_spec, method, tokenizer, cfg, skip_bad_rows, ws, run):
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


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def train(
    model_spec,
    data_spec,
    method: str,
    output,
    *,
    preset: str = "small",
    iters: int | None = None,
    mount_adapter=None,
    rank: int | None = None,
    scale: float | None = None,
    dropout: float | None = None,
    num_layers: int | None = None,
    keys=None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    max_seq_length: int | None = None,
    beta: float | None = None,
    dpo_loss: str | None = None,
    val_batches: int | None = None,
    steps_per_eval: int | None = None,
    steps_per_report: int | None = None,
    steps_per_save: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    skip_bad_rows: bool = False,
    run: Run = NullRun(),
    ws=None,
) -> Path:
    """Train a LoRA adapter (see the module docstring); returns OUTPUT.

    `data_spec` is a DATA spec for `engine.data.load_data`, or an already loaded
    Dataset-like object (`.train`, `.valid` lists of Example or Pair). With
    `mount_adapter`, that adapter is mounted frozen and the new one is trained on top of
    it as a delta (its parent); unless given, num_layers and keys follow the parent's."""
    output = Path(output).expanduser().resolve()
    ckpt_dir = output / "checkpoints"
    parent_info = A.read_adapter(mount_adapter) if mount_adapter else None
    if parent_info is not None:
        num_layers = parent_info.num_layers if num_layers is None else num_layers
        keys = parent_info.keys if keys is None else keys
    cfg = resolve_config(
        method, preset, iters=iters, rank=rank, scale=scale, dropout=dropout, num_layers=num_layers, keys=keys,
        learning_rate=learning_rate, batch_size=batch_size, max_seq_length=max_seq_length, beta=beta,
        dpo_loss=dpo_loss, val_batches=val_batches, steps_per_eval=steps_per_eval,
        steps_per_report=steps_per_report, steps_per_save=steps_per_save, seed=seed,
    )
    # what OUTPUT held before (a lone lock, an older version's failed run, counts as nothing)
    before = {p.name for p in output.iterdir()} - {".train.lock"} if output.is_dir() else None
    lock = _lock_output(output)
    scope = contextlib.ExitStack()
    try:
        _clean_temp(output)
        checkpoints = list_checkpoints(ckpt_dir)
        final_steps, final_cfg = _finished(output)
        if not resume and (checkpoints or final_steps is not None):
            raise HumanizerError(
                f"{output} already holds a training run",
                "pass --resume to continue it, or choose another --output",
            )
        if resume and final_steps is not None:
            _check_same_settings(final_cfg, cfg)
        if resume and final_steps is not None and (final_steps >= cfg["iters"] or not checkpoints):
            run.log(f"{output} already holds the finished adapter ({final_steps} steps): nothing to resume")
            run.done(adapter=str(output), steps=final_steps)
            return output

        # data first (with the tokenizer alone: a second), so a bad row stops the run before the model load
        model_dir = _resolve_model_dir(model_spec, ws, run)
        tokenizer = None if hasattr(data_spec, "train") else _load_tokenizer(model_dir)
        ds = _load_dataset(data_spec, method, tokenizer, cfg, skip_bad_rows, ws, run)
        train_set, valid_set = list(ds.train), list(ds.valid or [])

        # model ------------------------------------------------------------------------------
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

        data_fp = data_fingerprint(train_set)
        metadata = {
            "method": method,
            "base": {"name": base["name"], "fingerprint": base["fingerprint"]},
            "parent": parent_meta,
            "training": {**cfg, "data": getattr(ds, "source", None), "data_fingerprint": data_fp,
                         "train_rows": len(train_set), "valid_rows": len(valid_set)},
        }

        # optimizer, resume ------------------------------------------------------------------
        optimizer = optim.AdamW(
            learning_rate=lr_schedule(cfg["learning_rate"], cfg["iters"], cfg["warmup_steps"], cfg["min_lr_ratio"]),
            weight_decay=cfg["weight_decay"],
        )
        start, best_val, best_step, history_tokens = 0, math.inf, None, 0
        if resume and checkpoints:
            state = weights = opt_state = None
            for d in checkpoints:
                try:
                    state, weights, opt_state = load_checkpoint(d)
                    break
                except (OSError, ValueError, RuntimeError) as e:
                    run.log(f"skipping unreadable checkpoint {d.name}: {e}")
            if state is None:
                raise HumanizerError(f"no readable checkpoint in {ckpt_dir}", "start a new run with another --output")
            _check_resume(state, cfg, base, parent_meta, data_fp, run)
            lora.set_trainable_weights(model, weights)
            optimizer.state = opt_state
            start = int(state["step"])
            best_val = state.get("best_val")
            best_val = math.inf if best_val is None else float(best_val)
            best_step = state.get("best_step")
            history_tokens = int(state.get("trained_tokens", 0))
            run.log(f"resuming at step {start} of {cfg['iters']} from {d.name}")
        elif resume:
            run.log("no checkpoint to resume from; starting at step 0")
        mx.eval(model.parameters(), optimizer.state)

        adapter_cfg = {k: cfg[k] for k in ("num_layers", "rank", "scale", "dropout", "keys")}
        order = DataOrder(len(train_set), cfg["batch_size"], cfg["seed"])
        max_len = cfg["max_seq_length"]
        val_chunks = [valid_set[i:i + cfg["batch_size"]] for i in range(0, len(valid_set), cfg["batch_size"])]
        if cfg["val_batches"] >= 0:  # -1: all of them
            val_chunks = val_chunks[: cfg["val_batches"]]
        if not val_chunks:
            run.log("no validation: no validation loss, KL or best adapter")

        # losses ------------------------------------------------------------------------------
        if method == "sft":
            loss_and_grad = nn.value_and_grad(model, make_sft_loss(head))
            ref_sum = ref_n = None
        else:
            loss_and_grad = nn.value_and_grad(model, make_dpo_loss(cfg["beta"], cfg["dpo_loss"], head))
            ref_sum, ref_n = _reference_logps(model, head, train_set, cfg, ckpt_dir, base, parent_meta, data_fp, run)

        def batch_for(step: int):
            idx = order.batch(step)
            if method == "sft":
                return sft_batch([train_set[i] for i in idx], max_len), None
            toks = dpo_batch([train_set[i] for i in idx], max_len)
            rows = mx.array(idx + [i + len(train_set) for i in idx])  # the cache: chosen rows, then rejected
            return toks, (ref_sum[rows], ref_n[rows])

        def evaluate() -> dict:
            model.eval()
            tot_loss = tot_n = tot_kl = tot_kl_n = 0.0
            pair_losses, accs, margins, ties = [], [], [], []
            for chunk in val_chunks:
                if method == "sft":
                    toks = sft_batch(chunk, max_len)
                else:
                    toks = dpo_batch(chunk, max_len)
                x, to_logits, targets, rows = response_positions(model, head, *toks)
                if rows.size == 0:
                    continue
                with lora.reference_mode(model):
                    rx, _, _, _ = response_positions(model, head, *toks)
                parts, rparts = [], []
                for i in range(0, rows.size, HEAD_CHUNK):  # in chunks: full-vocabulary tensors are big
                    lg, rlg = to_logits(x[i:i + HEAD_CHUNK]), to_logits(rx[i:i + HEAD_CHUNK])
                    parts.append(logps_of(lg, targets[i:i + HEAD_CHUNK]))
                    rparts.append(logps_of(rlg, targets[i:i + HEAD_CHUNK]))
                    kl = kl_per_token(lg.astype(mx.float32), rlg.astype(mx.float32)).sum()
                    mx.eval(kl, parts[-1], rparts[-1])
                    tot_kl += kl.item()
                logp, rlogp = mx.concatenate(parts), mx.concatenate(rparts)
                if method == "sft":
                    tot_loss += -logp.sum().item()
                else:
                    n_rows = toks[0].shape[0]
                    (ps, pn), (rs, rn) = row_sums(logp, rows, n_rows), row_sums(rlogp, rows, n_rows)
                    losses, terms = dpo_terms(ps, pn, rs, rn, cfg["beta"], cfg["dpo_loss"])
                    m = terms["chosen_reward"] - terms["rejected_reward"]
                    mx.eval(losses, m)
                    pair_losses += losses.tolist()
                    margins += m.tolist()
                    accs += pair_accuracy(m).tolist()
                    ties += (m == 0).astype(mx.float32).tolist()
                ntok = int(rows.size)
                tot_n += ntok
                tot_kl_n += ntok
            model.train()
            if method == "sft":
                return {"val_loss": tot_loss / max(tot_n, 1), "val_kl": tot_kl / max(tot_kl_n, 1)}
            return {"val_loss": _mean(pair_losses), "val_kl": tot_kl / max(tot_kl_n, 1),
                    "val_accuracy": _mean(accs), "val_ties": _mean(ties), "val_margin": _mean(margins)}

        # the loop ----------------------------------------------------------------------------
        iters = cfg["iters"]
        last_eval: dict = {}
        window: dict[str, list[float]] = {}
        win_tokens, win_time = 0, 0.0
        last_report: dict = {}
        t_start = time.perf_counter()
        done_step = start
        last_saved = start if (resume and checkpoints) else None
        mx.reset_peak_memory()

        def state_dict(step: int) -> dict:
            return {
                "step": step, "iters": iters, "config": cfg, "method": method,
                "base_fingerprint": base["fingerprint"],
                "parent_fingerprint": (parent_meta or {}).get("fingerprint"),
                "data_fingerprint": data_fp, "data_order": order.state(step),
                "rng": {"scheme": "mx.random.seed(step_seed(seed, step)) before each step", "seed": cfg["seed"]},
                "best_val": None if math.isinf(best_val) else best_val, "best_step": best_step,
                "trained_tokens": history_tokens, "last_metrics": {**last_report, **last_eval},
            }

        def checkpoint(step: int) -> None:
            nonlocal last_saved
            if last_saved == step:
                return
            meta = {**metadata, "checkpoint_step": step, "metrics": {**last_report, **last_eval}}
            d = save_checkpoint(ckpt_dir, step, model, optimizer, adapter_cfg, meta, state_dict(step))
            last_saved = step
            run.artifact(d, kind="checkpoint", step=step)

        evaluated_at = None

        def maybe_eval(step: int) -> None:
            nonlocal best_val, best_step, last_eval, evaluated_at
            if not val_chunks or evaluated_at == step:
                return
            evaluated_at = step
            t0 = time.perf_counter()
            last_eval = evaluate()
            run.metric(step, **last_eval, eval_seconds=round(time.perf_counter() - t0, 3))
            if last_eval["val_loss"] < best_val:
                best_val, best_step = last_eval["val_loss"], step
                meta = {**metadata, "checkpoint_step": step, "best": True, "metrics": dict(last_eval)}
                with disk_errors(ckpt_dir / "best", _nbytes(lora.trainable_weights(model)), RESUME_HINT):
                    A.save_adapter(model, ckpt_dir / "best", adapter_cfg, meta)
                run.artifact(ckpt_dir / "best", kind="best", step=step, val_loss=best_val)

        model.train()
        with _StopRequest() as stop:
            try:
                if start == 0:
                    maybe_eval(0)
                run.progress(start, iters, f"step {start}/{iters}", eta=None)
                for step in range(start, iters):
                    if stop.signal is not None:
                        raise Cancelled()
                    (toks, ref) = batch_for(step)
                    mx.random.seed(step_seed(cfg["seed"], step))
                    t0 = time.perf_counter()
                    if method == "sft":
                        (loss, ntok), grads = loss_and_grad(model, *toks)
                        optimizer.update(model, grads)
                        mx.eval(loss, ntok, model.trainable_parameters(), optimizer.state)
                        values = {"loss": loss.item()}
                    else:
                        (loss, terms, ntok), grads = loss_and_grad(model, *toks, *ref)
                        optimizer.update(model, grads)
                        mx.eval(loss, terms, ntok, model.trainable_parameters(), optimizer.state)
                        cr, rr = terms["chosen_reward"], terms["rejected_reward"]
                        values = {
                            "loss": loss.item(),
                            "chosen_reward": cr.mean().item(),
                            "rejected_reward": rr.mean().item(),
                            "margin": (cr - rr).mean().item(),
                            "accuracy": pair_accuracy(cr - rr).mean().item(),
                            "chosen_logp": terms["chosen_logp"].mean().item(),
                            "rejected_logp": terms["rejected_logp"].mean().item(),
                        }
                    dt = time.perf_counter() - t0
                    n_tokens = int(toks[1].sum().item())
                    history_tokens += n_tokens
                    win_tokens += n_tokens
                    win_time += dt
                    for k, v in values.items():
                        window.setdefault(k, []).append(v)
                    s = step + 1
                    done_step = s
                    elapsed = time.perf_counter() - t_start
                    eta = elapsed / (s - start) * (iters - s)
                    if s % cfg["steps_per_report"] == 0 or s == iters:
                        last_report = {k: _mean(v) for k, v in window.items()}
                        last_report.update(
                            learning_rate=float(optimizer.learning_rate.item()),
                            tokens_per_second=win_tokens / win_time if win_time else 0.0,
                            peak_memory_gb=mx.get_peak_memory() / 1e9,
                            trained_tokens=history_tokens,
                        )
                        run.metric(s, **last_report)
                        window, win_tokens, win_time = {}, 0, 0.0
                    if s % cfg["steps_per_eval"] == 0 or s == iters:
                        maybe_eval(s)
                    if s % cfg["steps_per_save"] == 0 and s < iters:
                        checkpoint(s)
                    run.progress(s, iters, f"step {s}/{iters} loss {values['loss']:.4f}", eta=round(eta, 1))
            except _ForcedStop:
                run.log(f"stopped at once during step {done_step + 1}; --resume continues from the last checkpoint")
                raise Cancelled() from None
            except (Cancelled, KeyboardInterrupt):
                checkpoint(done_step)
                run.log(f"cancelled at step {done_step}; checkpoint saved, --resume continues")
                if done_step > start:  # the curves end where the run did (after the checkpoint: a 2nd cancel loses nothing)
                    maybe_eval(done_step)
                raise Cancelled() from None
            maybe_eval(iters)  # every run ends with a validation point (a no-op if step `iters` just had one)

        # the final adapter -----------------------------------------------------------------
        metrics = {**last_report, **last_eval, "steps": iters, "train_seconds": round(time.perf_counter() - t_start, 2)}
        if best_step is not None:
            metrics.update(best_step=best_step, best_val_loss=best_val)
        meta = {**metadata, "metrics": metrics}
        write_final_adapter(output, lora.trainable_weights(model), A.adapter_config(adapter_cfg, meta))
        run.artifact(output, kind="adapter", method=method)
        run.done(adapter=str(output), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return output
    finally:
        scope.close()
        _release_output(output, lock, before)


def _lock_output(output: Path):
    """Hold an exclusive lock on OUTPUT for the run: two runs never write one folder."""
    import fcntl

    output.mkdir(parents=True, exist_ok=True)
    path = output / ".train.lock"
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise HumanizerError(f"another training run is writing {output}", "wait for it, or cancel it") from None
        try:  # a run that wrote nothing removes its lock file (_release_output): lock the file that is there now
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def _release_output(output: Path, lock, before: set[str] | None) -> None:
    """Unlock OUTPUT. A run that wrote nothing there (it failed on its data, its model, a
    setting) leaves nothing behind: no lock file, no empty checkpoints/, and no OUTPUT
    folder unless it held something before (`before`: its entries then; None: no folder)."""
    try:
        added = {p.name for p in output.iterdir()} - (before or set()) - {".train.lock"}
        if added == {"checkpoints"} and not any((output / "checkpoints").iterdir()):
            (output / "checkpoints").rmdir()
            added = set()
        if not added:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(output / ".train.lock")  # still held: no other run can have taken it
            if not before:
                with contextlib.suppress(OSError):
                    output.rmdir()  # only when empty
    except OSError:
        pass
    finally:
        lock.close()


def _load_tokenizer(model_dir: Path):
    """The model's tokenizer as mlx_lm.load gives it, without loading the weights."""
    from mlx_lm.utils import load_config, load_tokenizer

    try:
        config = load_config(model_dir)
    except (OSError, ValueError) as e:
        raise HumanizerError(f"can't read {model_dir / 'config.json'}: {e}", "is it an MLX model folder?") from e
    return load_tokenizer(model_dir, eos_token_ids=config.get("eos_token_id"))


def _clean_temp(output: Path) -> None:
    """Remove the hidden temp entries a killed run may have left (we hold the lock)."""
    for folder in (output, output / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name != ".train.lock" and any(
                    t in p.name for t in (".tmp-", ".del-", ".final-", ".reference-", ".old-")):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()


def _finished(output: Path) -> tuple[int | None, dict]:
    """(step count, training config) of the finished adapter in OUTPUT; (None, {}) if none."""
    if not ((output / A.CONFIG_FILE).is_file() and (output / A.ADAPTER_FILE).is_file()):
        return None, {}
    try:
        hz = json.loads((output / A.CONFIG_FILE).read_text(encoding="utf-8"))["humanizer"]
        return int(hz["metrics"]["steps"]), dict(hz.get("training") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return 0, {}


def _key_names(keys) -> list[str] | None:
    return None if keys is None else sorted(k.rsplit(".", 1)[-1] for k in keys)


def _check_same_settings(old: dict, cfg: dict, extra: list[str] = ()) -> None:
    """Refuse to continue a run whose structural settings differ (`keys` compared by layer name)."""
    diffs = list(extra)
    for k in STRUCTURAL:
        a, b = old.get(k), cfg.get(k)
        if k == "keys":
            a, b = _key_names(a), _key_names(b)
        if k in old and a != b:
            diffs.append(f"{k}: {old.get(k)!r} then, {cfg.get(k)!r} now")
    if diffs:
        raise HumanizerError(
            "cannot resume: the settings differ from the run being resumed (" + "; ".join(diffs) + ")",
            "resume with the same model, adapter and settings, or start a new run with another --output",
        )


def _check_resume(state: dict, cfg: dict, base: dict, parent: dict | None, data_fp: str, run: Run) -> None:
    old = state.get("config") or {}
    diffs = []
    if state.get("base_fingerprint") != base["fingerprint"]:
        diffs.append("base model: a different model's weights")
    if state.get("parent_fingerprint") != (parent or {}).get("fingerprint"):
        diffs.append("mounted adapter: a different one")
    _check_same_settings(old, cfg, diffs)
    if state.get("data_fingerprint") != data_fp:
        run.log("warning: the training data changed since the checkpoint; the data order will differ")
    for k in ("iters", "learning_rate", "warmup_steps", "max_seq_length", "beta", "dpo_loss"):
        if old.get(k) != cfg.get(k):
            run.log(f"warning: {k} was {old.get(k)!r}, now {cfg.get(k)!r}")


def _reference_logps(model, head, pairs, cfg, ckpt_dir: Path, base, parent, data_fp, run):
    """Sum of response log-probs and response token counts under the reference (trainable
    term off, no dropout) for every training pair: rows 0..n-1 chosen, n..2n-1 rejected.
    Computed once and cached in checkpoints/reference_logps.safetensors."""
    path = ckpt_dir / "reference_logps.safetensors"
    key = {"base": base["fingerprint"], "parent": (parent or {}).get("fingerprint") or "",
           "data": data_fp, "max_seq_length": str(cfg["max_seq_length"])}
    if path.is_file():
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
            if all(meta.get(k) == v for k, v in key.items()) and arrays["sum"].shape[0] == 2 * len(pairs):
                run.log("reusing cached reference log-probs")
                return arrays["sum"], arrays["count"]
        except (OSError, ValueError, RuntimeError, KeyError):
            pass
    t0 = time.perf_counter()
    model.eval()
    sums, counts = np.zeros(2 * len(pairs), np.float32), np.zeros(2 * len(pairs), np.float32)
    bs = cfg["batch_size"]
    n = len(pairs)
    with lora.reference_mode(model):
        for i in range(0, n, bs):
            chunk = pairs[i:i + bs]
            toks = dpo_batch(chunk, cfg["max_seq_length"])
            logp, rows = response_logps(model, head, *toks)
            s, c = row_sums(logp, rows, toks[0].shape[0])
            mx.eval(s, c)
            s, c = np.array(s), np.array(c)
            k = len(chunk)
            sums[i:i + k], sums[n + i:n + i + k] = s[:k], s[k:]
            counts[i:i + k], counts[n + i:n + i + k] = c[:k], c[k:]
            run.progress(min(i + bs, n), n, "reference log-probs", eta=None, phase="reference")
    model.train()
    out = {"sum": mx.array(sums), "count": mx.array(counts)}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with disk_errors(path, _nbytes(out), RESUME_HINT):
        fd, tmp = tempfile.mkstemp(prefix=".reference-", suffix=".safetensors", dir=ckpt_dir)
    os.close(fd)
    try:
        with disk_errors(path, _nbytes(out), RESUME_HINT):
            mx.save_safetensors(tmp, out, metadata=key)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    run.log(f"reference log-probs for {n} pairs in {time.perf_counter() - t0:.1f}s (cached)")
    return out["sum"], out["count"]
