"""The stacked LoRA layer and adapter folders, on the tiny llama (float32, CPU)."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import adapters as A
from engine.adapters import layers as lora
from engine.errors import HumanizerError
from tests.tiny import make_tiny_llama

KEYS = ["q_proj", "v_proj", "down_proj"]
TOKENS = mx.array([[5, 17, 42, 99, 7, 3, 250, 11], [8, 9, 10, 11, 12, 13, 14, 15]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("base") / "model")


def _randomize(model, seed):
    """Give the trainable LoRA non-zero B (a fresh LoRA has B = 0, i.e. no effect)."""
    rng = np.random.default_rng(seed)
    w = lora.trainable_weights(model)
    lora.set_trainable_weights(model, {
        k: mx.array(rng.standard_normal(v.shape).astype(np.float32) * (0.05 if k.endswith("lora_b") else 1) + (
            np.array(v) if k.endswith("lora_a") else 0))
        for k, v in w.items()
    })


def _meta(model, method, parent=None):
    b = lora.base_identity(model)
    return {"method": method, "base": {"name": b["name"], "fingerprint": b["fingerprint"]}, "parent": parent}


@pytest.fixture(scope="module")
def sft_dir(base, tmp_path_factory):
    model, _ = lora.load_model(base)
    lora.apply_lora(model, num_layers=2, keys=KEYS, rank=4, scale=2.0, dropout=0.0, seed=1)
    _randomize(model, 1)
    out = tmp_path_factory.mktemp("ad") / "humanizer-sft"
    A.save_adapter(model, out, {"num_layers": 2, "rank": 4, "scale": 2.0, "dropout": 0.0,
                                "keys": lora.resolve_keys(model, KEYS)}, _meta(model, "sft"))
    return out


@pytest.fixture(scope="module")
def dpo_dir(base, sft_dir, tmp_path_factory):
    """A delta saved from a model with the SFT adapter mounted and a trainable LoRA beside it."""
    model, _ = lora.load_model(base)
    sft = lora.mount_adapter(model, sft_dir, "sft")
    lora.apply_lora(model, num_layers=2, keys=KEYS, rank=2, scale=3.0, dropout=0.3, seed=2)
    _randomize(model, 2)
    out = tmp_path_factory.mktemp("ad") / "humanizer-dpo"
    parent = {"name": sft.name, "path": str(sft.path), "fingerprint": sft.fingerprint}
    A.save_adapter(model, out, {"num_layers": 2, "rank": 2, "scale": 3.0, "dropout": 0.3,
                                "keys": lora.resolve_keys(model, KEYS)}, _meta(model, "dpo", parent))
    return out, model


def logits(model, tokens=TOKENS):
    out = model(tokens)
    mx.eval(out)
    return np.array(out)


def test_adapter_folder_is_mlx_lm_format(sft_dir):
    cfg = json.loads((sft_dir / A.CONFIG_FILE).read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["num_layers"] == 2
    assert cfg["lora_parameters"] == {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                      "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]}
    assert cfg["humanizer"]["method"] == "sft" and cfg["humanizer"]["base"]["fingerprint"].startswith("sha256:")
    names = set(mx.load(str(sft_dir / A.ADAPTER_FILE)))
    assert "model.layers.0.self_attn.q_proj.lora_a" in names and "model.layers.1.mlp.down_proj.lora_b" in names
    assert len(names) == 2 * 2 * 3
    info = A.read_adapter(sft_dir)
    assert (info.method, info.rank, info.is_delta) == ("sft", 4, False)


def test_trainable_names_and_freezing(base):
    model, _ = lora.load_model(base)
    paths = lora.apply_lora(model, num_layers=1, keys=["q_proj"], rank=2, scale=1.0)
    assert paths == ["model.layers.1.self_attn.q_proj"]
    assert sorted(lora.trainable_weights(model)) == [
        "model.layers.1.self_attn.q_proj.lora_a", "model.layers.1.self_attn.q_proj.lora_b"]
    from mlx.utils import tree_flatten
    assert [k for k, _ in tree_flatten(model.trainable_parameters())] == sorted(lora.trainable_weights(model))
    with pytest.raises(HumanizerError, match="no layer 'nope_proj'"):
        lora.apply_lora(model, 1, ["nope_proj"], 2, 1.0)


def test_sft_adapter_loads_in_stock_mlx_lm(base, sft_dir):
    from mlx_lm import load

    stock, _ = load(str(base), adapter_path=str(sft_dir))
    ours, _ = lora.load_model(base)
    lora.mount_adapter(ours, sft_dir, "sft")
    ours.eval()
    np.testing.assert_allclose(logits(ours), logits(stock), rtol=1e-5, atol=1e-5)
    plain, _ = lora.load_model(base)
    assert np.abs(logits(plain) - logits(ours)).max() > 1e-2  # the adapter does something


def test_reference_mode_is_exactly_base_plus_sft(base, sft_dir, dpo_dir):
    _, training = dpo_dir  # SFT mounted + trainable LoRA (non-zero, dropout 0.3)
    only_sft, _ = lora.load_model(base)
    lora.mount_adapter(only_sft, sft_dir, "sft")
    want = logits(only_sft)
    for mode in (True, False):  # dropout never touches the mounted term
        training.train(mode)
        with lora.reference_mode(training):
            assert np.array_equal(logits(training), want)
    training.eval()
    assert np.abs(logits(training) - want).max() > 1e-3


def test_serve_stack_equals_training_forward(base, sft_dir, dpo_dir):
    path, training = dpo_dir
    training.eval()  # dropout off
    want = logits(training)
    served, _ = lora.load_model(base)
    lora.mount_adapter(served, sft_dir, "sft")
    lora.mount_adapter(served, path, "dpo")
    served.train()  # mounted adapters have no dropout, whatever the mode
    np.testing.assert_allclose(logits(served), want, rtol=1e-5, atol=1e-5)
    training.train()
    assert not np.allclose(logits(training), want)  # training mode: dropout on the trainable term
    training.eval()


def test_active_selection_and_row_gates(base, sft_dir, dpo_dir):
    path, _ = dpo_dir
    m, _ = lora.load_model(base)
    lora.mount_adapter(m, sft_dir, "sft")
    lora.mount_adapter(m, path, "dpo")
    assert list(lora.mounted(m)) == ["sft", "dpo"] and lora.active_adapters(m) == ["sft", "dpo"]
    both = logits(m)
    lora.set_active(m, ["sft"])
    sft = logits(m)
    lora.set_active(m, [])
    plain = logits(m)
    # per row: row 0 base, row 1 sft+dpo, in one forward
    lora.set_active(m, {"sft": mx.array([0.0, 1.0]), "dpo": mx.array([0.0, 1.0])})
    mixed = logits(m)
    np.testing.assert_allclose(mixed[0], plain[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], both[1], atol=1e-5)
    assert np.abs(sft - both).max() > 1e-3
    with pytest.raises(HumanizerError, match="cannot be used without it"):
        lora.set_active(m, ["dpo"])
    with pytest.raises(HumanizerError, match="stacked on 'sft'"):
        lora.unmount_adapter(m, "sft")
    lora.unmount_adapter(m, "dpo")
    lora.unmount_adapter(m, "sft")
    assert lora.mounted(m) == {}
    np.testing.assert_allclose(logits(m), plain, atol=1e-6)


def test_dpo_delta_without_parent_is_refused(base, dpo_dir):
    path, _ = dpo_dir
    m, _ = lora.load_model(base)
    with pytest.raises(HumanizerError) as e:
        lora.mount_adapter(m, path, "dpo")
    msg = str(e.value)
    assert "delta" in msg and "humanizer-sft" in msg and "means nothing" in msg and "mount 'humanizer-sft'" in msg
    assert A.read_adapter(path).parent["name"] == "humanizer-sft"


def test_adapter_on_a_different_base_is_refused(base, sft_dir, tmp_path):
    other = make_tiny_llama(tmp_path / "other-model", seed=7)  # same shapes, other weights
    with pytest.raises(HumanizerError) as e:
        A.check_fits(sft_dir, other)
    msg = str(e.value)
    assert "humanizer-sft" in msg and "model" in msg and "other-model" in msg
    assert A.read_adapter(sft_dir).base["fingerprint"] in msg and A.model_fingerprint(other) in msg
    assert A.check_fits(sft_dir, other, strict=False)  # a warning, not an error
    m, _ = lora.load_model(other)
    with pytest.raises(HumanizerError, match="different weights"):
        lora.mount_adapter(m, sft_dir)

    # another shape: the same model with a narrower MLP
    narrow = tmp_path / "narrow-model"
    narrow.mkdir()
    cfg = json.loads((base / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (narrow / "config.json").write_text(json.dumps(cfg))
    w = mx.load(str(base / "model.safetensors"))
    for k in list(w):
        if "gate_proj" in k or "up_proj" in k:
            w[k] = w[k][:96]
        elif "down_proj" in k:
            w[k] = w[k][:, :96]
    mx.save_safetensors(str(narrow / "model.safetensors"), w)
    with pytest.raises(HumanizerError, match=r"does not fit model 'narrow-model'.*adapter input 128, model layer input 96"):
        A.check_fits(sft_dir, narrow)


def test_fingerprint_is_stable_and_cheap(base, tmp_path):
    a = A.model_fingerprint(base)
    assert a == A.model_fingerprint(base)
    import shutil

    copy = shutil.copytree(base, tmp_path / "copy")
    assert A.model_fingerprint(copy) == a


def test_quantized_base_dequantized_on_cpu_or_kept(base, tmp_path):
    from mlx_lm import load
    from mlx_lm.utils import quantize_model, save_model

    model, tok = load(str(base))
    cfg = json.loads((base / "config.json").read_text())
    model, qcfg = quantize_model(model, cfg, group_size=32, bits=4)
    qdir = tmp_path / "q4"
    save_model(qdir, model)
    (qdir / "config.json").write_text(json.dumps(qcfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (qdir / f).write_bytes((base / f).read_bytes())
    quantized, _ = load(str(qdir))
    deq, _ = lora.load_model(qdir, dequantize=True)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in deq.named_modules())
    np.testing.assert_allclose(logits(deq), logits(quantized), rtol=1e-4, atol=1e-4)
    # QLoRA path (Metal's): the quantized layers stay, the LoRA sits on them
    kept, _ = lora.load_model(qdir, dequantize=False)
    lora.apply_lora(kept, 2, ["q_proj"], 2, 1.0)
    layer = kept.model.layers[0].self_attn.q_proj
    assert isinstance(layer.linear, nn.QuantizedLinear) and layer.lora_a.shape == (64, 2)
    assert A.model_linear_dims(qdir)["model.layers.0.self_attn.q_proj"] == (64, 64)


def test_fold_adapter_is_the_same_function(base, sft_dir, tmp_path):
    mounted, _ = lora.load_model(base)
    lora.mount_adapter(mounted, sft_dir, "sft")
    folded, _ = lora.load_model(base)
    lora.mount_adapter(folded, sft_dir, "sft")
    assert lora.fold_adapter(folded, "sft") == 2 * len(KEYS)
    assert not any(layer.adapters for _, layer in lora.lora_layers(folded))
    assert "sft" in lora.mounted(folded)  # still part of the model's function
    np.testing.assert_allclose(logits(folded), logits(mounted), rtol=1e-4, atol=1e-4)
    # a trainable term beside it and reference mode behave as with the adapter mounted
    for m in (mounted, folded):
        lora.apply_lora(m, num_layers=2, keys=KEYS, rank=2, scale=3.0, seed=2)
        _randomize(m, 2)
    with lora.reference_mode(folded), lora.reference_mode(mounted):
        np.testing.assert_allclose(logits(folded), logits(mounted), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits(folded), logits(mounted), rtol=1e-4, atol=1e-4)


def test_fold_adapter_leaves_quantized_layers_mounted(base, sft_dir):
    model, _ = lora.load_model(base)
    lora.mount_adapter(model, sft_dir, "sft")
    nn.quantize(model, group_size=32, bits=8, class_predicate=lambda p, m: p.endswith("q_proj.linear"))
    want = logits(model)
    assert lora.fold_adapter(model, "sft") == 2 * (len(KEYS) - 1)  # q_proj is quantized now: kept
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q.linear, nn.QuantizedLinear) and "sft" in q.adapters
    np.testing.assert_allclose(logits(model), want, rtol=1e-4, atol=1e-4)


def test_dropout_lora_gradients_equal_plain_autodiff():
    x = mx.random.normal((2, 5, 12))
    a, b = mx.random.normal((12, 3)), mx.random.normal((3, 7))
    mask = mx.random.bernoulli(0.8, x.shape)
    cot = mx.random.normal((2, 5, 7))

    def plain(x, a, b):
        return ((mx.where(mask, x / 0.8, 0.0) @ a) @ b * cot).sum()

    def ours(x, a, b):
        return (lora.dropout_lora(x, a, b, mask, 0.8) * cot).sum()

    np.testing.assert_allclose(np.array(ours(x, a, b)), np.array(plain(x, a, b)), rtol=1e-5)
    for g1, g2 in zip(mx.grad(ours, argnums=(0, 1, 2))(x, a, b), mx.grad(plain, argnums=(0, 1, 2))(x, a, b)):
        np.testing.assert_allclose(np.array(g1), np.array(g2), rtol=1e-4, atol=1e-5)
    assert not np.array(mask).all()  # some inputs dropped


def test_dpo_delta_is_refused_by_stock_mlx_lm_and_combined_loads(base, sft_dir, dpo_dir, tmp_path):
    from mlx_lm import load

    from engine.adapters.combine import combine

    path, training = dpo_dir
    stored = mx.load(str(path / A.ADAPTER_FILE))
    assert all(k.startswith(A.DELTA_PREFIX) for k in stored)
    assert A.read_adapter(path).layers == A.read_adapter(sft_dir).layers  # our readers see model names
    with pytest.raises(ValueError, match=A.DELTA_PREFIX.rstrip(".")):
        load(str(base), adapter_path=str(path))
    combined = combine(sft_dir, path, tmp_path / "sft+dpo")
    assert not any(k.startswith(A.DELTA_PREFIX) for k in mx.load(str(combined / A.ADAPTER_FILE)))
    stock, _ = load(str(base), adapter_path=str(combined))
    training.eval()
    np.testing.assert_allclose(logits(stock), logits(training), rtol=1e-4, atol=1e-4)
