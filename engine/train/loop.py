"""The run: `train()` and its stages. Each stage takes the one `TrainState` of the run
(model, optimizer, data, the best and last metrics, where the loop is) instead of closing
over the locals of one long function. The stages, in order: check OUTPUT (`existing_run`),
load data and model (`_start`), resume from a checkpoint (`_restore`), the step loop with
its reports, evaluations and checkpoints (`_loop`), the final adapter (`_finish`)."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from engine import adapters as A
from engine.adapters import layers as lora
from engine.events import Cancelled, NullRun, Run
from engine.train import reference
from engine.train.batches import DataOrder, data_fingerprint, dpo_batch, sft_batch, step_seed
from engine.train.checkpoints import (RESUME_HINT, check_resume, existing_run, load_latest, lock_output, nbytes,
                                      release_output, save_checkpoint, write_final_adapter)
from engine.train.config import resolve_config
from engine.train.losses import make_dpo_loss, make_sft_loss, mean, pair_accuracy, validation_metrics
from engine.train.setup import load_dataset, load_tokenizer, prepare_model, resolve_model_dir
from engine.workspace import disk_errors


def lr_schedule(lr: float, iters: int, warmup: int, min_ratio: float):
    """Linear warmup from lr/warmup to lr over `warmup` steps, then cosine to lr*min_ratio."""
    decay = max(1, iters - warmup)

    def schedule(step):
        s = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        t = mx.clip((s - warmup) / decay, 0.0, 1.0)
        cos = lr * min_ratio + 0.5 * lr * (1 - min_ratio) * (1 + mx.cos(math.pi * t))
        return mx.where(s < warmup, lr * (s + 1) / warmup, cos)

    return schedule


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


@dataclass
class TrainState:
    """One run, as its stages share it."""

    method: str
    cfg: dict
    output: Path
    run: Run
    model: object
    head: object  # the LM head for chunked log-probs, or None (losses.logits_head)
    base: dict
    parent_meta: dict | None
    train_set: list
    data_fp: str
    metadata: dict  # what every saved adapter records
    optimizer: optim.Optimizer
    val_chunks: list = field(default_factory=list)
    order: DataOrder | None = None
    loss_and_grad: object = None
    ref_sum: mx.array | None = None  # DPO: reference log-prob sums, chosen rows then rejected
    ref_n: mx.array | None = None
    start: int = 0  # the first step this process runs
    done_step: int = 0  # the last step finished
    best_val: float = math.inf
    best_step: int | None = None
    trained_tokens: int = 0
    last_saved: int | None = None
    evaluated_at: int | None = None
    last_eval: dict = field(default_factory=dict)
    last_report: dict = field(default_factory=dict)
    window: dict = field(default_factory=dict)  # step values since the last report
    win_tokens: int = 0
    win_time: float = 0.0
    t_start: float = 0.0

    @property
    def ckpt_dir(self) -> Path:
        return self.output / "checkpoints"

    @property
    def adapter_cfg(self) -> dict:
        return {k: self.cfg[k] for k in ("num_layers", "rank", "scale", "dropout", "keys")}


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
    """Train a LoRA adapter (see the package docstring); returns OUTPUT. The keywords are
    the fields of `engine.train.settings.TrainSettings`, where each is explained.

    `data_spec` is a DATA spec for `engine.data.load_data`, or an already loaded
    Dataset-like object (`.train`, `.valid` lists of Example or Pair). With
    `mount_adapter`, that adapter is mounted frozen and the new one is trained on top of
    it as a delta (its parent); unless given, num_layers and keys follow the parent's."""
    output = Path(output).expanduser().resolve()
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
    lock = lock_output(output)
    scope = contextlib.ExitStack()
    try:
        checkpoints, final_steps = existing_run(output, cfg, resume)
        if resume and final_steps is not None and (final_steps >= cfg["iters"] or not checkpoints):
            run.log(f"{output} already holds the finished adapter ({final_steps} steps): nothing to resume")
            run.done(adapter=str(output), steps=final_steps)
            return output
        s = _start(model_spec, data_spec, method, cfg, output, parent_info, skip_bad_rows, ws, run, scope)
        if resume and checkpoints:
            _restore(s, checkpoints)
        elif resume:
            run.log("no checkpoint to resume from; starting at step 0")
        mx.eval(s.model.parameters(), s.optimizer.state)
        _prepare_steps(s)
        _loop(s)
        return _finish(s)
    finally:
        scope.close()
        release_output(output, lock, before)


