"""GGUF import on tiny llama GGUFs written in llama.cpp's conventions (tests/tiny.py)."""

import json
import struct

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from engine.errors import HumanizerError
from engine.events import Run
from engine.gguf import import_gguf, unpermute
from tests.tiny import llama_cpp_permute, write_tiny_gguf

TEXT = "What is the capital of France? The café says 123 🙂\n  done."


def logits(model, ids):
    return np.array(model(mx.array([ids])).astype(mx.float32))


def test_unpermute_inverts_llama_cpp_permute():
    w = mx.arange(8 * 6 * 3).reshape(8 * 6, 3)
    for heads in (1, 2, 4):
        assert mx.array_equal(unpermute(llama_cpp_permute(w, heads), heads), w)
    assert not mx.array_equal(llama_cpp_permute(w, 4), w)


@pytest.mark.parametrize("tied", [True, False])
def test_float_gguf_matches_reference(tmp_path, tied):
    gguf, ref = write_tiny_gguf(tmp_path / "tiny.gguf", seed=1, tie_word_embeddings=tied)
    out = import_gguf(gguf, tmp_path / "imported")

    model, tok = mlx_lm.load(str(out))
    ref_model, ref_tok = mlx_lm.load(str(ref))
    ids = ref_tok.encode(TEXT)
    assert tok.encode(TEXT) == ids
    assert tok.decode(ids) == ref_tok.decode(ids) == TEXT
    np.testing.assert_allclose(logits(model, ids), logits(ref_model, ids), rtol=1e-5, atol=1e-5)

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert "quantization" not in config
    assert config["num_key_value_heads"] == 2 and config["eos_token_id"] == tok.eos_token_id


def test_permutation_matters(tmp_path):
    """The GGUF's q/k rows really are permuted: without un-permuting, the logits differ."""
    gguf, ref = write_tiny_gguf(tmp_path / "tiny.gguf")
    raw = mx.load(str(gguf))["blk.0.attn_q.weight"]
    expected = mx.load(str(ref / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert not mx.array_equal(raw, expected)
    assert mx.array_equal(unpermute(raw, 4), expected)


@pytest.mark.parametrize("tied", [True, False])
def test_quantized_gguf_matches_dequantized_reference(tmp_path, tied):
    gguf, ref = write_tiny_gguf(tmp_path / "q.gguf", seed=2, quantize=True, tie_word_embeddings=tied)
    out = import_gguf(gguf, tmp_path / "imported")

    config = json.loads((out / "config.json").read_text())
    quant = config["quantization"]
    assert quant["group_size"] == 32 and quant["bits"] == 4  # Q4_0/Q4_1 are the most common
    assert quant["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # Q8_0
    assert quant["model.layers.0.mlp.down_proj"]["bits"] == 8
    assert "model.layers.0.self_attn.q_proj" not in quant

    model, tok = mlx_lm.load(str(out))
    ref_model, _ = mlx_lm.load(str(ref))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    assert model.model.layers[0].mlp.down_proj.bits == 8
    ids = tok.encode(TEXT)
    a, b = logits(model, ids), logits(ref_model, ids)
    # the scales are float16, so the quantized model computes in float16
    np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(b).max())
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


def test_tokenizer_and_chat_template(tmp_path):
    gguf, ref = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = import_gguf(gguf, tmp_path / "imported")
    _, tok = mlx_lm.load(str(out))
    _, ref_tok = mlx_lm.load(str(ref))
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prompt)
    assert ids == ref_tok.encode(prompt)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # special tokens stay whole
    assert tok.eos_token == "<|im_end|>"
    assert tok.decode(ids) == prompt


def test_progress_events(tmp_path):
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    run = Run.create(tmp_path / "runs", "import", [])
    with run:
        out = import_gguf(gguf, tmp_path / "imported", run)
    events = [json.loads(line) for line in (run.dir / "events.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total"]
    assert any(e["type"] == "artifact" and e["path"] == str(out) for e in events)


def assert_no_output(tmp_path, name="imported"):
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}")]


def test_missing_file(tmp_path):
    with pytest.raises(HumanizerError, match="not found"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "imported")
    assert_no_output(tmp_path)


def test_random_bytes(tmp_path):
    bad = tmp_path / "random.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(HumanizerError, match="not a GGUF") as e:
        import_gguf(bad, tmp_path / "imported")
    assert e.value.hint
    assert_no_output(tmp_path)


def test_corrupt_after_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(4096))
    with pytest.raises(HumanizerError, match="cannot read GGUF") as e:
        import_gguf(bad, tmp_path / "imported")
    assert "corrupt" in e.value.hint
    assert_no_output(tmp_path)


