"""One optimizer update over the global batch of a step. The data order is global (DataOrder over
the global batch size), and each rank runs its contiguous share of the step's rows; the loss is
the global mean (its denominator, the response tokens (SFT) or pairs (DPO) of the whole batch,
known before the forward), the gradients are summed over the ranks, and every rank applies that
one update: the one-process update, to float rounding. The reported values are global too.
Two collectives a step: the cancel flag with the token count before it, the gradients with the
reported values after it."""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from engine.train.batches import dpo_batch, sft_batch, step_seed
from engine.train.losses import pair_accuracy, response_mask
from engine.train.parallel import agreed_stop, my_share, rank_seed, sum_grads

DPO_VALUES = ("chosen_reward", "rejected_reward", "margin", "accuracy", "chosen_logp", "rejected_logp")


def run_step(s, step: int, stop: bool) -> tuple[dict, int, float] | None:
    """One update of `s` (loop.TrainState): (its global values, tokens in the global batch,
    seconds); None, with nothing done, when a rank asks to stop (`stop`: this rank's cancel)."""
    w, cfg, model, optimizer = s.world, s.cfg, s.model, s.optimizer
    idx = s.order.batch(step)
    mine = my_share(idx, w)
    rows = [s.train_set[i] for i in mine]
    if s.method == "sft":
        toks = sft_batch(rows, cfg["max_seq_length"])
        counts = [int(np.array(response_mask(*toks)).sum())]
    else:
        toks, counts = dpo_batch(rows, cfg["max_seq_length"]), []
    stop, counts = agreed_stop(stop, counts, w)
    if stop:
        return None
    # dropout draws for this rank's rows; with dropout they differ from one process's (other shapes)
    mx.random.seed(rank_seed(step_seed(cfg["seed"], step), w))
    t0 = time.perf_counter()
    if s.method == "sft":
        (loss, _), grads = s.loss_and_grad(model, *toks, counts[0])  # / the global batch's response tokens
        local = [loss]
    else:
        n = len(s.train_set)
        picks = mx.array(mine + [i + n for i in mine])  # the cache: chosen rows, then rejected
        (loss, terms, _), grads = s.loss_and_grad(model, *toks, s.ref_sum[picks], s.ref_n[picks], len(idx))
        cr, rr = terms["chosen_reward"], terms["rejected_reward"]
        local = [loss, cr.sum(), rr.sum(), (cr - rr).sum(), pair_accuracy(cr - rr).sum(),
                 terms["chosen_logp"].sum(), terms["rejected_logp"].sum()]
    local = mx.stack([*(v.astype(mx.float32) for v in local), toks[1].sum().astype(mx.float32)])
    grads, totals = sum_grads(grads, local, w)
    optimizer.update(model, grads)
    mx.eval(totals, model.trainable_parameters(), optimizer.state)
    totals = totals.tolist()
    values = {"loss": totals[0]}
    if s.method == "dpo":
        values.update({k: v / len(idx) for k, v in zip(DPO_VALUES, totals[1:-1])})
    return values, int(totals[-1]), time.perf_counter() - t0
