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
from engine.distributed.world import ONE, World, from_writer, world
from engine.events import Cancelled, NullRun, Run
from engine.train import reference
from engine.train.batches import DataOrder, data_fingerprint
from engine.train.checkpoints import (RESUME_HINT, check_resume, existing_run, load_latest, lock_output, nbytes,
                                      release_output, save_checkpoint, write_final_adapter)
from engine.train.config import resolve_config
from engine.train.losses import make_dpo_loss, make_sft_loss, mean, validation_metrics
from engine.train.parallel import check_batch, check_same_inputs, share_checkpoint, writer_does
from engine.train.setup import load_dataset, load_tokenizer, prepare_model, resolve_model_dir
from engine.train.step import run_step
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
    world: World = ONE  # this rank's place (engine.train.parallel): rank 0 alone writes
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
    grad_checkpoint: bool = False,
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
        steps_per_report=steps_per_report, steps_per_save=steps_per_save, seed=seed, grad_checkpoint=grad_checkpoint,
    )
    w = world()
    check_batch(cfg["batch_size"], w)
    if not w.writer and not isinstance(run, NullRun):
        run = NullRun()  # the writer's run alone records events (a NullRun keeps its listeners)
    before = lock = None
    scope = contextlib.ExitStack()

    def open_output():
        # what OUTPUT held before (a lone lock, an older version's failed run, counts as nothing)
        nonlocal before, lock
        before = {p.name for p in output.iterdir()} - {".train.lock"} if output.is_dir() else None
        lock = lock_output(output)
        return existing_run(output, cfg, resume)

    try:
        found, (has_checkpoints, final_steps) = writer_does(open_output, w, share=lambda r: (bool(r[0]), r[1]))
        if resume and final_steps is not None and (final_steps >= cfg["iters"] or not has_checkpoints):
            run.log(f"{output} already holds the finished adapter ({final_steps} steps): nothing to resume")
            run.done(result=str(output), adapter=str(output), steps=final_steps)
            return output
        s = _start(model_spec, data_spec, method, cfg, output, parent_info, skip_bad_rows, ws, run, scope, w)
        if resume and has_checkpoints:
            _restore(s, found[0] if w.writer else None)
        elif resume:
            run.log("no checkpoint to resume from; starting at step 0")
        if w.size > 1 and not s.start:  # equal starting weights, whatever each machine's random init
            lora.set_trainable_weights(s.model, from_writer(lora.trainable_weights(s.model), w))
        mx.eval(s.model.parameters(), s.optimizer.state)
        _prepare_steps(s)
        _loop(s)
        return _finish(s)
    finally:
        scope.close()
        if lock is not None:
            release_output(output, lock, before)


def _start(model_spec, data_spec, method, cfg, output, parent_info, skip_bad_rows, ws, run, scope,
           w: World) -> TrainState:
    """Data first (with the tokenizer alone: a second), so a bad row stops the run before the
    model loads; then the model with its LoRA, and the optimizer. Every rank loads both; all
    must have loaded the same."""
    model_dir = resolve_model_dir(model_spec, ws, run)
    tokenizer = None if hasattr(data_spec, "train") else load_tokenizer(model_dir)
    ds = load_dataset(data_spec, method, tokenizer, cfg, skip_bad_rows, ws, run)
    train_set, valid_set = list(ds.train), list(ds.valid or [])
    model, head, base, parent_meta = prepare_model(model_dir, parent_info, method, cfg, scope, run)
    data_fp = data_fingerprint(train_set)
    check_same_inputs(w, model=base["fingerprint"], adapter=(parent_meta or {}).get("fingerprint"), data=data_fp)
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
                      optimizer=optimizer, val_chunks=val_chunks, world=w)


