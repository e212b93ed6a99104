"""The model's quantizable layers and the bit budget: which matrices are measured, their
group size (or a float16 fallback), and how bits per weight are counted over the whole model."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from engine.convert.settings import FLOAT_BITS, GROUP_SIZES
from engine.errors import HumanizerError


# leaf module name -> the short name the Convert screen's grid uses
MODULE_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "wq": "q", "wk": "k", "wv": "v", "wo": "o",
    "embed_tokens": "embedding", "wte": "embedding", "tok_embeddings": "embedding",
    "lm_head": "head", "output": "head",
}
EXAMPLE_FAMILIES = "llama, mistral, qwen2, qwen3, gemma, gemma2, phi3, olmo2, granite, smollm3"


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


def _bits_params(layers: list[QLayer], chosen: dict) -> dict:
    h: dict = {}
    for layer in layers:
        k = str(chosen[layer.path]) if layer.quantized else "float16"
        h[k] = h.get(k, 0) + layer.params
    return h


COUNTING = (
    "bits per weight = (bits of every tensor written to model.safetensors) / (parameters of the float model). "
    "A quantized layer costs its packed b-bit codes plus one 16-bit scale and one 16-bit bias per group of "
    "group_size weights (b + 32/group_size bits per weight); norms, biases and layers kept in float are stored "
    "in 16-bit floats (16 bits per value); the shared embedding/head matrix of a tied model is one tensor and "
    "counts once; the safetensors header and the tokenizer/config files are not counted."
)
