"""The adapter manager's long steps: combine, fuse, export, push.

combine   an exact merge of two adapters into one plain adapter: per layer the A matrices
          side by side, the B matrices stacked (each scaled by its adapter's scale), so
          rank = r_a + r_b and scale 1, and (x @ [A_a A_b]) @ [s_a B_a; s_b B_b] is exactly
          s_a (x @ A_a) @ B_a + s_b (x @ A_b) @ B_b: the two stacked. A layer only one of
          them changes gets zero blocks for the other. The result loads in stock mlx-lm.
fuse      bakes adapters into the base weights: W' = W + sum_i s_i (A_i @ B_i)^T (mlx-lm
          Linear weights are (out, in)). Fused layers of a quantized base are either kept in
          float (the dtype of the layer's scales) or re-quantized with the layer's own bits,
          group size and mode; every other layer is written as it was. Either way the cost
          of re-quantizing is measured on probe prompts against the float fuse (logit
          differences, top-1 agreement, KL) along with the size of each variant.
export    a bundle folder: model/ (hard links when the file system allows, else copies),
          adapters/<name>/ (each adapter, a delta's parent recorded by its bundle name), a
          README.md model card (how to serve it stacked, what the adapters were trained on
          and how they scored, the base model, the license) and humanizer_bundle.json.
push      a bundle to the Hugging Face Hub with huggingface_hub (create_repo + upload_folder);
          dry_run lists what would be uploaded without touching the network.

Every output is written atomically (a temp folder renamed into place), and an existing
output is only ever replaced when it is one this module made (its marker file says so)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import adapters as A
from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.workspace import atomic_dir, human_bytes

FUSE_RECORD = "humanizer_fuse.json"
BUNDLE_RECORD = "humanizer_bundle.json"
IMPORT_RECORD = "gguf_import.json"  # engine.gguf's import record: a local path, not part of a fused model or bundle
PROBE_PROMPTS = (
    "The quick brown fox jumps over the lazy dog, and then it writes a short note about the day.",
    "Please rewrite this paragraph so it sounds like a person wrote it: the meeting has been moved to Friday.",
    "What is the capital of France? The capital of France is Paris, a city on the Seine.",
)
PROBE_MAX_TOKENS = 64
REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_IGNORE = [".*", "*/.*"]  # hidden files and folders (temp files, .cache) are never uploaded
LOGIN_HINT = ("run `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN to a token with write access "
              "from https://huggingface.co/settings/tokens")


# --- shared helpers -------------------------------------------------------------------


def _model_folder(spec, ws=None, run: Run = NullRun()) -> Path:
    """A model folder from a folder path, or any model spec when a workspace is given."""
    from engine.models import check_model_dir, resolve_model

    p = Path(str(spec)).expanduser()
    if p.is_dir():
        return check_model_dir(p)
    if ws is None:
        raise HumanizerError(f"no such model folder: {p}", "pass a folder with config.json and *.safetensors")
    return Path(resolve_model(spec, ws, run))


def _adapter_infos(adapter_dirs, ws=None) -> list[A.AdapterInfo]:
    if isinstance(adapter_dirs, (str, os.PathLike)):
        adapter_dirs = [adapter_dirs]
    infos = [A.read_adapter(A.resolve_adapter(d, ws)) for d in adapter_dirs or []]
    if not infos:
        raise HumanizerError("no adapters given", "pass at least one --adapter")
    return A.stack_order(infos)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _check_output(out: Path, inputs, is_ours, what: str) -> None:
    """Refuse an output that is (or is inside, or holds) an input, and an existing non-empty
    folder that is not a `what` this module made (it would be replaced)."""
    for p in inputs:
        if _inside(out, p) or _inside(p, out):
            raise HumanizerError(f"the output {out} overlaps the input {p}", "write the output somewhere else")
    if out.exists() and not out.is_dir():
        raise HumanizerError(f"{out} exists and is a file", "choose another --output")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out):
        raise HumanizerError(
            f"{out} already exists and is not a {what} made by humanizer; it would be replaced",
            "choose another --output, or remove that folder first",
        )


def _folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob(pattern) if f.is_file())


def _source(info: A.AdapterInfo) -> dict:
    return {
        "name": info.name, "path": str(info.path.resolve()), "fingerprint": info.fingerprint,
        "method": info.method, "rank": info.rank, "scale": info.scale, "num_layers": info.num_layers,
        "keys": info.keys, "base": info.base, "parent": info.parent, "training": info.training,
        "metrics": info.metrics,
    }


def _natural(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


# --- combine --------------------------------------------------------------------------


def _pairs(info: A.AdapterInfo, weights: dict) -> dict[str, tuple]:
    """layer path -> (lora_a (in, r), lora_b (r, out)), checked."""
    by_path: dict[str, dict] = {}
    for key, v in weights.items():
        path, leaf = key.rsplit(".", 1)
        if leaf not in ("lora_a", "lora_b"):
            raise HumanizerError(f"{info.path}: unexpected tensor '{key}' (only lora_a / lora_b can be combined)")
        by_path.setdefault(path, {})[leaf] = v
    out = {}
    for path, pair in by_path.items():
        if set(pair) != {"lora_a", "lora_b"}:
            raise HumanizerError(f"{info.path}: '{path}' lacks lora_a or lora_b")
        a, b = pair["lora_a"], pair["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != info.rank or b.shape[0] != info.rank:
            raise HumanizerError(
                f"{info.path}: '{path}' has shapes {tuple(a.shape)}, {tuple(b.shape)}, not (in, {info.rank}) "
                f"and ({info.rank}, out) for its rank {info.rank}"
            )
        out[path] = (a, b)
    return out


def _same_base(a: A.AdapterInfo, b: A.AdapterInfo, run: Run) -> dict | None:
    fa, fb = (a.base or {}).get("fingerprint"), (b.base or {}).get("fingerprint")
    if fa and fb and fa != fb:
        raise HumanizerError(
            f"adapters '{a.name}' and '{b.name}' were trained on different base models: "
            f"'{a.base.get('name')}' (fingerprint {fa}) and '{b.base.get('name')}' (fingerprint {fb})",
            "combine only adapters trained on the same base model",
        )
    if not (fa and fb):
        unknown = [i.name for i, f in ((a, fa), (b, fb)) if not f]
        run.log(f"no base model recorded for {', '.join(unknown)}: checking layer shapes only")
    return a.base if fa else b.base


def _combined_parent(a: A.AdapterInfo, b: A.AdapterInfo, run: Run) -> dict | None:
    fa, fb = (a.parent or {}).get("fingerprint"), (b.parent or {}).get("fingerprint")
    if fb and fb == a.fingerprint:  # b is a delta on a: a+b stands on a's own parent (usually none)
        return a.parent
    if fa and fa == b.fingerprint:
        return b.parent
    if fa and fb and fa != fb:
        raise HumanizerError(
            f"adapters '{a.name}' and '{b.name}' are deltas on different parents "
            f"('{a.parent.get('name')}' and '{b.parent.get('name')}'); their sum would need both",
            f"combine each with its own parent first (humanizer lora combine {a.parent.get('name')} {a.name} ...)",
        )
    parent = a.parent or b.parent
    if parent:
        run.log(f"the combined adapter is still a delta on '{parent.get('name')}': mount it with that parent")
    return parent


def combine(a_dir, b_dir, out_dir, run: Run = NullRun(), ws=None) -> Path:
    """Merge adapters A and B into one adapter at `out_dir` whose output equals A and B
    mounted together (see the module docstring). Returns `out_dir`."""
    import mlx.core as mx

    a = A.read_adapter(A.resolve_adapter(a_dir, ws))
    b = A.read_adapter(A.resolve_adapter(b_dir, ws))
    out = Path(out_dir).expanduser()
    _check_output(out, [a.path, b.path], _is_combined, "combined adapter")
    if a.fingerprint == b.fingerprint:
        raise HumanizerError(f"'{a.path}' and '{b.path}' are the same adapter (identical weights)",
                             "combine two different adapters")
    base = _same_base(a, b, run)
    parent = _combined_parent(a, b, run)
    pa = _pairs(a, A.load_weights(a.path))
    pb = _pairs(b, A.load_weights(b.path))
    paths = sorted(set(pa) | set(pb), key=_natural)
    f32 = mx.float32
    weights = {}
    for i, path in enumerate(paths):
        dims = {(p[path][0].shape[0], p[path][1].shape[1]) for p in (pa, pb) if path in p}
        if len(dims) > 1:
            (i1, o1), (i2, o2) = sorted(dims)
            raise HumanizerError(
                f"adapters '{a.name}' and '{b.name}' disagree on layer '{path}' ({i1}->{o1} vs {i2}->{o2}): "
                "they were made for different base models",
                "combine only adapters trained on the same base model",
            )
        d_in, d_out = dims.pop()
        blocks_a, blocks_b = [], []
        for info, p in ((a, pa), (b, pb)):
            if path in p:
                la, lb = p[path]
                blocks_a.append(la.astype(f32))
                blocks_b.append(lb.astype(f32) * info.scale)  # the scale folds into B
            else:  # a layer this adapter leaves alone: zero blocks
                blocks_a.append(mx.zeros((d_in, info.rank), f32))
                blocks_b.append(mx.zeros((info.rank, d_out), f32))
        weights[f"{path}.lora_a"] = mx.concatenate(blocks_a, axis=1)
        weights[f"{path}.lora_b"] = mx.concatenate(blocks_b, axis=0)
        run.progress(i + 1, len(paths), f"combining layer {i + 1}/{len(paths)}")
    mx.eval(weights)
    if a.keys is None or b.keys is None:
        keys = None
    else:
        keys = list(a.keys) + [k for k in b.keys if k not in a.keys]
    num_layers = -1 if min(a.num_layers, b.num_layers) <= 0 else max(a.num_layers, b.num_layers)
    config = {"num_layers": num_layers, "rank": a.rank + b.rank, "scale": 1.0, "dropout": 0.0, "keys": keys}
    metadata = {
        "method": "combined",
        "base": base,
        "parent": parent,
        "combined_from": [_source(a), _source(b)],
        "training": {"combined": f"{a.name}+{b.name}", "note": "exact merge: ranks concatenated, scales folded into B"},
        "metrics": {},
    }
    A.save_adapter(weights, out, config, metadata)
    run.log(f"combined '{a.name}' (rank {a.rank}, scale {a.scale:g}) and '{b.name}' (rank {b.rank}, scale {b.scale:g}) "
            f"into rank {a.rank + b.rank} on {len(paths)} layers")
    run.artifact(out, kind="adapter", method="combined")
    return out


def _is_combined(folder: Path) -> bool:
    try:
        return A.read_adapter(folder).method == "combined"
    except HumanizerError:
        return False


# --- fuse -----------------------------------------------------------------------------


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


def _probe_tokens(tokenizer) -> list:
    import mlx.core as mx

    probes = []
    for text in PROBE_PROMPTS:
        ids = list(tokenizer.encode(text))[:PROBE_MAX_TOKENS]
        if ids:
            probes.append(mx.array([ids]))
    return probes


def _probe_logits(model, probes) -> list:
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

    from engine import lora

    t0 = time.perf_counter()
    model_dir = _model_folder(model_dir, ws, run)
    infos = _adapter_infos(adapter_dirs, ws)
    out = Path(out_dir).expanduser()
    _check_output(out, [model_dir, *[i.path for i in infos]], lambda d: (d / FUSE_RECORD).is_file(), "fused model")
    for info in infos:
        A.check_fits(info, model_dir)
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
    probes = _probe_tokens(tokenizer)
    stacked = _probe_logits(model, probes)

    run.progress(1, 4, f"fusing {names}")
    float_dtypes: dict = {}
    quant: dict = {}
    fused = [(path, _fused_linear(layer, float_dtypes, quant, path)) for path, layer in lora.lora_layers(model)]
    model.update_modules(tree_unflatten(fused))
    mx.eval(model.parameters())
    fused_float = _probe_logits(model, probes)
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
        "source_bytes": _folder_bytes(model_dir, A.WEIGHT_FILES),
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
            cost = compare_logits(fused_float, _probe_logits(model, probes))
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
        report["output_bytes"] = _folder_bytes(tmp, A.WEIGHT_FILES)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        record = {
            "format": 1,
            "base": {"name": model_dir.name, "path": str(model_dir.resolve()),
                     "fingerprint": A.model_fingerprint(model_dir)},
            "adapters": [_source(i) for i in infos],
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


# --- export ---------------------------------------------------------------------------


def _bundle_names(infos: list[A.AdapterInfo]) -> list[str]:
    """Adapter names usable in a server's "a+b" (letters, digits, '-', '_'), unique."""
    names = []
    for info in infos:
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", info.name).strip("-") or "adapter"
        if not re.match(r"^[A-Za-z0-9_]", name):
            name = "a" + name
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link src to dst (True), or copy it when linking is not possible (False)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def _hf_repo_of(model_dir: Path) -> str | None:
    """The Hub repo of a model folder in the Hugging Face cache or an embedded model."""
    from engine.models import EMBEDDED_MODELS

    if model_dir.name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[model_dir.name].get("hf_repo")
    m = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", str(model_dir.resolve()) + "/")
    return f"{m.group(1)}/{m.group(2)}" if m else None


