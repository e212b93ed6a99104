"""The output folder: the quantized weights in MLX's format, config.json's per-layer
"quantization", the side files, the check that stock mlx-lm loads it as allocated, and the
held-out evaluation of the result against the source."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine.convert.allocation import KAPPA_FROM_BITS
from engine.convert.layers import COUNTING, QLayer, _bits_params
from engine.convert.rounding import CLIP_MAX_BITS, CLIP_RATIOS, _importance, rounded_weight
from engine.convert.settings import BUDGET_TOLERANCE, DEFAULT_GROUP_SIZE, FLOAT_BITS, layer_bpw
from engine.convert.state import ConvertState
from engine.errors import HumanizerError


META_FILE = "humanizer_quant.json"
ROUNDING_FILE = "humanizer_rounding.safetensors"  # the rank-1 Fisher factors (mlx_lm reads only model*.safetensors)


@dataclass
class ConvertResult:
    path: Path
    summary: dict

    def __str__(self) -> str:
        return str(self.path)


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


def write_output(job: ConvertState) -> ConvertResult:
    """The last stage: write the allocated model (atomically), load it back with stock mlx-lm,
    evaluate it against the source on the held-out text, and write humanizer_quant.json."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from engine.workspace import atomic_dir

    run, output, layers, chosen = job.run, job.output, job.layers, job.chosen
    hist = _bits_params(layers, chosen)
    with atomic_dir(output) as tmp:
        run.progress(0, 3, "writing the quantized weights", phase="write")
        by_path = {layer.path: layer for layer in layers}
        weights = {}
        for k, v in tree_flatten(job.model.parameters()):
            mod, leaf = k.rsplit(".", 1)
            layer = by_path.get(mod)
            if layer is not None and leaf == "weight" and layer.quantized:
                w_in, _, _ = rounded_weight(v, chosen[mod], layer.group_size, job.out_dtype,
                                            _importance(job.factors, mod), job.choices.get((mod, chosen[mod])))
                q, s, b = mx.quantize(w_in, group_size=layer.group_size, bits=chosen[mod])
                weights[k], weights[f"{mod}.scales"], weights[f"{mod}.biases"] = q, s, b
            else:
                weights[k] = v.astype(job.out_dtype)
        mx.eval(weights)
        written_bits = sum(v.nbytes * 8 for v in weights.values())
        achieved = written_bits / job.total_params
        if abs(written_bits - (job.layer_bits + job.budget.fixed_bits + job.budget.float_bits)) > 0:
            run.log(f"note: the written tensors hold {written_bits} bits, the plan counted "
                    f"{job.layer_bits + job.budget.fixed_bits + job.budget.float_bits}")
        files = _save_weights(tmp, weights)
        del weights
        cfg = {k: v for k, v in job.config.items() if k not in ("quantization", "quantization_config")}
        qcfg = quantization_config(layers, chosen)
        cfg.update(quantization=qcfg, quantization_config=qcfg, torch_dtype=job.out_dtype_name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        _copy_side_files(job.model_dir, tmp)
        if job.factors is not None:  # lets a later convert reuse these measurements (measurements=)
            mx.save_safetensors(str(tmp / ROUNDING_FILE), job.factors)
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
        run.progress(2, 3, f"held-out perplexity ({sum(len(c) for c in job.held)} tokens)", phase="evaluate")
        ev = heldout_eval(job.model, result, job.held) if job.held else {"heldout_tokens": 0}
        ev["how"] = ("source: the float32 model measured; result: the written folder loaded with mlx_lm.load, "
                     + ("its quantized layers dequantized to float32 on the CPU backend (the same weights, so the "
                        "same function as the quantized kernels, which are slow on CPU)" if on_cpu else
                        "run with MLX's quantized kernels"))
        ev["text"] = job.held_source
        eval_seconds = time.perf_counter() - t_eval
        del result

        weight_bytes = sum(f.stat().st_size for f in files)
        size_on_disk = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        summary = {
            "output": str(output),
            "target_bpw": job.target,
            "achieved_bpw": achieved,
            "size_bytes": size_on_disk,
            "weights_bytes": weight_bytes,
            "size_mb": round(size_on_disk / 1e6, 2),
            "layers": len(layers),
            "params": job.total_params,
            "bits_histogram": hist,
            "predicted_kl": job.predicted_kl,
            "check_kl": job.check_kl,
            "measure_seconds": round(job.measure_seconds, 1),
            "total_seconds": round(time.perf_counter() - job.t_start, 1),
            **{k: v for k, v in ev.items() if k not in ("how", "text")},
        }
        if job.source_note:
            summary["source_note"] = job.source_note
        meta = {
            "format": 1,
            "tool": "humanizer convert",
            "source": {"model": str(job.model_spec), "path": str(job.model_dir),
                       "fingerprint": job.key["source_fingerprint"],
                       "quantization": (job.config.get("quantization") or None), "note": job.source_note},
            "settings": {**job.settings.recorded(), "output_dtype": job.out_dtype_name},
            "calibration": {"source": job.calib_source, "samples": len(job.calib_all), "seq_len": len(job.calib[0]),
                            "fisher_samples": len(job.calib), "check_samples": len(job.check),
                            "tokens": job.n_tokens, "check_tokens": sum(len(c) for c in job.check),
                            "fingerprint": job.calib_fp},
            "method": {
                "name": "diagonal Fisher",
                "rounding": job.settings.rounding,
                "rounding_how": (
                    "affine (standard MLX format); at <= %d bits each group's [min, max] is shrunk about its "
                    "midpoint by the ratio in %s minimising the squared error weighted by the rank-1 Fisher "
                    "factors (%s beside the weights)" % (CLIP_MAX_BITS, list(CLIP_RATIOS), ROUNDING_FILE)
                    if job.settings.rounding == "clip" else "affine min/max (mx.quantize of the weights as they are)"),
                "sensitivity": "1/2 * sum(F * (W - dequantize(quantize(W, bits)))^2) / calibration tokens: the "
                               "second-order estimate of the mean per-token KL(float || quantized) when only that "
                               "layer is quantized; F is the Fisher diagonal from squared gradients of labels "
                               "sampled from the float model, one sample per calibration sequence",
                "allocation": "multiple-choice knapsack (dynamic programming, costs rounded up) minimising the "
                              "summed sensitivity within the bit budget, then a greedy sensitivity-per-bit fill; "
                              "run once per kappa (each bit below %d multiplies a sensitivity by kappa), keeping "
                              "the allocation with the smallest real KL on calibration windows held back from the "
                              "Fisher pass" % KAPPA_FROM_BITS,
                "predicted_kl": job.predicted_kl,
                "selection": [{"kappas": c["kappas"], "predicted_kl": c["predicted_kl"],
                               "check_kl": c.get("check_kl"), "kept": i == job.kept,
                               "bits_params": _bits_params(layers, c["chosen"])} for i, c in enumerate(job.selection)],
            },
            "bpw": {
                "achieved": achieved,
                "planned": job.planned_bpw,
                "target": job.target,
                "tolerance": BUDGET_TOLERANCE,
                "counted": COUNTING,
                "total_params": job.total_params,
                "total_bits": written_bits,
                "quantized_layer_bits": job.layer_bits,
                "float_layer_bits": job.budget.float_bits,
                "other_tensor_bits": job.budget.fixed_bits,
            },
            "fallbacks": [{"path": layer.path, "note": layer.note,
                           "group_size": layer.group_size, "kept_float": not layer.quantized}
                          for layer in layers if layer.note],
            "layers": [
                {**layer.describe(), "bits_measured": job.bits if layer.quantized else [],
                 "chosen_bits": chosen[layer.path] if layer.quantized else None,
                 "bpw": layer_bpw(chosen[layer.path], layer.group_size) if layer.quantized else float(FLOAT_BITS),
                 **{k: v for k, v in job.measured.get(layer.path, {"sensitivity": {}}).items()}}
                for layer in layers
            ],
            "eval": ev,
            "timing": {"measure_seconds": round(job.measure_seconds, 2),
                       "calibration_pass_seconds": round(job.stats_seconds, 2),
                       "eval_seconds": round(eval_seconds, 2)},
            "summary": summary,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        summary["size_bytes"] = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        summary["size_mb"] = round(summary["size_bytes"] / 1e6, 2)
        run.progress(3, 3, "written", phase="evaluate")
    run.artifact(output, kind="model")
    shutil.rmtree(job.work, ignore_errors=True)
    run.done(result=str(output), **summary)
    return ConvertResult(output, summary)
