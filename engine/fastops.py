"""Faster attention softmax and SwiGLU for mlx-lm models on the CPU backend.

MLX's CPU `exp` costs ~15 ns per float32 element on these machines, while
`power(2, x * log2(e))`, the same function (relative difference ~1e-7), costs ~4 ns.
A SmolLM2-sized forward over a few thousand tokens spends most of its time there: the
attention softmax and SwiGLU's sigmoid, more than in all its matmuls. `cpu_fast_ops(model)`
swaps, for the duration of a `with` block, the two functions that mlx-lm's llama-family
modules call, `scaled_dot_product_attention` and `swiglu`, for versions built on that
exp, with hand-written backward passes (softmax from its output; SiLU from its input).
Same results to float32 rounding; tested against the originals, values and gradients.

Only on the CPU backend (Metal's kernels are fast), and only for modules that import
those two names; anything else is left as it is. The swap is of module globals, so it
holds for every model of that family in the process while the block runs: the
functions are the same maths, so another such model only sees rounding differences.
"""

from __future__ import annotations

import contextlib
import sys

import mlx.core as mx

LOG2E = 1.4426950408889634


def _exp(x: mx.array) -> mx.array:
    return mx.power(2.0, x * LOG2E)


@mx.custom_function
def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis."""
    e = _exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@softmax.vjp
def _softmax_vjp(x, g, p):
    return p * (g - (g * p).sum(-1, keepdims=True))


@mx.custom_function
def silu(x: mx.array) -> mx.array:
    return x / (1 + _exp(-x))


@silu.vjp
def _silu_vjp(x, g, y):
    s = 1 / (1 + _exp(-x))
    return g * (s + y * (1 - s))  # d/dx x*s(x) = s + x*s*(1-s)


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    return silu(gate) * x


def _causal(q_len: int, k_len: int) -> mx.array:
    rows = mx.arange(k_len - q_len, k_len)[:, None]
    return mx.arange(k_len)[None, :] <= rows


def attention(queries, keys, values, scale: float, mask) -> mx.array:
    """softmax(q k^T * scale + mask) v with grouped KV heads; mask None, "causal", boolean
    (True = attend) or additive, broadcastable to (B, heads, L, S)."""
    B, H, L, D = queries.shape
    kv = keys.shape[1]
    q = (queries * scale).reshape(B, kv, H // kv, L, D)
    s = q @ keys[:, :, None].swapaxes(-1, -2)  # (B, kv, H/kv, L, S)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unsupported attention mask {mask!r}")
        mask = _causal(L, keys.shape[2])
    if mask is not None:
        if mask.ndim == 4:  # (B or 1, H or 1, L, S) -> the grouped layout
            mask = mask.reshape(mask.shape[0], -1, 1, *mask.shape[2:]) if mask.shape[1] == 1 else \
                mask.reshape(mask.shape[0], kv, H // kv, *mask.shape[2:])
        if mask.dtype == mx.bool_:
            s = mx.where(mask, s, mx.array(-mx.inf, s.dtype))
        else:
            s = s + mask.astype(s.dtype)
    p = softmax(s.astype(mx.float32)).astype(values.dtype)
    return (p @ values[:, :, None]).reshape(B, H, L, -1)


def _make_sdpa(original):
    def scaled_dot_product_attention(queries, keys, values, cache, scale, mask, sinks=None):
        if sinks is not None or hasattr(cache, "bits"):  # attention sinks, quantized KV cache: as mlx-lm does
            return original(queries, keys, values, cache, scale, mask, sinks)
        return attention(queries, keys, values, scale, mask)

    scaled_dot_product_attention.humanizer_fast = True
    return scaled_dot_product_attention


@contextlib.contextmanager
def cpu_fast_ops(model, enabled: bool | None = None):
    """Within the block, `model`'s mlx-lm module uses the functions above (CPU backend only,
    unless `enabled` says otherwise)."""
    if enabled is None:
        enabled = mx.default_device() == mx.cpu
    module = sys.modules.get(type(model).__module__)
    # llama-based wrappers (smollm3) keep the blocks in another module
    inner = sys.modules.get(type(getattr(model, "model", None)).__module__)
    saved = []
    if enabled:
        for mod in {m for m in (module, inner) if m is not None}:
            sdpa = getattr(mod, "scaled_dot_product_attention", None)
            if callable(sdpa) and not getattr(sdpa, "humanizer_fast", False):
                saved.append((mod, "scaled_dot_product_attention", sdpa))
                mod.scaled_dot_product_attention = _make_sdpa(sdpa)
            if callable(getattr(mod, "swiglu", None)) and getattr(mod, "swiglu") is not swiglu:
                saved.append((mod, "swiglu", mod.swiglu))
                mod.swiglu = swiglu
    try:
        yield bool(saved)
    finally:
        for mod, name, fn in reversed(saved):
            setattr(mod, name, fn)
