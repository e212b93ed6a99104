"""The mlx-optiq side of bench_convert.py: `optiq convert` run through its own CLI, in its
own venv (bench/optiq_env.py), at bits per weight counted the way the bench counts ours.

Why the bench does not simply pass `--target-bpw B`: optiq's target counts only the code
bits of the Linear layers it measured (no scales/biases, and not the tied embedding, which
its quant predicate puts at the HIGHEST width the allocation uses). So `--target-bpw 4.5`
gives a 5.7-bpw model counted as the bench counts every other method. For each budget the
bench therefore runs optiq's own allocator (optimize_mixed_precision + make_quant_predicate,
on the same sensitivities its CLI will use) over a grid of targets, predicts the bpw of each
output counted our way, and then runs the CLI at the target whose output lands nearest at
or below the budget, and at the one nearest above (its bpw jumps: once one layer reaches
the top width the 28M-param embedding follows it), plus once at `--target-bpw B` as asked.
The prediction only picks the flag; every reported bpw is counted from the saved output.

Its source folder: the float32 copy common.prepare_f32_model makes (the same float32 weights
our convert starts from), seen through a folder whose config says torch_dtype float16: mlx-lm
does not cast at load, so optiq's calibration forwards run in float32 (as ours do), and
mlx_lm.convert writes float16 scales and unquantized weights (as ours does). With float32 in
the config it would write float32 scales/norms (more bytes than counted); with bfloat16
weights its forwards run MLX's half-precision CPU matmul, ~20x slower than float32 here.

    python bench/optiq_convert.py plan ...   # run by the optiq venv's interpreter: the planner

This module imports neither mlx nor optiq at the top: the bench parent imports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

METHOD_DIR = {"static": "static_mixed", "optiq": "optiq_mixed"}  # optiq's output sub-folder per --method
CHECKPOINT = "sensitivity_checkpoint.json"  # optiq resumes its sweep from this file in --output


def source_view(f32_dir: Path, cache_dir: Path) -> Path:
    """A folder with the float32 copy's files linked and config torch_dtype float16 (see above)."""
    view = cache_dir / f"{f32_dir.name}-optiq-src"
    view.mkdir(parents=True, exist_ok=True)
    for f in f32_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            link = view / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f.resolve())
    config = json.loads((f32_dir / "config.json").read_text())
    config["torch_dtype"] = "float16"
    (view / "config.json").write_text(json.dumps(config, indent=2))
    return view


def _env() -> dict:
    from common import _child_env

    return _child_env({"HF_HUB_OFFLINE": "1"})  # a local folder: nothing to fetch


def cli_convert(python, src: Path, out: Path, target: float, cands: list[int], gs: int, method: str,
                n_calibration: int, reference: str, timeout: float, checkpoint: Path | None = None) -> dict:
    """One `optiq convert` (its CLI, --skip-baselines: no uniform/static by-products).
    `checkpoint`: a sensitivity sweep to resume from (optiq's own mechanism), so the later
    budgets reuse the first sweep as ours reuse their measurements."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if checkpoint is not None:
        shutil.copy(checkpoint, out / CHECKPOINT)
    cmd = [str(python), __file__, "cli", "convert", str(src), "--method", method, "--target-bpw", f"{target:g}",
           "--candidate-bits", ",".join(map(str, cands)), "--group-size", str(gs), "--skip-baselines",
           "-o", str(out)]
    if method == "optiq":
        cmd += ["--n-calibration", str(n_calibration), "--reference", reference]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
        rc, log = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out_so_far = e.stdout or ""
        rc, log = "timeout", out_so_far.decode(errors="replace") if isinstance(out_so_far, bytes) else out_so_far
    wall = time.perf_counter() - t
    (out.parent / f"{out.name}.log").write_text(log)
    res = {"command": " ".join(cmd), "wall_seconds": round(wall, 1), "rc": rc, "folder": str(out / METHOD_DIR[method])}
    m = re.search(r"\[exact\] done in ([\d.]+)s", log)
    if m:
        res["sweep_seconds"] = float(m.group(1))
    if rc != 0:
        res["error"] = f"optiq convert exited {rc}: {log.strip()[-1500:]}"
    return res


def plan_targets(python, src: Path, sens: str, cands: list[int], gs: int, budgets: list[float]) -> dict:
    """{budget: {"below": (target, predicted bpw) | None, "above": ...}} from this file's planner,
    run by optiq's interpreter. `sens`: "static", or a sweep checkpoint optiq wrote."""
    cmd = [str(python), __file__, "plan", "--model", str(src), "--sens", sens, "--candidates",
           ",".join(map(str, cands)), "--group-size", str(gs), "--budgets", ",".join(map(str, budgets))]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"optiq planner failed: {p.stderr.strip()[-1500:]}")
    return {float(k): v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}


