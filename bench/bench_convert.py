"""Benchmark of `humanizer convert` (engine/convert/) against uniform quantization and
mlx-lm's dynamic_quant, on the embedded SmolLM2-135M.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
    .venv/bin/python bench/bench_convert.py --json out.json --budgets 3.5,4.5 \
        --candidates 2,3,4,6,8 --group-size 64

What is compared (all on the same float32 source: the embedded model is a 4-bit GGUF
import, dequantized to float32; every number is measured against that float model):

- float: the float32 source itself;
- ours: engine.convert.convert at each budget (its default Fisher-weighted clip rounding);
  the sensitivities are measured ONCE (by the first budget's convert) and the other
  budgets reuse them via `measurements=`;
- ours, allocation only: the same with rounding="minmax" (plain mx.quantize rounding, as
  uniform and dynamic_quant use), to show what the allocation alone gives
  (--no-allocation-only to skip);
- uniform: every quantizable layer (the tied embedding included) at one bit width,
  nn.quantize of the float16 weights, the width whose bpw is nearest the budget;
- dynamic_quant: mlx_lm.quant.dynamic_quant used as a library: estimate_sensitivities
  on OUR calibration tokens (the same samples convert measures with), then
  estimate_threshold for the same target bpw (on a float16 copy, so its
  compute_bits_per_weight counts floats at 16 bits as ours does), then quantize_model
  with its predicate. It only mixes two widths (low, high): by default the nearest
  candidate widths below and above the budget (--dq-pairs to change);
- optiq (`--peers optiq`): mlx-optiq's own CLI, `optiq convert --method static` by default
  (`--optiq-methods static,optiq` adds its exact per-layer KL sweep, far too slow on a
  CPU: see bench/README.md), in its own venv (bench/optiq_env.py, `--optiq-python` to
  override), on the float32 copy common.prepare_f32_model makes of the same model, with
  the same candidate widths and group size. Its --target-bpw counts differently from ours,
  so per budget it runs at its target as asked and at the targets whose outputs land
  nearest below / above the budget counted our way (bench/optiq_convert.py says how).

Every quantized model is evaluated dequantized to float32 (the same function as the
quantized kernels, which are slow on CPU) on the same held-out tokens: engine.convert's
default held-out text (engine/calibration_heldout.txt, not the calibration text), cut
exactly as convert cuts it. bpw is counted for every method the way convert counts it:
bits + 32/group_size per quantized weight, 16 for every other parameter, over all params;
for the saved outputs (ours, optiq) also from the bytes of their safetensors.

    .venv/bin/python bench/bench_convert.py --peers optiq --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (ROOT, HERE):  # engine, and the bench's own modules (common, optiq_convert)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def _ensure_openblas():
    if "openblas" in os.environ.get("LD_PRELOAD", "") or os.environ.get("HUMANIZER_NO_FAST_BLAS"):
        return
    from engine.blas import find_openblas

    lib = find_openblas()
    if lib:
        env = dict(os.environ, LD_PRELOAD=":".join(p for p in (lib, os.environ.get("LD_PRELOAD")) if p))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def count_bpw(model, total_params: int) -> float:
    """bits per weight counted as convert counts them."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    bits = 0
    seen = 0
    for _, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            n = m.weight.shape[0] * m.weight.shape[1] * 32 // m.bits
            bits += n * (m.bits + 32 / m.group_size)
            seen += n
            for k, v in tree_flatten(m.parameters()):
                if k not in ("weight", "scales", "biases"):
                    bits += v.size * 16
                    seen += v.size
        else:
            for _, v in tree_flatten(m.parameters()):
                bits += v.size * 16
                seen += v.size
    assert seen == total_params, (seen, total_params)
    return bits / total_params


def file_bpw(folder, total_params: int) -> float:
    """bits per weight as the saved weights really take them: every tensor's bytes in the
    model*.safetensors that mlx_lm.load reads (scales, biases and unquantized weights at
    their stored dtype; not our humanizer_rounding.safetensors sidecar)."""
    import mlx.core as mx

    files = Path(folder).glob("model*.safetensors")
    return 8 * sum(v.nbytes for f in files for v in mx.load(str(f)).values()) / total_params


def as_float32(model):
    import mlx.core as mx
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return model


