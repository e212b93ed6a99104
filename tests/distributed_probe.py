"""Run by tests/test_distributed.py under mlx.launch: each rank prints what the collectives gave it."""

import json

import mlx.core as mx

from engine.distributed.world import all_sum, fill_rows, from_writer, gather_objects, gather_shards, shard, world

w = world()
out = {
    "rank": w.rank, "size": w.size,
    "shard": list(shard(5, w)),
    "sum": all_sum(mx.array([w.rank + 1.0]), w).item(),
    "tree": {k: v.tolist() for k, v in all_sum({"a": mx.array([1, 2]), "b": mx.ones(1)}, w).items()},
    "writer": from_writer(mx.array([10.0 * (w.rank + 1)]), w).item(),
    "rows": fill_rows(5, lambda idx: mx.array([[i * 2.0, i * 3.0] for i in idx]), w).tolist(),
    "objects": gather_objects({"r": w.rank, "t": "é" * (w.rank + 1)}, w),
    "shards": gather_shards(list("abcde"), lambda xs: [x.upper() for x in xs], w),
}
print("RESULT " + json.dumps(out), flush=True)
