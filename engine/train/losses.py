"""Log-probs and losses: the response positions of a padded batch, the LM head run a chunk
of positions at a time (the full (batch, length, vocab) logits never exist), the SFT and
DPO losses, the KL to the reference, and the validation metrics built from them."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.adapters import layers as lora
from engine.distributed.world import ONE, World
from engine.train.batches import dpo_batch, sft_batch
from engine.train.parallel import my_share, sum_floats

HEAD_CHUNK = 64  # positions whose full-vocabulary logits exist at once (peak memory; no slower than more)


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
    """Mean negative log-prob per response token. `n_total`: the tokens of the whole global batch
    when this batch is one rank's share (engine.train.parallel), so the ranks' losses and
    gradients sum to the global mean's; by default this batch's own."""
    def loss_fn(model, tokens, lengths, prompt_lens, n_total=None):
        logp, _ = response_logps(model, head, tokens, lengths, prompt_lens)
        ntok = logp.shape[0]
        return -logp.sum() / max(ntok if n_total is None else n_total, 1), mx.array(ntok)

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
    """Mean loss per pair; `n_pairs`: the pairs of the whole global batch when this is one rank's
    share (as `make_sft_loss`'s n_total)."""
    def loss_fn(model, tokens, lengths, prompt_lens, ref_sum, ref_n, n_pairs=None):
        logp, rows = response_logps(model, head, tokens, lengths, prompt_lens)
        pol_sum, pol_n = row_sums(logp, rows, tokens.shape[0])
        losses, terms = dpo_terms(pol_sum, pol_n, ref_sum, ref_n, beta, kind)
        loss = losses.mean() if n_pairs is None else losses.sum() / n_pairs
        return loss, terms, mx.array(logp.shape[0])

    return loss_fn


def kl_per_token(p_logits: mx.array, q_logits: mx.array) -> mx.array:
    """KL(p || q) over the full vocabulary at each position."""
    lp = p_logits - mx.logsumexp(p_logits, axis=-1, keepdims=True)
    lq = q_logits - mx.logsumexp(q_logits, axis=-1, keepdims=True)
    return (mx.exp(lp) * (lp - lq)).sum(-1)



def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def validation_metrics(model, head, method: str, chunks: list, max_len: int, beta: float, dpo_loss: str,
                       w: World = ONE) -> dict:
    """val_loss and val_kl (KL(policy || reference) per response token) over the validation
    batches `chunks`; for DPO also the pairs' accuracy, ties and margin. On several ranks each
    takes its share of every chunk and the sums are added up (every rank gets the global values).
    Leaves the model in training mode."""
    t = _validation_sums(model, head, method, [c for c in (my_share(c, w) for c in chunks) if c], max_len,
                         beta, dpo_loss)
    loss, n, kl, kl_n, acc, ties, margin = sum_floats(
        [t["loss"], t["n"], t["kl"], t["kl_n"], t["acc"], t["ties"], t["margin"]], w)
    if method == "sft":
        return {"val_loss": loss / max(n, 1), "val_kl": kl / max(kl_n, 1)}
    nan = float("nan")
    return {"val_loss": loss / n if n else nan, "val_kl": kl / max(kl_n, 1), "val_accuracy": acc / n if n else nan,
            "val_ties": ties / n if n else nan, "val_margin": margin / n if n else nan}


def _validation_sums(model, head, method, chunks, max_len, beta, dpo_loss) -> dict:
    """This rank's sums: loss over response tokens (SFT) or pairs (DPO), their count `n`, KL and
    its token count, and (DPO) accuracy, ties and margin over the pairs."""
    model.eval()
    t = dict.fromkeys(("loss", "n", "kl", "kl_n", "acc", "ties", "margin"), 0.0)
    for chunk in chunks:
        toks = sft_batch(chunk, max_len) if method == "sft" else dpo_batch(chunk, max_len)
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
            t["kl"] += kl.item()
        logp, rlogp = mx.concatenate(parts), mx.concatenate(rparts)
        if method == "sft":
            t["loss"] += -logp.sum().item()
            t["n"] += int(rows.size)
        else:
            n_rows = toks[0].shape[0]
            (ps, pn), (rs, rn) = row_sums(logp, rows, n_rows), row_sums(rlogp, rows, n_rows)
            losses, terms = dpo_terms(ps, pn, rs, rn, beta, dpo_loss)
            m = terms["chosen_reward"] - terms["rejected_reward"]
            mx.eval(losses, m)
            # sum(values, start): the left-to-right sum a mean over all pairs takes
            t["loss"] = sum(losses.tolist(), t["loss"])
            t["margin"] = sum(m.tolist(), t["margin"])
            t["acc"] = sum(pair_accuracy(m).tolist(), t["acc"])
            t["ties"] = sum((m == 0).astype(mx.float32).tolist(), t["ties"])
            t["n"] += losses.size
        t["kl_n"] += int(rows.size)
    model.train()
    return t
