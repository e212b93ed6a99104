"""Import a llama-family GGUF (llama.cpp's format) as an MLX model folder.

`mx.load(path, return_metadata=True)` reads the file: Q4_0/Q4_1/Q8_0 tensors arrive
as MLX affine-quantized weight/scales/biases (group size 32), F16/F32 as plain arrays.
We rename llama.cpp's tensors to mlx-lm's llama names, undo llama.cpp's rope row
permutation of attn_q/attn_k, keep quantized tensors quantized, and build config.json,
tokenizer.json and tokenizer_config.json from the GGUF metadata, so that stock
`mlx_lm.load(folder)` loads the result."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import mlx.core as mx

from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.workspace import atomic_dir

SUPPORTED_ARCHITECTURES = ("llama",)
IMPORT_INFO = "gguf_import.json"  # written into the imported folder: source path, size, mtime

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> how to split before byte-level BPE
GPT2_SPLIT = None  # ByteLevel's own regex
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def import_gguf(gguf_path, output_dir, run: Run = NullRun()) -> Path:
    """Import `gguf_path` into the folder `output_dir` (written atomically) and return it."""
    path = Path(gguf_path).expanduser()
    output_dir = Path(output_dir)
    if not path.is_file():
        raise HumanizerError(
            f"GGUF file not found: {path}", "check the path; a .gguf model file is expected"
        )
    run.log(f"reading {path}")
    weights, meta = read_gguf(path)
    config = build_config(meta, weights, path)
    tensors = convert_tensors(weights, config, path)
    quant = quantization_config(tensors, config)
    if quant:
        config["quantization"] = quant
        config["quantization_config"] = quant
    tokenizer = build_tokenizer(meta, path)
    tok_config = tokenizer_config(meta, config)

    with atomic_dir(output_dir) as tmp:
        out, total = {}, len(tensors)
        for i, (name, arr) in enumerate(sorted(tensors.items()), 1):
            mx.eval(arr)
            out[name] = arr
            if i % 25 == 0 or i == total:
                run.progress(i, total, f"converting tensors ({i}/{total})")
        mx.save_safetensors(str(tmp / "model.safetensors"), out, metadata={"format": "mlx"})
        write_json(tmp / "config.json", config)
        tokenizer.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "tokenizer_config.json", tok_config)
        stat = path.stat()
        write_json(
            tmp / IMPORT_INFO,
            {"source": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
             "general.name": meta.get("general.name")},
        )
    run.artifact(output_dir)
    return output_dir


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def read_gguf(path: Path) -> tuple[dict, dict]:
    """mx.load with its errors explained: not a GGUF, truncated, unsupported tensor types."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise HumanizerError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
            "pass a llama.cpp .gguf model file, or a folder with config.json and *.safetensors",
        )
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mx.load raises RuntimeError/ValueError with a terse message
        msg = str(e).replace("[load_gguf] ", "")
        if "not supported" in msg.lower() or "unsupported" in msg.lower():
            hint = "MLX reads GGUF tensors of type F32, F16, Q4_0, Q4_1 and Q8_0; use a GGUF in one of those"
        else:
            hint = "the file is corrupt or truncated (an incomplete download?); download it again"
        raise HumanizerError(f"cannot read GGUF {path}: {msg}", hint) from None
    return weights, meta


def meta_value(meta: dict, key: str, path: Path, default=None, required=True):
    """A metadata value as a Python value (mx arrays become int/float/bool/list)."""
    if key not in meta:
        if required and default is None:
            raise HumanizerError(
                f"GGUF {path} lacks the metadata key '{key}'",
                "the file was not written by a llama.cpp converter this importer understands; "
                "re-convert it with llama.cpp's convert_hf_to_gguf.py",
            )
        return default
    v = meta[key]
    return v.tolist() if isinstance(v, mx.array) else v