@pytest.mark.parametrize("keep", [200, 0.9])
def test_truncated(tmp_path, keep):
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    data = gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(HumanizerError, match="cannot read GGUF") as e:
        import_gguf(cut, tmp_path / "imported")
    assert "truncated" in e.value.hint
    assert_no_output(tmp_path)


def test_not_llama(tmp_path):
    mx.save_gguf(str(tmp_path / "gpt.gguf"), {"token_embd.weight": mx.zeros((4, 4))},
                 {"general.architecture": "gpt2"})
    with pytest.raises(HumanizerError, match="architecture 'gpt2'") as e:
        import_gguf(tmp_path / "gpt.gguf", tmp_path / "imported")
    assert "llama" in e.value.hint
    assert_no_output(tmp_path)


def test_missing_metadata_key(tmp_path):
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    weights, meta = mx.load(str(gguf), return_metadata=True)
    del meta["llama.block_count"]
    mx.save_gguf(str(tmp_path / "nometa.gguf"), weights, meta)
    with pytest.raises(HumanizerError, match="llama.block_count"):
        import_gguf(tmp_path / "nometa.gguf", tmp_path / "imported")
    assert_no_output(tmp_path)


def patch_tensor_type(gguf, name: bytes, old: int, new: int) -> bytes:
    data = bytearray(gguf.read_bytes())
    i = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    type_at = i + 4 + 8 * struct.unpack_from("<I", data, i)[0]
    assert struct.unpack_from("<I", data, type_at)[0] == old
    struct.pack_into("<I", data, type_at, new)
    return bytes(data)


def test_implausible_hyperparameters(tmp_path):
    """A damaged count (here 2**31 layers) is refused before anything is sized by it."""
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    weights, meta = mx.load(str(gguf), return_metadata=True)
    meta["llama.block_count"] = mx.array(2**31, dtype=mx.uint32)
    mx.save_gguf(str(tmp_path / "huge.gguf"), weights, meta)
    with pytest.raises(HumanizerError, match="implausible hyperparameters"):
        import_gguf(tmp_path / "huge.gguf", tmp_path / "imported")
    meta["llama.block_count"] = mx.array(3, dtype=mx.uint32)  # more layers than tensors for them
    mx.save_gguf(str(tmp_path / "three.gguf"), weights, meta)
    with pytest.raises(HumanizerError, match="lacks the tensor for 'model.layers.2"):
        import_gguf(tmp_path / "three.gguf", tmp_path / "imported")
    assert_no_output(tmp_path)


def test_unsupported_tensor_type(tmp_path):
    """A tensor type MLX cannot read (here Q5_0, ggml type 6) gives an error naming the type."""
    gguf, _ = write_tiny_gguf(tmp_path / "q.gguf", quantize=True)
    bad = tmp_path / "q5.gguf"
    bad.write_bytes(patch_tensor_type(gguf, b"blk.0.ffn_down.weight", 8, 6))
    with pytest.raises(HumanizerError, match="Q5_0") as e:
        import_gguf(bad, tmp_path / "imported")
    assert "Q4_0" in e.value.hint
    bad.write_bytes(patch_tensor_type(gguf, b"blk.0.ffn_down.weight", 8, 99))
    with pytest.raises(HumanizerError, match="unknown ggml type 99"):
        import_gguf(bad, tmp_path / "imported")
    assert_no_output(tmp_path)


def test_damaged_files_never_crash(tmp_path):
    """Truncations and byte flips anywhere in the header give a HumanizerError or import fine;
    never a crash of the reader (mx.load's C reader segfaults on some corrupt headers)."""
    gguf, _ = write_tiny_gguf(tmp_path / "q.gguf", quantize=True)
    data = gguf.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.gguf"
    header_end = data.index(b"blk.1.ffn_up.weight") + 64
    cases = [data[:n] for n in rng.integers(0, len(data), 20)]
    for at in rng.integers(4, header_end, 150):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        cases.append(bytes(flipped))
    for case in cases:
        bad.write_bytes(case)
        try:
            import_gguf(bad, tmp_path / "imported")
        except HumanizerError:
            pass
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imported")]


def test_reimport_replaces_atomically(tmp_path):
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = import_gguf(gguf, tmp_path / "imported")
    (out / "stale.txt").write_text("x")
    import_gguf(gguf, out)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
