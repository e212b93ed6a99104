"""The trainer on several ranks (data parallelism, engine.distributed.world): what the ranks must
agree on and how they share what only the writer's disk holds.

Every rank loads the model and the data and runs every step on its share of the global batch;
the loss is a global mean and the gradients are summed over the ranks, so each rank applies the
one-process update and the weights stay equal. Rank 0, the writer, alone reads and writes OUTPUT
(lock, checkpoints, reference cache, adapter); what it reads reaches the others through the
collectives, and what it fails at is raised on every rank, so no rank waits on a collective
that the writer will never join. In a world of one every helper here is the plain call."""

from __future__ import annotations

import socket

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from engine.distributed.world import World, all_sum, from_writer, gather_objects, shard
from engine.errors import HumanizerError
from engine.events import Cancelled


def check_batch(batch_size: int, w: World) -> None:
    """Each rank needs a row of every batch (an empty shard has no padded batch to run)."""
    if batch_size < w.size:
        raise HumanizerError(f"--batch-size {batch_size} is smaller than the {w.size} ranks: each rank "
                             "takes its share of every global batch",
                             f"use --batch-size {w.size} or more, or fewer processes")


def my_share(items: list, w: World) -> list:
    """This rank's contiguous share of one global batch (or validation chunk)."""
    return [items[i] for i in shard(len(items), w)]


def writer_does(fn, w: World, share=lambda result: result):
    """fn() on the writer alone (it reads or writes what only its disk holds); returns (its result
    on the writer and None elsewhere, share(result) on every rank; share gives JSON). A failure
    there is raised on every rank (on the others as a HumanizerError naming rank 0)."""
    if w.size == 1:
        result = fn()
        return result, share(result)
    result = msg = None
    if w.writer:
        try:
            result = fn()
            msg = {"ok": share(result)}
        except Cancelled:
            gather_objects({"cancelled": True}, w)
            raise
        except Exception as e:
            gather_objects({"error": getattr(e, "message", str(e)), "hint": getattr(e, "hint", None)}, w)
            raise
    got = gather_objects(msg, w)[0]
    if got.get("cancelled"):
        raise Cancelled()
    if "error" in got:
        raise HumanizerError(f"rank 0 (the writer) failed: {got['error']}", got["hint"])
    return result, got["ok"]


def check_same_inputs(w: World, **fingerprints) -> None:
    """Refuse to train when a rank loaded another model, parent adapter or data than rank 0's
    (another machine with other files): the summed gradients would mean nothing."""
    if w.size == 1:
        return
    mine = {"host": socket.gethostname(), **fingerprints}
    every = gather_objects(mine, w)
    for r, theirs in enumerate(every):
        diff = [k for k in fingerprints if theirs[k] != every[0][k]]
        if diff:
            raise HumanizerError(
                f"rank {r} on {theirs['host']} has another {', '.join(diff)} than rank 0 on {every[0]['host']}",
                "every host needs the same model, mounted adapter and data at the same paths")


def share_checkpoint(loaded: tuple | None, w: World) -> tuple[dict, dict, dict]:
    """(state, LoRA weights, optimizer state tree) of the checkpoint the writer loaded, on every
    rank: the others may be on machines without OUTPUT. `loaded` is None except on the writer."""
    if w.size == 1:
        return loaded
    if w.writer:
        state, weights, opt = loaded
        arrays = {**{"w." + k: v for k, v in weights.items()}, **{"o." + k: v for k, v in tree_flatten(opt)}}
        head = {"state": state, "shapes": {k: [list(v.shape), str(v.dtype).rsplit(".", 1)[-1]]
                                           for k, v in arrays.items()}}
    head = gather_objects(head if w.writer else None, w)[0]
    if not w.writer:
        arrays = {k: mx.zeros(shape, getattr(mx, dtype)) for k, (shape, dtype) in head["shapes"].items()}
    arrays = from_writer(arrays, w)
    weights = {k[2:]: v for k, v in arrays.items() if k.startswith("w.")}
    opt = tree_unflatten([(k[2:], v) for k, v in arrays.items() if k.startswith("o.")])
    return head["state"], weights, opt


def sum_grads(grads, extra: mx.array, w: World):
    """(the gradient tree, the float32 vector `extra`) summed over the ranks: one flat buffer per
    dtype (one message per step in float32 training), `extra` (a step's reported values) riding
    with the float32 gradients rather than in a collective of its own."""
    if w.size == 1:
        return grads, extra
    flat = tree_flatten(grads)
    out = dict(flat, **{"": extra})  # "" is no parameter's name
    for dtype in dict.fromkeys(v.dtype for v in out.values()):  # the same order on every rank (not a set's)
        keys = [k for k, v in out.items() if v.dtype == dtype]
        total = all_sum(mx.concatenate([out[k].reshape(-1) for k in keys]), w)
        at = 0
        for k in keys:
            n = out[k].size
            out[k] = total[at:at + n].reshape(out[k].shape)
            at += n
    extra = out.pop("")
    return tree_unflatten(list(out.items())), extra


def sum_floats(values: list[float], w: World) -> list[float]:
    """Python numbers summed over the ranks (float32 on the wire; unchanged in a world of one)."""
    if w.size == 1:
        return values
    return all_sum(mx.array(values, mx.float32), w).tolist()


def agreed_stop(flag: bool, counts: list[int], w: World) -> tuple[bool, list[int]]:
    """(whether any rank has `flag` set, `counts` summed over the ranks), in one collective before
    a step: a cancel stops every rank before the same step."""
    if w.size == 1:
        return flag, counts
    got = all_sum(mx.array([int(flag), *counts], mx.int32), w).tolist()
    return got[0] > 0, got[1:]


def rank_seed(seed: int, w: World) -> int:
    """The step's random seed on this rank (dropout): each rank draws for its own rows, so ranks
    do not repeat one another's masks; rank 0's is the one-process seed."""
    return (seed + w.rank * 0x9E3779B1) % (2**32)