def _start(model_spec, data_spec, method, cfg, output, parent_info, skip_bad_rows, ws, run, scope) -> TrainState:
    """Data first (with the tokenizer alone: a second), so a bad row stops the run before the
    model loads; then the model with its LoRA, and the optimizer."""
    model_dir = resolve_model_dir(model_spec, ws, run)
    tokenizer = None if hasattr(data_spec, "train") else load_tokenizer(model_dir)
    ds = load_dataset(data_spec, method, tokenizer, cfg, skip_bad_rows, ws, run)
    train_set, valid_set = list(ds.train), list(ds.valid or [])
    model, head, base, parent_meta = prepare_model(model_dir, parent_info, method, cfg, scope, run)
    data_fp = data_fingerprint(train_set)
    metadata = {
        "method": method,
        "base": {"name": base["name"], "fingerprint": base["fingerprint"]},
        "parent": parent_meta,
        "training": {**cfg, "data": getattr(ds, "source", None), "data_fingerprint": data_fp,
                     "train_rows": len(train_set), "valid_rows": len(valid_set)},
    }
    optimizer = optim.AdamW(
        learning_rate=lr_schedule(cfg["learning_rate"], cfg["iters"], cfg["warmup_steps"], cfg["min_lr_ratio"]),
        weight_decay=cfg["weight_decay"],
    )
    bs = cfg["batch_size"]
    val_chunks = [valid_set[i:i + bs] for i in range(0, len(valid_set), bs)]
    if cfg["val_batches"] >= 0:  # -1: all of them
        val_chunks = val_chunks[: cfg["val_batches"]]
    return TrainState(method=method, cfg=cfg, output=output, run=run, model=model, head=head, base=base,
                      parent_meta=parent_meta, train_set=train_set, data_fp=data_fp, metadata=metadata,
                      optimizer=optimizer, val_chunks=val_chunks)


def _restore(s: TrainState, checkpoints: list[Path]) -> None:
    """Continue from the newest readable checkpoint: weights, optimizer, step, best so far."""
    d, state, weights, opt_state = load_latest(checkpoints, s.run)
    check_resume(state, s.cfg, s.base, s.parent_meta, s.data_fp, s.run)
    lora.set_trainable_weights(s.model, weights)
    s.optimizer.state = opt_state
    s.start = s.done_step = s.last_saved = int(state["step"])
    best_val = state.get("best_val")
    s.best_val = math.inf if best_val is None else float(best_val)
    s.best_step = state.get("best_step")
    s.trained_tokens = int(state.get("trained_tokens", 0))
    s.run.log(f"resuming at step {s.start} of {s.cfg['iters']} from {d.name}")


def _prepare_steps(s: TrainState) -> None:
    """The data order, and the loss with its gradient (DPO: after the reference log-probs)."""
    s.order = DataOrder(len(s.train_set), s.cfg["batch_size"], s.cfg["seed"])
    if not s.val_chunks:
        s.run.log("no validation: no validation loss, KL or best adapter")
    if s.method == "sft":
        s.loss_and_grad = nn.value_and_grad(s.model, make_sft_loss(s.head))
    else:
        s.loss_and_grad = nn.value_and_grad(s.model, make_dpo_loss(s.cfg["beta"], s.cfg["dpo_loss"], s.head))
        s.ref_sum, s.ref_n = reference.reference_logps(s.model, s.head, s.train_set, s.cfg, s.ckpt_dir, s.base,
                                                       s.parent_meta, s.data_fp, s.run)


def _batch(s: TrainState, step: int):
    """(the step's token batch, its reference log-probs (DPO) or None)."""
    idx = s.order.batch(step)
    rows = [s.train_set[i] for i in idx]
    if s.method == "sft":
        return sft_batch(rows, s.cfg["max_seq_length"]), None
    picks = mx.array(idx + [i + len(s.train_set) for i in idx])  # the cache: chosen rows, then rejected
    return dpo_batch(rows, s.cfg["max_seq_length"]), (s.ref_sum[picks], s.ref_n[picks])


def _step(s: TrainState, step: int) -> tuple[dict, int, float]:
    """One optimizer update: (its values, tokens in the batch, seconds)."""
    toks, ref = _batch(s, step)
    mx.random.seed(step_seed(s.cfg["seed"], step))
    t0 = time.perf_counter()
    model, optimizer = s.model, s.optimizer
    if s.method == "sft":
        (loss, ntok), grads = s.loss_and_grad(model, *toks)
        optimizer.update(model, grads)
        mx.eval(loss, ntok, model.trainable_parameters(), optimizer.state)
        values = {"loss": loss.item()}
    else:
        (loss, terms, ntok), grads = s.loss_and_grad(model, *toks, *ref)
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
    return values, int(toks[1].sum().item()), time.perf_counter() - t0


def _after_step(s: TrainState, done: int, values: dict, n_tokens: int, dt: float) -> None:
    """Count step `done`, then report, evaluate and save when it is their turn."""
    cfg, iters = s.cfg, s.cfg["iters"]
    s.trained_tokens += n_tokens
    s.win_tokens += n_tokens
    s.win_time += dt
    for k, v in values.items():
        s.window.setdefault(k, []).append(v)
    s.done_step = done
    elapsed = time.perf_counter() - s.t_start
    eta = elapsed / (done - s.start) * (iters - done)
    if done % cfg["steps_per_report"] == 0 or done == iters:
        s.last_report = {k: mean(v) for k, v in s.window.items()}
        s.last_report.update(
            learning_rate=float(s.optimizer.learning_rate.item()),
            tokens_per_second=s.win_tokens / s.win_time if s.win_time else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            trained_tokens=s.trained_tokens,
        )
        s.run.metric(done, **s.last_report)
        s.window, s.win_tokens, s.win_time = {}, 0, 0.0
    if done % cfg["steps_per_eval"] == 0 or done == iters:
        _maybe_eval(s, done)
    if done % cfg["steps_per_save"] == 0 and done < iters:
        _checkpoint(s, done)
    s.run.progress(done, iters, f"step {done}/{iters} loss {values['loss']:.4f}", eta=round(eta, 1))


