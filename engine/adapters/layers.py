"""The stacked LoRA layer, and putting adapters on a model.

One `StackedLoRALinear` wraps a base `nn.Linear` or `nn.QuantizedLinear` (kept as
`.linear`, as mlx-lm's LoRALinear does) and computes

    y = base(x) + sum_{i in active} gate_i * scale_i * (x @ A_i) @ B_i
                [+ scale * (dropout(x) @ lora_a) @ lora_b]

- The mounted adapters A_i, B_i are frozen, named, and live in the parameter tree
  under `adapters.<name>.lora_a|lora_b`. Which of them are active is a setting of
  the model (`set_active`); each active adapter may carry a per-row gate (an array
  of shape (batch,), 1.0 for rows that use it, 0.0 for rows that don't), which is
  what a server decoding several requests with different adapter choices needs.
- The one trainable adapter is stored as the attributes `lora_a` (in, r) and
  `lora_b` (r, out), so its parameter names are exactly mlx-lm's
  (`model.layers.N.self_attn.q_proj.lora_a`), with `scale` and dropout on x. Dropout
  applies to the trainable term only; the mounted terms never see it.
- `reference_mode(model)` switches the trainable term off (it is skipped, not
  multiplied by zero), so the model is then exactly base + the active mounted
  adapters: the DPO reference, and the "base" of the SFT KL metric.

At serve time the same expression runs without dropout, so training and serving agree.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from engine.errors import HumanizerError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def _plain(obj, name: str, value) -> None:
    """Set a Python attribute that stays out of an nn.Module's parameter tree."""
    object.__setattr__(obj, name, value)


def dropout_lora(x: mx.array, lora_a: mx.array, lora_b: mx.array, mask: mx.array, keep: float) -> mx.array:
    """(dropout(x) @ A) @ B with dropout's keep-mask `mask` (bool, x's shape). The backward
    pass keeps only the mask (1 byte per element) and rebuilds dropout(x) from x, which it
    keeps anyway: plain autodiff would keep a float copy of the mask and the dropped x (8
    bytes per element, for every adapted layer) until the backward pass, most of the
    memory of a LoRA step with dropout."""
    inv = 1.0 / keep

    def dropped(v):
        return mx.where(mask, v * inv, mx.zeros_like(v))

    @mx.custom_function
    def term(x, a, b):
        return (dropped(x) @ a) @ b

    @term.vjp
    def term_vjp(primals, cotangent, _):
        x, a, b = primals
        xd = dropped(x)
        u = xd @ a
        gu = cotangent @ b.T
        def rows(t):
            return t.reshape(-1, t.shape[-1])
        return (dropped(gu @ a.T).astype(x.dtype), (rows(xd).T @ rows(gu)).astype(a.dtype),
                (rows(u).T @ rows(cotangent)).astype(b.dtype))

    return term(x, lora_a, lora_b)


