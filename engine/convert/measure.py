"""Measuring: each layer's predicted KL per candidate width from the Fisher sums, saved to
the work folder's state as it completes and reported as `layer` events."""

from __future__ import annotations

import math
import time

from engine.convert.layers import QLayer
from engine.convert.rounding import _importance, rounded_weight
from engine.convert.settings import FLOAT_BITS
from engine.convert.state import ConvertState
from engine.convert.workdir import STATE_FILE
from engine.events import write_json


def _keyed(d: dict) -> dict:
    """JSON form of {bits: value}: string keys."""
    return {str(k): v for k, v in d.items()}


def _unkeyed(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


def measure_layer(layer: QLayer, weight, fisher: dict, bits: list[int], tokens: int, dtype,
                  factors: dict | None = None) -> dict:
    """{"sensitivity": {bits: predicted KL per token}, "role_sensitivity": {role: {...}} (tied),
    "weight_error": {bits: relative error}, "choices": {bits: clip choice}}: W rounded as the
    output will store it (clip-searched with `factors`, else plain min/max)."""
    import mlx.core as mx

    w = weight.astype(mx.float32)
    f = fisher[layer.path]
    imp = _importance(factors, layer.path)
    roles = {r: fisher[f"{layer.path}#{r}"] for r in layer.roles} if len(layer.roles) > 1 else {}
    sums = {"norm": mx.square(w).sum()}
    choices = {}
    for b in bits:
        _, deq, choices[b] = rounded_weight(weight, b, layer.group_size, dtype, imp)
        e2 = mx.square(w - deq)
        sums[(b, "all")], sums[(b, "err")] = (f * e2).sum(), e2.sum()
        for r, fr in roles.items():
            sums[(b, r)] = (fr * e2).sum()
    mx.eval(list(sums.values()))
    vals = {k: v.item() for k, v in sums.items()}
    sens = {b: 0.5 * vals[(b, "all")] / tokens for b in bits}
    err = {b: math.sqrt(vals[(b, "err")] / max(vals["norm"], 1e-30)) for b in bits}
    role_sens = {r: {b: 0.5 * vals[(b, r)] / tokens for b in bits} for r in roles}
    out = {"sensitivity": sens, "weight_error": err, "choices": {b: c for b, c in choices.items() if c is not None}}
    if roles:
        out["role_sensitivity"] = role_sens
    return out


def _measure_all(job: ConvertState, t_layers: float) -> None:
    """Measure every layer not measured yet (saving state.json after each) and emit a
    `layer` event for every layer, the ones measured before a resume included."""
    order, measured, run, bits = job.layers, job.measured, job.run, job.bits
    n_layers = len(order)
    n_new = 0
    for idx, layer in enumerate(order):
        resumed = layer.path in measured
        if not layer.quantized:
            info = {"sensitivity": {}, "weight_error": {}}
        elif resumed:
            info = measured[layer.path]
        else:
            raw = measure_layer(layer, job.params[f"{layer.path}.weight"], job.fisher, bits, job.n_tokens,
                                job.out_dtype, job.factors)
            job.choices.update({(layer.path, b): c for b, c in raw["choices"].items()})
            info = {"sensitivity": _keyed(raw["sensitivity"]), "weight_error": _keyed(raw["weight_error"])}
            if "role_sensitivity" in raw:
                info["role_sensitivity"] = {r: _keyed(v) for r, v in raw["role_sensitivity"].items()}
            measured[layer.path] = info
            job.saved["layers"] = measured
            write_json(job.work / STATE_FILE, job.saved)
            n_new += 1
        ev = {**layer.describe(), "phase": "measured", "index": idx, "total": n_layers,
              "bits_measured": bits if layer.quantized else [], "sensitivity": info["sensitivity"],
              "weight_error": info.get("weight_error", {}), "chosen_bits": None if layer.quantized else FLOAT_BITS,
              "resumed": resumed}
        if "role_sensitivity" in info:
            ev["role_sensitivity"] = info["role_sensitivity"]
        run.emit("layer", **ev)
        if not resumed:
            per = (time.perf_counter() - t_layers) / max(n_new, 1)
            remaining = sum(1 for later in order[idx + 1:] if later.quantized and later.path not in measured)
            run.progress(idx + 1, n_layers, f"measured {layer.path}", eta=round(per * remaining, 1),
                         phase="measure", elapsed=round(time.perf_counter() - job.t_measure, 1))
