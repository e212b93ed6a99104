"""Import a llama-family GGUF (llama.cpp's format) as an MLX model folder.

`mx.load(path, return_metadata=True)` reads the file: Q4_0/Q4_1/Q8_0 tensors arrive
as MLX affine-quantized weight/scales/biases (group size 32), F16/F32 as plain arrays.
We rename llama.cpp's tensors to mlx-lm's llama names, undo llama.cpp's rope row
permutation of attn_q/attn_k, keep quantized tensors quantized, and build config.json,
tokenizer.json and tokenizer_config.json from the GGUF metadata, so that stock
`mlx_lm.load(folder)` loads the result."""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections import Counter
from pathlib import Path

import mlx.core as mx

from engine.errors import HumanizerError
from engine.events import NullRun, Run, write_json
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

# the split regex of llama.cpp's "llama-bpe" pre-tokenizer (Llama 3)
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
    weights, meta = read_gguf(path, run)
    try:
        config = build_config(meta, weights, path)
        tensors = rename_tensors(weights, path)
        shapes = expected_shapes(config)
        check_shapes(tensors, shapes, path)
        unpermute_qk(tensors, config)
        quant = quantization_config(tensors, shapes)
        if quant:
            config["quantization"] = quant
            config["quantization_config"] = quant
        tokenizer = build_tokenizer(meta, path)
        tok_config = tokenizer_config(meta, config)
    except HumanizerError:
        raise
    except Exception as e:  # metadata of the wrong type, a vocabulary its merges don't match, ...
        raise HumanizerError(
            f"cannot import GGUF {path}: its contents are inconsistent ({type(e).__name__}: {e})", CORRUPT_HINT
        ) from None

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


# ggml tensor types: id -> (name, values per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2),
}
KEPT_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")  # what MLX reads as is (quantized ones stay quantized)
VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # 8 string, 9 array
CORRUPT_HINT = "the file is corrupt or truncated (an incomplete download?); download it again"


def check_gguf(path: Path) -> dict[str, str]:
    """Walk the GGUF header and tensor table in Python and check every extent lies inside
    the file, before mx.load (whose C reader can crash on a corrupt file) touches it.
    Returns {tensor name: ggml type name}."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            return _walk_gguf(data, size, path)
        finally:
            if size:
                data.close()


def _walk_gguf(data, size: int, path: Path) -> dict[str, str]:
    pos = 0

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > size:
            raise HumanizerError(f"cannot read GGUF {path}: it ends in the middle of its header", CORRUPT_HINT)
        out = struct.unpack_from(fmt, data, pos)
        pos += n
        return out if len(out) > 1 else out[0]

    def skip(n: int):
        nonlocal pos
        if n < 0 or pos + n > size:
            raise HumanizerError(f"cannot read GGUF {path}: a header entry extends past the end of the file", CORRUPT_HINT)
        pos += n

    def string() -> bytes:
        n = take("<Q")
        skip(n)
        return bytes(data[pos - n:pos])

    def value(vtype: int, depth: int = 0):
        if vtype in VALUE_SIZES:
            skip(VALUE_SIZES[vtype])
        elif vtype == 8:
            string()
        elif vtype == 9 and depth < 3:
            etype, count = take("<IQ")
            if etype in VALUE_SIZES:
                skip(VALUE_SIZES[etype] * count)
            else:
                for _ in range(count):
                    value(etype, depth + 1)
        else:
            raise HumanizerError(f"cannot read GGUF {path}: unknown metadata value type {vtype}", CORRUPT_HINT)

    if size < 4 or bytes(data[:4]) != b"GGUF":
        raise HumanizerError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
            "pass a llama.cpp .gguf model file, or a folder with config.json and *.safetensors",
        )
    pos = 4
    version, n_tensors, n_kv = take("<IQQ")
    if version not in (2, 3):
        raise HumanizerError(
            f"cannot read GGUF {path}: unsupported GGUF version {version}",
            "only GGUF versions 2 and 3 are read; re-convert the model with a current llama.cpp"
            if version == 1 else CORRUPT_HINT,
        )
    if n_tensors > size // 24 or n_kv > size // 12:
        raise HumanizerError(f"cannot read GGUF {path}: implausible header counts", CORRUPT_HINT)
    alignment = 32
    for _ in range(n_kv):
        key = string()
        vtype = take("<I")
        if key == b"general.alignment" and vtype == 4:
            alignment = take("<I") or 32
        else:
            value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string().decode("utf-8", "replace")
        n_dims = take("<I")
        if not 1 <= n_dims <= 4:
            raise HumanizerError(f"cannot read GGUF {path}: tensor '{name}' has {n_dims} dimensions", CORRUPT_HINT)
        dims = take(f"<{n_dims}Q")
        dims = dims if isinstance(dims, tuple) else (dims,)
        ttype, offset = take("<IQ")
        if ttype not in GGML_TYPES:
            raise HumanizerError(
                f"cannot read GGUF {path}: tensor '{name}' has an unknown ggml type {ttype}",
                f"MLX reads GGUF tensors of type {', '.join(KEPT_TYPES)} (and dequantizes some K-quants); "
                "use a GGUF in one of those",
            )
        infos.append((name, dims, ttype, offset))
    start = -(-pos // alignment) * alignment
    types = {}
    for name, dims, ttype, offset in infos:
        tname, block, nbytes = GGML_TYPES[ttype]
        count = 1
        for d in dims:
            count *= d
        if start + offset + count // block * nbytes > size:
            raise HumanizerError(
                f"cannot read GGUF {path}: tensor '{name}' extends past the end of the file", CORRUPT_HINT
            )
        types[name] = tname
    return types


def read_gguf(path: Path, run: Run = NullRun()) -> tuple[dict, dict]:
    """mx.load with its errors explained: not a GGUF, truncated, unsupported tensor types."""
    types = check_gguf(path)
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mx.load raises RuntimeError/ValueError with a terse message
        msg = str(e).replace("[load_gguf] ", "")
        odd = sorted({t for t in types.values() if t not in KEPT_TYPES})
        if odd:
            raise HumanizerError(
                f"cannot read GGUF {path}: MLX cannot read its {'/'.join(odd)} tensors ({msg})",
                f"MLX reads GGUF tensors of type {', '.join(KEPT_TYPES)}; use a GGUF quantized as Q4_0, Q4_1 or Q8_0",
            ) from None
        raise HumanizerError(f"cannot read GGUF {path}: {msg}", CORRUPT_HINT) from None
    odd = sorted({t for t in types.values() if t not in KEPT_TYPES})
    if odd:
        run.log(f"MLX dequantizes the {'/'.join(odd)} tensors of this GGUF to float16")
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
    counts = {k: config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                     "num_attention_heads", "num_key_value_heads", "vocab_size")}
    if min(counts.values()) <= 0 or config["num_hidden_layers"] > len(weights) or n_head % n_kv:
        raise HumanizerError(
            f"GGUF {path} has implausible hyperparameters {counts}",
            "the file's metadata is damaged; download it again",
        )
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


def rename_tensors(weights: dict, path: Path) -> dict[str, mx.array]:
    """llama.cpp tensor names -> mlx-lm llama names (weight, scales, biases, bias)."""
    out = {}
    for name, arr in weights.items():
        parts = name.split(".")
        target = None
        if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
            target = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
        elif len(parts) == 2 and parts[0] in GLOBAL_NAMES:
            target = GLOBAL_NAMES[parts[0]]
        if target is None or parts[-1] not in ("weight", "scales", "biases", "bias"):
            raise HumanizerError(
                f"GGUF {path} has a tensor '{name}' that a llama model does not have",
                "only plain llama-family GGUFs can be imported; use the model's Hugging Face folder instead",
            )
        out[f"{target}.{parts[-1]}"] = arr
    return out


def expected_shapes(config: dict) -> dict[str, tuple]:
    """mlx-lm llama module -> the (out, in) shape of its weight ((n,) for norms)."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim", h // config["num_attention_heads"])
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens": (vocab, h), "model.norm": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head"] = (vocab, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm": (h,), p + "post_attention_layernorm": (h,),
            p + "self_attn.q_proj": (q, h), p + "self_attn.k_proj": (kv, h), p + "self_attn.v_proj": (kv, h),
            p + "self_attn.o_proj": (h, q), p + "mlp.gate_proj": (inter, h), p + "mlp.up_proj": (inter, h),
            p + "mlp.down_proj": (h, inter),
        })
    return shapes


