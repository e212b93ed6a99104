"""fuse: bake adapters into the base weights.

W' = W + sum_i s_i (A_i @ B_i)^T (mlx-lm Linear weights are (out, in)). Fused layers of a
quantized base are either kept in float (the dtype of the layer's scales) or re-quantized with
the layer's own bits, group size and mode; every other layer is written as it was. Either way
the cost of re-quantizing is measured on probe prompts against the float fuse (logit
differences, top-1 agreement, KL) along with the size of each variant."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import adapters as A
from engine.adapters.common import IMPORT_RECORD, folder_bytes, model_adapters_output, source_record
from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.workspace import atomic_dir, human_bytes

FUSE_RECORD = "humanizer_fuse.json"
PROBE_PROMPTS = (
    "The quick brown fox jumps over the lazy dog, and then it writes a short note about the day.",
    "Please rewrite this paragraph so it sounds like a person wrote it: the meeting has been moved to Friday.",
    "What is the capital of France? The capital of France is Paris, a city on the Seine.",
)
PROBE_MAX_TOKENS = 64


@dataclass
class FuseResult:
    path: Path
    mode: str  # "float" or "requantized"
    report: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "mode": self.mode, "report": self.report}


def quantized_layers(model_dir) -> set[str]:
    """Module paths of the quantized layers of a model folder (those with `.scales`)."""
    paths = set()
    for file in sorted(Path(model_dir).glob(A.WEIGHT_FILES)):
        header, _ = A.safetensors_header(file)
        paths.update(k[: -len(".scales")] for k in header if k.endswith(".scales"))
    return paths


def probe_tokens(tokenizer) -> list:
    import mlx.core as mx

    probes = []
    for text in PROBE_PROMPTS:
        ids = list(tokenizer.encode(text))[:PROBE_MAX_TOKENS]
        if ids:
            probes.append(mx.array([ids]))
    return probes


def probe_logits(model, probes) -> list:
    import mlx.core as mx
    import numpy as np

    out = []
    for t in probes:
        y = model(t).astype(mx.float32)
        mx.eval(y)
        out.append(np.array(y)[0])
    return out


def compare_logits(ref: list, other: list) -> dict:
    """max / mean |logit difference|, top-1 agreement and mean KL(ref || other) per token."""
    import numpy as np

    diffs, agree, kls, n = [], 0, 0.0, 0
    for r, o in zip(ref, other):
        r, o = r.astype(np.float64), o.astype(np.float64)
        diffs.append(np.abs(r - o).reshape(-1))
        agree += int((r.argmax(-1) == o.argmax(-1)).sum())
        lr = r - r.max(-1, keepdims=True)
        lr = lr - np.log(np.exp(lr).sum(-1, keepdims=True))
        lo = o - o.max(-1, keepdims=True)
        lo = lo - np.log(np.exp(lo).sum(-1, keepdims=True))
        kls += float((np.exp(lr) * (lr - lo)).sum())
        n += r.shape[0]
    d = np.concatenate(diffs) if diffs else np.zeros(1)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "top1_agreement": agree / max(n, 1),
            "mean_kl": max(kls / max(n, 1), 0.0), "tokens": n}


def _params_bytes(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def _fused_linear(layer, float_dtypes: dict, quant: dict, path: str):
    """A float nn.Linear holding W + sum_i s_i (A_i @ B_i)^T for a StackedLoRALinear."""
    import mlx.core as mx
    import mlx.nn as nn

    base = layer.linear
    delta = None
    for name, ad in layer.adapters.items():
        d = layer.scales[name] * (ad["lora_a"].astype(mx.float32) @ ad["lora_b"].astype(mx.float32))
        delta = d if delta is None else delta + d
    if isinstance(base, nn.QuantizedLinear):
        mode = getattr(base, "mode", "affine")
        kwargs = {}
        if "global_scale" in base:
            kwargs["global_scale"] = base.global_scale
        w = mx.dequantize(base.weight, base.scales, base.get("biases"), base.group_size, base.bits, mode, **kwargs)
        dtype = base.scales.dtype if mx.issubdtype(base.scales.dtype, mx.floating) else mx.bfloat16
        quant[path] = {"group_size": base.group_size, "bits": base.bits, "mode": mode}
    else:
        w, dtype = base.weight, base.weight.dtype
    float_dtypes[path] = dtype
    has_bias = "bias" in base
    new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
    new.weight = (w.astype(mx.float32) + delta.T).astype(dtype)
    if has_bias:
        new.bias = base.bias
    return new


def _copy_model_extras(model_dir: Path, dest: Path) -> None:
    """Everything of a model folder but its weights (tokenizer, generation config, ...)."""
    for f in sorted(model_dir.iterdir()):
        if (not f.is_file() or f.name.startswith(".") or f.suffix == ".safetensors"
                or f.name in ("model.safetensors.index.json", "config.json", IMPORT_RECORD, FUSE_RECORD)):
            continue
        shutil.copy2(f, dest / f.name)


def fuse(model_dir, adapter_dirs, out_dir, requantize: bool | None = None, run: Run = NullRun(),
         ws=None) -> FuseResult:
    """Bake adapters into a copy of the model at `out_dir` (see the module docstring).

    requantize: True re-quantizes the fused layers of a quantized model with their own
    bits / group size / mode; False keeps them in float; None (default) re-quantizes a
    quantized model, so the output is the same kind as the input. A float model is always
    fused in float. Returns a FuseResult whose report says what re-quantizing costs."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import load, save_model

    from engine.adapters import layers as lora

    t0 = time.perf_counter()
    model_dir, infos, out = model_adapters_output(model_dir, adapter_dirs, out_dir, FUSE_RECORD, "fused model", ws, run)
    was_quantized = bool(quantized_layers(model_dir))
    if requantize and not was_quantized:
        raise HumanizerError(
            f"model '{model_dir.name}' is not quantized, so there is nothing to re-quantize",
            "drop --requantize: a float model is fused in float",
        )
    requantize = was_quantized if requantize is None else bool(requantize)
    names = " + ".join(i.name for i in infos)

    run.progress(0, 4, f"loading {model_dir.name}")
    model, tokenizer = load(str(model_dir))
    model.eval()
    for k, info in enumerate(infos):
        lora.mount_adapter(model, info.path, name=f"adapter{k}", model_dir=model_dir)
    probes = probe_tokens(tokenizer)
    stacked = probe_logits(model, probes)

    run.progress(1, 4, f"fusing {names}")
    float_dtypes: dict = {}
    quant: dict = {}
    fused = [(path, _fused_linear(layer, float_dtypes, quant, path)) for path, layer in lora.lora_layers(model)]
    model.update_modules(tree_unflatten(fused))
    mx.eval(model.parameters())
    fused_float = probe_logits(model, probes)
    check = compare_logits(stacked, fused_float)
    float_bytes = _params_bytes(model)
    dtypes = sorted({str(d).replace("mlx.core.", "") for d in float_dtypes.values()})
    run.log(f"fused {len(fused)} layers of {names} into {'/'.join(dtypes)} weights: "
            f"fused vs stacked max |logit difference| {check['max_abs']:.3g} on {check['tokens']} probe tokens")

    report = {
        "mode": "requantized" if requantize else "float",
        "model": model_dir.name,
        "adapters": [i.name for i in infos],
        "layers_fused": len(fused),
        "float_dtype": "/".join(dtypes),
        "source_bytes": folder_bytes(model_dir, A.WEIGHT_FILES),
        "float_bytes": float_bytes,
        "fused_vs_stacked": check,
        "quantization": None,
        "requantize_cost": None,
        "requantized_bytes": None,
    }
    with atomic_dir(out) as tmp:
        if not requantize:
            run.progress(2, 4, "writing the float weights")
            save_model(tmp, model)
        if quant:
            run.progress(2, 4, "re-quantizing the fused layers")
            modules = dict(model.named_modules())
            requant = [(p, modules[p].to_quantized(**q)) for p, q in quant.items()]
            model.update_modules(tree_unflatten(requant))
            mx.eval(model.parameters())
            cost = compare_logits(fused_float, probe_logits(model, probes))
            qs = sorted({(q["bits"], q["group_size"], q["mode"]) for q in quant.values()})
            report["quantization"] = [{"bits": b, "group_size": g, "mode": m} for b, g, m in qs]
            report["requantize_cost"] = cost
            report["requantized_bytes"] = _params_bytes(model)
            qtext = ", ".join(f"{b}-bit g{g}" + ("" if m == "affine" else f" {m}") for b, g, m in qs)
            run.log(
                f"re-quantizing the fused layers to {qtext} costs: max |logit difference| {cost['max_abs']:.3g}, "
                f"mean {cost['mean_abs']:.3g}, top-1 agreement {100 * cost['top1_agreement']:.1f}%, "
                f"KL {cost['mean_kl']:.3g} nats/token (vs the float fuse, {cost['tokens']} probe tokens); "
                f"weights {human_bytes(report['requantized_bytes'])} re-quantized vs {human_bytes(float_bytes)} float"
            )
        if requantize:
            run.progress(3, 4, "writing the re-quantized weights")
            save_model(tmp, model)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if quant and not requantize:  # the fused layers are float now; the loader must not quantize them
            for key in ("quantization", "quantization_config"):
                if isinstance(config.get(key), dict):
                    for p in quant:
                        config[key][p] = False
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _copy_model_extras(model_dir, tmp)
        report["output_bytes"] = folder_bytes(tmp, A.WEIGHT_FILES)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        record = {
            "format": 1,
            "base": {"name": model_dir.name, "path": str(model_dir.resolve()),
                     "fingerprint": A.model_fingerprint(model_dir)},
            "adapters": [source_record(i) for i in infos],
            "report": report,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / FUSE_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    run.progress(4, 4, f"fused model in {out}")
    run.artifact(out, kind="fused model", mode=report["mode"], report=report)
    return FuseResult(out, report["mode"], report)


def fuse_summary(result: FuseResult) -> list[str]:
    """Plain-text lines for a fuse report."""
    r = result.report
    lines = [f"fused model ({r['mode']}): {result.path}",
             f"  adapters: {' + '.join(r['adapters'])} ({r['layers_fused']} layers)",
             f"  fused vs stacked: max |logit difference| {r['fused_vs_stacked']['max_abs']:.3g}"]
    c = r.get("requantize_cost")
    if c:
        q = ", ".join(f"{x['bits']}-bit g{x['group_size']}" for x in r["quantization"])
        lines.append(f"  re-quantizing ({q}) costs: max |logit difference| {c['max_abs']:.3g}, mean {c['mean_abs']:.3g}, "
                     f"top-1 agreement {100 * c['top1_agreement']:.1f}%, KL {c['mean_kl']:.3g} nats/token")
        lines.append(f"  weights: {human_bytes(r['requantized_bytes'])} re-quantized, {human_bytes(r['float_bytes'])} "
                     f"float (source {human_bytes(r['source_bytes'])}); written: {human_bytes(r['output_bytes'])}")
    else:
        lines.append(f"  weights: {human_bytes(r['output_bytes'])} (source {human_bytes(r['source_bytes'])})")
    return lines
