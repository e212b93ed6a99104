"""Sensitivity-aware mixed-precision quantization (`humanizer convert`).

    convert(MODEL, OUTPUT, target_bpw=5.0, candidate_bits=(4, 8), group_size=64, ...)

1. **Layers.** Every quantizable layer of the model is measured: each linear layer
   of every block, the embedding and the output head. When the head is tied to the
   embedding (one shared matrix), that matrix is one layer in the budget, measured
   for both roles. A layer whose input width is not divisible by the group size gets
   the largest of 64/32 that divides it, or, when none does, stays in float16 (and
   is counted at 16 bits per weight); either way it is reported.

2. **Sensitivity.** For a layer with weights W and a candidate width b, the cost of
   quantizing that layer alone is the increase of the mean per-token
   KL(float model || model with that layer quantized) on calibration tokens. To
   second order around the float model that is

       KL ~= 1/2 * sum_ij F_ij * (W_ij - Q_b(W)_ij)^2 / tokens

   where F is the Fisher information of the model's output distribution (the Hessian
   of the KL at the float weights) and Q_b(W) is W quantized to b bits and
   dequantized, exactly as the output stores it (affine, 16-bit scales and biases).
   We estimate the diagonal of F with one calibration pass: per sequence, labels are
   sampled from the float model's own next-token distribution, and the squared
   gradients of their log-likelihood are accumulated (an unbiased estimate of the
   Fisher diagonal, since the sampled labels' scores have zero mean). This is the
   diagonal-Fisher ("FIT"/SqueezeLLM-style) sensitivity: unlike the plain weight
   error it weighs each weight by how much the output distribution depends on it,
   including everything downstream of the layer, so the numbers of different layers
   are in the same unit (nats of KL per token) and can be traded against each other.
   One forward+backward per sample measures every layer at once; the per-layer work
   is then a quantize/dequantize per candidate width. Everything runs on float32
   weights (the CPU backend's fast BLAS path); quantized kernels are never used while
   measuring. One calibration window in 16 (at most 2) is held back from this pass
   for step 3. The pass is most of a convert's time, so while it runs every layer's
   sensitivity is estimated now and then from the sums so far, with the bits an
   allocation of those estimates gives (`layer` events, phase "estimate": provisional).

   **Rounding** (`rounding="clip"`, the default): still the standard MLX affine format
   (stock `mlx_lm.load` reads it), but at <= 4 bits each group of weights is not simply
   mapped min..max: its range is shrunk about its midpoint by the ratio (1, 0.95 ... 0.75)
   that minimises the squared error weighted by a rank-1 summary of the Fisher diagonal
   (F_ij ~ rows_i * cols_j, K-FAC style; the full diagonal is too big to keep, the
   summary is stored beside the weights as humanizer_rounding.safetensors so a reused
   measurement rounds identically). Clipping a few extreme weights buys a finer step
   for the other 60-odd. The sensitivities of step 2 are measured with this rounding.
   `rounding="minmax"` is plain mx.quantize.

3. **Allocation.** Minimise the sum of the chosen sensitivities subject to the bit
   budget: a multiple-choice knapsack solved by dynamic programming on a fine grid
   (costs rounded up, so the budget always holds), then filled greedily with the
   best sensitivity-per-bit upgrades that still fit exactly.

   The second-order estimate is additive and local; measured on SmolLM2-135M against the
   real KL of quantizing one layer alone, it is right at 4 bits but off (mostly low, up to
   2.4x for the 2-bit embedding) below, and the layers' errors interact at low budgets (at
   3.5 bpw the whole model's real KL was 1.8x the summed estimate for a 2/3/4/6 mix, 1.3x
   for uniform 3-bit), so the plain knapsack traded 3-bit layers for 2+4-bit pairs that
   lose. So the knapsack is run once per correction kappa in KAPPAS (each bit below 4
   multiplies a sensitivity by kappa), and of the distinct allocations the one whose
   quantized model has the smallest real mean per-token KL(float || quantized) on the
   held-back calibration windows is kept (a few forward passes). Every candidate, its
   predicted and real KL are in the metadata.

4. **Bits per weight** are counted over the whole model from the tensors written:
   a quantized layer costs b bits per weight plus a 16-bit scale and a 16-bit bias
   per group (b + 32/group_size); every other tensor (norms, biases, layers kept in
   float) costs 16 bits per value; the denominator is the number of parameters of
   the float model, the shared embedding/head matrix counted once.

5. **Output**: an MLX model folder whose config.json "quantization" holds one
   {"group_size", "bits"} entry per quantized layer (false for a layer kept in
   float), which stock `mlx_lm.load` reads, plus humanizer_quant.json with every
   layer's measured sensitivities, its chosen bits, how the bits were counted, the
   allocation candidates and the held-out perplexity of the result against the source,
   and humanizer_rounding.safetensors (the rank-1 Fisher factors). Written atomically.

6. **Resume**: the calibration pass checkpoints its Fisher sums, and each measured
   layer is saved to a small state.json as it completes, in a work folder beside the
   output (`.<name>.convert-work`); `resume=True` continues from there. The work
   folder is removed when the output is written.

A source that is already quantized (the embedded SmolLM2 arrives 4-bit from its
GGUF) is dequantized to float32 first: its earlier quantization error is baked into
those weights, and every sensitivity is measured against them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import HumanizerError
from engine.events import NullRun, Run, read_json, write_json

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_CANDIDATE_BITS = (4, 8)
DEFAULT_GROUP_SIZE = 64
DEFAULT_SAMPLES = 32
DEFAULT_SEQ_LEN = 256
DEFAULT_HELDOUT_TOKENS = 2048
BUDGET_TOLERANCE = 0.05  # the achieved bpw may exceed the target by at most this (we aim at <= target)
META_FILE = "humanizer_quant.json"
STATE_FILE = "state.json"
FISHER_FILE = "fisher.safetensors"
STATE_VERSION = 2  # 2: check windows held back from the Fisher pass, rounding in the key
FLOAT_BITS = 16  # the bits of every tensor stored unquantized (the output's float dtype)
ROUNDING_FILE = "humanizer_rounding.safetensors"  # the rank-1 Fisher factors (mlx_lm reads only model*.safetensors)
ROUNDINGS = ("clip", "minmax")
# Per-group range shrink ratios tried by the clip search, and the widest width searched: at 6 and 8
# bits the step is already fine and the search would only cost time.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
CLIP_MAX_BITS = 4
# Candidate corrections of the second-order estimate: each bit below 4 multiplies a layer's
# predicted KL by kappa. On SmolLM2-135M the estimate matched the real KL at 4 bits and was off
# more and more below (mostly low, up to 2.4x at 2 bits), where the error is too large for a
# quadratic; which kappa is right is left to the real KL on held-back tokens, in both directions.
KAPPAS = (0.75, 1.0, 1.5, 2.0)
KAPPA_FROM_BITS = 4
ESTIMATE_EVERY, ESTIMATE_SHARE = 30.0, 0.05  # layer estimates during the calibration pass: how often, what cost
MAX_CHECK_SAMPLES = 2  # calibration windows held back to compare the candidate allocations' real KL

CALIBRATION_FILE = Path(__file__).parent.parent / "calibration.txt"  # engine/: the paths the docs name
HELDOUT_FILE = Path(__file__).parent.parent / "calibration_heldout.txt"
DOC_SEPARATOR = re.compile(r"\n-{3}[ \t]*\n")

# leaf module name -> the short name the Convert screen's grid uses
MODULE_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "wq": "q", "wk": "k", "wv": "v", "wo": "o",
    "embed_tokens": "embedding", "wte": "embedding", "tok_embeddings": "embedding",
    "lm_head": "head", "output": "head",
}
EXAMPLE_FAMILIES = "llama, mistral, qwen2, qwen3, gemma, gemma2, phi3, olmo2, granite, smollm3"

TEXT_SUFFIXES = (".txt", ".md", ".text")
ROW_SUFFIXES = (".jsonl", ".parquet")


# --------------------------------------------------------------------------- settings


def parse_bits(value) -> list[int]:
    """'4,8' (or a list) -> [4, 8], sorted and unique; a clear error for anything else."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    else:
        parts = list(value or [])
    bits = []
    for p in parts:
        try:
            if isinstance(p, bool) or not isinstance(p, (int, str)):
                raise ValueError
            b = int(p)
        except ValueError:
            raise HumanizerError(
                f"unknown candidate bits '{p}'",
                f"candidate bits are a comma-separated list of {', '.join(map(str, SUPPORTED_BITS))}",
            ) from None
        if b not in SUPPORTED_BITS:
            raise HumanizerError(
                f"unknown candidate bits {b}: MLX quantizes to {', '.join(map(str, SUPPORTED_BITS))} bits",
                "pick candidate bits from 2, 3, 4, 5, 6 and 8, e.g. --candidate-bits 4,8",
            )
        bits.append(b)
    if not bits:
        raise HumanizerError("no candidate bits given", "e.g. --candidate-bits 4,8")
    return sorted(set(bits))


