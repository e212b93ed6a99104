"""MLX on Linux CPU: bundled reference BLAS vs preloaded OpenBLAS, side by side.

    python bench/bench_blas.py [--json out.json] [--sizes 512,1024,2048]

Runs the same measurements twice, each in a fresh subprocess: once with
OpenBLAS preloaded (the fast path `humanizer` takes, engine.blas) and once on
the BLAS bundled with `mlx[cpu]`. Measures float32 matmul GFLOP/s at a few
sizes and one float32 LoRA training step on a small llama with SmolLM2-135M
sized layers (hidden 576, 9 heads / 3 KV heads, MLP 1536), then prints a table
with the fast/slow ratio. The slow path runs fewer repetitions so the whole
bench stays around two minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from engine.blas import blas_in_use, fast_blas_env, find_openblas  # noqa: E402

SIZES = (512, 1024, 2048)
# (warmup, timed) LoRA steps per mode
LORA_STEPS = {"fast": (2, 10), "slow": (1, 3)}
MATMUL_MIN_SECONDS = {"fast": 0.5, "slow": 0.3}

MODEL = dict(
    model_type="llama",
    hidden_size=576,
    num_hidden_layers=6,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    rms_norm_eps=1e-5,
    vocab_size=4096,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
BATCH, SEQ = 4, 128
LORA = {
    "rank": 8,
    "scale": 20.0,
    "dropout": 0.0,
    "keys": [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ],
}


# ---------------------------------------------------------------- child side

def _matmul(mode: str, sizes) -> list[dict]:
    import mlx.core as mx

    out = []
    for n in sizes:
        mx.random.seed(0)
        a = mx.random.normal((n, n), dtype=mx.float32)
        b = mx.random.normal((n, n), dtype=mx.float32)
        mx.eval(a, b)
        mx.eval(a @ b)  # warmup
        reps, t0 = 0, time.perf_counter()
        while True:
            mx.eval(a @ b)
            reps += 1
            elapsed = time.perf_counter() - t0
            if reps >= 2 and elapsed >= MATMUL_MIN_SECONDS[mode]:
                break
        sec = elapsed / reps
        out.append({"n": n, "reps": reps, "seconds": sec, "gflops": 2 * n**3 / sec / 1e9})
    return out


def _lora(mode: str) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model = Model(ModelArgs(**MODEL))
    model.freeze()
    linear_to_lora_layers(model, MODEL["num_hidden_layers"], LORA)
    mx.eval(model.parameters())
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    total = sum(v.size for _, v in tree_flatten(model.parameters()))

    tokens = mx.random.randint(0, MODEL["vocab_size"], (BATCH, SEQ + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def loss_fn(m, x, y):
        logits = m(x)
        return nn.losses.cross_entropy(logits.astype(mx.float32), y).mean()

    opt = optim.AdamW(learning_rate=1e-4)
    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step():
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        mx.eval(loss, model.parameters(), opt.state)
        return loss.item()

    warm, timed = LORA_STEPS[mode]
    for _ in range(warm):
        step()
    times, losses = [], []
    for _ in range(timed):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    return {
        "layers": MODEL["num_hidden_layers"],
        "hidden": MODEL["hidden_size"],
        "vocab": MODEL["vocab_size"],
        "batch": BATCH,
        "seq": SEQ,
        "params": total,
        "trainable": trainable,
        "steps": timed,
        "step_seconds": sec,
        "min_step_seconds": min(times),
        "tokens_per_s": BATCH * SEQ / sec,
        "loss": losses[-1],
    }


def child(mode: str, sizes) -> dict:
    t0 = time.perf_counter()
    import mlx.core as mx

    res = {"mode": mode, "mlx": mx.__version__, "blas": blas_in_use()}
    res["matmul"] = _matmul(mode, sizes)
    res["lora"] = _lora(mode)
    res["blas_after"] = blas_in_use()["name"]
    res["wall_s"] = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------- parent side

def run_mode(mode: str, sizes) -> dict:
    env = fast_blas_env(mode == "fast")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode,
           "--sizes", ",".join(map(str, sizes))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{mode} child failed (exit {proc.returncode})")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    res = json.loads(lines[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def _ratio(a, b):
    return a / b if a and b else float("nan")


def table(fast: dict, slow: dict) -> str:
    rows = [("measure", "fast (OpenBLAS)", "slow (bundled)", "fast/slow")]
    for f, s in zip(fast["matmul"], slow["matmul"]):
        rows.append((f"matmul f32 {f['n']}x{f['n']}  GFLOP/s",
                     f"{f['gflops']:.1f}", f"{s['gflops']:.1f}",
                     f"{_ratio(f['gflops'], s['gflops']):.1f}x"))
    fl, sl = fast["lora"], slow["lora"]
    rows.append(("LoRA step f32  s/step", f"{fl['step_seconds']:.3f}", f"{sl['step_seconds']:.3f}",
                 f"{_ratio(sl['step_seconds'], fl['step_seconds']):.1f}x"))
    rows.append(("LoRA step f32  tokens/s", f"{fl['tokens_per_s']:.0f}", f"{sl['tokens_per_s']:.0f}",
                 f"{_ratio(fl['tokens_per_s'], sl['tokens_per_s']):.1f}x"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join([r[0].ljust(w[0])] + [c.rjust(w[j + 1]) for j, c in enumerate(r[1:])]))
        if i == 0:
            out.append("  ".join("-" * x for x in w))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="also write all results to this JSON file")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="matmul sizes (default %(default)s)")
    ap.add_argument("--child", choices=("fast", "slow"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    if args.child:
        print(json.dumps(child(args.child, sizes)), flush=True)
        return 0

    if not sys.platform.startswith("linux"):
        print("This bench compares BLAS libraries for mlx[cpu] on Linux; nothing to compare here.")
        return 0
    lib = find_openblas()
    if lib is None:
        print("OpenBLAS not found (sudo apt-get install libopenblas0-pthread); only the slow path runs.")
    t0 = time.perf_counter()
    fast = run_mode("fast", sizes) if lib else None
    slow = run_mode("slow", sizes)
    total = time.perf_counter() - t0

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {cpu}",
        "python": platform.python_version(),
        "mlx": slow["mlx"],
        "openblas": lib,
        "total_s": total,
    }
    print(f"{meta['date']}  {meta['machine']}  mlx {meta['mlx']}  python {meta['python']}")
    print(f"slow: {slow['blas']['name']}  {slow['blas']['path']}")
    if fast:
        print(f"fast: {fast['blas']['name']}  {fast['blas']['path']}")
        if fast["blas"]["name"] != "OpenBLAS":
            print("warning: the fast child did not end up on OpenBLAS")
        fl = fast["lora"]
        print(f"LoRA model: llama {fl['layers']} layers, hidden {fl['hidden']}, vocab {fl['vocab']}, "
              f"{fl['params'] / 1e6:.1f}M params ({fl['trainable'] / 1e6:.2f}M trainable), "
              f"batch {fl['batch']} x seq {fl['seq']}; steps timed fast {fl['steps']}, "
              f"slow {slow['lora']['steps']}")
        print()
        print(table(fast, slow))
    else:
        for m in slow["matmul"]:
            print(f"matmul {m['n']}: {m['gflops']:.1f} GFLOP/s")
        print(f"LoRA step: {slow['lora']['step_seconds']:.3f} s, {slow['lora']['tokens_per_s']:.0f} tok/s")
    print(f"\ntotal {total:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "fast": fast, "slow": slow}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