def run(args, budgets: list[float], cands: list[int], gs: int, work: Path, evaluate, log=print) -> dict:
    """Every optiq row of the bench: per --optiq-methods value, per budget, the CLI at its target
    as asked, then at the planned targets nearest below and above the budget (our counting);
    `evaluate(label, budget, folder, **extra)` loads, counts and evaluates each output."""
    from common import default_cache_dir, prepare_f32_model
    from optiq_env import ensure_optiq_python, optiq_versions

    cache = Path(args.cache_dir or default_cache_dir())
    python = ensure_optiq_python(cache, args.optiq_python, log=log)
    _, f32 = prepare_f32_model(args.model, cache, log=log)
    src = source_view(f32, cache)
    info = {"python": str(python), "versions": optiq_versions(python), "source": str(src), "runs": []}
    log(f"optiq {info['versions']}: source {src}")

    def one(method, label, budget, target, checkpoint=None, **extra):
        out = work / f"optiq-{method}-{budget:g}-{label.replace(' ', '-')}"
        r = cli_convert(python, src, out, target, cands, gs, method, args.optiq_n_calibration,
                        args.optiq_reference, args.optiq_timeout, checkpoint)
        info["runs"].append({"method": method, "budget": budget, "target": target, **r, **extra})
        log(f"  optiq --method {method} --target-bpw {target:g}: {r['wall_seconds']} s"
            + (f"  {r['error']}" if "error" in r else ""))
        if "error" not in r:
            evaluate(f"optiq {method}, {label}", budget, r["folder"], optiq_target_bpw=target,
                     convert_wall_seconds=r["wall_seconds"], **{k: r[k] for k in ("sweep_seconds",) if k in r},
                     **extra)
        return r

    for method in args.optiq_methods.split(","):
        sens, checkpoint = "static", None
        first = one(method, "as asked", budgets[0], budgets[0])
        if method == "optiq":  # the sweep is done once; later runs resume from its checkpoint
            checkpoint = Path(first["folder"]).parent / CHECKPOINT
            if "error" in first or not checkpoint.is_file():
                info["runs"][-1]["note"] = "no finished sweep: the other budgets are not run"
                continue
            sens = str(checkpoint)
        for b in budgets[1:]:
            one(method, "as asked", b, b, checkpoint)
        plan = plan_targets(python, src, sens, cands, gs, budgets)
        info.setdefault("plans", {})[method] = plan
        for b in budgets:
            for side in ("below", "above"):
                if plan[b][side]:
                    target, predicted = plan[b][side]
                    one(method, f"nearest {side}", b, target, checkpoint, predicted_bpw=predicted)
    return info


# ----------------------------------------------------------------- run by the optiq venv


