"""Row attention: llama-style attention over the slot batch, one row per request.

In a decode step each row gets rope at its own position (an offset per row), its new key/value
are written at its own position, and the softmax runs over its own keys only. This goes through
a subclass of the model's attention module whose `__call__` recognises a `SlotLayer` cache (for
llama-style attention: llama, mistral, qwen2, qwen3); any other cache takes the module's own
path. `check_row_batching` compares the batched path with the plain per-row forward when an
engine starts; a model it does not fit decodes its rows serially (slower, same output)."""

from __future__ import annotations

import logging
import sys

import mlx.core as mx

from engine.adapters import layers as lora
from engine.generate.slots import SlotBatch, SlotLayer

log = logging.getLogger("humanizer.generate")

ROW_BATCHED_MODULES = ("mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3")


def _slot_attention(attn, x: mx.array, sl: SlotLayer) -> mx.array:
    """llama-style attention for a (rows, 1, dim) batch over the SlotBatch: the model's own
    computation per row (rope at the row's position, its keys only), batched."""
    from mlx_lm.models.base import scaled_dot_product_attention as base_sdpa

    # the model module's own name for it, which engine.fastops swaps for the fast-exp version on CPU
    sdpa = getattr(sys.modules.get(type(attn).__module__), "scaled_dot_product_attention", base_sdpa)
    B, L, _ = x.shape
    q = attn.q_proj(x).reshape(B, L, attn.n_heads, -1)
    k = attn.k_proj(x).reshape(B, L, attn.n_kv_heads, -1)
    v = attn.v_proj(x).reshape(B, L, attn.n_kv_heads, -1)
    if "q_norm" in attn:
        q = attn.q_norm(q)
        k = attn.k_norm(k)
    q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    q = attn.rope(q, offset=sl.offset)
    k = attn.rope(k, offset=sl.offset)
    keys, values = sl.update_and_fetch(k, v)
    out = sdpa(q, keys, values, cache=None, scale=attn.scale, mask=sl.mask)
    return attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


_ROW_CLASSES: dict[type, type] = {}


def _row_class(cls: type) -> type:
    if cls not in _ROW_CLASSES:
        def __call__(self, x, mask=None, cache=None):
            if isinstance(cache, SlotLayer):
                return _slot_attention(self, x, cache)
            return cls.__call__(self, x, mask, cache)

        _ROW_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                         "_humanizer_row_batched": True})
    return _ROW_CLASSES[cls]


def _attention_modules(model) -> list | None:
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            return None
        cls = type(attn)
        base_cls = cls.__mro__[1] if getattr(cls, "_humanizer_row_batched", False) else cls
        if base_cls.__module__ not in ROW_BATCHED_MODULES:
            return None
        if not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "rope", "scale",
                                              "n_heads", "n_kv_heads")):
            return None
        out.append((attn, base_cls))
    return out


def install_row_attention(model) -> bool:
    mods = _attention_modules(model)
    if mods is None:
        return False
    for attn, base_cls in mods:
        attn.__class__ = _row_class(base_cls)
    return True


def remove_row_attention(model) -> None:
    for attn, base_cls in _attention_modules(model) or []:
        attn.__class__ = base_cls


def check_row_batching(model, prefill_model) -> list | None:
    """The slot-batched decode equals the model's own per-row decode (float tolerance).
    Returns the per-layer cache spec (kv heads, key dim, value dim, dtype), or None when
    the batched path does not fit this model. `prefill_model` is the forward that fills a
    cache (the backbone without the LM head where the engine uses one)."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    vocab = int(getattr(getattr(model, "args", None), "vocab_size", 0) or 100)
    prompts = [[(7 * i + 3) % vocab for i in range(5)], [(11 * i + 5) % vocab for i in range(3)]]
    saved = {n: dict(layer.active) for n, layer in lora.lora_layers(model)}
    try:
        lora.set_active(model, [])

        def prefilled():
            out = []
            for p in prompts:
                c = make_prompt_cache(model)
                if not all(type(x) is KVCache for x in c):
                    raise TypeError("not a plain KV cache")
                prefill_model(mx.array([p[:-1]]), cache=c)
                out.append(c)
            return out

        alone = [model(mx.array([[p[-1]]]), cache=c)[0, -1] for p, c in zip(prompts, prefilled())]
        caches = prefilled()
        spec = [(c.keys.shape[1], c.keys.shape[3], c.values.shape[3], c.keys.dtype) for c in caches[0]]
        batch = SlotBatch(len(model.layers), 2, spec)
        for c in caches:
            batch.add(c)
        both = model(mx.array([[p[-1]] for p in prompts]), cache=batch.step_views())[:, -1]
        mx.eval(alone, both)
        ref = mx.stack(alone)
        tol = 1e-3 * (1.0 + float(mx.abs(ref).max()))
        return spec if bool(mx.abs(both - ref).max() <= tol) else None
    except Exception:  # any incompatibility means: not for this model
        log.debug("batched self check failed", exc_info=True)
        return None
    finally:
        for n, layer in lora.lora_layers(model):
            layer.active.clear()
            layer.active.update(saved.get(n, {}))
