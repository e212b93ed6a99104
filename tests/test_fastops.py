"""The CPU-fast attention softmax and SwiGLU equal mlx-lm's, values and gradients."""

import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import fastops
from engine.adapters import layers as lora
from tests.tiny import make_tiny_llama


def test_softmax_and_silu_match_mlx():
    x = mx.random.normal((3, 7, 33)) * 5
    g = mx.random.normal(x.shape)
    np.testing.assert_allclose(np.array(fastops.softmax(x)), np.array(mx.softmax(x, axis=-1)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(fastops.silu(x)), np.array(nn.silu(x)), rtol=1e-5, atol=1e-6)
    for ours, theirs in ((fastops.softmax, lambda v: mx.softmax(v, axis=-1)), (fastops.silu, nn.silu)):
        got = mx.grad(lambda v: (ours(v) * g).sum())(x)
        want = mx.grad(lambda v: (theirs(v) * g).sum())(x)
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", ["causal", None, "bool", "additive"])
def test_attention_matches_mlx_fast_sdpa(mask):
    q, k, v = mx.random.normal((2, 6, 5, 8)), mx.random.normal((2, 2, 9, 8)), mx.random.normal((2, 2, 9, 8))
    m = {"causal": "causal", None: None,
         "bool": mx.random.uniform(shape=(2, 1, 5, 9)) > 0.3,
         "additive": mx.random.normal((5, 9))}[mask]
    if mask == "bool":
        m[..., 0] = True  # every query attends to something
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=m)
    np.testing.assert_allclose(np.array(fastops.attention(q, k, v, 0.3, m)), np.array(want), rtol=1e-5, atol=1e-5)


def test_cpu_fast_ops_swaps_and_restores(tmp_path):
    model, _ = lora.load_model(make_tiny_llama(tmp_path / "m"))
    lora.apply_lora(model, 2, ["q_proj", "down_proj"], 4, 2.0, seed=0)
    x = mx.array([[5, 17, 42, 99, 7, 3, 250, 11, 9, 8]])

    def loss(m):
        return (m(x) ** 2).mean()

    mod = sys.modules[type(model).__module__]
    original = (mod.scaled_dot_product_attention, mod.swiglu)
    want_v, want_g = nn.value_and_grad(model, loss)(model)
    with fastops.cpu_fast_ops(model, enabled=True) as swapped:
        assert swapped and mod.swiglu is fastops.swiglu
        got_v, got_g = nn.value_and_grad(model, loss)(model)
    assert (mod.scaled_dot_product_attention, mod.swiglu) == original
    np.testing.assert_allclose(got_v.item(), want_v.item(), rtol=1e-5)
    for (k1, a), (k2, b) in zip(lora.tree_flatten(got_g), lora.tree_flatten(want_g)):
        assert k1 == k2
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
    with fastops.cpu_fast_ops(model, enabled=False) as swapped:
        assert not swapped and mod.swiglu is original[1]
