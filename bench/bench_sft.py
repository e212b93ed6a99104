"""SFT LoRA training speed: our trainer (engine.train) vs mlx-lm's and mlx-optiq's LoRA trainers.

    .venv/bin/python bench/bench_sft.py [--json out.json] [--preset small|medium|large]
        [--optiq-preset small|large|...] [--peers peer,optiq] [--optiq-python PATH]
        [--batch-size 4] [--seq-len 256] [--warmup 2] [--steps 10]

Every side trains the same LoRA (rank, scale, dropout, blocks, keys from our --preset,
or the flags) on the same model (SmolLM2-135M, the embedded `smollm2-135m`,
dequantized once to float32 and loaded from the same folder by both), on the same
token rows (generated chat rows through our chat-template tokenization, every row cut
to exactly --seq-len tokens, the first --prompt-len of them the masked prompt), with
the same batch size. Every batch on both sides is --batch-size x --seq-len tokens,
no padding (max_seq_length = --seq-len, so both trainers build (B, L) arrays and feed
(B, L-1) to the model).

- ours: `engine.train.train(..., method="sft")`, the code the CLI runs, with an
  in-process listener on its events (`NullRun(listeners=[...])`);
- mlx-lm: `mlx_lm.tuner.utils.linear_to_lora_layers` + `mlx_lm.tuner.trainer.train`
  with `TrainingArgs` and its default loss and batch iterator (its compiled step),
  Adam (mlx_lm.lora's default optimizer), with a `TrainingCallback` (we do not go
  through `mlx_lm.lora.run()`, which replaces the callback).
- mlx-optiq (bench/optiq_trainer.py, under its own venv's interpreter):
  `optiq.lora.trainer.train_lora`, what `optiq lora train` runs: mlx-lm's training loop
  with its own loss, gradient checkpointing on and mx.compile off (its defaults), fed the
  bench's token rows; --optiq-preset NAME gives every side the LoRA shape of its
  `--preset NAME`.

Each side runs in its own fresh process with OpenBLAS preloaded (the same library for
both; each child reports the BLAS it mapped). The two processes run in lock-step: each
stops in its trainer's per-step report until the bench hands it the next step, and the
bench alternates single steps between them, so only one side computes at any moment
and a busy neighbour on the machine slows both sides alike (the CPU time all other
processes used during each side's steps is measured and printed).

One definition of speed for both: wall-clock seconds per step, from the moment a side
is handed the step to its trainer's report of that step (ours: its per-step progress
event; mlx-lm: `on_train_loss_report` with steps_per_report=1), so batch building,
forward, backward, update and per-step reporting are all in; --warmup steps left out;
tokens/s = batch x seq-len tokens per step / the median step time (the mean is shown
too). The two trainers' own tokens/s figures count differently (ours: every non-pad
token over the step's compute time; mlx-lm: only loss tokens over its train time) and
are listed for reference only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import optiq_trainer  # noqa: E402
from common import Baton, child_blas, child_memory, step_stats, table, write_result  # noqa: E402
from optiq_env import ensure_optiq_python, optiq_side  # noqa: E402

SCRIPT = Path(__file__).resolve()


# ------------------------------------------------------------------------ children


def _load_spec(path):
    spec = json.loads(Path(path).read_text())
    spec["rows"] = json.loads(Path(spec["data"]).read_text())
    return spec


def _count_params(adapter_file: Path) -> int:
    import mlx.core as mx

    return int(sum(v.size for v in mx.load(str(adapter_file)).values()))


def child_ours(spec: dict) -> dict:
    import mlx.core as mx

    from engine.data import Example
    from engine.events import NullRun
    from engine.train import train

    s = spec["settings"]
    ds = SimpleNamespace(
        method="sft", source="bench (generated chat rows)", valid=[],
        train=[Example(r["tokens"], r["prompt_len"], "bench", i + 1) for i, r in enumerate(spec["rows"])],
    )
    baton, metrics, peaks = Baton(s["warmup"] + s["steps"]), [], []

    def listener(ev):
        if ev["type"] == "progress" and str(ev.get("message") or "").startswith("step "):
            if ev["step"] == 0:
                peaks.append(mx.get_peak_memory())  # train() resets the peak here; keep what came before
            baton.step(ev["step"])
        elif ev["type"] == "metric":
            metrics.append(ev["values"])

    out = Path(tempfile.mkdtemp(prefix="ours-", dir=spec["work"])) / "adapter"
    train(
        spec["model_dir"], ds, "sft", out, preset=s["preset"], iters=s["warmup"] + s["steps"],
        rank=s["rank"], scale=s["scale"], dropout=s["dropout"], num_layers=s["num_layers"], keys=s["keys"],
        learning_rate=s["learning_rate"], batch_size=s["batch_size"], max_seq_length=s["seq_len"],
        val_batches=0, steps_per_eval=10**9, steps_per_report=1, steps_per_save=10**9, seed=s["seed"],
        grad_checkpoint=s.get("grad_checkpoint", False), run=NullRun(listeners=[listener]),
    )
    timed = metrics[s["warmup"]:]
    mem = child_memory()
    mem["mlx_peak_gb"] = max([mem["mlx_peak_gb"]] + [p / 1e9 for p in peaks])
    return {
        "side": "ours",
        "durations": baton.ordered(),
        "cpu_durations": baton.ordered_cpu(),
        "losses": [m["loss"] for m in metrics],
        "own_tokens_per_s": sum(m["tokens_per_second"] for m in timed) / max(len(timed), 1),
        "trainable_params": _count_params(out / "adapters.safetensors"),
        "blas": child_blas(),
        "memory": mem,
        "mlx": mx.__version__,
    }


def child_peer(spec: dict) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    s = spec["settings"]
    mx.random.seed(s["seed"])
    model, _ = load(spec["model_dir"])
    model.freeze()
    linear_to_lora_layers(model, s["num_layers"], {"rank": s["rank"], "scale": s["scale"],
                                                    "dropout": s["dropout"], "keys": s["keys"]})
    data = [(r["tokens"], r["prompt_len"]) for r in spec["rows"]]  # mlx-lm's (tokens, prompt offset) rows
    baton, reports = Baton(s["warmup"] + s["steps"]), []

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)
            baton.step(info["iteration"])

    work = Path(tempfile.mkdtemp(prefix="peer-", dir=spec["work"]))
    args = TrainingArgs(
        batch_size=s["batch_size"], iters=s["warmup"] + s["steps"], val_batches=0, steps_per_report=1,
        steps_per_eval=10**9, steps_per_save=10**9, max_seq_length=s["seq_len"],
        adapter_file=str(work / "adapters.safetensors"),
    )
    optimizer = optim.Adam(learning_rate=s["learning_rate"])
    train(model, optimizer, data, None, args=args, training_callback=Callback())
    timed = reports[s["warmup"]:]
    return {
        "side": "mlx-lm",
        "durations": baton.ordered(),
        "cpu_durations": baton.ordered_cpu(),
        "losses": [r["train_loss"] for r in reports],
        "own_tokens_per_s": sum(r["tokens_per_second"] for r in timed) / max(len(timed), 1),
        "trainable_params": _count_params(work / "adapters.safetensors"),
        "blas": child_blas(),
        "memory": child_memory(),
        "mlx": mx.__version__,
    }


# ------------------------------------------------------------------------ parent


def settings_from(args) -> dict:
    s = {
        **common.lora_settings(args, "sft"),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "prompt_len": args.prompt_len,
        "rows": args.rows,
        "warmup": args.warmup,
        "steps": args.steps,
        "seed": 0,
    }
    return s


def main(argv=None) -> int:
    ap = common.trainer_bench_args(__doc__.split("\n\n")[0], "mlx-lm", "where the float32 copy is kept",
                                   steps=10, timeout=1200, children=["ours", "peer", "optiq"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row (= max_seq_length)")
    ap.add_argument("--prompt-len", type=int, default=64, help="masked prompt tokens per row")
    ap.add_argument("--rows", type=int, default=32, help="training rows")
    optiq_trainer.add_args(ap)
    args = ap.parse_args(argv)

    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1 (mlx-lm's first step compiles)")
    if args.child:
        spec = _load_spec(args.spec)
        fn = {"ours": child_ours, "peer": child_peer, "optiq": optiq_trainer.child_sft}[args.child]
        write_result(args.out, fn(spec))
        return 0

    sides = optiq_trainer.sides(args, ap)
    names = {"ours": "ours", "peer": "mlx-lm", "optiq": "mlx-optiq"}
    info = common.machine_info()
    print("SFT LoRA training: ours (engine.train) vs "
          + ", ".join({"peer": "mlx-lm (mlx_lm.tuner.trainer.train)",
                       "optiq": "mlx-optiq (optiq.lora.trainer.train_lora)"}[p] for p in sides[1:]) + "\n")
    common.print_machine(info)
    pythons = optiq_side(sides, info, args.cache_dir, args.optiq_python)
    src, model_dir = common.prepare_f32_model(args.model, args.cache_dir)
    s = settings_from(args)
    optiq_py = pythons.get("optiq") or (ensure_optiq_python(args.cache_dir, args.optiq_python)
                                        if args.optiq_preset else None)
    optiq_shape = optiq_trainer.apply_preset(args, s, optiq_py)
    common.resolve_layout(model_dir, s)
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    examples = common.tokenized(model_dir, common.chat_rows(s["rows"], "sft"), "sft", work)
    rows = common.sft_token_rows(examples, s["seq_len"], s["prompt_len"])
    (work / "data.json").write_text(json.dumps(rows))
    spec = {"model_dir": str(model_dir), "data": str(work / "data.json"), "work": str(work), "settings": s}
    (work / "spec.json").write_text(json.dumps(spec))

    shape_from = f"optiq's --preset {args.optiq_preset}" if args.optiq_preset else f"our preset {s['preset']}"
    print(f"model     {src.name} dequantized to float32 ({model_dir}), {s['model_blocks']} blocks")
    print(f"LoRA      {shape_from}: rank {s['rank']}, scale {s['scale']}, dropout {s['dropout']}, "
          f"last {s['num_layers']} blocks, keys {','.join(s['keys'])} (every side)")
    print(f"data      {len(rows)} generated chat rows, each exactly {s['seq_len']} tokens "
          f"({s['prompt_len']} prompt, masked); batch {s['batch_size']} x {s['seq_len']} = "
          f"{s['batch_size'] * s['seq_len']} tokens/step, no padding")
    print(f"steps     {s['warmup']} warm-up + {s['steps']} timed per side, in lock-step (one step of each side in "
          f"turn: {', '.join(names[x] for x in sides)}); lr {s['learning_rate']} (ours: AdamW wd 0 + warmup/cosine; "
          "mlx-lm: Adam; mlx-optiq: AdamW)")
    if "optiq" in sides:
        print("optiq     its train_lora (= `optiq lora train`, method sft) driving mlx-lm's loop with its own loss, "
              "gradient checkpointing on and mx.compile off (its defaults); fed the bench's token rows")
    print("ours      gradient checkpointing " + ("on (--grad-checkpoint, like mlx-optiq's default)"
                                                 if s["grad_checkpoint"] else "off (our default; --grad-checkpoint turns it on)"))
    print("timing    wall s/step between per-step reports; tokens/s = tokens/step / median s/step (one definition)\n")

    print(f"running {len(sides)} sides, each in its own process (ours first) ...", flush=True)
    runs = common.run_lockstep(SCRIPT, work / "spec.json", work, sides=sides, timeout=args.timeout, pythons=pythons)
    for side, res in runs.items():
        if "error" in res:
            print(f"  {side} FAILED: {res['error']} (logs in {work})")
            return 1
        res["stats"] = step_stats(res["durations"], s["warmup"])
        st = res["stats"]
        print(f"  {res['side']:9s} {st['median_s']:.3f} s/step median (mean {st['mean_s']:.3f}); peak MLX "
              f"{res['memory']['mlx_peak_gb']:.2f} GB, RSS {res['memory']['max_rss_gb']:.2f} GB; BLAS "
              f"{res['blas']['name']}; other processes used {common.fmt_cpus(res['other_cpus'])} CPUs during its "
              "steps", flush=True)

    def agg(side):
        res = runs[side]
        st = res["stats"]
        cpu = step_stats(res["cpu_durations"], s["warmup"])["median_s"]
        med, mean = st["median_s"], st["mean_s"]
        return {
            "cpu_median_s": cpu,
            "median_s": med, "mean_s": mean, "min_s": st["min_s"], "max_s": st["max_s"], "steps_s": st["steps_s"],
            "tokens_per_s": tokens / med, "tokens_per_s_mean": tokens / mean, "loss_tokens_per_s": loss_tokens / med,
            "own_tokens_per_s": res["own_tokens_per_s"], "trainable_params": res["trainable_params"],
            "mlx_peak_gb": res["memory"]["mlx_peak_gb"], "max_rss_gb": res["memory"]["max_rss_gb"],
            "blas": res["blas"]["name"], "first_loss": res["losses"][0], "last_loss": res["losses"][-1],
            "other_cpus": res["other_cpus"],
        }

    tokens = s["batch_size"] * s["seq_len"]
    loss_tokens = s["batch_size"] * (s["seq_len"] - s["prompt_len"])
    a = {side: agg(side) for side in sides}
    ours, others = a["ours"], sides[1:]
    ratios = {o: {
        "tokens_per_s": a[o]["median_s"] / ours["median_s"], "by_mean": a[o]["mean_s"] / ours["mean_s"],
        "by_min": a[o]["min_s"] / ours["min_s"],
        "step_pairs": common.paired_ratio(runs[o]["durations"], runs["ours"]["durations"], s["warmup"]),
        "cpu": a[o]["cpu_median_s"] / ours["cpu_median_s"],
        "mlx_peak_ours_over_side": ours["mlx_peak_gb"] / a[o]["mlx_peak_gb"],
        "rss_ours_over_side": ours["max_rss_gb"] / a[o]["max_rss_gb"],
    } for o in others}

    def row(label, fmt, key, rkey=None):
        return ([label, fmt(ours[key])] + [fmt(a[o][key]) for o in others]
                + [f"{ratios[o][rkey]:.2f}x" if rkey else "-" for o in others])

    f3, f0 = "{:.3f}".format, "{:.0f}".format
    rows_t = [
        row("s/step, median", f3, "median_s", "tokens_per_s"),
        row("s/step, mean", f3, "mean_s", "by_mean"),
        row("s/step, min", f3, "min_s", "by_min"),
        ["step pairs (same step n, back to back), median", "", *[""] * len(others),
         *[f"{ratios[o]['step_pairs']:.2f}x" for o in others]],
        row("CPU s/step, median (process, all threads)", f3, "cpu_median_s", "cpu"),
        row(f"tokens/s ({tokens} tokens/step, median)", f0, "tokens_per_s", "tokens_per_s"),
        row("tokens/s (same, from mean)", f0, "tokens_per_s_mean", "by_mean"),
        row(f"loss tokens/s ({loss_tokens}/step, median)", f0, "loss_tokens_per_s", "tokens_per_s"),
        row("trainer's own tokens/s (*)", f0, "own_tokens_per_s"),
        row("peak memory, MLX (GB)", "{:.2f}".format, "mlx_peak_gb", "mlx_peak_ours_over_side"),
        row("peak RSS (GB)", "{:.2f}".format, "max_rss_gb", "rss_ours_over_side"),
        row("trainable parameters", "{:,}".format, "trainable_params"),
        ["loss, first -> last step", *[f"{a[x]['first_loss']:.3f} -> {a[x]['last_loss']:.3f}" for x in sides],
         *["-"] * len(others)],
    ]
    print()
    print(table(rows_t, ["measure", "ours", *[names[o] for o in others], *[f"{names[o]} vs ours" for o in others]]))
    print(f"\n{s['steps']} timed steps per side. Speed ratios = side s/step / our s/step (= our tokens/s / side "
          "tokens/s; higher: ours faster); memory ratios = ours / side (lower: ours smaller).")
    print("(*) each trainer's own figure, own definition: ours counts every non-pad token over the step's "
          "compute time; mlx-lm (and mlx-optiq, which reports through mlx-lm's loop) counts loss tokens over its "
          "train time. Not comparable; for reference only.")
    note = common.busy_note(runs.values(), info["cpus"])
    if note:
        print(note)
    for o in others:
        r = ratios[o]
        print(f"\nSFT tokens/s, ours/{names[o]}: {r['tokens_per_s']:.2f}x by median step time ({r['by_mean']:.2f}x by "
              f"mean, {r['step_pairs']:.2f}x by step pairs)  (goal >= 1.0x: "
              f"{'MET' if r['tokens_per_s'] >= 1.0 else 'MISSED'}); peak MLX memory ours/{names[o]} "
              f"{r['mlx_peak_ours_over_side']:.2f}x, RSS {r['rss_ours_over_side']:.2f}x")

    out = {
        "bench": "sft", "machine": info, "settings": s, "optiq_preset": args.optiq_preset,
        "optiq_preset_shape": optiq_shape, "sides": list(sides), "model_dir": str(model_dir), "source_model": str(src),
        "timing": "every side in its own process, single steps in turn (lock-step); wall-clock seconds "
                  "from the step's start token to the trainer's report of that step, after warm-up; "
                  "tokens/s = batch_size * seq_len / median s/step",
        "runs": runs, "ours": ours, "ratios": ratios, "goal": 1.0,
        "goal_met": {o: ratios[o]["tokens_per_s"] >= 1.0 for o in others},
    }
    if "peer" in sides:  # the names earlier JSON files used
        out.update({"mlx_lm": a["peer"], "ratio_tokens_per_s_ours_over_peer": ratios["peer"]["tokens_per_s"]})
    if "optiq" in sides:
        out["mlx_optiq"] = a["optiq"]
    common.save_json(args.json, out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