def _restore(s: TrainState, checkpoints: list[Path] | None) -> None:
    """Continue from the newest readable checkpoint: weights, optimizer, step, best so far. The
    writer reads it (`checkpoints`: None on the other ranks) and every rank gets it, so a run may
    resume on another number of ranks (the data order and schedule are global)."""
    loaded, name = writer_does(lambda: load_latest(checkpoints, s.run), s.world, share=lambda r: r[0].name)
    state, weights, opt_state = share_checkpoint(loaded[1:] if loaded else None, s.world)
    check_resume(state, s.cfg, s.base, s.parent_meta, s.data_fp, s.run)
    lora.set_trainable_weights(s.model, weights)
    s.optimizer.state = opt_state
    s.start = s.done_step = s.last_saved = int(state["step"])
    best_val = state.get("best_val")
    s.best_val = math.inf if best_val is None else float(best_val)
    s.best_step = state.get("best_step")
    s.trained_tokens = int(state.get("trained_tokens", 0))
    s.run.log(f"resuming at step {s.start} of {s.cfg['iters']} from {name}")


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
                                                       s.parent_meta, s.data_fp, s.run, s.world)


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
                done = run_step(s, step, stop.signal is not None)  # every rank stops before the same step
                if done is None:
                    raise Cancelled()
                _after_step(s, step + 1, *done)
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
        "ranks": s.world.size,  # informative: a resume may use another number (the batches are global)
    }


def _checkpoint(s: TrainState, step: int) -> None:
    if s.last_saved == step:
        return
    meta = {**s.metadata, "checkpoint_step": step, "metrics": {**s.last_report, **s.last_eval}}
    _, name = writer_does(lambda: save_checkpoint(s.ckpt_dir, step, s.model, s.optimizer, s.adapter_cfg, meta,
                                                  _state_dict(s, step)), s.world, share=lambda d: d.name)
    s.last_saved = step
    s.run.artifact(s.ckpt_dir / name, kind="checkpoint", step=step)


def _maybe_eval(s: TrainState, step: int) -> None:
    """Validate at `step` (once), and keep the adapter as checkpoints/best when it is the best so far."""
    if not s.val_chunks or s.evaluated_at == step:
        return
    s.evaluated_at = step
    t0 = time.perf_counter()
    cfg = s.cfg
    s.last_eval = validation_metrics(s.model, s.head, s.method, s.val_chunks, cfg["max_seq_length"], cfg["beta"],
                                     cfg["dpo_loss"], s.world)
    s.run.metric(step, **s.last_eval, eval_seconds=round(time.perf_counter() - t0, 3))
    if s.last_eval["val_loss"] < s.best_val:
        s.best_val, s.best_step = s.last_eval["val_loss"], step
        meta = {**s.metadata, "checkpoint_step": step, "best": True, "metrics": dict(s.last_eval)}

        def save_best():
            with disk_errors(s.ckpt_dir / "best", nbytes(lora.trainable_weights(s.model)), RESUME_HINT):
                A.save_adapter(s.model, s.ckpt_dir / "best", s.adapter_cfg, meta)

        writer_does(save_best, s.world, share=lambda _: None)
        s.run.artifact(s.ckpt_dir / "best", kind="best", step=step, val_loss=s.best_val)


def _finish(s: TrainState) -> Path:
    """The final adapter into OUTPUT, with the run's metrics."""
    iters = s.cfg["iters"]
    metrics = {**s.last_report, **s.last_eval, "steps": iters,
               "train_seconds": round(time.perf_counter() - s.t_start, 2)}
    if s.best_step is not None:
        metrics.update(best_step=s.best_step, best_val_loss=s.best_val)
    meta = {**s.metadata, "metrics": metrics}
    writer_does(lambda: write_final_adapter(s.output, lora.trainable_weights(s.model),
                                            A.adapter_config(s.adapter_cfg, meta)), s.world, share=lambda _: None)
    s.run.artifact(s.output, kind="adapter", method=s.method)
    s.run.done(result=str(s.output), adapter=str(s.output), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return s.output