def _loop(s: TrainState) -> None:
    """The steps from s.start to iters. A cancel (SIGTERM / SIGINT, checked between steps)
    saves a checkpoint and raises Cancelled; a second one stops at once."""
    iters = s.cfg["iters"]
    s.t_start = time.perf_counter()
    mx.reset_peak_memory()
    s.model.train()
    with _StopRequest() as stop:
        try:
            if s.start == 0:
                _maybe_eval(s, 0)
            s.run.progress(s.start, iters, f"step {s.start}/{iters}", eta=None)
            for step in range(s.start, iters):
                if stop.signal is not None:
                    raise Cancelled()
                _after_step(s, step + 1, *_step(s, step))
        except _ForcedStop:
            s.run.log(f"stopped at once during step {s.done_step + 1}; --resume continues from the last checkpoint")
            raise Cancelled() from None
        except (Cancelled, KeyboardInterrupt):
            _checkpoint(s, s.done_step)
            s.run.log(f"cancelled at step {s.done_step}; checkpoint saved, --resume continues")
            # the curves end where the run did (after the checkpoint: a 2nd cancel loses nothing)
            if s.done_step > s.start:
                _maybe_eval(s, s.done_step)
            raise Cancelled() from None
        _maybe_eval(s, iters)  # every run ends with a validation point (a no-op if step `iters` just had one)


def _state_dict(s: TrainState, step: int) -> dict:
    """A checkpoint's state.json: what a resume needs and checks."""
    return {
        "step": step, "iters": s.cfg["iters"], "config": s.cfg, "method": s.method,
        "base_fingerprint": s.base["fingerprint"],
        "parent_fingerprint": (s.parent_meta or {}).get("fingerprint"),
        "data_fingerprint": s.data_fp, "data_order": s.order.state(step),
        "rng": {"scheme": "mx.random.seed(step_seed(seed, step)) before each step", "seed": s.cfg["seed"]},
        "best_val": None if math.isinf(s.best_val) else s.best_val, "best_step": s.best_step,
        "trained_tokens": s.trained_tokens, "last_metrics": {**s.last_report, **s.last_eval},
    }


def _checkpoint(s: TrainState, step: int) -> None:
    if s.last_saved == step:
        return
    meta = {**s.metadata, "checkpoint_step": step, "metrics": {**s.last_report, **s.last_eval}}
    d = save_checkpoint(s.ckpt_dir, step, s.model, s.optimizer, s.adapter_cfg, meta, _state_dict(s, step))
    s.last_saved = step
    s.run.artifact(d, kind="checkpoint", step=step)


def _maybe_eval(s: TrainState, step: int) -> None:
    """Validate at `step` (once), and keep the adapter as checkpoints/best when it is the best so far."""
    if not s.val_chunks or s.evaluated_at == step:
        return
    s.evaluated_at = step
    t0 = time.perf_counter()
    cfg = s.cfg
    s.last_eval = validation_metrics(s.model, s.head, s.method, s.val_chunks, cfg["max_seq_length"], cfg["beta"],
                                     cfg["dpo_loss"])
    s.run.metric(step, **s.last_eval, eval_seconds=round(time.perf_counter() - t0, 3))
    if s.last_eval["val_loss"] < s.best_val:
        s.best_val, s.best_step = s.last_eval["val_loss"], step
        meta = {**s.metadata, "checkpoint_step": step, "best": True, "metrics": dict(s.last_eval)}
        with disk_errors(s.ckpt_dir / "best", nbytes(lora.trainable_weights(s.model)), RESUME_HINT):
            A.save_adapter(s.model, s.ckpt_dir / "best", s.adapter_cfg, meta)
        s.run.artifact(s.ckpt_dir / "best", kind="best", step=step, val_loss=s.best_val)


def _finish(s: TrainState) -> Path:
    """The final adapter into OUTPUT, with the run's metrics."""
    iters = s.cfg["iters"]
    metrics = {**s.last_report, **s.last_eval, "steps": iters,
               "train_seconds": round(time.perf_counter() - s.t_start, 2)}
    if s.best_step is not None:
        metrics.update(best_step=s.best_step, best_val_loss=s.best_val)
    meta = {**s.metadata, "metrics": metrics}
    write_final_adapter(s.output, lora.trainable_weights(s.model), A.adapter_config(s.adapter_cfg, meta))
    s.run.artifact(s.output, kind="adapter", method=s.method)
    s.run.done(adapter=str(s.output), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return s.output
