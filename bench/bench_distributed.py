"""Data-parallel SFT on MLX's distributed engine: 1 process vs 2 local processes (ring backend
over loopback), on the embedded model, and a paper estimate for N Macs.

    .venv/bin/python bench/bench_distributed.py [--json out.json] [--batch-size 8] [--seq-len 256]
        [--warmup 2] [--steps 6] [--preset small]

Both runs are `engine.train.train(..., method="sft")`, the code `humanizer lora train` runs,
with the same global batch (--batch-size rows of --seq-len tokens; two ranks take half each),
the same LoRA, data, seed and model (SmolLM2-135M dequantized once to float32, as bench_sft
does). A step's time is wall-clock between the trainer's per-step progress events on rank 0
(batch building, forward, backward, the gradient all-reduce and the update are all in);
--warmup steps are left out; tokens/s = global batch tokens / the median step.

Also measured, inside the 2-rank run after training: the time of one all-reduce of a tree
shaped like the LoRA gradients (what every step sends), and of one 32 times its size, which
give the link's bandwidth and per-message latency on this machine. From those:

- scaling efficiency = (tokens/s with 2) / (2 x tokens/s with 1);
- communication share of a 2-rank step = all-reduce time / step time;
- a paper estimate for N Macs: step(N) = compute(1) / N + allreduce(N), where compute(1) is
  the 1-process step and a ring all-reduce of S bytes costs 2(N-1)/N x S / bandwidth +
  2(N-1) x latency; shown with the loopback figures measured here and with a stated link
  bandwidth (Thunderbolt / 10 GbE) in place of loopback's.

Each rank's BLAS gets cores / ranks threads (OPENBLAS_NUM_THREADS), so the two runs use the
same cores. On a 2-core machine two processes share the cores the one process had, so the gain
is small or negative: the figures say how much, and why.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
BIG = 32  # the second all-reduce sends this many times the gradients: bandwidth, not latency, shows
LINKS_GBPS = {"Thunderbolt 5 (about 8 GB/s usable)": 8.0, "Thunderbolt 4 (about 3 GB/s)": 3.0,
              "10 GbE (about 1.1 GB/s)": 1.1}


# ------------------------------------------------------------------------ child (one rank)


def _allreduce_seconds(tree: list, w, repeats: int = 5) -> float:
    import mlx.core as mx

    from engine.distributed.world import all_sum

    times = []
    for _ in range(repeats):
        mx.eval(all_sum(mx.zeros(1), w))  # line the ranks up first
        t0 = time.perf_counter()
        mx.eval(all_sum(tree, w))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(spec_path: str, out_path: str) -> None:
    import mlx.core as mx

    from engine.data import Example
    from engine.distributed.world import all_sum, world
    from engine.events import NullRun
    from engine.train import train
    from types import SimpleNamespace

    spec = json.loads(Path(spec_path).read_text())
    s, w = spec["settings"], world()
    rows = json.loads(Path(spec["data"]).read_text())
    ds = SimpleNamespace(method="sft", source="bench (generated chat rows)", valid=[],
                         train=[Example(r["tokens"], r["prompt_len"], "bench", i + 1) for i, r in enumerate(rows)])
    stamps: list[tuple[int, float]] = []
    losses: list[float] = []

    def listener(ev):
        if ev["type"] == "progress" and str(ev.get("message") or "").startswith("step "):
            stamps.append((ev["step"], time.perf_counter()))
        elif ev["type"] == "metric":
            losses.append(ev["values"]["loss"])

    out = Path(spec["work"]) / f"adapter-{w.size}"
    train(spec["model_dir"], ds, "sft", out, preset=s["preset"], iters=s["warmup"] + s["steps"],
          rank=s["rank"], scale=s["scale"], dropout=0.0, num_layers=s["num_layers"], keys=s["keys"],
          learning_rate=s["learning_rate"], batch_size=s["batch_size"], max_seq_length=s["seq_len"],
          val_batches=0, steps_per_eval=10**9, steps_per_report=1, steps_per_save=10**9, seed=0,
          run=NullRun(listeners=[listener]))
    mx.eval(all_sum(mx.zeros(1), w))  # rank 0 has written the adapter
    shapes = [v.shape for v in mx.load(str(out / "adapters.safetensors")).values()]
    grads = [mx.zeros(sh, dtype=mx.float32) for sh in shapes]
    size_bytes = sum(g.size * 4 for g in grads)
    big = [mx.zeros((g.size * BIG,), dtype=mx.float32) for g in grads]
    result = {
        "ranks": w.size,
        "steps": [[stamps[i][0], stamps[i][1] - stamps[i - 1][1]] for i in range(1, len(stamps))],
        "losses": losses,
        "gradient_bytes": size_bytes,
        "allreduce_s": _allreduce_seconds(grads, w) if w.size > 1 else 0.0,
        "allreduce_big_s": _allreduce_seconds(big, w) if w.size > 1 else 0.0,
        "big_bytes": sum(x.size * 4 for x in big),
        "memory": common.child_memory(),
    }
    if w.writer:
        Path(out_path).write_text(json.dumps(result))


# ------------------------------------------------------------------------ parent


def run_side(nproc: int, spec_path: Path, work: Path, timeout: float) -> dict:
    out = work / f"result-{nproc}.json"
    cmd = [sys.executable, str(SCRIPT), "--child", "--spec", str(spec_path), "--out", str(out)]
    if nproc > 1:
        from engine.distributed.launch import free_ports

        launcher = Path(sys.executable).parent / "mlx.launch"
        cmd = [str(launcher), "--backend", "ring", "-n", str(nproc), "--starting-port", str(free_ports(nproc)),
               "--", *cmd]
    # the machine's cores are shared out: each rank's BLAS gets cores / ranks threads, so two
    # ranks do not run four threads on two cores
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    env = {**common._child_env(), "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": threads,
           "OMP_NUM_THREADS": threads}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"the {nproc}-process run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def ring_seconds(n: int, size_bytes: float, bandwidth: float, latency: float) -> float:
    """A ring all-reduce of size_bytes over n hosts: 2(n-1)/n of it crosses each link, in
    2(n-1) messages."""
    return 0.0 if n == 1 else 2 * (n - 1) / n * size_bytes / bandwidth + 2 * (n - 1) * latency


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write every number to PATH")
    ap.add_argument("--model", default=common.DEFAULT_MODEL)
    ap.add_argument("--cache-dir", type=Path, default=common.default_cache_dir())
    ap.add_argument("--preset", default="small", choices=["small", "medium", "large"])
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (rows per step over all ranks)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.spec, args.out)
        return 0

    info = common.machine_info()
    common.print_machine(info)
    _, model_dir = common.prepare_f32_model(args.model, args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    settings = {**common.lora_settings(argparse.Namespace(preset=args.preset, rank=None, scale=None, dropout=0.0,
                                                          num_layers=None, keys=None), "sft"),
                "batch_size": args.batch_size, "seq_len": args.seq_len, "warmup": args.warmup, "steps": args.steps}
    examples = common.tokenized(model_dir, common.chat_rows(args.rows, "sft"), "sft", work)
    data = work / "rows.json"
    data.write_text(json.dumps(common.sft_token_rows(examples, args.seq_len, args.prompt_len)))
    spec = work / "spec.json"
    spec.write_text(json.dumps({"settings": settings, "model_dir": str(model_dir), "data": str(data),
                                "work": str(work)}))

    sample = common.cpu_sample()
    one = run_side(1, spec, work, args.timeout)
    two = run_side(2, spec, work, args.timeout)
    others = common.other_cpus_since(sample)

    tokens = args.batch_size * args.seq_len
    st1, st2 = (common.step_stats(r["steps"], args.warmup) for r in (one, two))
    tps1, tps2 = tokens / st1["median_s"], tokens / st2["median_s"]
    ar, ar_big = two["allreduce_s"], two["allreduce_big_s"]
    size, big = two["gradient_bytes"], two["big_bytes"]
    # two points of t = S/bw + 2*latency (n = 2) give the link's bandwidth and latency
    bandwidth = (big - size) / max(ar_big - ar, 1e-9)
    latency = max((ar - size / bandwidth) / 2, 0.0)
    compute1 = st1["median_s"]
    estimate = {}
    for label, bw in [("loopback, measured here", bandwidth)] + [(k, v * 1e9) for k, v in LINKS_GBPS.items()]:
        estimate[label] = {n: tokens / (compute1 / n + ring_seconds(n, size, bw, latency)) for n in (1, 2, 4, 8)}
    res = {
        "machine": info, "settings": settings, "other_cpu_s": others,
        "one": {**st1, "tokens_per_s": tps1, "losses": one["losses"], "memory": one["memory"]},
        "two": {**st2, "tokens_per_s": tps2, "losses": two["losses"], "memory": two["memory"]},
        "speedup": tps2 / tps1, "scaling_efficiency": tps2 / (2 * tps1),
        "gradient_bytes": size, "allreduce_s": ar, "allreduce_big_s": ar_big, "big_bytes": big,
        "communication_share": ar / st2["median_s"],
        "loopback_bandwidth_gbps": bandwidth / 1e9, "latency_ms": latency * 1e3,
        "estimate_tokens_per_s": estimate,
        "max_loss_difference": max((abs(a - b) for a, b in zip(one["losses"], two["losses"])), default=None),
    }
    print(f"\nSFT, global batch {args.batch_size} x {args.seq_len} tokens, preset {args.preset}, "
          f"{args.steps} timed steps after {args.warmup}")
    print(common.table([
        ["1", f"{st1['median_s']:.3f}", f"{tps1:.0f}", f"{one['memory'].get('mlx_peak_gb', 0):.2f}"],
        ["2 (ring, loopback)", f"{st2['median_s']:.3f}", f"{tps2:.0f}", f"{two['memory'].get('mlx_peak_gb', 0):.2f}"],
    ], ["processes", "median s/step", "tokens/s", "peak MLX GB (rank 0)"]))
    print(f"speed-up {res['speedup']:.2f}x, scaling efficiency {res['scaling_efficiency']:.0%}; "
          f"gradients {size / 1e6:.1f} MB per step, all-reduce {ar * 1e3:.1f} ms = "
          f"{res['communication_share']:.0%} of a 2-rank step")
    print(f"loopback: {res['loopback_bandwidth_gbps']:.2f} GB/s, {res['latency_ms']:.3f} ms per message; "
          f"largest loss difference 1 vs 2 processes: {res['max_loss_difference']}")
    print("\npaper estimate, tokens/s for N Macs (compute(1)/N + ring all-reduce), each like this machine:")
    print(common.table([[k, *[f"{v[n]:.0f}" for n in (1, 2, 4, 8)]] for k, v in estimate.items()],
                       ["link", *[f"N={n}" for n in (1, 2, 4, 8)]]))
    if others is not None:
        print(f"other processes used {others:.1f} CPU-seconds during the runs")
    if args.json:
        common.write_result(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