def _license_of(model_dir: Path) -> str | None:
    from engine.models import EMBEDDED_MODELS

    if model_dir.name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[model_dir.name].get("license")
    for name in ("README.md", "readme.md"):  # an HF model card's front matter
        try:
            text = (model_dir / name).read_text(encoding="utf-8")
        except OSError:
            continue
        m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
        if m:
            lic = re.search(r"^license:\s*['\"]?([^'\"\n]+)", m.group(1), re.M)
            if lic:
                return lic.group(1).strip()
    return None


def export(model_spec_dir, adapter_dirs, out_dir, run: Run = NullRun(), ws=None, link: bool = True) -> Path:
    """Write a bundle folder (see the module docstring): the model, the adapters, a model
    card. Adapters may be folders or workspace adapter names; a delta needs its parent
    among them. Returns `out_dir`."""
    from engine.models import model_info

    model_dir = _model_folder(model_spec_dir, ws, run)
    infos = _adapter_infos(adapter_dirs, ws)
    out = Path(out_dir).expanduser()
    _check_output(out, [model_dir, *[i.path for i in infos]], lambda d: (d / BUNDLE_RECORD).is_file(), "bundle")
    for info in infos:
        A.check_fits(info, model_dir)
    names = _bundle_names(infos)
    by_fp = {i.fingerprint: n for i, n in zip(infos, names)}
    minfo = model_info(model_dir)
    fingerprint = A.model_fingerprint(model_dir)
    files = [f for f in sorted(model_dir.rglob("*"))
             if f.is_file() and not any(part.startswith(".") for part in f.relative_to(model_dir).parts)
             and f.name != IMPORT_RECORD]
    linked = 0
    with atomic_dir(out) as tmp:
        for k, f in enumerate(files):
            run.progress(k, len(files) + len(infos), f"model: {f.name}")
            dst = tmp / "model" / f.relative_to(model_dir)
            linked += _link_or_copy(f, dst) if link else _copy(f, dst)
        adapters_meta = []
        for k, (info, name) in enumerate(zip(infos, names)):
            run.progress(len(files) + k, len(files) + len(infos), f"adapter: {name}")
            d = tmp / "adapters" / name
            d.mkdir(parents=True)
            shutil.copy2(info.path / A.ADAPTER_FILE, d / A.ADAPTER_FILE)
            cfg = json.loads(json.dumps(info.config))
            hz = cfg.setdefault("humanizer", {})
            if info.parent:  # the parent as it is in the bundle
                pname = by_fp[info.parent.get("fingerprint")]
                hz["parent"] = {**info.parent, "name": pname, "path": f"adapters/{pname}",
                                "original_name": info.parent.get("name")}
            (d / A.CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n", encoding="utf-8")
            adapters_meta.append({
                "name": name, "original_name": info.name, "path": f"adapters/{name}", "method": info.method,
                "parent": by_fp.get((info.parent or {}).get("fingerprint")), "fingerprint": info.fingerprint,
                "rank": info.rank, "scale": info.scale, "layers": len(info.layers),
                "training": info.training, "metrics": info.metrics,
            })
        stacks = _stacks(infos, names)
        manifest = {
            "format": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name": model_dir.name, "path": "model", "fingerprint": fingerprint,
                      "architecture": minfo.architecture, "quantization": minfo.quantization,
                      "source": minfo.source, "hf_repo": _hf_repo_of(model_dir), "license": _license_of(model_dir)},
            "adapters": adapters_meta,
            "stacks": stacks,
        }
        (tmp / BUNDLE_RECORD).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(out.name, manifest, infos, names, tmp), encoding="utf-8")
    run.progress(len(files) + len(infos), len(files) + len(infos), f"bundle in {out}")
    how = f"{linked} hard-linked, {len(files) - linked} copied" if link else f"{len(files)} copied"
    run.log(f"bundle {out}: model {model_dir.name} ({len(files)} files: {how}), adapters {', '.join(names)}")
    if linked:
        run.log("hard-linked files share their data with the originals: edit neither in place (export with "
                "link=False / --copy for independent copies)")
    run.artifact(out, kind="bundle")
    return out


