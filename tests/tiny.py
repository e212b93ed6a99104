"""Tiny test artifacts, built in well under a second: a byte-level BPE tokenizer, a random
mlx-lm llama model folder, and a llama GGUF in llama.cpp's conventions.

Plain functions (not fixtures), so any test or fixture can call them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "torch_dtype": "float32",
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged that a single model needs a tokenizer.",
    "Humanizer Studio rewrites drafts so they read like a person wrote them.",
    "What is the capital of France? The capital of France is Paris.",
    "Low-rank adapters are trained, stacked, fused and served on one machine.",
    "Numbers 0123456789 and punctuation: commas, dots; colons! questions? (brackets)",
    "café naïve résumé — unicode text “quoted” with emoji 🙂",
]


def train_tiny_tokenizer(out_dir) -> Path:
    """A GPT-2 style byte-level BPE (vocab 384) with ChatML special tokens, saved as
    tokenizer.json + tokenizer_config.json in `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
        "chat_template": CHATML_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out


def _tokenizer_vocab_size(out_dir: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out_dir / "tokenizer.json")).get_vocab_size()


def _random_llama_weights(cfg: dict, seed: int) -> dict[str, mx.array]:
    """mlx-lm llama weight names -> float32 random arrays (norms near 1)."""
    rng = np.random.default_rng(seed)
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def rand(*shape, scale=0.08):
        return mx.array((rng.standard_normal(shape) * scale).astype(np.float32))

    def norm():
        return mx.array((1.0 + rng.standard_normal(h) * 0.1).astype(np.float32))

    w = {"model.embed_tokens.weight": rand(vocab, h, scale=0.5), "model.norm.weight": norm()}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = rand(h, h)
        w[p + "self_attn.k_proj.weight"] = rand(kv, h)
        w[p + "self_attn.v_proj.weight"] = rand(kv, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, h)
        w[p + "mlp.gate_proj.weight"] = rand(inter, h)
        w[p + "mlp.up_proj.weight"] = rand(inter, h)
        w[p + "mlp.down_proj.weight"] = rand(h, inter)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rand(vocab, h)
    return w


def make_tiny_llama(out_dir, seed=0, tie_word_embeddings=True) -> Path:
    """A real mlx-lm llama folder (hidden 64, 2 layers, 4 heads, 2 kv heads) with random
    float32 weights and the tiny tokenizer. Loads with stock `mlx_lm.load`."""
    out = Path(out_dir)
    train_tiny_tokenizer(out)
    cfg = dict(TINY_CONFIG, vocab_size=_tokenizer_vocab_size(out), tie_word_embeddings=tie_word_embeddings)
    cfg["bos_token_id"], cfg["eos_token_id"] = 1, 2
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    mx.save_safetensors(str(out / "model.safetensors"), _random_llama_weights(cfg, seed), metadata={"format": "mlx"})
    return out


# llama.cpp tensor names for mlx-lm llama names (per layer, then global)
GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: mx.array, n_head: int) -> mx.array:
    """The row permutation llama.cpp's convert_hf_to_gguf.py applies to q/k (rope layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _to_gguf_names(weights: dict, cfg: dict) -> dict[str, mx.array]:
    out = {
        "token_embd.weight": weights["model.embed_tokens.weight"],
        "output_norm.weight": weights["model.norm.weight"],
    }
    if "lm_head.weight" in weights:
        out["output.weight"] = weights["lm_head.weight"]
    for key, w in weights.items():
        if not key.startswith("model.layers."):
            continue
        _, _, i, rest = key.split(".", 3)
        module, param = rest.rsplit(".", 1)
        if module == "self_attn.q_proj":
            w = llama_cpp_permute(w, cfg["num_attention_heads"])
        elif module == "self_attn.k_proj":
            w = llama_cpp_permute(w, cfg["num_key_value_heads"])
        out[f"blk.{i}.{GGUF_LAYER_NAMES[module]}.{param}"] = w
    return out


def gguf_metadata(cfg: dict, tokenizer_dir: Path) -> dict:
    """llama.cpp-style metadata (llama.* hyperparameters and a gpt2 tokenizer)."""
    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in tj.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    f32 = lambda v: mx.array(v, dtype=mx.float32)  # noqa: E731
    return {
        "general.architecture": "llama",
        "general.name": "tiny-llama",
        "general.file_type": u32(0),
        "llama.context_length": u32(cfg["max_position_embeddings"]),
        "llama.embedding_length": u32(cfg["hidden_size"]),
        "llama.block_count": u32(cfg["num_hidden_layers"]),
        "llama.feed_forward_length": u32(cfg["intermediate_size"]),
        "llama.attention.head_count": u32(cfg["num_attention_heads"]),
        "llama.attention.head_count_kv": u32(cfg["num_key_value_heads"]),
        "llama.attention.layer_norm_rms_epsilon": f32(cfg["rms_norm_eps"]),
        "llama.rope.freq_base": f32(cfg["rope_theta"]),
        "llama.rope.dimension_count": u32(cfg["hidden_size"] // cfg["num_attention_heads"]),
        "llama.vocab_size": u32(len(tokens)),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array([3 if t in specials else 1 for t in tokens], dtype=mx.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": u32(vocab["<|im_start|>"]),
        "tokenizer.ggml.eos_token_id": u32(vocab["<|im_end|>"]),
        "tokenizer.ggml.padding_token_id": u32(vocab["<|im_end|>"]),
        "tokenizer.ggml.unknown_token_id": u32(vocab["<|endoftext|>"]),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": CHATML_TEMPLATE,
    }


def write_tiny_gguf(path, seed=0, quantize=False, tie_word_embeddings=True) -> tuple[Path, Path]:
    """Write a tiny llama GGUF at `path` in llama.cpp's conventions (names, permuted q/k rows,
    metadata). Returns (path, reference_dir): reference_dir is the same model as an mlx-lm
    folder (unpermuted), for comparing logits.

    quantize=True stores the 2-D layer matrices as Q8_0 (and the embedding as Q4_1) and
    replaces the reference folder's weights by their dequantized values, so the imported
    GGUF must match the reference exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = make_tiny_llama(path.parent / f"{path.stem}-reference", seed=seed, tie_word_embeddings=tie_word_embeddings)
    cfg = json.loads((ref / "config.json").read_text(encoding="utf-8"))
    weights = mx.load(str(ref / "model.safetensors"))
    meta = gguf_metadata(cfg, ref)
    if not quantize:
        mx.save_gguf(str(path), _to_gguf_names(weights, cfg), meta)
        return path, ref
    types = {}
    for k, w in weights.items():
        if w.ndim == 2:
            types[k] = _quant_type_for(k)
            weights[k] = mx.array(_dequantize_blocks(_quantize_blocks(np.array(w), types[k]), types[k], w.shape))
    mx.save_safetensors(str(ref / "model.safetensors"), weights, metadata={"format": "mlx"})
    tensors = _to_gguf_names(weights, cfg)
    gtypes = {g: _quant_type_for(_from_gguf_name(g)) if tensors[g].ndim == 2 else "F32" for g in tensors}
    _write_gguf(path, {g: np.array(t) for g, t in tensors.items()}, meta, gtypes)
    return path, ref


# --- a minimal GGUF v3 writer with Q8_0 / Q4_0 / Q4_1 blocks (mx.save_gguf writes floats only) ---

GGML_TYPES = {"F32": 0, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8}


def _quant_type_for(mlx_name: str) -> str:
    """Mixed like a real llama.cpp file: Q8_0 embedding, Q4_1 q/k/gate, Q4_0 v, Q8_0 the rest."""
    if any(s in mlx_name for s in ("q_proj", "k_proj", "gate_proj", "lm_head")):
        return "Q4_1"
    if "v_proj" in mlx_name:
        return "Q4_0"
    return "Q8_0"


def _from_gguf_name(g: str) -> str:
    if g.startswith("blk."):
        short = g.split(".")[2]
        return next(k for k, v in GGUF_LAYER_NAMES.items() if v == short)
    return {"token_embd.weight": "embed_tokens", "output.weight": "lm_head"}.get(g, g)


def _quantize_blocks(w: np.ndarray, qtype: str) -> bytes:
    """ggml block quantization of a float32 matrix (rows of 32-value blocks)."""
    x = w.astype(np.float32).reshape(-1, 32)
    if qtype == "Q8_0":
        d = (np.abs(x).max(axis=1) / 127).astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.clip(np.round(x * inv[:, None]), -127, 127).astype(np.int8)
        return np.concatenate([d.view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1).tobytes()
    if qtype == "Q4_0":
        amax_i = np.abs(x).argmax(axis=1)
        mx_ = x[np.arange(len(x)), amax_i]
        d = (mx_ / -8).astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.clip(np.round(x * inv[:, None] + 8), 0, 15).astype(np.uint8)
        head = d.view(np.uint8).reshape(-1, 2)
    else:  # Q4_1
        lo, hi = x.min(axis=1), x.max(axis=1)
        d = ((hi - lo) / 15).astype(np.float16)
        m = lo.astype(np.float16)
        inv = np.where(d == 0, 0, 1 / d.astype(np.float32))
        q = np.clip(np.round((x - m.astype(np.float32)[:, None]) * inv[:, None]), 0, 15).astype(np.uint8)
        head = np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2)], axis=1)
    nib = q[:, :16] | (q[:, 16:] << 4)
    return np.concatenate([head, nib], axis=1).tobytes()


def _dequantize_blocks(data: bytes, qtype: str, shape) -> np.ndarray:
    """The exact values a reader gets back (float32 arithmetic on the float16 block constants)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if qtype == "Q8_0":
        b = b.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        return (b[:, 2:].copy().view(np.int8).astype(np.float32) * d).reshape(shape)
    head = 2 if qtype == "Q4_0" else 4
    b = b.reshape(-1, head + 16)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    nib = b[:, head:]
    q = np.concatenate([nib & 15, nib >> 4], axis=1).astype(np.float32)
    if qtype == "Q4_0":
        return ((q - 8) * d).reshape(shape)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    return (q * d + m).reshape(shape)


def _gguf_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _gguf_value(v) -> bytes:
    """(type id + payload) for a metadata value: str, list of str, or a 0-d/1-d mx array."""
    kinds = {"uint32": (4, "<u4"), "int32": (5, "<i4"), "float32": (6, "<f4"), "bool": (7, "u1")}
    if isinstance(v, str):
        return struct.pack("<I", 8) + _gguf_str(v)
    if isinstance(v, list):
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_gguf_str(s) for s in v)
    a = np.array(v)
    tid, dt = kinds[str(a.dtype)]
    if a.ndim == 0:
        return struct.pack("<I", tid) + a.astype(dt).tobytes()
    return struct.pack("<IIQ", 9, tid, a.size) + a.astype(dt).tobytes()


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], meta: dict, types: dict[str, str]) -> None:
    align = 32
    blobs, infos, offset = [], [], 0
    for name, t in tensors.items():
        if types[name] == "F32":
            data = t.astype(np.float32).tobytes()
        else:  # the values must already be on the block grid, so the file encodes them exactly
            data = _quantize_blocks(t, types[name])
            assert np.array_equal(_dequantize_blocks(data, types[name], t.shape), t), name
        dims = list(reversed(t.shape))
        infos.append(_gguf_str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", GGML_TYPES[types[name]], offset))
        pad = (-len(data)) % align
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    out += b"".join(_gguf_str(k) + _gguf_value(v) for k, v in meta.items())
    out += b"".join(infos)
    out += b"\0" * ((-len(out)) % align)
    path.write_bytes(out + b"".join(blobs))