def _mlx_lm_compat() -> bool:
    """mlx-optiq 0.7.7 with mlx-lm 0.32 (inside its declared mlx-lm>=0.31.3,<0.33): its
    convert wraps mlx_lm.convert.quantize_model (optiq/backends/mlx_backend.py,
    _requantize_prequantized) and calls the original with quant_predicate as the 6th
    POSITIONAL argument, which mlx-lm 0.32 made `global_scale`. The allocation is then
    dropped silently: every `optiq convert` writes uniform 4-bit (seen in this bench).
    Wrapped here, under optiq's wrapper, a callable arriving as global_scale goes back to
    quant_predicate; nothing else changes. Returns whether the wrap was needed."""
    import importlib
    import inspect

    mc = importlib.import_module("mlx_lm.convert")  # the submodule (the package attribute is the function)
    names = list(inspect.signature(mc.quantize_model).parameters)
    if names[5:6] != ["global_scale"]:
        return False
    orig = mc.quantize_model

    def quantize_model(model, config, group_size=None, bits=None, mode="affine", global_scale=False, *a, **kw):
        if callable(global_scale):
            kw["quant_predicate"], global_scale = global_scale, False
        return orig(model, config, group_size, bits, mode, global_scale, *a, **kw)

    mc.quantize_model = quantize_model
    return True


def _cli(argv: list[str]) -> int:
    """optiq's own console entry (optiq.cli:cli) with the compat wrap above."""
    if _mlx_lm_compat():
        print("[bench] mlx-lm quantize_model takes global_scale 6th: quant_predicate passed back by keyword")
    from optiq.cli import cli

    sys.argv = ["optiq", *argv]
    return cli()


# ----------------------------------------------------------------- the planner (optiq venv)


def _plan(model_dir: str, sens_src: str, cands: list[int], gs: int, budgets: list[float]) -> dict:
    import contextlib
    import io

    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model
    from optiq.core.optimizer import make_quant_predicate, optimize_mixed_precision
    from optiq.core.sensitivity import SensitivityResult, analyze_sensitivity_static

    model, _ = load_model(Path(model_dir), lazy=True, strict=False)  # as optiq loads it; shapes only
    quiet = contextlib.redirect_stdout(io.StringIO())
    if sens_src == "static":
        with quiet:
            sens = analyze_sensitivity_static(model, candidate_bits=cands, group_size=gs)
    else:
        sens = [SensitivityResult.from_dict(d) for d in json.loads(Path(sens_src).read_text())]
    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    total = sum(v.size for _, v in tree_flatten(model.parameters()))

    def bpw_ours(target: float) -> float:
        """The output's bpw as bench_convert.count_bpw counts it (bits + 32/gs per quantized
        weight, 16 for every other parameter), for the layers mlx_lm.convert will quantize."""
        with contextlib.redirect_stdout(io.StringIO()):  # the allocator prints a summary per call
            pred = make_quant_predicate(optimize_mixed_precision(sens, target_bpw=target, candidate_bits=cands,
                                                                 group_size=gs))
        bits = 0.0
        for path, m in leaves:
            n = sum(v.size for _, v in tree_flatten(m.parameters()))
            q = pred(path, m) if hasattr(m, "to_quantized") and m.weight.shape[-1] % gs == 0 else False
            w = m.weight.size if q else 0
            bits += w * (q["bits"] + 32 / gs if q else 0) + (n - w) * 16
        return bits / total

    grid = [round(cands[0] + i * 0.01, 2) for i in range(int((cands[-1] - cands[0]) / 0.01) + 1)]
    points = [(t, bpw_ours(t)) for t in grid]
    plan = {}
    for b in budgets:
        below = [p for p in points if p[1] <= b + 1e-9]
        above = [p for p in points if p[1] > b + 1e-9]
        plan[b] = {"below": max(below, key=lambda p: (p[1], -p[0])) if below else None,
                   "above": min(above, key=lambda p: (p[1], p[0])) if above else None}
    return plan


if __name__ == "__main__":
    import argparse

    if sys.argv[1:2] == ["cli"]:
        raise SystemExit(_cli(sys.argv[2:]))
    ap = argparse.ArgumentParser(description="optiq target planner (run by the optiq venv)")
    ap.add_argument("what", choices=["plan"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sens", default="static")
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--budgets", required=True)
    a = ap.parse_args()
    out = _plan(a.model, a.sens, [int(c) for c in a.candidates.split(",")], a.group_size,
                [float(b) for b in a.budgets.split(",")])
    print(json.dumps(out))
