"""Rounding: a weight quantized as the output stores it (standard MLX affine), with the
per-group clip search weighted by the rank-1 Fisher factors at <= CLIP_MAX_BITS bits."""

from __future__ import annotations

from engine.convert.layers import QLayer


# Per-group range shrink ratios tried by the clip search, and the widest width searched: at 6 and 8
# bits the step is already fine and the search would only cost time.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
CLIP_MAX_BITS = 4


def fisher_factors(layers: list[QLayer], fisher: dict) -> dict:
    """Rank-1 summary of each layer's Fisher diagonal (the K-FAC-style factorisation
    F_ij ~ rows_i * cols_j): `{path}.rows` = F.sum(1), `{path}.cols` = F.sum(0) / F.sum().
    Small enough to store beside the output, so a reused measurement rounds the same way."""
    import mlx.core as mx

    out = {}
    for layer in layers:
        if layer.quantized:
            f = fisher[layer.path]
            total = f.sum()
            out[f"{layer.path}.rows"] = f.sum(axis=1)
            out[f"{layer.path}.cols"] = mx.where(total > 0, f.sum(axis=0) / mx.maximum(total, 1e-30), 0.0)
    mx.eval(out)
    return out


def _importance(factors: dict | None, path: str):
    """The rank-1 Fisher weights of one layer's entries (None: plain min/max rounding)."""
    if not factors or f"{path}.rows" not in factors:
        return None
    imp = factors[f"{path}.rows"][:, None] * factors[f"{path}.cols"][None, :]
    return imp + 1e-6 * imp.mean()  # rows never seen in calibration still prefer a small error


_CLIP_ERROR: dict = {}


def _clip_error(g, imp, mid, half, r, levels, dtype):
    """Importance-weighted squared error per group of g (groups on the last axis) when the
    group's range is taken as [mid - r*half, mid + r*half], on the grid mx.quantize builds for
    that range (anchored at the edge of larger magnitude, step adjusted so that zero is a grid
    point, scale and bias rounded to `dtype`). Compiled (fused) once per dtype: the search
    evaluates it for every ratio over every weight, the bulk of the measuring time."""
    import mlx.core as mx

    if dtype not in _CLIP_ERROR:
        def err(g, imp, mid, half, r, levels):
            lo, hi = mid - r * half, mid + r * half
            scale = mx.maximum(hi - lo, 1e-7) / levels
            side = mx.abs(lo) > mx.abs(hi)
            scale = mx.where(side, scale, -scale)
            edge = mx.where(side, lo, hi)
            q0 = mx.round(edge / scale)
            scale = mx.where(q0 != 0, edge / q0, scale).astype(dtype).astype(mx.float32)
            bias = mx.where(q0 == 0, 0, edge).astype(dtype).astype(mx.float32)
            d = mx.clip(mx.round((mx.clip(g, lo, hi) - bias) / scale), 0, levels) * scale + bias  # as w_in is
            return (mx.square(d - g) * imp).sum(axis=-1, keepdims=True)

        _CLIP_ERROR[dtype] = mx.compile(err, shapeless=True)
    return _CLIP_ERROR[dtype](g, imp, mid, half, r, levels)


def rounded_weight(weight, bits: int, group_size: int, dtype, importance=None, choice=None):
    """(w_in, dequantized, choice): `w_in` (in `dtype`) is what mx.quantize gets, so the output
    stays the standard affine format; `dequantized` (float32) is what the output computes with.

    With `importance` and bits <= CLIP_MAX_BITS, each group's range [min, max] is shrunk about
    its midpoint by the ratio in CLIP_RATIOS that minimises the importance-weighted squared
    error (clipping the few extreme weights buys a finer step for all the others); `choice`
    (uint8 ratio index per group) is returned, and passing it back skips the search. The search
    scores the ratios on a replica of mx.quantize's grid; w_in is then quantized by mx.quantize."""
    import mlx.core as mx

    w16 = weight.astype(dtype)

    def qdq(w):
        q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
        return mx.dequantize(q, s, b, group_size=group_size, bits=bits).astype(mx.float32)

    if (importance is None and choice is None) or bits > CLIP_MAX_BITS:
        return w16, qdq(w16), None
    o, i = w16.shape
    g = w16.astype(mx.float32).reshape(o, i // group_size, group_size)
    lo, hi = g.min(axis=-1, keepdims=True), g.max(axis=-1, keepdims=True)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    if choice is None:
        imp = importance.reshape(g.shape)
        levels = mx.array(2 ** bits - 1, dtype=mx.float32)
        errs = [_clip_error(g, imp, mid, half, mx.array(r, dtype=mx.float32), levels, dtype)
                for r in CLIP_RATIOS]
        choice = mx.argmin(mx.concatenate(errs, axis=-1), axis=-1, keepdims=True).astype(mx.uint8)
        mx.eval(choice)
    ratios = mx.array(CLIP_RATIOS, dtype=mx.float32)[choice.astype(mx.int32)]
    w_in = mx.where(ratios == 1.0, g, mx.clip(g, mid - ratios * half, mid + ratios * half))
    w_in = w_in.reshape(o, i).astype(dtype)
    return w_in, qdq(w_in), choice