def layer_bpw(bits: int, group_size: int) -> float:
    """Bits per weight of an affine-quantized layer: the codes plus a 16-bit scale and bias per group."""
    return bits + 2 * FLOAT_BITS / group_size


def check_settings(target_bpw, candidate_bits, group_size, samples=DEFAULT_SAMPLES, seq_len=DEFAULT_SEQ_LEN):
    """The checks that need no model: bits, group size, target against the candidates,
    sample counts. Returns (target, bits, group_size). Raises HumanizerError."""
    bits = parse_bits(candidate_bits)
    with contextlib.suppress(TypeError, ValueError):
        group_size = int(group_size)
    if group_size not in GROUP_SIZES:
        raise HumanizerError(
            f"unknown group size {group_size}",
            f"the group size is one of {', '.join(map(str, GROUP_SIZES))} (default {DEFAULT_GROUP_SIZE})",
        )
    try:
        target = float(target_bpw)
    except (TypeError, ValueError):
        raise HumanizerError(f"the target bits per weight must be a number, not '{target_bpw}'") from None
    if not math.isfinite(target):
        raise HumanizerError(f"the target bits per weight must be a finite number, not {target_bpw}")
    lo, hi = layer_bpw(bits[0], group_size), layer_bpw(bits[-1], group_size)
    if target < lo:
        raise HumanizerError(
            f"target {target:g} bits per weight is below the smallest candidate: {bits[0]}-bit with group size "
            f"{group_size} costs {lo:g} bits per weight (the codes plus a 16-bit scale and bias per group)",
            f"raise --target-bpw to at least {lo:g}, add a smaller candidate (--candidate-bits) or use a larger "
            "--group-size",
        )
    if target > hi:
        raise HumanizerError(
            f"target {target:g} bits per weight is above the largest candidate: {bits[-1]}-bit with group size "
            f"{group_size} costs {hi:g} bits per weight, so every layer at {bits[-1]} bits is all the budget "
            "can buy",
            f"lower --target-bpw to at most {hi:g}, or add a larger candidate (--candidate-bits)",
        )
    for name, v, least in (("samples", samples, 1), ("seq-len", seq_len, 8)):
        if not isinstance(v, int) or v < least:
            raise HumanizerError(f"--{name} must be a whole number of at least {least}, not {v}")
    return target, bits, group_size


# --------------------------------------------------------------------------- calibration text


def _read_docs(path: Path) -> list[str]:
    """The documents of a shipped text file (split at '---' lines; the first part is a header)."""
    parts = DOC_SEPARATOR.split(path.read_text(encoding="utf-8"))
    return [p.strip() for p in parts[1:] if p.strip()]


def default_calibration() -> list[str]:
    return _read_docs(CALIBRATION_FILE)


def default_heldout() -> list[str]:
    return _read_docs(HELDOUT_FILE)


def _row_text(row: dict) -> str | None:
    """Plain text of a calibration row: text | content | messages | prompt + completion/chosen."""
    for key in ("text", "content"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    msgs = row.get("messages")
    if isinstance(msgs, list):
        parts = [m.get("content") for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), str)]
        if parts:
            return "\n\n".join(parts)
    prompt = row.get("prompt")
    reply = next((row[k] for k in ("completion", "chosen", "response", "answer") if isinstance(row.get(k), str)), None)
    if isinstance(prompt, list):
        prompt = "\n\n".join(m.get("content", "") for m in prompt if isinstance(m, dict))
    texts = [t for t in (prompt, reply) if isinstance(t, str) and t.strip()]
    return "\n\n".join(texts) if texts else None


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or Path(spec).suffix.lower() in (*TEXT_SUFFIXES, *ROW_SUFFIXES, ".json", ".csv")
        or spec.count("/") > 1
        or os.sep != "/" and os.sep in spec
    )


def load_calibration(spec=None, ws=None) -> tuple[list[str], str]:
    """(documents, description) for a calibration spec: None (the shipped set), a text
    file, a .jsonl/.parquet file or folder of rows, or a Hugging Face dataset id."""
    if spec is None or str(spec).strip() in ("", "default"):
        return default_calibration(), "the default calibration set (engine/calibration.txt)"
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            raise HumanizerError(
                f"calibration file not found: {path}",
                "pass a text file, a .jsonl/.parquet file with a 'text' field, a Hugging Face dataset id, "
                "or leave --calibration out to use the default calibration set",
            )
        from engine import data

        splits = data.read_rows(spec, ws)  # a dataset id: clear errors when offline or unknown
        return _docs_from_rows(splits, spec), f"dataset {spec}"
    if path.is_file() and path.suffix.lower() not in ROW_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise HumanizerError(f"calibration file {path} is not UTF-8 text ({e.reason})",
                                 "pass a plain text file or a .jsonl file") from None
        except OSError as e:
            raise HumanizerError(f"cannot read calibration file {path}: {e.strerror or e}") from None
        if not text.strip():
            raise HumanizerError(f"calibration file {path} is empty", "pass a file with some text in it")
        return [text], f"text file {path}"
    if path.is_file() and path.stat().st_size == 0:
        raise HumanizerError(f"calibration file {path} is empty", "pass a file with some text in it")
    from engine import data

    splits = data.read_rows(str(path), ws)
    return _docs_from_rows(splits, str(path)), f"{'file' if path.is_file() else 'folder'} {path}"


def _docs_from_rows(splits: dict, label: str) -> list[str]:
    rows = splits.get("train") or next(iter(splits.values()), [])
    docs = []
    for _, _, row in rows:
        if isinstance(row, dict):
            t = _row_text(row)
            if t and t.strip():
                docs.append(t)
    if not docs:
        raise HumanizerError(
            f"no calibration text in {label}: it is empty or its rows have no 'text', 'messages' or "
            "'prompt'/'completion' field",
            "pass rows with a 'text' field, or a plain text file",
        )
    return docs


def tokenize_docs(docs: list[str], tokenizer) -> list[int]:
    """The documents' tokens, one stream, with the end-of-sequence token between documents."""
    eos = getattr(tokenizer, "eos_token_id", None)
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)  # no "longer than the model's maximum" warnings
    out: list[int] = []
    for d in docs:
        if backend is not None:
            ids = backend.encode(d, add_special_tokens=False).ids
        else:
            try:
                ids = tokenizer.encode(d, add_special_tokens=False)
            except TypeError:
                ids = tokenizer.encode(d)
        if out and eos is not None:
            out.append(int(eos))
        out.extend(int(i) for i in ids)
    return out


def make_samples(tokens: list[int], samples: int, seq_len: int) -> list[list[int]]:
    """Up to `samples` windows of `seq_len` consecutive tokens, spread evenly over the stream
    (one shorter window when there are fewer than seq_len tokens)."""
    if len(tokens) < 2:
        return []
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        return [tokens]
    take = min(samples, n_windows)
    starts = [round(i * n_windows / take) * seq_len for i in range(take)]
    return [tokens[s:s + seq_len] for s in starts]


def _token_fingerprint(samples: list[list[int]]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps(s).encode())
    return "sha256:" + h.hexdigest()[:24]


# --------------------------------------------------------------------------- the model's layers


