"""Gradient checkpointing (`--grad-checkpoint`): each transformer block keeps only its input
for the backward pass and recomputes its inner activations there. A step's activations then
take one block's worth of memory plus each block's input, for about one more forward pass of
time: what lets a long-sequence or large-batch DPO step fit where it would not.

Only this model's blocks change: each gets a subclass of its own class whose call runs under
`mx.checkpoint`, so another model of the same class in the process is untouched, and the
parameter names (and so checkpoints and adapters) stay the same. The block's trainable
parameters go in as the checkpointed function's inputs, so their gradients flow.

Dropout is refused with it (config.resolve_config): a recomputed block would draw other
dropout masks in the backward pass than in the forward, a silently wrong gradient."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

_SUBCLASSES: dict[type, type] = {}


def _checkpointed(call):
    def __call__(self, *args, **kwargs):
        # arrays are the checkpoint's inputs; the rest (a "causal" mask name, cache=None) is bound
        arrays = [a if isinstance(a, mx.array) else None for a in args]

        def inner(params, *xs):
            self.update(params)
            return call(self, *[x if a is not None else args[i] for i, (a, x) in enumerate(zip(arrays, xs))],
                        **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(),
                                    *[a if a is not None else mx.array(0) for a in arrays])

    return __call__


def recompute_blocks(model: nn.Module) -> int:
    """Checkpoint every block of `model.layers`; returns how many (again on the same model: 0)."""
    done = 0
    for block in model.layers:
        cls = type(block)
        if cls in _SUBCLASSES.values():
            continue
        sub = _SUBCLASSES.get(cls)
        if sub is None:
            sub = _SUBCLASSES[cls] = type(f"Recomputed{cls.__name__}", (cls,), {"__call__": _checkpointed(cls.__call__)})
        block.__class__ = sub
        done += 1
    return done