def _copy(src: Path, dst: Path) -> bool:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return False


def _stacks(infos: list[A.AdapterInfo], names: list[str]) -> list[str]:
    """The adapter combinations worth serving: each adapter on top of its ancestors."""
    by_fp = {i.fingerprint: (i, n) for i, n in zip(infos, names)}
    stacks = []
    for info, name in zip(infos, names):
        chain, cur = [name], info
        while cur.parent and cur.parent.get("fingerprint") in by_fp:
            cur, pname = by_fp[cur.parent["fingerprint"]]
            chain.insert(0, pname)
        stacks.append("+".join(chain))
    return stacks


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


TRAINING_KEYS = ("preset", "iters", "learning_rate", "batch_size", "max_seq_length", "dropout", "beta", "dpo_loss",
                 "seed")


def _count(n, noun: str) -> str:
    return f"{'?' if n is None else n} {noun}{'' if n == 1 else 's'}"


def _training_lines(t: dict, label: str = "") -> list[str]:
    lines = []
    if t.get("data") is not None or t.get("train_rows") is not None:
        rows = f"{_count(t.get('train_rows'), 'training row')}, {_count(t.get('valid_rows'), 'validation row')}"
        lines.append(f"- **Trained on{label}:** {t.get('data') or 'unknown data'}; {rows}; data fingerprint "
                     f"`{t.get('data_fingerprint', '?')}`")
    cfg = [f"{k} {_fmt(t[k])}" for k in TRAINING_KEYS
           if k in t and not (k in ("beta", "dpo_loss") and t.get("method") != "dpo")]
    if cfg:
        lines.append(f"- **Training config{label}:** " + ", ".join(cfg))
    if not lines:
        lines.append(f"- **Trained on{label}:** not recorded (made by another tool?)")
    return lines