@dataclass
class QLayer:
    """One quantizable matrix: what is measured and allocated."""

    path: str  # module path, e.g. model.layers.3.self_attn.q_proj
    kind: str  # "linear" | "embedding"
    module: str  # q, k, v, o, gate, up, down, embedding, head (else the leaf name)
    block: int | None
    shape: tuple[int, int]  # (out, in); an embedding: (vocab, hidden)
    roles: list[str] = field(default_factory=list)  # ["embedding", "head"] for a tied matrix
    group_size: int | None = None  # None: kept in float16
    note: str | None = None

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def quantized(self) -> bool:
        return self.group_size is not None

    def cost_bits(self, bits: int | None) -> int:
        """Bits this layer takes in the output at `bits` (None: kept in float)."""
        if bits is None or not self.quantized:
            return self.params * FLOAT_BITS
        return self.params * bits + (self.params // self.group_size) * 2 * FLOAT_BITS

    def describe(self) -> dict:
        return {"path": self.path, "module": self.module, "modules": self.roles if len(self.roles) > 1 else
                [self.module], "block": self.block, "kind": self.kind, "roles": self.roles,
                "params": self.params, "shape": list(self.shape), "group_size": self.group_size, "note": self.note}


_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _module_shape(m) -> tuple[int, int]:
    import mlx.nn as nn

    w = m.weight
    if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return int(w.shape[0]), int(w.shape[1]) * 32 // m.bits
    return int(w.shape[0]), int(w.shape[-1])


def quantizable_layers(model, group_size: int) -> list[QLayer]:
    """The model's quantizable layers, with their group size (or float16 fallback) decided.

    Raises HumanizerError for a quantizable layer that is not a plain linear or embedding
    layer (mixture-of-experts switch layers and the like)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    plain = (nn.Linear, nn.QuantizedLinear, nn.Embedding, nn.QuantizedEmbedding)
    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    layers: list[QLayer] = []
    odd = []
    for path, m in leaves:
        if isinstance(m, plain):
            pass
        elif hasattr(m, "to_quantized") or type(m).__name__.startswith("Quantized"):
            odd.append((path, type(m).__name__))
            continue
        else:
            continue
        kind = "embedding" if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding)) else "linear"
        leaf = path.rsplit(".", 1)[-1]
        match = _BLOCK.search(path)
        layers.append(QLayer(path=path, kind=kind, module=MODULE_NAMES.get(leaf, leaf),
                             block=int(match.group(1)) if match else None, shape=_module_shape(m)))
    if odd:
        kinds = sorted({t for _, t in odd})
        raise HumanizerError(
            f"unsupported architecture: its {', '.join(kinds)} layers (e.g. {odd[0][0]}) are not plain linear or "
            "embedding layers, which is what convert measures",
            f"convert supports text models that mlx-lm loads whose quantizable layers are all nn.Linear and "
            f"nn.Embedding (e.g. {EXAMPLE_FAMILIES}); mixture-of-experts models are not supported yet",
        )
    embeddings = [layer for layer in layers if layer.kind == "embedding"]
    vocab = {layer.shape[0] for layer in embeddings}
    for layer in layers:
        if layer.kind == "linear" and layer.block is None and layer.shape[0] in vocab:
            layer.module = "head"
            layer.roles = ["head"]
        elif layer.kind == "embedding":
            layer.module = "embedding"
            layer.roles = ["embedding"]
        else:
            layer.roles = [layer.module]
    if len(embeddings) == 1 and not any(layer.module == "head" for layer in layers):
        embeddings[0].roles = ["embedding", "head"]  # tied: the head is the embedding's as_linear
    if not layers:
        raise HumanizerError("the model has no linear or embedding layers to quantize")
    for layer in layers:
        width = layer.shape[1]
        if width % group_size == 0:
            layer.group_size = group_size
            continue
        smaller = [g for g in sorted(GROUP_SIZES, reverse=True) if g < group_size and width % g == 0]
        if smaller:
            layer.group_size = smaller[0]
            layer.note = (f"input width {width} is not divisible by group size {group_size}: "
                          f"quantized with group size {smaller[0]} instead")
        else:
            layer.group_size = None
            layer.note = (f"input width {width} is not divisible by any group size "
                          f"({', '.join(map(str, GROUP_SIZES))}): kept in float16, counted at 16 bits per weight")
    return layers


def _total_params(model) -> int:
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    total = 0
    for _, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        for k, v in tree_flatten(m.parameters()):
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) and k in ("scales", "biases"):
                continue
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) and k == "weight":
                total += v.shape[0] * v.shape[1] * 32 // m.bits
            else:
                total += v.size
    return total


@dataclass
class Budget:
    total_params: int
    fixed_bits: int  # every tensor that is not a quantizable layer, at 16 bits
    float_bits: int  # quantizable layers kept in float16

    def bpw(self, layer_bits: int) -> float:
        return (layer_bits + self.fixed_bits + self.float_bits) / self.total_params


def budget_of(layers: list[QLayer], total_params: int) -> Budget:
    in_layers = sum(layer.params for layer in layers)
    fixed = (total_params - in_layers) * FLOAT_BITS
    floats = sum(layer.cost_bits(None) for layer in layers if not layer.quantized)
    return Budget(total_params, fixed, floats)


def shown_floor(lo: float) -> float:
    """The least target to show for a model that reaches `lo` bits per weight: rounded up to
    3 decimals (4.5027 -> 4.503), so the number shown is one the convert accepts."""
    return math.ceil(lo * 1000 - 1e-6) / 1000


def shown_ceiling(hi: float) -> float:
    """The most target to show: rounded down to 3 decimals, so it is accepted too."""
    return math.floor(hi * 1000 + 1e-6) / 1000


def bpw_range(layers: list[QLayer], budget: Budget, bits: list[int]) -> tuple[float, float]:
    q = [layer for layer in layers if layer.quantized]
    lo = budget.bpw(sum(layer.cost_bits(bits[0]) for layer in q))
    hi = budget.bpw(sum(layer.cost_bits(bits[-1]) for layer in q))
    return lo, hi


COUNTING = (
    "bits per weight = (bits of every tensor written to model.safetensors) / (parameters of the float model). "
    "A quantized layer costs its packed b-bit codes plus one 16-bit scale and one 16-bit bias per group of "
    "group_size weights (b + 32/group_size bits per weight); norms, biases and layers kept in float are stored "
    "in 16-bit floats (16 bits per value); the shared embedding/head matrix of a tied model is one tensor and "
    "counts once; the safetensors header and the tokenizer/config files are not counted."
)


# --------------------------------------------------------------------------- allocation


def allocate(options: list[list[tuple[int, int, float]]], budget_bits: float, grid: int = 20000) -> list[int]:
    """Pick one option (bits, cost_bits, sensitivity) per layer, minimising the summed
    sensitivity with the summed cost at most `budget_bits`. Returns option indexes.

    Multiple-choice knapsack: dynamic programming over `grid` units of the budget above
    the all-cheapest choice (each cost rounded up, so the result always fits), then a
    greedy fill of what the rounding left with the best sensitivity-per-bit upgrades."""
    import numpy as np

    n = len(options)
    cheapest = [min(range(len(o)), key=lambda i: (o[i][1], o[i][2])) for o in options]
    base = sum(options[j][cheapest[j]][1] for j in range(n))
    extra = budget_bits - base
    if extra < 0:
        raise ValueError("the budget is below the cheapest choice")
    choice = list(cheapest)
    if extra > 0 and n:
        unit = extra / grid
        inf = float("inf")
        dp = np.zeros(grid + 1)  # best summed sensitivity using at most u units
        picks = np.zeros((n, grid + 1), dtype=np.int8)
        for j, opts in enumerate(options):
            c0 = opts[cheapest[j]][1]
            new = np.full(grid + 1, inf)
            pick = np.zeros(grid + 1, dtype=np.int8)
            for i, (_, cost, sens) in enumerate(opts):
                du = math.ceil((cost - c0) / unit - 1e-9) if cost > c0 else 0
                if du > grid:
                    continue
                cand = np.full(grid + 1, inf)
                cand[du:] = dp[: grid + 1 - du] + sens
                better = cand < new
                new[better] = cand[better]
                pick[better] = i
            dp = new
            picks[j] = pick
        u = grid
        for j in range(n - 1, -1, -1):
            i = int(picks[j, u])
            choice[j] = i
            c0 = options[j][cheapest[j]][1]
            cost = options[j][i][1]
            u -= math.ceil((cost - c0) / unit - 1e-9) if cost > c0 else 0
    # greedy fill with the exact costs
    used = sum(options[j][choice[j]][1] for j in range(n))
    while True:
        best = None
        for j, opts in enumerate(options):
            cur_cost, cur_sens = opts[choice[j]][1], opts[choice[j]][2]
            for i, (_, cost, sens) in enumerate(opts):
                dc, ds = cost - cur_cost, cur_sens - sens
                if dc <= 0 or ds <= 0 or used + dc > budget_bits:
                    continue
                ratio = ds / dc
                if best is None or ratio > best[0]:
                    best = (ratio, j, i, dc)
        if best is None:
            break
        _, j, i, dc = best
        choice[j] = i
        used += dc
    return choice


def plan_allocation(layers: list[QLayer], sensitivities: dict[str, dict[int, float]], bits: list[int],
                    budget: Budget, target_bpw: float) -> dict[str, int | None]:
    """path -> chosen bits (None for a layer kept in float) within target_bpw."""
    q = [layer for layer in layers if layer.quantized]
    options = [[(b, layer.cost_bits(b), float(sensitivities[layer.path][b])) for b in bits] for layer in q]
    budget_bits = target_bpw * budget.total_params - budget.fixed_bits - budget.float_bits
    picks = allocate(options, budget_bits)
    chosen: dict[str, int | None] = {layer.path: None for layer in layers}
    for layer, opts, i in zip(q, options, picks):
        chosen[layer.path] = opts[i][0]
    return chosen


def split_check(calib: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """(fisher samples, check samples): one calibration window in 16 (at most MAX_CHECK_SAMPLES,
    spread over the text) is held back from the Fisher pass to check allocations on."""
    n = min(MAX_CHECK_SAMPLES, len(calib) // 16)
    idx = {min(len(calib) - 1, round((i + 0.5) * len(calib) / n)) for i in range(n)} if n else set()
    return [c for i, c in enumerate(calib) if i not in idx], [calib[i] for i in sorted(idx)]


def corrected(sens: dict[str, dict[int, float]], kappa: float) -> dict[str, dict[int, float]]:
    """Sensitivities with each bit below KAPPA_FROM_BITS costing kappa times more."""
    return {p: {b: v * kappa ** max(0, KAPPA_FROM_BITS - b) for b, v in d.items()} for p, d in sens.items()}


def select_allocation(model, layers, sens, bits, budget, target, check, params, factors, dtype, choices, run):
    """Plan one allocation per kappa in KAPPAS and keep the one whose written model has the
    smallest real mean per-token KL(float || quantized) on the held-back `check` windows.
    Returns (chosen, [{"kappa", "check_kl", "predicted_kl", "chosen"}...], index kept)."""
    import mlx.core as mx
    import mlx.nn as nn

    cands = []
    for kappa in KAPPAS:
        ch = plan_allocation(layers, corrected(sens, kappa), bits, budget, target)
        same = next((c for c in cands if c["chosen"] == ch), None)
        if same is not None:
            same["kappas"].append(kappa)
            continue
        cands.append({"kappa": kappa, "kappas": [kappa], "chosen": ch,
                      "predicted_kl": sum(sens[la.path][ch[la.path]] for la in layers if la.quantized)})
    if len(cands) == 1 or not check:  # nothing to check on: the uncorrected estimate
        keep = next((i for i, c in enumerate(cands) if 1.0 in c["kappas"]), 0)
        return cands[keep]["chosen"], cands, keep
    modules = dict(model.named_modules())
    x = mx.array([c[: min(map(len, check))] for c in check])
    ref = nn.log_softmax(model(x).astype(mx.float32), axis=-1)
    mx.eval(ref)
    cache = {}
    try:
        for n, c in enumerate(cands):
            run.progress(n, len(cands), f"checking allocation {n + 1}/{len(cands)} on held-back calibration "
                         "tokens", phase="allocate")
            for layer in layers:
                if not layer.quantized:
                    continue
                b = c["chosen"][layer.path]
                if (layer.path, b) not in cache:
                    _, deq, _ = rounded_weight(params[f"{layer.path}.weight"], b, layer.group_size, dtype,
                                               _importance(factors, layer.path), choices.get((layer.path, b)))
                    cache[(layer.path, b)] = deq.astype(dtype)  # exact: dequantized values are dtype values
                    mx.eval(cache[(layer.path, b)])
                modules[layer.path].weight = cache[(layer.path, b)].astype(mx.float32)
            lp = nn.log_softmax(model(x).astype(mx.float32), axis=-1)
            kl = (mx.exp(ref) * (ref - lp)).sum(axis=-1).mean()
            c["check_kl"] = kl.item()
            run.log(f"allocation for kappa {', '.join(f'{k:g}' for k in c['kappas'])}: predicted KL "
                    f"{c['predicted_kl']:.4f}, real KL on held-back tokens {c['check_kl']:.4f}")
    finally:
        for layer in layers:
            if layer.quantized:
                modules[layer.path].weight = params[f"{layer.path}.weight"]
    best = min(range(len(cands)), key=lambda i: cands[i]["check_kl"])
    return cands[best]["chosen"], cands, best


# --------------------------------------------------------------------------- the calibration pass


def _two_role_embedding(weight):
    import mlx.nn as nn

    class TwoRoleEmbedding(nn.Module):
        """A tied embedding split in two parameters with the same values: `weight` for the
        lookup and `head_weight` for the output head, so each role gets its own gradient."""

        def __init__(self, w):
            super().__init__()
            self.weight = w
            self.head_weight = w

        def __call__(self, x):
            return self.weight[x]

        def as_linear(self, x):
            return x @ self.head_weight.T

    return TwoRoleEmbedding(weight)


def _fisher_keys(layers: list[QLayer]) -> list[str]:
    keys = []
    for layer in layers:
        if not layer.quantized:
            continue
        keys.append(layer.path)
        if len(layer.roles) > 1:
            keys += [f"{layer.path}#{r}" for r in layer.roles]
    return keys


def _calibration_pass(model, layers, samples, seed, fisher, start, run, checkpoint, checkpoint_every, t0,
                      on_sample=None):
    """Accumulate the Fisher diagonal (squared gradients, labels sampled from the model) over
    samples[start:], adding to `fisher` (_fisher_keys -> sums over samples[:start]); returns
    the sums over all samples. `checkpoint(done, sums)` is called now and then and when the
    pass stops early; `on_sample(done, sums)` after every sample."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    modules = dict(model.named_modules())
    tied = next((layer for layer in layers if len(layer.roles) > 1 and layer.quantized), None)
    original = None
    if tied is not None:
        original = modules[tied.path]
        model.update_modules(tree_unflatten([(tied.path, _two_role_embedding(original.weight))]))
        modules = dict(model.named_modules())
    model.eval()
    model.freeze()
    for layer in layers:
        if layer.quantized:
            keys = ["weight", "head_weight"] if layer is tied else ["weight"]
            modules[layer.path].unfreeze(keys=keys, recurse=False)

    def loss_fn(m, x, key):
        logits = m(x).astype(mx.float32)
        labels = mx.random.categorical(mx.stop_gradient(logits), key=key)
        return nn.losses.cross_entropy(logits, labels, reduction="sum")

    value_and_grad = nn.value_and_grad(model, loss_fn)
    keys = mx.random.split(mx.random.key(seed), max(len(samples), 1))
    acc = (start, dict(fisher))  # (samples done, their sums): replaced in one assignment, so a signal
    last_save = time.perf_counter()  # between two statements never pairs sums with the wrong count
    t_pass = time.perf_counter()
    try:
        for i in range(start, len(samples)):
            x = mx.array([samples[i]])
            _, grads = value_and_grad(model, x, keys[i])
            flat = dict(tree_flatten(grads))
            sums = dict(acc[1])
            for layer in layers:
                if not layer.quantized:
                    continue
                g = flat[f"{layer.path}.weight"]
                if layer is tied:
                    gh = flat[f"{layer.path}.head_weight"]
                    sums[f"{layer.path}#embedding"] = sums[f"{layer.path}#embedding"] + g * g
                    sums[f"{layer.path}#head"] = sums[f"{layer.path}#head"] + gh * gh
                    g = g + gh
                sums[layer.path] = sums[layer.path] + g * g
            mx.eval(sums)
            del grads, flat
            acc = (i + 1, sums)
            done = i + 1
            per = (time.perf_counter() - t_pass) / (done - start)
            run.progress(done, len(samples), f"calibration pass: sample {done}/{len(samples)}",
                         eta=round(per * (len(samples) - done), 1), phase="statistics",
                         tokens_per_second=round(len(samples[i]) / per, 1) if per else None,
                         elapsed=round(time.perf_counter() - t0, 1))
            if on_sample is not None:
                on_sample(*acc)
            if checkpoint_every is not None and time.perf_counter() - last_save > checkpoint_every \
                    and done < len(samples):
                checkpoint(*acc)
                last_save = time.perf_counter()
    except BaseException:
        if acc[0] > start:
            with contextlib.suppress(Exception):  # never hide why the pass stopped
                checkpoint(*acc)
        raise
    finally:
        if tied is not None:
            model.update_modules(tree_unflatten([(tied.path, original)]))
        model.unfreeze()
    return acc[1]


class _Estimates:
    """Layer estimates while the calibration pass runs (it is most of a convert's time, and no
    layer is measured before it ends): every layer's sensitivity from the Fisher sums so far
    (plain min/max rounding, the quick kind) and the bits an allocation of those would give,
    emitted as `layer` events with phase "estimate". After the first sample, then as often
    as keeps their cost to ESTIMATE_SHARE of the pass (at least ESTIMATE_EVERY s apart); never
    after the last sample, which the real measuring follows."""

    def __init__(self, layers, params, bits, calib, budget, target, dtype, run):
        self.layers, self.params, self.bits, self.calib = layers, params, bits, calib
        self.budget, self.target, self.dtype, self.run = budget, target, dtype, run
        self.next_at = 0.0

    def __call__(self, done: int, sums: dict) -> None:
        if done >= len(self.calib) or time.perf_counter() < self.next_at:
            return
        t = time.perf_counter()
        tokens = sum(len(s) for s in self.calib[:done])
        q = [layer for layer in self.layers if layer.quantized]
        sens = {layer.path: measure_layer(layer, self.params[f"{layer.path}.weight"], sums, self.bits, tokens,
                                          self.dtype)["sensitivity"] for layer in q}
        chosen = plan_allocation(self.layers, sens, self.bits, self.budget, self.target)
        for idx, layer in enumerate(self.layers):
            if layer.quantized:
                self.run.emit("layer", **layer.describe(), phase="estimate", index=idx, total=len(self.layers),
                              samples=done, of=len(self.calib), sensitivity=_keyed(sens[layer.path]),
                              chosen_bits=chosen[layer.path])
        cost = time.perf_counter() - t
        self.next_at = time.perf_counter() + max(ESTIMATE_EVERY, cost / ESTIMATE_SHARE)


# --------------------------------------------------------------------------- measuring one layer


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


def measure_layer(layer: QLayer, weight, fisher: dict, bits: list[int], tokens: int, dtype,
                  factors: dict | None = None) -> dict:
    """{"sensitivity": {bits: predicted KL per token}, "role_sensitivity": {role: {...}} (tied),
    "weight_error": {bits: relative error}, "choices": {bits: clip choice}}: W rounded as the
    output will store it (clip-searched with `factors`, else plain min/max)."""
    import mlx.core as mx

    w = weight.astype(mx.float32)
    f = fisher[layer.path]
    imp = _importance(factors, layer.path)
    roles = {r: fisher[f"{layer.path}#{r}"] for r in layer.roles} if len(layer.roles) > 1 else {}
    sums = {"norm": mx.square(w).sum()}
    choices = {}
    for b in bits:
        _, deq, choices[b] = rounded_weight(weight, b, layer.group_size, dtype, imp)
        e2 = mx.square(w - deq)
        sums[(b, "all")], sums[(b, "err")] = (f * e2).sum(), e2.sum()
        for r, fr in roles.items():
            sums[(b, r)] = (fr * e2).sum()
    mx.eval(list(sums.values()))
    vals = {k: v.item() for k, v in sums.items()}
    sens = {b: 0.5 * vals[(b, "all")] / tokens for b in bits}
    err = {b: math.sqrt(vals[(b, "err")] / max(vals["norm"], 1e-30)) for b in bits}
    role_sens = {r: {b: 0.5 * vals[(b, r)] / tokens for b in bits} for r in roles}
    out = {"sensitivity": sens, "weight_error": err, "choices": {b: c for b, c in choices.items() if c is not None}}
    if roles:
        out["role_sensitivity"] = role_sens
    return out


def _keyed(d: dict) -> dict:
    """JSON form of {bits: value}: string keys."""
    return {str(k): v for k, v in d.items()}


def _unkeyed(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


# --------------------------------------------------------------------------- evaluation


def heldout_eval(source, result, chunks: list[list[int]], batch: int = 4) -> dict:
    """Perplexity of both models on the held-out chunks, and the mean per-token
    KL(source || result)."""
    import mlx.core as mx
    import mlx.nn as nn

    nll_s = nll_r = kl = 0.0
    n = 0
    for i in range(0, len(chunks), batch):
        group = chunks[i:i + batch]
        width = min(len(c) for c in group)
        x = mx.array([c[:width] for c in group])
        ls = nn.log_softmax(source(x[:, :-1]).astype(mx.float32), axis=-1)
        lr = nn.log_softmax(result(x[:, :-1]).astype(mx.float32), axis=-1)
        y = x[:, 1:, None]
        a = -mx.take_along_axis(ls, y, axis=-1).sum()
        b = -mx.take_along_axis(lr, y, axis=-1).sum()
        k = (mx.exp(ls) * (ls - lr)).sum()
        mx.eval(a, b, k)
        nll_s, nll_r, kl = nll_s + a.item(), nll_r + b.item(), kl + k.item()
        n += y.size
    if not n:
        return {"heldout_tokens": 0}
    ppl_s, ppl_r = math.exp(nll_s / n), math.exp(nll_r / n)
    return {"heldout_tokens": n, "ppl_source": ppl_s, "ppl_result": ppl_r,
            "ppl_increase": ppl_r - ppl_s, "ppl_increase_pct": 100 * (ppl_r / ppl_s - 1), "kl_source_result": kl / n}


# --------------------------------------------------------------------------- the work folder


def work_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.convert-work"


@contextlib.contextmanager
def _locked(work: Path):
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    f = open(work / "lock", "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise HumanizerError(f"another convert is writing {work.parent / work.name[1:-len('.convert-work')]}",
                             "wait for it to finish (humanizer jobs list), or choose another --output") from None
    try:
        yield
    finally:
        if not (work / STATE_FILE).exists():  # stopped before measuring anything: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        f.close()


@contextlib.contextmanager
def _mlx_cache(model):
    """Let MLX keep freed buffers for reuse during the calibration pass. Its CPU default (32 MB)
    returns every gradient-sized buffer to the OS after each step, and taking them back
    page-faults: about a fifth of the pass's wall time on SmolLM2-135M."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * weights
    want = min(6 * weights, ram // 4)
    old = mx.set_cache_limit(want)
    if old > want:  # never lower it (Metal's default is already large)
        mx.set_cache_limit(old)
    try:
        yield
    finally:
        mx.set_cache_limit(old)
        mx.clear_cache()


def _save_fisher(work: Path, fisher: dict, done: int) -> None:
    import mlx.core as mx

    tmp = work / f".fisher.{os.getpid()}.tmp.safetensors"
    mx.save_safetensors(str(tmp), fisher, metadata={"batches_done": str(done)})
    os.replace(tmp, work / FISHER_FILE)


def _load_fisher(work: Path, keys: list[str]) -> tuple[dict | None, int]:
    import mlx.core as mx

    path = work / FISHER_FILE
    if not path.is_file():
        return None, 0
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        done = int(meta.get("batches_done", 0))
    except Exception:  # an unreadable checkpoint: start the pass again
        return None, 0
    if set(arrays) != set(keys):
        return None, 0
    return arrays, done


# --------------------------------------------------------------------------- convert


@dataclass
class ConvertResult:
    path: Path
    summary: dict

    def __str__(self) -> str:
        return str(self.path)


def _architecture_check(model_dir: Path) -> dict:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HumanizerError(f"cannot read {model_dir / 'config.json'}: {e}") from None
    model_type = config.get("model_type")
    try:
        from mlx_lm.utils import _get_classes

        _get_classes(config)
    except (ValueError, ImportError, KeyError, AttributeError):
        import mlx_lm

        raise HumanizerError(
            f"unsupported architecture '{model_type}': mlx-lm {mlx_lm.__version__} has no model of that type",
            f"convert supports text models that mlx-lm loads whose quantizable layers are all nn.Linear and "
            f"nn.Embedding (e.g. {EXAMPLE_FAMILIES})",
        ) from None
    return config


def _output_dtype(config: dict) -> str:
    return "bfloat16" if str(config.get("torch_dtype") or config.get("dtype")) == "bfloat16" else "float16"


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template and generation config: everything but weights, config and import records."""
    skip = {"config.json", "gguf_import.json", META_FILE, "model.safetensors.index.json", "README.md"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.endswith(".safetensors") and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)


def _save_weights(folder: Path, weights: dict) -> list[Path]:
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": {}}
    for name, shard in zip(names, shards):
        mx.save_safetensors(str(folder / name), shard, metadata={"format": "mlx"})
        for k in shard:
            index["weight_map"][k] = name
    if len(shards) > 1:
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return [folder / n for n in names]


def quantization_config(layers: list[QLayer], chosen: dict) -> dict:
    """config.json's "quantization": defaults plus one entry per layer (false: kept in float)."""
    from collections import Counter

    pairs = Counter((chosen[layer.path], layer.group_size) for layer in layers if layer.quantized)
    (bits, gs), _ = pairs.most_common(1)[0] if pairs else ((4, DEFAULT_GROUP_SIZE), 0)
    q: dict = {"group_size": gs, "bits": bits, "mode": "affine"}
    for layer in layers:
        q[layer.path] = ({"group_size": layer.group_size, "bits": chosen[layer.path]} if layer.quantized else False)
    return q


def verify_loaded(model, layers: list[QLayer], chosen: dict) -> list[str]:
    """Mismatches between a model loaded from the output and the allocation (empty: all match)."""
    import mlx.nn as nn

    modules = dict(model.named_modules())
    bad = []
    for layer in layers:
        m = modules.get(layer.path)
        if layer.quantized:
            if not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                bad.append(f"{layer.path}: {type(m).__name__}, expected quantized")
            elif (m.bits, m.group_size) != (chosen[layer.path], layer.group_size):
                bad.append(f"{layer.path}: {m.bits}-bit g{m.group_size}, expected "
                           f"{chosen[layer.path]}-bit g{layer.group_size}")
        elif isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            bad.append(f"{layer.path}: quantized, expected float")
    return bad


def _source_note(config: dict, model_dir: Path) -> str | None:
    q = config.get("quantization") or config.get("quantization_config")
    if not q:
        return None
    def one(d):
        return f"{d.get('bits', '?')}-bit, group size {d.get('group_size', '?')}"

    desc = "; ".join([one(q)] + [f"{k} {one(v)}" for k, v in q.items() if isinstance(v, dict)])
    return (f"the source is already quantized ({desc}); it was dequantized to float32 first, so its earlier "
            "quantization error is baked into the weights, and every sensitivity and the source perplexity "
            "are measured against the dequantized weights")


def convert(
    model_spec,
    output,
    *,
    target_bpw: float,
    candidate_bits=DEFAULT_CANDIDATE_BITS,
    group_size: int = DEFAULT_GROUP_SIZE,
    calibration=None,
    samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    resume: bool = False,
    seed: int = 0,
    heldout=None,
    heldout_tokens: int = DEFAULT_HELDOUT_TOKENS,
    checkpoint_every: float | None = 300.0,
    measurements=None,
    rounding: str = "clip",
    run: Run = NullRun(),
    ws=None,
) -> ConvertResult:
    """Measure, allocate and write a mixed-precision model (see the module docstring).

    `measurements`: the humanizer_quant.json of an earlier convert of the same source with
    the same calibration tokens, group size and seed (and these candidate bits among its
    own): its sensitivities are reused and nothing is measured again, e.g. to allocate
    the same model for another --target-bpw.

    `rounding`: "clip" (the Fisher-weighted clip search, see the module docstring) or "minmax"
    (plain mx.quantize rounding, e.g. to see what the allocation alone gives)."""
    t_start = time.perf_counter()
    target, bits, group_size = check_settings(target_bpw, candidate_bits, group_size, samples, seq_len)
    if rounding not in ROUNDINGS:
        raise HumanizerError(f"unknown rounding '{rounding}'", f"rounding is one of {', '.join(ROUNDINGS)}")
    output = Path(output).expanduser().resolve()
    work = work_dir_for(output)
    docs, calib_source = load_calibration(calibration, ws)
    held_docs, held_source = ((default_heldout(), "the default held-out text (engine/calibration_heldout.txt)")
                              if heldout is None else load_calibration(heldout, ws))
    settings = {"target_bpw": target, "candidate_bits": bits, "group_size": group_size, "samples": samples,
                "seq_len": seq_len, "seed": seed, "rounding": rounding}

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        meta = read_json(output / META_FILE) if output.is_dir() else None
        if resume and meta and all(meta.get("settings", {}).get(k) == v for k, v in settings.items()):
            run.log(f"{output} already holds the finished conversion: nothing to resume")
            summary = meta.get("summary", {})
            run.done(**summary)
            return ConvertResult(output, summary)
        raise HumanizerError(
            f"{output} already exists" + (" and holds a conversion with other settings" if meta else ""),
            "choose another --output, or remove it first",
        )
    if (work / STATE_FILE).exists() and not resume:
        raise HumanizerError(
            f"an earlier convert into {output} was interrupted; its measurements are in {work}",
            "pass --resume to continue it, or remove that folder to start over",
        )

    # the model -------------------------------------------------------------------------------
    from engine.models import resolve_model

    run.progress(0, None, "resolving the model", phase="load")
    model_dir = Path(resolve_model(model_spec, ws, run) if ws is not None else _resolve_plain(model_spec, run))
    config = _architecture_check(model_dir)

    with _locked(work):
        return _convert_locked(model_spec, model_dir, config, output, work, target, bits, group_size, docs,
                               calib_source, held_docs, held_source, samples, seq_len, seed, heldout_tokens,
                               resume, checkpoint_every, settings, run, t_start, measurements, rounding)


def reused_measurements(path, key: dict, layers: list[QLayer]) -> dict:
    """path -> measured info from an earlier convert's metadata, checked against this convert."""
    path = Path(path).expanduser()
    meta = read_json(path / META_FILE if path.is_dir() else path)
    if not meta or "layers" not in meta:
        raise HumanizerError(f"no convert metadata in {path}", f"pass the {META_FILE} of an earlier convert")
    settings, calib = meta.get("settings", {}), meta.get("calibration", {})
    have = {"source_fingerprint": meta.get("source", {}).get("fingerprint"), "calibration": calib.get("fingerprint"),
            "samples": calib.get("samples"), "seq_len": settings.get("seq_len"), "seed": settings.get("seed"),
            "group_size": settings.get("group_size"), "rounding": settings.get("rounding", "minmax")}
    diffs = [f"{k}: {have[k]!r} there, {key[k]!r} here" for k in have if have[k] != key[k]]
    missing = sorted(set(key["candidate_bits"]) - set(settings.get("candidate_bits") or []))
    if missing:
        diffs.append(f"bits {missing} were not measured there")
    if diffs:
        raise HumanizerError(f"cannot reuse the measurements in {path}: " + "; ".join(diffs),
                             "reuse them only for the same source, calibration, samples, seq-len, seed, group "
                             "size and rounding, with candidate bits it measured")
    by_path = {m["path"]: m for m in meta["layers"]}
    out = {}
    for layer in layers:
        m = by_path.get(layer.path)
        if layer.quantized:
            if not m or m.get("group_size") != layer.group_size:
                raise HumanizerError(f"cannot reuse the measurements in {path}: no measurement of {layer.path}")
            info = {"sensitivity": {str(b): m["sensitivity"][str(b)] for b in key["candidate_bits"]},
                    "weight_error": {str(b): m.get("weight_error", {}).get(str(b)) for b in key["candidate_bits"]}}
            if "role_sensitivity" in m:
                info["role_sensitivity"] = {r: {str(b): v[str(b)] for b in key["candidate_bits"]}
                                            for r, v in m["role_sensitivity"].items()}
            out[layer.path] = info
    return out


def _meta_folder(path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_dir() else path.parent


def _load_factors(path: Path) -> dict | None:
    import mlx.core as mx

    try:
        return dict(mx.load(str(path)))
    except Exception:  # missing or unreadable
        return None


def _bits_params(layers: list[QLayer], chosen: dict) -> dict:
    h: dict = {}
    for layer in layers:
        k = str(chosen[layer.path]) if layer.quantized else "float16"
        h[k] = h.get(k, 0) + layer.params
    return h


def _resolve_plain(spec, run):
    from engine.models import check_model_dir

    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return check_model_dir(path)
    from engine.models import resolve_model
    from engine.workspace import Workspace

    return resolve_model(spec, Workspace.open(), run)


def _convert_locked(model_spec, model_dir, config, output, work, target, bits, group_size, docs, calib_source,
                    held_docs, held_source, samples, seq_len, seed, heldout_tokens, resume, checkpoint_every,
                    settings, run, t_start, measurements=None, rounding="clip"):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from engine import adapters as A
    from engine.lora import load_model
    from engine.workspace import atomic_dir

    run.progress(0, None, f"loading {model_dir.name}", phase="load")
    source_note = _source_note(config, model_dir)
    model, tokenizer = load_model(model_dir, dequantize=True)  # float32, quantized layers dequantized
    model.set_dtype(mx.float32)
    if source_note:
        run.log(source_note)
    out_dtype_name = _output_dtype(config)
    out_dtype = getattr(mx, out_dtype_name)

    layers = quantizable_layers(model, group_size)
    total_params = _total_params(model)
    budget = budget_of(layers, total_params)
    lo, hi = bpw_range(layers, budget, bits)
    if target < lo - 1e-9:
        raise HumanizerError(
            f"target {target:g} bits per weight is below what this model can reach: with every layer at "
            f"{bits[0]} bits it takes at least {shown_floor(lo):.3f} (norms and layers kept in float16 count too)",
            f"raise --target-bpw to at least {shown_floor(lo):.3f}",
        )
    for layer in layers:
        if layer.note:
            run.log(f"{layer.path}: {layer.note}")
    tied = next((layer for layer in layers if len(layer.roles) > 1), None)
    run.log(f"{len(layers)} quantizable layers, {total_params:,} parameters; "
            + (f"{tied.path} is shared by the embedding and the output head (tied): one matrix in the budget, "
               "measured for both roles; " if tied else "")
            + f"achievable {lo:.3f} to {hi:.3f} bits per weight")

    # calibration tokens ---------------------------------------------------------------------
    calib = make_samples(tokenize_docs(docs, tokenizer), samples, seq_len)
    if not calib:
        raise HumanizerError(f"the calibration text ({calib_source}) has fewer than 2 tokens",
                             "pass a longer calibration text")
    if len(calib) < samples:
        run.log(f"the calibration text gives {len(calib)} samples of {len(calib[0])} tokens (asked for {samples})")
    calib_all = calib
    calib, check = split_check(calib_all)  # the Fisher pass never sees the check windows
    n_tokens = sum(len(s) for s in calib)
    held_stream = tokenize_docs(held_docs, tokenizer)[: max(heldout_tokens, 2)]
    held_len = min(seq_len, 512)
    held = [held_stream[i:i + held_len] for i in range(0, len(held_stream), held_len)]
    held = [c for c in held if len(c) >= max(2, min(held_len, len(held_stream)) // 2)]
    calib_fp = _token_fingerprint(calib_all)
    key = {"source_fingerprint": A.model_fingerprint(model_dir), "calibration": calib_fp,
           "samples": len(calib_all), "seq_len": seq_len, "seed": seed, "group_size": group_size,
           "candidate_bits": bits, "rounding": rounding, "version": STATE_VERSION}

    # resume state ---------------------------------------------------------------------------
    state = read_json(work / STATE_FILE) if resume else None
    if state is not None:
        diffs = [f"{k}: {state.get('key', {}).get(k)!r} then, {v!r} now" for k, v in key.items()
                 if state.get("key", {}).get(k) != v]
        if diffs:
            raise HumanizerError(
                "cannot resume: the settings differ from the interrupted convert (" + "; ".join(diffs) + ")",
                f"resume with the same model, calibration and settings, or remove {work} to start over",
            )
        measured = {p: v for p, v in state.get("layers", {}).items()}
        run.log(f"resuming: {len(measured)} of {len(layers)} layers already measured")
    else:
        if resume:
            run.log("nothing to resume; starting from the beginning")
        for f in (STATE_FILE, FISHER_FILE):
            with contextlib.suppress(FileNotFoundError):
                (work / f).unlink()
        measured = reused_measurements(measurements, key, layers) if measurements else {}
        if measurements:
            run.log(f"reusing the sensitivities of {len(measured)} layers measured by {measurements}")
        state = {"version": STATE_VERSION, "key": key, "layers": dict(measured), "output": str(output)}
        write_json(work / STATE_FILE, state)

    t_measure = time.perf_counter()
    params = dict(tree_flatten(model.parameters()))
    todo = [layer for layer in layers if layer.quantized and layer.path not in measured]
    fisher_keys = _fisher_keys(layers)
    stats_seconds = 0.0
    if todo:
        fisher, done = _load_fisher(work, fisher_keys) if resume else (None, 0)
        if fisher is None:
            fisher, done = {}, 0
            for layer in layers:
                if layer.quantized:
                    fisher[layer.path] = mx.zeros(layer.shape, dtype=mx.float32)
                    if len(layer.roles) > 1:
                        for r in layer.roles:
                            fisher[f"{layer.path}#{r}"] = mx.zeros(layer.shape, dtype=mx.float32)
        elif done:
            run.log(f"resuming the calibration pass after sample {done} of {len(calib)}")
        if done < len(calib):
            t = time.perf_counter()
            run.log(f"calibration pass: {len(calib)} samples x {len(calib[0])} tokens from {calib_source}")

            def checkpoint(k, sums):
                _save_fisher(work, sums, k)

            estimate = _Estimates(layers, params, bits, calib, budget, target, out_dtype, run)
            with _mlx_cache(model):
                fisher = _calibration_pass(model, layers, calib, seed, fisher, done, run, checkpoint,
                                           checkpoint_every, t_measure, on_sample=estimate)
            stats_seconds = time.perf_counter() - t
        if tied is not None and tied.quantized and float(fisher[f"{tied.path}#head"].sum().item()) == 0.0:
            run.log(f"warning: the model never used {tied.path} as its output head; measured as an embedding only")
    factors = None
    if rounding == "clip":
        if todo:
            factors = fisher_factors(layers, fisher)
            mx.save_safetensors(str(work / ROUNDING_FILE), factors)
        else:  # everything measured before (resume) or by an earlier convert (measurements=)
            factors = _load_factors(work / ROUNDING_FILE) if (work / ROUNDING_FILE).is_file() else \
                _load_factors(_meta_folder(measurements) / ROUNDING_FILE) if measurements else None
            if factors is None:
                raise HumanizerError("the rounding factors of the earlier measurements are missing",
                                     f"remove {work} and convert again without --resume / measurements")

    # measure each layer -----------------------------------------------------------------------
    order = list(layers)
    n_layers = len(order)
    choices = {}  # (path, bits) -> clip choice of the layers measured in this run, to skip the search later
    try:
        _measure_all(order, measured, params, fisher if todo else None, bits, n_tokens, out_dtype, state, work,
                     run, time.perf_counter(), t_measure, factors, choices)
    except BaseException:
        if todo and len(measured) < sum(1 for layer in layers if layer.quantized):
            with contextlib.suppress(Exception):  # the pass is done: keep it for --resume
                _save_fisher(work, fisher, len(calib))
        raise
    if todo:
        fisher = None  # noqa: F841 (free the Fisher sums before writing)

    # allocate ---------------------------------------------------------------------------------
    run.progress(0, 1, f"allocating bits for {target:g} bits per weight", phase="allocate")
    sens = {p: _unkeyed(v["sensitivity"]) for p, v in measured.items()}
    chosen, selection, kept = select_allocation(model, layers, sens, bits, budget, target, check, params, factors,
                                                out_dtype, choices, run)
    del params
    layer_bits = sum(layer.cost_bits(chosen[layer.path]) for layer in layers if layer.quantized)
    planned_bpw = budget.bpw(layer_bits)
    predicted_kl = sum(sens[layer.path][chosen[layer.path]] for layer in layers if layer.quantized)
    measure_seconds = time.perf_counter() - t_measure
    for idx, layer in enumerate(order):
        b = chosen[layer.path]
        ev = {**layer.describe(), "phase": "allocated", "index": idx, "total": n_layers,
              "bits_measured": bits if layer.quantized else [], "sensitivity": measured.get(layer.path, {}).get(
                  "sensitivity", {}),
              "chosen_bits": b if layer.quantized else FLOAT_BITS,
              "bpw": layer_bpw(b, layer.group_size) if layer.quantized else float(FLOAT_BITS)}
        if "role_sensitivity" in measured.get(layer.path, {}):
            ev["role_sensitivity"] = measured[layer.path]["role_sensitivity"]
        run.emit("layer", **ev)
    hist = _bits_params(layers, chosen)
    check_kl = selection[kept].get("check_kl")
    run.metric(n_layers, achieved_bpw=planned_bpw, target_bpw=target, predicted_kl=predicted_kl,
               size_mb=planned_bpw * total_params / 8 / 1e6, **({"check_kl": check_kl} if check_kl else {}))
    run.progress(1, 1, f"allocated: {planned_bpw:.4f} bits per weight (target {target:g})", phase="allocate")
    run.log(f"sensitivity measurement and allocation took {measure_seconds:.1f} s "
            f"(calibration pass {stats_seconds:.1f} s)")

    # write ------------------------------------------------------------------------------------
    with atomic_dir(output) as tmp:
        run.progress(0, 3, "writing the quantized weights", phase="write")
        by_path = {layer.path: layer for layer in layers}
        weights = {}
        for k, v in tree_flatten(model.parameters()):
            mod, leaf = k.rsplit(".", 1)
            layer = by_path.get(mod)
            if layer is not None and leaf == "weight" and layer.quantized:
                w_in, _, _ = rounded_weight(v, chosen[mod], layer.group_size, out_dtype, _importance(factors, mod),
                                            choices.get((mod, chosen[mod])))
                q, s, b = mx.quantize(w_in, group_size=layer.group_size, bits=chosen[mod])
                weights[k], weights[f"{mod}.scales"], weights[f"{mod}.biases"] = q, s, b
            else:
                weights[k] = v.astype(out_dtype)
        mx.eval(weights)
        written_bits = sum(v.nbytes * 8 for v in weights.values())
        achieved = written_bits / total_params
        if abs(written_bits - (layer_bits + budget.fixed_bits + budget.float_bits)) > 0:
            run.log(f"note: the written tensors hold {written_bits} bits, the plan counted "
                    f"{layer_bits + budget.fixed_bits + budget.float_bits}")
        files = _save_weights(tmp, weights)
        del weights
        cfg = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
        qcfg = quantization_config(layers, chosen)
        cfg.update(quantization=qcfg, quantization_config=qcfg, torch_dtype=out_dtype_name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        _copy_side_files(model_dir, tmp)
        if factors is not None:  # lets a later convert reuse these measurements (measurements=)
            mx.save_safetensors(str(tmp / ROUNDING_FILE), factors)
        for f in files:
            run.artifact(output / f.name, kind="weights")

        # load it back with stock mlx-lm and evaluate ------------------------------------------
        run.progress(1, 3, "loading the result with mlx-lm", phase="evaluate")
        from mlx_lm.utils import dequantize_model, load as mlx_load

        t_eval = time.perf_counter()
        result, _ = mlx_load(str(tmp))
        mismatches = verify_loaded(result, layers, chosen)
        if mismatches:
            raise HumanizerError("the written model does not load as allocated: " + "; ".join(mismatches[:5]))
        on_cpu = mx.default_device() == mx.cpu
        if on_cpu:  # the CPU's quantized kernels are slow; the dequantized weights are the same function
            dequantize_model(result)
            result.set_dtype(mx.float32)
            mx.eval(result.parameters())
        run.progress(2, 3, f"held-out perplexity ({sum(len(c) for c in held)} tokens)", phase="evaluate")
        ev = heldout_eval(model, result, held) if held else {"heldout_tokens": 0}
        ev["how"] = ("source: the float32 model measured; result: the written folder loaded with mlx_lm.load, "
                     + ("its quantized layers dequantized to float32 on the CPU backend (the same weights, so the "
                        "same function as the quantized kernels, which are slow on CPU)" if on_cpu else
                        "run with MLX's quantized kernels"))
        ev["text"] = held_source
        eval_seconds = time.perf_counter() - t_eval
        del result

        weight_bytes = sum(f.stat().st_size for f in files)
        size_on_disk = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        summary = {
            "output": str(output),
            "target_bpw": target,
            "achieved_bpw": achieved,
            "size_bytes": size_on_disk,
            "weights_bytes": weight_bytes,
            "size_mb": round(size_on_disk / 1e6, 2),
            "layers": len(layers),
            "params": total_params,
            "bits_histogram": hist,
            "predicted_kl": predicted_kl,
            "check_kl": check_kl,
            "measure_seconds": round(measure_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1),
            **{k: v for k, v in ev.items() if k not in ("how", "text")},
        }
        if source_note:
            summary["source_note"] = source_note
        meta = {
            "format": 1,
            "tool": "humanizer convert",
            "source": {"model": str(model_spec), "path": str(model_dir), "fingerprint": key["source_fingerprint"],
                       "quantization": (config.get("quantization") or None), "note": source_note},
            "settings": {**settings, "output_dtype": out_dtype_name},
            "calibration": {"source": calib_source, "samples": len(calib_all), "seq_len": len(calib[0]),
                            "fisher_samples": len(calib), "check_samples": len(check),
                            "tokens": n_tokens, "check_tokens": sum(len(c) for c in check),
                            "fingerprint": calib_fp},
            "method": {
                "name": "diagonal Fisher",
                "rounding": rounding,
                "rounding_how": (
                    "affine (standard MLX format); at <= %d bits each group's [min, max] is shrunk about its "
                    "midpoint by the ratio in %s minimising the squared error weighted by the rank-1 Fisher "
                    "factors (%s beside the weights)" % (CLIP_MAX_BITS, list(CLIP_RATIOS), ROUNDING_FILE)
                    if rounding == "clip" else "affine min/max (mx.quantize of the weights as they are)"),
                "sensitivity": "1/2 * sum(F * (W - dequantize(quantize(W, bits)))^2) / calibration tokens: the "
                               "second-order estimate of the mean per-token KL(float || quantized) when only that "
                               "layer is quantized; F is the Fisher diagonal from squared gradients of labels "
                               "sampled from the float model, one sample per calibration sequence",
                "allocation": "multiple-choice knapsack (dynamic programming, costs rounded up) minimising the "
                              "summed sensitivity within the bit budget, then a greedy sensitivity-per-bit fill; "
                              "run once per kappa (each bit below %d multiplies a sensitivity by kappa), keeping "
                              "the allocation with the smallest real KL on calibration windows held back from the "
                              "Fisher pass" % KAPPA_FROM_BITS,
                "predicted_kl": predicted_kl,
                "selection": [{"kappas": c["kappas"], "predicted_kl": c["predicted_kl"],
                               "check_kl": c.get("check_kl"), "kept": i == kept,
                               "bits_params": _bits_params(layers, c["chosen"])} for i, c in enumerate(selection)],
            },
            "bpw": {
                "achieved": achieved,
                "planned": planned_bpw,
                "target": target,
                "tolerance": BUDGET_TOLERANCE,
                "counted": COUNTING,
                "total_params": total_params,
                "total_bits": written_bits,
                "quantized_layer_bits": layer_bits,
                "float_layer_bits": budget.float_bits,
                "other_tensor_bits": budget.fixed_bits,
            },
            "fallbacks": [{"path": layer.path, "note": layer.note,
                           "group_size": layer.group_size, "kept_float": not layer.quantized}
                          for layer in layers if layer.note],
            "layers": [
                {**layer.describe(), "bits_measured": bits if layer.quantized else [],
                 "chosen_bits": chosen[layer.path] if layer.quantized else None,
                 "bpw": layer_bpw(chosen[layer.path], layer.group_size) if layer.quantized else float(FLOAT_BITS),
                 **{k: v for k, v in measured.get(layer.path, {"sensitivity": {}}).items()}}
                for layer in layers
            ],
            "eval": ev,
            "timing": {"measure_seconds": round(measure_seconds, 2),
                       "calibration_pass_seconds": round(stats_seconds, 2),
                       "eval_seconds": round(eval_seconds, 2)},
            "summary": summary,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        summary["size_bytes"] = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        summary["size_mb"] = round(summary["size_bytes"] / 1e6, 2)
        run.progress(3, 3, "written", phase="evaluate")
    run.artifact(output, kind="model")
    shutil.rmtree(work, ignore_errors=True)
    run.done(**summary)
    return ConvertResult(output, summary)


def _measure_all(order, measured, params, fisher, bits, n_tokens, out_dtype, state, work, run, t_layers, t_measure,
                 factors=None, choices=None):
    """Measure every layer not measured yet (saving state.json after each) and emit a
    `layer` event for every layer, the ones measured before a resume included."""
    n_layers = len(order)
    n_new = 0
    for idx, layer in enumerate(order):
        resumed = layer.path in measured
        if not layer.quantized:
            info = {"sensitivity": {}, "weight_error": {}}
        elif resumed:
            info = measured[layer.path]
        else:
            raw = measure_layer(layer, params[f"{layer.path}.weight"], fisher, bits, n_tokens, out_dtype, factors)
            if choices is not None:
                choices.update({(layer.path, b): c for b, c in raw["choices"].items()})
            info = {"sensitivity": _keyed(raw["sensitivity"]), "weight_error": _keyed(raw["weight_error"])}
            if "role_sensitivity" in raw:
                info["role_sensitivity"] = {r: _keyed(v) for r, v in raw["role_sensitivity"].items()}
            measured[layer.path] = info
            state["layers"] = measured
            write_json(work / STATE_FILE, state)
            n_new += 1
        ev = {**layer.describe(), "phase": "measured", "index": idx, "total": n_layers,
              "bits_measured": bits if layer.quantized else [], "sensitivity": info["sensitivity"],
              "weight_error": info.get("weight_error", {}), "chosen_bits": None if layer.quantized else FLOAT_BITS,
              "resumed": resumed}
        if "role_sensitivity" in info:
            ev["role_sensitivity"] = info["role_sensitivity"]
        run.emit("layer", **ev)
        if not resumed:
            per = (time.perf_counter() - t_layers) / max(n_new, 1)
            remaining = sum(1 for later in order[idx + 1:] if later.quantized and later.path not in measured)
            run.progress(idx + 1, n_layers, f"measured {layer.path}", eta=round(per * remaining, 1),
                         phase="measure", elapsed=round(time.perf_counter() - t_measure, 1))


def model_plan(model_spec, group_size: int = DEFAULT_GROUP_SIZE, candidate_bits=DEFAULT_CANDIDATE_BITS,
               ws=None) -> dict:
    """What a convert of this model would measure, and what a target means in MB (for a form):
    {"params", "layers": [...], "min_bpw", "max_bpw", "bytes_per_bpw", "target_min", "target_max"}, the
    last two the range a --target-bpw may take here, rounded inward to 3 decimals (shown_floor:
    a form that shows them shows numbers it accepts). Loads no weights."""
    from mlx_lm.utils import load_model as mlx_load_model

    from engine.models import resolve_model

    bits = parse_bits(candidate_bits)
    model_dir = Path(_resolve_plain(model_spec, NullRun()) if ws is None else resolve_model(model_spec, ws))
    _architecture_check(model_dir)
    model, _ = mlx_load_model(model_dir, lazy=True)
    layers = quantizable_layers(model, int(group_size))
    total = _total_params(model)
    budget = budget_of(layers, total)
    lo, hi = bpw_range(layers, budget, bits)
    return {"path": str(model_dir), "params": total, "layers": [layer.describe() for layer in layers],
            "min_bpw": lo, "max_bpw": hi, "bytes_per_bpw": total / 8, "target_min": shown_floor(lo),
            "target_max": shown_ceiling(min(hi, layer_bpw(bits[-1], int(group_size))))}
