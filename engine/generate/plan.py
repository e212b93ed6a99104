"""Every row's own adapter selection in one forward ("base", "a", "a+b", ...):

    y[row] = base(x[row]) + sum_{i in adapters(row)} scale_i * (x[row] @ A_i) @ B_i

for all rows at once (`AdapterPlan`): per layer, the adapters in use by any row are concatenated
along the rank and a per-row 0/1 mask over the rank columns selects each row's own adapters:
exactly nothing is added from an adapter a row did not pick. No request can see another's choice;
"a+b" is both residuals in the same forward, in two matmuls per layer. `install_plan` makes the
model's stacked LoRA layers (engine/lora.py) take their terms from the plan."""

from __future__ import annotations

from typing import Iterable

import mlx.core as mx

from engine.adapters import layers as lora


class AdapterPlan:
    """Which adapters each row of the current forward uses, and the serving form of the LoRA
    terms: per layer, the adapters in use are concatenated along the rank,

        A = [A_1 | A_2 | ...]  (in, R),   B = [s_1 B_1 ; s_2 B_2 ; ...]  (R, out),

    so y = base(x) + ((x @ A) * G) @ B, where G (rows, 1, R) is 1.0 on the rank columns of
    the adapters a row picked and 0.0 elsewhere (no G when every row uses them all). That is
    sum_i s_i (x A_i) B_i over the row's adapters, exactly nothing from the others, in two
    matmuls whatever the number of adapters (the per-adapter form costs ~5 small ops per
    adapter per layer, which dominates decoding on the CPU)."""

    def __init__(self):
        self.rows: list[frozenset] = []
        self.used: tuple[str, ...] = ()
        self._weights: dict = {}  # (layer id, names) -> (A, B)
        self._gates: dict = {}  # (names, ranks) -> G for the current rows

    def begin(self, selections: list[tuple[str, ...]], order: Iterable[str]) -> None:
        self.rows = [frozenset(s) for s in selections]
        chosen = set().union(*self.rows) if self.rows else set()
        self.used = tuple(n for n in order if n in chosen)
        self._gates = {}

    def invalidate(self) -> None:
        self._weights = {}
        self._gates = {}

    def terms(self, layer):
        names = tuple(n for n in self.used if n in layer.adapters)
        if not names:
            return None
        key = (id(layer), names)
        w = self._weights.get(key)
        if w is None:
            ads = [layer.adapters[n] for n in names]
            a = mx.concatenate([ad["lora_a"] for ad in ads], axis=1) if len(ads) > 1 else ads[0]["lora_a"]
            b = mx.concatenate([layer.scales[n] * ad["lora_b"] for n, ad in zip(names, ads)], axis=0)
            mx.eval(a, b)
            w = self._weights[key] = (a, b, tuple(ad["lora_a"].shape[1] for ad in ads))
        a, b, ranks = w
        gkey = (names, ranks)
        if gkey not in self._gates:
            if all(set(names) <= r for r in self.rows):
                self._gates[gkey] = None
            else:
                cols = [[1.0 if n in r else 0.0 for n, k in zip(names, ranks) for _ in range(k)] for r in self.rows]
                self._gates[gkey] = mx.array(cols, dtype=a.dtype)[:, None, :]
        return a, b, self._gates[gkey]


_SERVE_CLASSES: dict[type, type] = {}


def _serve_class(cls: type) -> type:
    if cls not in _SERVE_CLASSES:
        def __call__(self, x):
            plan = self.__dict__.get("_serve_plan")
            if plan is None or "lora_a" in self:  # not steered by an engine, or training
                return cls.__call__(self, x)
            y = self.linear(x)
            terms = plan.terms(self)
            if terms is None:
                return y
            a, b, g = terms
            h = x @ a
            if g is not None:
                h = h * g.reshape((-1,) + (1,) * (h.ndim - 2) + (h.shape[-1],))
            z = h @ b
            return y + (z if z.dtype == y.dtype else z.astype(y.dtype))

        _SERVE_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                           "_humanizer_serve": True})
    return _SERVE_CLASSES[cls]


def install_plan(model, plan: AdapterPlan) -> None:
    """Steer every stacked LoRA layer of `model` by `plan` (layers added by a mount included)."""
    for _, layer in lora.lora_layers(model):
        cls = type(layer)
        if not getattr(cls, "_humanizer_serve", False):
            layer.__class__ = _serve_class(cls)
        object.__setattr__(layer, "_serve_plan", plan)