def _adapter_section(info: A.AdapterInfo, name: str, names_by_fp: dict) -> list[str]:
    lines = [f"### `{name}`", ""]
    sources = (info.config.get("humanizer") or {}).get("combined_from") or []
    if info.method == "combined":
        what = " + ".join(f"`{s.get('name')}` ({(s.get('method') or '?').upper()})" for s in sources)
        lines.append(f"- **Method:** an exact merge of {what} (ranks concatenated: it gives the same outputs as "
                     "those adapters stacked)")
    elif info.is_delta:
        pname = names_by_fp.get(info.parent.get("fingerprint"), info.parent.get("name"))
        lines.append(f"- **Method:** {(info.method or '?').upper()} delta trained on top of `{pname}` "
                     f"(it holds only the change from `{pname}`; serve it as `{pname}+{name}`)")
    else:
        lines.append(f"- **Method:** {(info.method or 'unknown').upper()}")
    lines.append(f"- **LoRA:** rank {info.rank}, scale {info.scale:g}, {len(info.layers)} layers "
                 f"({A.layer_summary(info)}), {human_bytes(info.size_bytes)}")
    if info.method == "combined":
        for s in sources:
            label = f" (`{s.get('name')}`)"
            lines += _training_lines(s.get("training") or {}, label)
            lines.append(f"- **Final metrics{label}:** " + (A.metrics_summary(s.get("metrics") or {}) or "none recorded"))
    else:
        lines += _training_lines(info.training)
        shown = {k: v for k, v in info.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if shown:
            lines += ["- **Final metrics:**", "", "  | metric | value |", "  | --- | --- |"]
            lines += [f"  | {k} | {_fmt(v)} |" for k, v in shown.items()]
        else:
            lines.append("- **Final metrics:** none recorded")
    lines.append("")
    return lines


def model_card(title: str, manifest: dict, infos: list[A.AdapterInfo], names: list[str], bundle: Path) -> str:
    """The README.md of a bundle."""
    m = manifest["model"]
    stacks = manifest["stacks"]
    full = max(stacks, key=lambda s: s.count("+")) if stacks else names[0]
    front = ["---", "library_name: mlx"]
    if m.get("hf_repo"):
        front.append(f"base_model: {m['hf_repo']}")
    if m.get("license"):
        front.append(f"license: {m['license'].lower()}")
    front += ["tags:", "- mlx", "- lora", "- humanizer-studio", "---", ""]
    adapter_args = " ".join(f"--adapter ./adapters/{n}" for n in names)
    names_by_fp = {i.fingerprint: n for i, n in zip(infos, names)}
    lines = front + [
        f"# {title}",
        "",
        f"A base model and {len(names)} LoRA adapter{'s' if len(names) != 1 else ''} made with Humanizer Studio, "
        "to be served stacked: one copy of the base model in memory, and each request chooses its adapters "
        f"(`base`, {', '.join(f'`{s}`' for s in stacks)}).",
        "",
        "## Contents",
        "",
        "| path | size |",
        "| --- | --- |",
        f"| `model/` | {human_bytes(_folder_bytes(bundle / 'model'))} |",
    ]
    lines += [f"| `adapters/{n}/` | {human_bytes(_folder_bytes(bundle / 'adapters' / n))} |" for n in names]
    lines += [f"| `{BUNDLE_RECORD}` | machine-readable manifest |", "", "## Base model", ""]
    lines.append(f"- **Name:** `{m['name']}`" + (f" ([{m['hf_repo']}](https://huggingface.co/{m['hf_repo']}))"
                                                  if m.get("hf_repo") else ""))
    lines += [f"- **Architecture:** {m['architecture']}", f"- **Weights:** {m['quantization']}",
              f"- **Source:** {m['source']}", f"- **Fingerprint:** `{m['fingerprint']}` (the adapters refuse any other base)",
              "", "## Adapters", ""]
    for info, name in zip(infos, names):
        lines += _adapter_section(info, name, names_by_fp)
    example = "Rewrite this so it sounds like a person wrote it: The meeting has been rescheduled to Friday."
    lines += [
        "## How to serve it stacked",
        "",
        "With Humanizer Studio installed (`pip install humanizer-studio`), from this folder:",
        "",
        "```sh",
        f"humanizer serve --model ./model {adapter_args} --port 8080",
        "```",
        "",
        "Each request picks its adapters with the body field `adapter` (`\"base\"`, one name, or names joined "
        "by `+`), or by model id: `GET /v1/models` lists `base` and every combination that can be served. "
        f"A delta is only ever served together with its parent (e.g. `{full}`).",
        "",
        "```sh",
        "curl http://127.0.0.1:8080/v1/chat/completions \\",
        "  -H 'Content-Type: application/json' \\",
        f"  -d '{{\"model\": \"{full}\", \"adapter\": \"{full}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"{example}\"}}], \"max_tokens\": 200}}'",
        "```",
        "",
        "```python",
        "from openai import OpenAI",
        "",
        "client = OpenAI(base_url=\"http://127.0.0.1:8080/v1\", api_key=\"not-needed-on-localhost\")",
        "reply = client.chat.completions.create(",
        f"    model=\"{full}\",",
        f"    messages=[{{\"role\": \"user\", \"content\": \"{example}\"}}],",
        f"    extra_body={{\"adapter\": \"{full}\"}},  # or just the model id above",
        ")",
        "print(reply.choices[0].message.content)",
        "```",
        "",
    ]
    plain = [n for i, n in zip(infos, names) if not i.is_delta]
    lines += ["## Use with mlx-lm", ""]
    if plain:
        lines += ["An adapter that is not a delta loads in stock mlx-lm:", "", "```sh",
                  f"mlx_lm.generate --model ./model --adapter-path ./adapters/{plain[0]} --prompt \"{example}\"",
                  "```", ""]
    deltas = [(i, n) for i, n in zip(infos, names) if i.is_delta]
    if deltas:
        i, n = deltas[0]
        pname = names_by_fp.get(i.parent.get("fingerprint"), i.parent.get("name"))
        lines += [f"A delta such as `{n}` means nothing alone. To use it outside Humanizer Studio, merge it with its "
                  "parent (exactly: the result gives the same outputs as the two stacked) or bake both into the weights:",
                  "", "```sh",
                  f"humanizer lora combine ./adapters/{pname} ./adapters/{n} --output ./{pname}-{n}",
                  f"humanizer lora fuse ./model --adapter ./adapters/{pname} --adapter ./adapters/{n} --output ./fused",
                  "```", ""]
    lic = m.get("license")
    lines += ["## License", ""]
    if lic:
        lines.append(f"The base model is distributed under the {lic} license; the adapters are derived from it and "
                     "come under the same terms. Check the base model's license and the terms of the training data "
                     "before redistributing.")
    else:
        lines.append("The base model's license was not recorded. The adapters are derived from the base model and its "
                     "license applies to them as well; check it (and the terms of the training data) before "
                     "redistributing, and set `license:` in the front matter above.")
    return "\n".join(lines) + "\n"


# --- push -----------------------------------------------------------------------------


@dataclass
class PushResult:
    repo_id: str
    url: str
    files: list = field(default_factory=list)  # [(relative path, bytes)]
    total_bytes: int = 0
    dry_run: bool = False
    private: bool = False
    commit_url: str | None = None
    token_found: bool | None = None

    def __str__(self) -> str:
        return f"dry run: {len(self.files)} files for {self.url}" if self.dry_run else self.url

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "url": self.url, "dry_run": self.dry_run, "private": self.private,
                "files": [{"path": p, "bytes": n} for p, n in self.files], "total_bytes": self.total_bytes,
                "commit_url": self.commit_url, "token_found": self.token_found}