def check_shapes(tensors: dict, shapes: dict, path: Path) -> None:
    """Every module the config implies is there with its shape (quantized: a plausible packing)."""
    hint = "the file's metadata and tensors disagree; it may be corrupt: download it again"
    for name in tensors:
        if name.rsplit(".", 1)[0] not in shapes:
            raise HumanizerError(f"GGUF {path} has a tensor for '{name}', which its metadata does not describe", hint)
    for module, shape in shapes.items():
        w, scales = tensors.get(f"{module}.weight"), tensors.get(f"{module}.scales")
        if w is None:
            raise HumanizerError(f"GGUF {path} lacks the tensor for '{module}'", hint)
        if scales is None:
            ok = tuple(w.shape) == shape
        else:
            out, n_in = shape
            biases = tensors.get(f"{module}.biases")
            ok = (
                w.ndim == 2 and w.shape[0] == out and scales.ndim == 2 and scales.shape[0] == out
                and biases is not None and biases.shape == scales.shape
                and w.shape[1] * 32 % n_in == 0 and w.shape[1] * 32 // n_in in (2, 3, 4, 5, 6, 8)
                and scales.shape[1] > 0 and n_in % scales.shape[1] == 0
            )
        if not ok:
            raise HumanizerError(
                f"GGUF {path}: the tensor for '{module}' has shape {tuple(w.shape)}, expected {shape}", hint
            )


def unpermute_qk(tensors: dict, config: dict) -> None:
    """Undo llama.cpp's q/k row permutation in place (weight, scales, biases and bias alike)."""
    for name in list(tensors):
        if ".self_attn.q_proj." in name:
            tensors[name] = unpermute(tensors[name], config["num_attention_heads"])
        elif ".self_attn.k_proj." in name:
            tensors[name] = unpermute(tensors[name], config["num_key_value_heads"])


def quantization_config(tensors: dict, shapes: dict) -> dict | None:
    """{group_size, bits} of the quantized modules (the most common pair), plus a per-module
    entry for each module that differs, the way mlx-lm reads config["quantization"]."""
    per_module = {}
    for name, scales in tensors.items():
        if not name.endswith(".scales"):
            continue
        module = name[: -len(".scales")]
        n_in = shapes[module][1]
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
