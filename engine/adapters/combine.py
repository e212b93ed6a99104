"""combine: an exact merge of two adapters into one plain adapter.

Per layer the A matrices side by side, the B matrices stacked (each scaled by its adapter's
scale), so rank = r_a + r_b and scale 1, and (x @ [A_a A_b]) @ [s_a B_a; s_b B_b] is exactly
s_a (x @ A_a) @ B_a + s_b (x @ A_b) @ B_b: the two stacked. A layer only one of them changes
gets zero blocks for the other. The result loads in stock mlx-lm."""

from __future__ import annotations

from pathlib import Path

from engine import adapters as A
from engine.adapters.common import check_output, natural_key, source_record
from engine.errors import HumanizerError
from engine.events import NullRun, Run


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
    check_output(out, [a.path, b.path], _is_combined, "combined adapter")
    if a.fingerprint == b.fingerprint:
        raise HumanizerError(f"'{a.path}' and '{b.path}' are the same adapter (identical weights)",
                             "combine two different adapters")
    base = _same_base(a, b, run)
    parent = _combined_parent(a, b, run)
    pa = _pairs(a, A.load_weights(a.path))
    pb = _pairs(b, A.load_weights(b.path))
    paths = sorted(set(pa) | set(pb), key=natural_key)
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
        "combined_from": [source_record(a), source_record(b)],
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