def check_repo_id(repo_id) -> str:
    """A Hub model repo id 'owner/name' (letters, digits, '-', '_', '.'; no '--' or '..';
    at most 96 characters a part), else HumanizerError."""
    text = str(repo_id or "").strip()
    parts = text.split("/")
    ok = (len(parts) == 2 and all(REPO_PART.match(p) and len(p) <= 96 and not p.endswith((".", "-"))
                                  for p in parts)
          and "--" not in text and ".." not in text and not parts[1].endswith(".git"))
    if not ok:
        raise HumanizerError(
            f"'{text}' is not a valid Hugging Face repo id",
            "use OWNER/NAME, e.g. your-name/humanizer-smollm2: letters, digits, '-', '_' and '.', "
            "at most 96 characters each, no '--' or '..'",
        )
    return text


def bundle_files(bundle_dir) -> list[tuple[str, int]]:
    """(path relative to the bundle, bytes) of every file push would upload."""
    d = Path(bundle_dir).expanduser()
    if not d.exists():
        raise HumanizerError(f"no such bundle folder: {d}", "make one with `humanizer export`")
    if not d.is_dir():
        raise HumanizerError(f"{d} is a file, not a bundle folder", "make one with `humanizer export`")
    files = []
    for f in sorted(d.rglob("*")):
        rel = f.relative_to(d)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), f.stat().st_size))
    if not files:
        raise HumanizerError(f"nothing to upload: {d} is empty", "make a bundle with `humanizer export`")
    return files


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _is_network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "RequestError",
                         "ProxyError", "SSLError"}) or isinstance(e, OSError)