def build_config(meta: dict, weights: dict, path: Path) -> dict:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise HumanizerError(
            f"GGUF {path} has architecture '{arch}', which this importer does not support",
            "only llama-family GGUFs (general.architecture = llama, e.g. SmolLM2, TinyLlama-style "
            "models) can be imported; for other models use a Hugging Face folder or repo id",
        )
    if "rope_freqs.weight" in weights:
        raise HumanizerError(
            f"GGUF {path} uses Llama-3-style rope frequency scaling (rope_freqs), not supported yet",
            "use the model's Hugging Face folder or repo id instead of the GGUF",
        )

    def get(key, default=None):
        return meta_value(meta, f"{arch}.{key}", path, default)

    hidden = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", n_head))
    tokens = meta_value(meta, "tokenizer.ggml.tokens", path)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": f32(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "vocab_size": int(get("vocab_size", weights["token_embd.weight"].shape[0] if "token_embd.weight" in weights else len(tokens))),
        "tie_word_embeddings": "output.weight" not in weights,
        "attention_bias": "blk.0.attn_q.bias" in weights,
        "mlp_bias": "blk.0.ffn_gate.bias" in weights,
    }
    head_dim = int(get("attention.key_length", hidden // n_head))
    if head_dim != hidden // n_head:
        config["head_dim"] = head_dim
    scaling = meta_value(meta, f"{arch}.rope.scaling.type", path, required=False)
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise HumanizerError(
            f"GGUF {path} uses rope scaling '{scaling}', which this importer does not support",
            "use the model's Hugging Face folder or repo id instead of the GGUF",
        )
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
        v = meta_value(meta, f"tokenizer.ggml.{name}_token_id", path, required=False)
        if v is not None:
            config[key] = int(v)
    return config


def f32(v) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99e-06)."""
    return float(f"{v:.7g}")


def unpermute(w: mx.array, n_head: int) -> mx.array:
    """Undo llama.cpp's rope row permutation of q/k (per head: interleaved -> halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_tensors(weights: dict, config: dict, path: Path) -> dict[str, mx.array]:
    """llama.cpp names -> mlx-lm llama names, q/k rows un-permuted (weight, scales, biases, bias)."""
    out = {}
    for name, arr in weights.items():
        base, param = name.rsplit(".", 1)
        if base.startswith("blk."):
            _, layer, short = base.split(".", 2)
            module = LAYER_NAMES.get(short)
            target = f"model.layers.{layer}.{module}" if module else None
        else:
            short = base
            target = GLOBAL_NAMES.get(base)
        if target is None or param not in ("weight", "scales", "biases", "bias"):
            raise HumanizerError(
                f"GGUF {path} has a tensor '{name}' that a llama model does not have",
                "only plain llama-family GGUFs can be imported; use the model's Hugging Face folder instead",
            )
        if short == "attn_q":
            arr = unpermute(arr, config["num_attention_heads"])
        elif short == "attn_k":
            arr = unpermute(arr, config["num_key_value_heads"])
        out[f"{target}.{param}"] = arr
    return out


def in_features(module: str, config: dict) -> int:
    if module.endswith("down_proj"):
        return config["intermediate_size"]
    if module.endswith("o_proj"):
        return config["num_attention_heads"] * config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return config["hidden_size"]


def quantization_config(tensors: dict, config: dict) -> dict | None:
    """{group_size, bits} of the quantized modules (the most common pair), plus a per-module
    entry for each module that differs, the way mlx-lm reads config["quantization"]."""
    per_module = {}
    for name, scales in tensors.items():
        if not name.endswith(".scales"):
            continue
        module = name[: -len(".scales")]
        n_in = in_features(module, config)
        packed = tensors[f"{module}.weight"].shape[-1]
        per_module[module] = {"group_size": n_in // scales.shape[-1], "bits": packed * 32 // n_in}
    if not per_module:
        return None
    common = Counter((q["group_size"], q["bits"]) for q in per_module.values()).most_common(1)[0][0]
    quant = {"group_size": common[0], "bits": common[1]}
    for module, q in sorted(per_module.items()):
        if (q["group_size"], q["bits"]) != common:
            quant[module] = q
    return quant


def build_tokenizer(meta: dict, path: Path):
    """A tokenizers byte-level BPE from tokenizer.ggml.tokens/merges/token_type."""
    from tokenizers import AddedToken, Tokenizer, Regex, decoders, models, pre_tokenizers, processors

    kind = meta_value(meta, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise HumanizerError(
            f"GGUF {path} has a '{kind}' tokenizer; only GPT-2 style byte-level BPE ('gpt2') is supported",
            "use the model's Hugging Face folder or repo id instead of the GGUF",
        )
    tokens = meta_value(meta, "tokenizer.ggml.tokens", path)
    merges = [tuple(m.split(" ", 1)) for m in meta_value(meta, "tokenizer.ggml.merges", path)]
    types = meta_value(meta, "tokenizer.ggml.token_type", path, default=[1] * len(tokens), required=False)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))

    pre = meta_value(meta, "tokenizer.ggml.pre", path, default="default", required=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("llama-bpe", "llama3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre == "smollm":  # digits one by one, then GPT-2's split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()

    control = [t for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    bos = meta_value(meta, "tokenizer.ggml.bos_token_id", path, required=False)
    if meta_value(meta, "tokenizer.ggml.add_bos_token", path, default=False, required=False) and bos is not None:
        b = tokens[int(bos)]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, int(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def tokenizer_config(meta: dict, config: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key):
        v = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(v.item())] if v is not None and int(v.item()) < len(tokens) else None

    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding") or token("eos"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(add_bos.item()) if add_bos is not None else False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        cfg["chat_template"] = template
    return {k: v for k, v in cfg.items() if v is not None}


def gguf_import_info(folder) -> dict | None:
    """The import record of a folder made by import_gguf, or None."""
    try:
        return json.loads((Path(folder) / IMPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def same_source(folder, gguf_path) -> bool:
    """True when `folder` was imported from `gguf_path` as it is now (same size and mtime)."""
    info = gguf_import_info(folder)
    try:
        st = os.stat(gguf_path)
    except OSError:
        return False
    return bool(info) and info.get("size") == st.st_size and info.get("mtime") == st.st_mtime
