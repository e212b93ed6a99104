"""Data parallelism on MLX's own distributed engine (mx.distributed, launched by `mlx.launch`).

A process started by `mlx.launch` (ring backend over TCP/Thunderbolt, or MPI) finds its rank in
the environment; `world()` joins the group once and every helper here takes that World. A plain
process is a world of one, and each helper is then the identity, so the code that uses them is
the same with one process or many.

Why sums and not all_gather: every rank fills its own part of a full-size array and the parts
are summed. That needs no equal shapes across ranks (shards differ by a row when the work does
not divide), keeps the result in the global order, and is one collective MLX has on every
backend. Rank 0 is the writer: it alone writes events, checkpoints and outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import numpy as np

from engine.distributed.launch import LAUNCHED_ENV, launched  # noqa: F401 (world.launched, as before)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    group: object | None = None  # mx.distributed.Group; None for a world of one

    @property
    def writer(self) -> bool:
        """Rank 0 writes events, checkpoints and outputs; the others only compute."""
        return self.rank == 0


ONE = World(0, 1, None)


@lru_cache(maxsize=1)
def world() -> World:
    """This process's place in the group: joined once (mx.distributed.init), a world of one
    when the process was not launched as a rank."""
    if not launched():
        return ONE
    group = mx.distributed.init(strict=True)
    return World(group.rank(), group.size(), group) if group.size() > 1 else ONE


def shard(n: int, w: World) -> range:
    """This rank's contiguous share of n items (0..n-1): sizes differ by at most one, earlier
    ranks take the extra ones, and the shares in rank order are 0..n-1 again."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return range(start, start + base + (1 if w.rank < extra else 0))


def all_sum(x, w: World):
    """x summed over the ranks (an mx.array, or a tree of them: dict/list/tuple)."""
    if w.size == 1:
        return x
    if isinstance(x, dict):
        return {k: all_sum(v, w) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(all_sum(v, w) for v in x)
    return mx.distributed.all_sum(x, group=w.group)


def from_writer(tree, w: World):
    """Rank 0's values on every rank (the others contribute zeros): how a checkpoint that only
    the writer's disk holds reaches every rank, and how ranks start from equal weights."""
    if w.size == 1:
        return tree
    if isinstance(tree, dict):
        return {k: from_writer(v, w) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(from_writer(v, w) for v in tree)
    return all_sum(tree if w.writer else mx.zeros_like(tree), w)


def fill_rows(n: int, compute, w: World) -> mx.array:
    """An array of n rows in which rank r computes its shard's rows (`compute(indices)` gives
    them in that order, shape [len(indices), ...]) and every rank gets all n, in order."""
    mine = shard(n, w)
    part = compute(list(mine))
    if w.size == 1:
        return part
    full = mx.zeros((n, *part.shape[1:]), dtype=part.dtype)
    full[mine.start:mine.stop] = part
    return all_sum(full, w)


def gather_objects(obj, w: World) -> list:
    """Each rank's JSON-able `obj`, in rank order, on every rank (rows of text from a shard of a
    data build or an eval): the JSON bytes of each rank go in its row of a summed array."""
    if w.size == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj, ensure_ascii=False).encode(), dtype=np.uint8)
    lengths = np.zeros(w.size, dtype=np.int32)
    lengths[w.rank] = len(data)
    lengths = np.array(all_sum(mx.array(lengths), w))
    table = np.zeros((w.size, int(lengths.max()) or 1), dtype=np.int32)
    table[w.rank, :len(data)] = data
    table = np.array(all_sum(mx.array(table), w))
    return [json.loads(bytes(table[r, :lengths[r]].astype(np.uint8)).decode()) for r in range(w.size)]


def gather_shards(items: list, compute, w: World) -> list:
    """compute(shard of items) on each rank, joined in the items' order on every rank: the
    results are those of one process over all items when compute is per item."""
    mine = shard(len(items), w)
    return [x for part in gather_objects(compute([items[i] for i in mine]), w) for x in part]