class StackedLoRALinear(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.linear = base
        self.adapters = {}  # name -> {"lora_a": (in, r), "lora_b": (r, out)}; frozen
        _plain(self, "scales", {})  # name -> float
        _plain(self, "active", {})  # name -> None (every row) or a (batch,) gate array
        _plain(self, "scale", 0.0)  # the trainable term's scale
        _plain(self, "trainable_on", True)
        _plain(self, "dropout_p", 0.0)  # on the trainable term's input, in training mode only

    @property
    def input_dims(self) -> int:
        w = self.linear.weight
        if isinstance(self.linear, nn.QuantizedLinear):
            return w.shape[1] * 32 // self.linear.bits
        return w.shape[1]

    @property
    def output_dims(self) -> int:
        return self.linear.weight.shape[0]

    # the trainable term ---------------------------------------------------------------
    def add_trainable(self, rank: int, scale: float, dropout: float) -> None:
        bound = 1 / math.sqrt(self.input_dims)  # mlx-lm's LoRALinear init: A uniform, B zero
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(self.input_dims, rank))
        self.lora_b = mx.zeros((rank, self.output_dims))
        _plain(self, "scale", float(scale))
        _plain(self, "dropout_p", float(dropout))
        self.unfreeze(keys=["lora_a", "lora_b"], recurse=False)

    def remove_trainable(self) -> None:
        for k in ("lora_a", "lora_b"):
            if k in self:
                del self[k]

    # mounted adapters -----------------------------------------------------------------
    def mount(self, name: str, lora_a: mx.array, lora_b: mx.array, scale: float) -> None:
        if lora_a.shape[0] != self.input_dims or lora_b.shape[1] != self.output_dims:
            raise ValueError(
                f"adapter shapes {tuple(lora_a.shape)}, {tuple(lora_b.shape)} do not fit a layer "
                f"{self.input_dims} -> {self.output_dims}"
            )
        self.adapters[name] = {"lora_a": lora_a, "lora_b": lora_b}
        self.scales[name] = float(scale)
        self.freeze(keys=["adapters"], recurse=False)

    def unmount(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.scales.pop(name, None)
        self.active.pop(name, None)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        for name, gate in self.active.items():
            ad = self.adapters[name]
            z = self.scales[name] * ((x @ ad["lora_a"]) @ ad["lora_b"])
            if gate is not None:
                z = z * gate.reshape((-1,) + (1,) * (z.ndim - 1))
            y = y + z.astype(x.dtype)
        if self.trainable_on and "lora_a" in self:
            keep = 1.0 - self.dropout_p
            if self.training and keep < 1.0:
                z = dropout_lora(x, self.lora_a, self.lora_b, mx.random.bernoulli(keep, x.shape), keep)
            else:
                z = (x @ self.lora_a) @ self.lora_b
            y = y + (self.scale * z).astype(x.dtype)
        return y


# --- the model ----------------------------------------------------------------------


def lora_layers(model: nn.Module) -> Iterator[tuple[str, StackedLoRALinear]]:
    """(parameter path, layer) for every stacked layer in the model."""
    for path, m in model.named_modules():
        if isinstance(m, StackedLoRALinear):
            yield path, m


def _registry(model: nn.Module) -> dict:
    """name -> AdapterInfo (or None) of the adapters mounted on this model, in mount order."""
    reg = model.__dict__.get("_humanizer_mounts")
    if reg is None:
        reg = {}
        _plain(model, "_humanizer_mounts", reg)
    return reg


def _wrap(model: nn.Module, paths: Iterable[str]) -> dict[str, StackedLoRALinear]:
    """Make sure the modules at `paths` are StackedLoRALinear (wrapping plain linears)."""
    modules = dict(model.named_modules())
    out, new = {}, []
    for p in paths:
        m = modules.get(p)
        if m is None:
            raise HumanizerError(f"the model has no layer '{p}'")
        if not isinstance(m, StackedLoRALinear):
            if not isinstance(m, (nn.Linear, nn.QuantizedLinear)):
                raise HumanizerError(f"'{p}' is a {type(m).__name__}, not a linear layer; LoRA cannot go there")
            m = StackedLoRALinear(m)
            new.append((p, m))
        out[p] = m
    if new:
        model.update_modules(tree_unflatten(new))
    return out


def linear_keys(model: nn.Module) -> list[str]:
    """The linear layers inside one transformer block, as paths relative to the block."""
    mods = dict(model.layers[0].named_modules())
    stacked = [k for k, m in mods.items() if isinstance(m, StackedLoRALinear)]
    return sorted(
        k for k, m in mods.items()
        if isinstance(m, (nn.Linear, nn.QuantizedLinear, StackedLoRALinear))
        and not any(k.startswith(s + ".") for s in stacked)
    )


def resolve_keys(model: nn.Module, keys: Iterable[str] | None) -> list[str]:
    """Full block-relative paths for `keys`; short names such as "q_proj" match by suffix.
    None means every linear layer of the block (mlx-lm's default)."""
    available = linear_keys(model)
    if keys is None:
        return available
    out = []
    for k in keys:
        k = k.strip()
        if not k:
            continue
        hits = [a for a in available if a == k or a.endswith("." + k)]
        if not hits:
            raise HumanizerError(
                f"no layer '{k}' in this model's blocks", f"layers you can adapt: {', '.join(available)}"
            )
        out += [h for h in hits if h not in out]
    if not out:
        raise HumanizerError("no layers to adapt", f"layers you can adapt: {', '.join(available)}")
    return out


def target_paths(model: nn.Module, num_layers: int, keys: list[str]) -> list[str]:
    """Model paths of `keys` in the last `num_layers` blocks (-1 or 0 or more than there are: all)."""
    n = len(model.layers)
    count = n if num_layers is None or num_layers <= 0 or num_layers > n else num_layers
    prefix = _layers_prefix(model)
    return [f"{prefix}{i}.{k}" for i in range(n - count, n) for k in keys]


def _layers_prefix(model: nn.Module) -> str:
    first = model.layers[0]
    for path, m in model.named_modules():
        if m is first:
            return path[: -len("0")]
    raise HumanizerError("cannot find the model's transformer blocks")


def apply_lora(
    model: nn.Module,
    num_layers: int,
    keys: Iterable[str] | None,
    rank: int,
    scale: float,
    dropout: float = 0.0,
    seed: int | None = None,
) -> list[str]:
    """Add a trainable LoRA term (`lora_a`, `lora_b`) to the `keys` linears of the last
    `num_layers` blocks and freeze everything else. Returns the adapted paths."""
    keys = resolve_keys(model, keys)
    paths = target_paths(model, num_layers, keys)
    model.freeze()
    if seed is not None:
        mx.random.seed(seed)
    for _, layer in _wrap(model, paths).items():
        layer.add_trainable(rank, scale, dropout)
    mx.eval(model.trainable_parameters())
    return paths


def remove_trainable(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.remove_trainable()


def trainable_weights(model: nn.Module) -> dict[str, mx.array]:
    """The trainable LoRA weights by mlx-lm name (`...q_proj.lora_a` / `lora_b`)."""
    return {
        k: v for k, v in tree_flatten(model.trainable_parameters())
        if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")
    }


def set_trainable_weights(model: nn.Module, weights: Mapping[str, mx.array]) -> None:
    have = trainable_weights(model)
    missing = sorted(set(have) - set(weights))
    extra = sorted(set(weights) - set(have))
    bad = [k for k in have if k in weights and tuple(weights[k].shape) != tuple(have[k].shape)]
    if missing or extra or bad:
        raise HumanizerError(
            "saved LoRA weights do not match the model's trainable LoRA layers "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {bad[:3]})"
        )
    model.update(tree_unflatten([(k, v.astype(have[k].dtype)) for k, v in weights.items()]))


@contextlib.contextmanager
def reference_mode(model: nn.Module):
    """Within the block the trainable term is off: the model is base + active mounted adapters."""
    layers = [layer for _, layer in lora_layers(model)]
    old = [layer.trainable_on for layer in layers]
    for layer in layers:
        _plain(layer, "trainable_on", False)
    try:
        yield model
    finally:
        for layer, o in zip(layers, old):
            _plain(layer, "trainable_on", o)


def mount_adapter(
    model: nn.Module,
    adapter_dir,
    name: str | None = None,
    *,
    model_dir=None,
    active: bool = True,
):
    """Mount a saved adapter frozen, under `name` (default: its folder name).

    With `model_dir` (or a model from `load_model`), the adapter must fit that base
    (fingerprint and shapes). A DPO delta is refused unless its recorded parent is mounted
    (A.find_parent: same weights and identity); it is bound to that one (info.stacked_on)."""
    from engine import adapters as A

    info = A.read_adapter(adapter_dir)
    name = name or info.name
    if not NAME_RE.match(name):
        raise HumanizerError(
            f"bad adapter name '{name}'", "use letters, digits, '-' and '_' (no '.', '+' or spaces)"
        )
    reg = _registry(model)
    if name in reg:
        raise HumanizerError(f"an adapter named '{name}' is already mounted", "pick another name")
    model_dir = model_dir or base_identity(model).get("path")
    if model_dir:
        A.check_fits(info, model_dir)
    others = {n: i for n, i in reg.items() if i is not None}
    A.check_parent(info, others)
    info.stacked_on = A.find_parent(info, others)  # bound once: a copy of the parent mounted later is not it
    weights = A.load_weights(adapter_dir)
    by_path: dict[str, dict] = {}
    for k, v in weights.items():
        path, leaf = k.rsplit(".", 1)
        if leaf not in ("lora_a", "lora_b"):
            raise HumanizerError(f"{info.path}: unexpected tensor '{k}' (only lora_a / lora_b are supported)")
        by_path.setdefault(path, {})[leaf] = v
    layers = _wrap(model, sorted(by_path))
    for path, layer in layers.items():
        pair = by_path[path]
        if set(pair) != {"lora_a", "lora_b"}:
            raise HumanizerError(f"{info.path}: '{path}' lacks lora_a or lora_b")
        try:
            # kept in the saved dtype (float32), like the trainable term, so serving = training
            layer.mount(name, pair["lora_a"], pair["lora_b"], info.scale)
        except ValueError as e:
            raise HumanizerError(f"adapter {info.path} does not fit '{path}': {e}") from None
        if active:
            layer.active[name] = None
    mx.eval(model.parameters())
    reg[name] = info
    return info


def fold_adapter(model: nn.Module, name: str) -> int:
    """Add the mounted adapter `name` into the float32 base weights it sits on
    (W += scale * (A @ B)^T) and drop it from those layers: the same function with two
    fewer matmuls per layer and step. Layers on quantized or half-precision weights keep
    it mounted (folding would round it). It stays in the registry, since the model still
    computes base + it. Returns the number of layers folded."""
    folded = 0
    for _, layer in lora_layers(model):
        ad = layer.adapters.get(name)
        base = layer.linear
        if ad is None or type(base) is not nn.Linear or base.weight.dtype != mx.float32:
            continue
        delta = layer.scales[name] * (ad["lora_a"] @ ad["lora_b"]).T
        base.weight = base.weight + delta.astype(mx.float32)
        layer.unmount(name)
        folded += 1
    mx.eval(model.parameters())
    return folded


def unmount_adapter(model: nn.Module, name: str) -> None:
    reg = _registry(model)
    if name not in reg:
        raise HumanizerError(f"no adapter named '{name}' is mounted")
    for other, info in reg.items():
        if info is not None and info.stacked_on == name:  # only what really stacks on it (not on a copy)
            raise HumanizerError(f"'{other}' is stacked on '{name}'", f"unmount '{other}' first")
    for _, layer in lora_layers(model):
        layer.unmount(name)
    del reg[name]


def mounted(model: nn.Module) -> dict:
    """name -> AdapterInfo of the mounted adapters, in mount order."""
    return dict(_registry(model))


def active_adapters(model: nn.Module) -> list[str]:
    names = set()
    for _, layer in lora_layers(model):
        names.update(layer.active)
    return [n for n in _registry(model) if n in names]


def set_active(model: nn.Module, names: Iterable[str] | Mapping[str, mx.array | None] | None) -> None:
    """Choose the mounted adapters the forward uses: a list of names (None = all mounted),
    or a mapping name -> gate, where a gate of shape (batch,) selects rows (1.0 on, 0.0 off).

    A DPO delta is only ever active together with its parent."""
    reg = _registry(model)
    if names is None:
        names = list(reg)
    gates = dict(names) if isinstance(names, Mapping) else {n: None for n in names}
    for n in gates:
        if n not in reg:
            raise HumanizerError(f"no adapter named '{n}' is mounted", f"mounted: {', '.join(reg) or 'none'}")
    from engine import adapters as A

    A.check_parent_active(gates, reg)
    order = [n for n in reg if n in gates]
    for _, layer in lora_layers(model):
        layer.active.clear()
        for n in order:
            if n in layer.adapters:
                layer.active[n] = gates[n]


# --- loading a base model ------------------------------------------------------------


def base_identity(model: nn.Module) -> dict:
    """{"name", "path", "fingerprint"} of the model folder `load_model` read, else {}."""
    return dict(model.__dict__.get("_humanizer_base") or {})


def load_model(model_dir, *, dequantize: bool | None = None):
    """(model, tokenizer) from an MLX model folder, remembering which base it is.

    dequantize=None means: on the CPU backend, dequantize quantized layers and cast the
    weights to float32 (MLX's CPU quantized and half-precision kernels are slow; the
    dequantized weights are the quantized model's function); on Metal keep them (QLoRA)."""
    from mlx_lm.utils import dequantize_model, load

    from engine import adapters as A

    model_dir = Path(model_dir)
    model, tokenizer = load(str(model_dir))
    if dequantize is None:
        dequantize = mx.default_device() == mx.cpu
    if dequantize:
        dequantize_model(model)
        model.set_dtype(mx.float32)
        mx.eval(model.parameters())
    _plain(model, "_humanizer_base", {
        "name": model_dir.name,
        "path": str(model_dir),
        "fingerprint": A.model_fingerprint(model_dir),
    })
    return model, tokenizer