def bits_hist(model) -> dict:
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    h = {}
    for _, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            n = m.weight.shape[0] * m.weight.shape[1] * 32 // m.bits
            h[str(m.bits)] = h.get(str(m.bits), 0) + n
    return h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budgets", default="3.5,4.5")
    ap.add_argument("--candidates", default="2,3,4,6,8")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dq-pairs", default="",
                    help="dynamic_quant (low-high) widths per budget, e.g. '3.5:2-4,4.5:4-6' "
                         "(default: nearest candidate widths below / above each budget)")
    ap.add_argument("--no-dynamic-quant", action="store_true")
    ap.add_argument("--no-allocation-only", action="store_true", help="skip the min/max-rounding rows of ours")
    ap.add_argument("--peers", default="", help="also run these products beside ours: 'optiq' (mlx-optiq's "
                    "`optiq convert`, in its own venv, bench/optiq_env.py)")
    ap.add_argument("--optiq-python", default=None, help="an interpreter with mlx-optiq (default: the bench's venv)")
    ap.add_argument("--optiq-methods", default="static",
                    help="optiq --method values to run: static (rule-based, seconds) and/or optiq (its exact "
                         "per-layer KL sweep: 210 layers x widths x --optiq-n-calibration forwards of 512 tokens)")
    ap.add_argument("--optiq-n-calibration", type=int, default=1, help="optiq --n-calibration (method optiq)")
    ap.add_argument("--optiq-reference", default="bf16", help="optiq --reference (method optiq)")
    ap.add_argument("--optiq-timeout", type=float, default=1500, help="seconds for one optiq convert")
    ap.add_argument("--cache-dir", type=Path, default=None, help="bench cache (default: common.default_cache_dir())")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="keep our converted folders here")
    args = ap.parse_args()
    _ensure_openblas()

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import load as mlx_load, quantize_model

    from engine import convert as C
    from engine.blas import blas_in_use
    from engine.adapters.layers import load_model
    from engine.models import resolve_model
    from engine.workspace import Workspace

    budgets = [float(b) for b in args.budgets.split(",")]
    cands = sorted(int(b) for b in args.candidates.split(","))
    gs = args.group_size
    load0 = os.getloadavg()
    ws = Workspace.open()
    model_dir = Path(resolve_model(args.model, ws))

    model, tok = load_model(model_dir, dequantize=True)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    total = C._total_params(model)

    # the same calibration samples convert measures with, the same held-out chunks it evaluates on
    docs, _ = C.load_calibration(None)
    calib = C.make_samples(C.tokenize_docs(docs, tok), args.samples, args.seq_len)
    held_stream = C.tokenize_docs(C.default_heldout(), tok)[: max(C.DEFAULT_HELDOUT_TOKENS, 2)]
    held_len = min(args.seq_len, 512)
    held = [held_stream[i:i + held_len] for i in range(0, len(held_stream), held_len)]
    held = [c for c in held if len(c) >= max(2, min(held_len, len(held_stream)) // 2)]

    def ppl(m) -> float:
        return C.heldout_eval(model, m, held)["ppl_result"]

    float_ppl = C.heldout_eval(model, model, held)["ppl_source"]
    rows = [{"method": "float32 source", "budget": None, "bpw": 32.0, "ppl": float_ppl, "increase_pct": 0.0}]
    print(f"float ppl {float_ppl:.4f} on {sum(len(c) - 1 for c in held)} held-out tokens", flush=True)

    def add(method, budget, bpw, p, **extra):
        r = {"method": method, "budget": budget, "bpw": bpw, "ppl": p,
             "increase_pct": 100 * (p / float_ppl - 1), **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)

    def evaluate(method, budget, folder, **extra):
        """A saved output, loaded with stock mlx_lm.load, counted and evaluated like every row."""
        q, _ = mlx_load(str(folder))
        bpw, hist = count_bpw(q, total), bits_hist(q)
        add(method, budget, bpw, ppl(as_float32(q)), file_bpw=file_bpw(folder, total), bits_params=hist, **extra)

    # ours ----------------------------------------------------------------------------------
    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    ours_timing = {}
    variants = [("ours", "clip")] + ([] if args.no_allocation_only else [("ours, allocation only", "minmax")])
    try:
        for label, rounding in variants:
            first_meta = None
            for b in budgets:
                out = tmp / f"{rounding}-{b:g}"
                t = time.perf_counter()
                res = C.convert(str(model_dir), out, target_bpw=b, candidate_bits=cands, group_size=gs,
                                samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                                measurements=first_meta, rounding=rounding, ws=ws)
                wall = time.perf_counter() - t
                s = res.summary
                if first_meta is None:
                    first_meta = out / C.META_FILE
                    ours_timing[rounding] = {"measure_seconds": s["measure_seconds"],
                                             "convert_wall_seconds": round(wall, 1),
                                             "loadavg_after": os.getloadavg()}
                meta = json.loads((out / C.META_FILE).read_text())
                kept = next(c for c in meta["method"]["selection"] if c["kept"])
                evaluate(label, b, out, convert_ppl=s.get("ppl_result"), measure_seconds=s["measure_seconds"],
                         convert_wall_seconds=round(wall, 1), reused=first_meta != out / C.META_FILE,
                         kappas=kept["kappas"], check_kl=kept["check_kl"],
                         candidates=len(meta["method"]["selection"]))
                if args.keep:
                    shutil.copytree(out, Path(args.keep) / out.name, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # uniform -------------------------------------------------------------------------------
    f16 = copy.deepcopy(model)
    f16.set_dtype(mx.float16)
    uni = {}
    for bits in cands:
        q = copy.deepcopy(f16)
        nn.quantize(q, group_size=gs, bits=bits)
        uni[bits] = (count_bpw(q, total), q)
    for b in budgets:
        bits = min(uni, key=lambda k: abs(uni[k][0] - b))
        bpw, q = uni[bits]
        add(f"uniform {bits}-bit g{gs}", b, bpw, ppl(as_float32(copy.deepcopy(q))))
    del uni

    # mlx-lm dynamic_quant --------------------------------------------------------------------
    dq_note = None
    if not args.no_dynamic_quant:
        try:
            from mlx_lm.quant.dynamic_quant import estimate_sensitivities, estimate_threshold

            pairs = {}
            for item in filter(None, args.dq_pairs.split(",")):
                k, v = item.split(":")
                lo, hi = v.split("-")
                pairs[float(k)] = (int(lo), int(hi))
            data = mx.array(calib)
            sens_cache = {}
            for b in budgets:
                if b in pairs:
                    lo, hi = pairs[b]
                else:
                    below = [c for c in cands if c + 32 / gs < b - 1e-9]
                    above = [c for c in cands if c + 32 / gs >= b - 1e-9]
                    lo, hi = (below[-1] if below else cands[0]), (above[0] if above else cands[-1])
                if (lo, hi) not in sens_cache:
                    t = time.perf_counter()
                    s = estimate_sensitivities(copy.deepcopy(model), data, lo, gs, hi, gs, batch_size=4)
                    sens_cache[(lo, hi)] = (dict(s), time.perf_counter() - t)
                sens, secs = sens_cache[(lo, hi)]
                thr = estimate_threshold(f16, sens, b, lo, gs, hi, gs)

                def pred(p, m, sens=sens, thr=thr, hi=hi):
                    if not hasattr(m, "to_quantized"):
                        return False
                    if sens[p] > thr:
                        return {"bits": hi, "group_size": gs}
                    return True

                q, _ = quantize_model(copy.deepcopy(f16), {}, group_size=gs, bits=lo, quant_predicate=pred)
                bpw = count_bpw(q, total)
                hist = bits_hist(q)
                add(f"dynamic_quant {lo}/{hi}-bit", b, bpw, ppl(as_float32(q)), sensitivity_seconds=round(secs, 1),
                    bits_params=hist)
        except Exception as e:  # report what ran
            dq_note = f"dynamic_quant failed: {type(e).__name__}: {e}"
            print(dq_note, flush=True)

    # mlx-optiq -------------------------------------------------------------------------------
    optiq_info = None
    if "optiq" in args.peers.split(","):
        from optiq_convert import run as run_optiq

        work = Path(tempfile.mkdtemp(prefix="bench-convert-optiq-"))
        try:
            optiq_info = run_optiq(args, budgets, cands, gs, work, evaluate)
        finally:
            if args.keep:
                shutil.copytree(work, Path(args.keep) / "optiq", dirs_exist_ok=True)
            shutil.rmtree(work, ignore_errors=True)

    # report --------------------------------------------------------------------------------
    print()
    print("| budget | method | bpw (ours counting) | bpw (bytes on disk) | held-out ppl | increase over float | wall s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        bud = "-" if r["budget"] is None else f"{r['budget']:g}"
        disk = f"{r['file_bpw']:.3f}" if "file_bpw" in r else "-"
        wall = r.get("convert_wall_seconds", "-")
        print(f"| {bud} | {r['method']} | {r['bpw']:.3f} | {disk} | {r['ppl']:.3f} | {r['increase_pct']:+.2f}% | {wall} |")
    for b in budgets if optiq_info else []:
        ours = next((r for r in rows if r["method"] == "ours" and r["budget"] == b), None)
        for r in (r for r in rows if r["method"].startswith("optiq") and r["budget"] == b and ours):
            print(f"{b:g}: ours/{r['method']} ppl-increase ratio {ours['increase_pct'] / r['increase_pct']:.3f} "
                  f"(ours {ours['bpw']:.3f} bpw, optiq {r['bpw']:.3f} bpw)")
    print()
    for rounding, t in ours_timing.items():
        print(f"ours ({rounding}): sensitivity measurement + allocation {t['measure_seconds']} s "
              f"(load average at start {load0[0]:.2f}, after {t['loadavg_after'][0]:.2f}, "
              f"{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable by this process)")
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "cpus_usable": sorted(os.sched_getaffinity(0)), "loadavg_start": load0,
                    "loadavg_end": os.getloadavg(), "blas": blas_in_use()},
        "model": str(model_dir), "params": total, "group_size": gs, "candidates": cands,
        "calibration_samples": len(calib), "seq_len": args.seq_len,
        "heldout_tokens": sum(len(c) - 1 for c in held), "float_ppl": float_ppl,
        "ours_timing": ours_timing, "rows": rows, "dynamic_quant_note": dq_note, "optiq": optiq_info,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