def _hub_error(e: BaseException, repo_id: str) -> HumanizerError | None:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    endpoint = _hub_endpoint()
    if isinstance(e, OfflineModeIsEnabled):
        return HumanizerError("the Hugging Face Hub is switched off (HF_HUB_OFFLINE is set)",
                              "unset HF_HUB_OFFLINE to push; --dry-run lists the files without the network")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status == 401:
            return HumanizerError("the Hugging Face Hub rejected the token (HTTP 401: invalid or expired)", LOGIN_HINT)
        if status == 403:
            return HumanizerError(
                f"the token may not write to '{repo_id}' (HTTP 403)",
                f"use a token with write access to the '{repo_id.split('/')[0]}' namespace; " + LOGIN_HINT)
        return HumanizerError(f"the Hugging Face Hub refused the push to '{repo_id}' (HTTP {status}): {first}",
                              "check the repo id and your access to it, then push again")
    if _is_network_error(e):
        return HumanizerError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({type(e).__name__}: {e})",
            "check the network connection (and HF_ENDPOINT or proxy settings), then push again; "
            "--dry-run lists the files without the network",
        )
    return None


def push_token(token: str | None = None) -> str:
    """The token a push will use (given, HF_TOKEN, or the stored login), checked before any
    network: HumanizerError when huggingface_hub is missing, the Hub is switched off, or
    there is no token."""
    try:
        import huggingface_hub
    except ImportError:
        raise HumanizerError("huggingface_hub is not installed", "pip install huggingface_hub") from None
    if _offline():
        raise HumanizerError("the Hugging Face Hub is switched off (HF_HUB_OFFLINE is set)",
                             "unset HF_HUB_OFFLINE to push; --dry-run lists the files without the network")
    token = token or huggingface_hub.get_token()
    if not token:
        raise HumanizerError("not logged in to the Hugging Face Hub: pushing needs a token with write access",
                             LOGIN_HINT)
    return token


def push(bundle_dir, repo_id, private: bool = False, dry_run: bool = False, token: str | None = None,
         run: Run = NullRun(), commit_message: str | None = None) -> PushResult:
    """Upload a bundle folder to the Hub model repo `repo_id` (created if missing). With
    dry_run, only list the files and sizes that would go, without any network."""
    repo_id = check_repo_id(repo_id)
    bundle = Path(bundle_dir).expanduser()
    files = bundle_files(bundle)
    total = sum(n for _, n in files)
    url = f"{_hub_endpoint().rstrip('/')}/{repo_id}"
    if not (bundle / "README.md").is_file():
        run.log(f"{bundle} has no README.md model card (a bundle from `humanizer export` has one)")
    if dry_run:
        try:
            from huggingface_hub import get_token

            found = bool(token or get_token())
        except ImportError:
            found = bool(token)
        for p, n in files:
            run.log(f"would upload {p} ({human_bytes(n)})")
        run.log(f"dry run: {len(files)} files, {human_bytes(total)} to {url} ({'private' if private else 'public'})"
                + ("" if found else "; note: no Hugging Face token found, a real push needs one"))
        return PushResult(repo_id, url, files, total, True, private, None, found)

    import huggingface_hub

    token = push_token(token)
    try:
        run.progress(0, 2, f"creating {repo_id}")
        repo_url = huggingface_hub.create_repo(repo_id, token=token, private=private, repo_type="model",
                                               exist_ok=True)
        run.progress(1, 2, f"uploading {len(files)} files ({human_bytes(total)})")
        commit = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(bundle), token=token, repo_type="model",
            commit_message=commit_message or f"Upload {bundle.name} with Humanizer Studio",
            ignore_patterns=HUB_IGNORE,
        )
    except HumanizerError:
        raise
    except Exception as e:  # noqa: BLE001 - mapped to a clear message, or re-raised
        err = _hub_error(e, repo_id)
        if err is None:
            raise
        raise err from None
    url = str(getattr(repo_url, "url", None) or url)
    commit_url = getattr(commit, "commit_url", None)
    run.progress(2, 2, f"pushed to {url}")
    run.artifact(url, kind="hub repo", repo_id=repo_id, private=private)
    return PushResult(repo_id, url, files, total, False, private, commit_url, True)
