"""DPO step time and peak memory: our stacked trainer vs mlx-lm-lora's and mlx-optiq's DPO trainers.

    .venv/bin/python bench/bench_dpo.py [--json out.json] [--preset small|medium|large]
        [--optiq-preset small|large|...] [--peers peer,optiq] [--optiq-python PATH]
        [--batch-size 4] [--prompt-len 128] [--response-len 128] [--warmup 2] [--steps 4]

The setting is the humanizer recipe's second stage: DPO that continues from an SFT
adapter, on SmolLM2-135M (the embedded `smollm2-135m`) dequantized once to float32.

- ours: `engine.train.train(..., method="dpo", mount_adapter=SFT)`: the SFT LoRA is
  mounted frozen, a trainable DPO LoRA stacked beside it on the same layers; the
  reference (base + SFT, the trainable term switched off) is ONE pass over the pairs
  before the first step, cached; each step is one forward/backward over the chosen and
  rejected rows together.
- mlx-lm-lora: `mlx_lm_lora.trainer.dpo_trainer.train_dpo`, called as a library, the way
  its own CLI runs it: the SFT adapter fused into the base (what its `--fuse` writes),
  the policy = that model + a trainable LoRA (`mlx_lm.tuner.utils.linear_to_lora_layers`,
  as its `from_pretrained` does), and a second copy of that model loaded as the
  reference model (its `load_reference_model`), whose log-probs it computes every step.
  On a CPU machine `train_dpo` reads `mx.device_info()["max_recommended_working_set_size"]`,
  which only Metal reports: the child wraps `mx.device_info` to add that key (the
  machine's RAM), a shim that changes nothing else (`mx.set_wired_limit` is a no-op on CPU).
- mlx-optiq (bench/optiq_trainer.py, under its own venv's interpreter):
  `optiq.lora.dpo.train_dpo` with mount_adapter, what `optiq lora train --method dpo
  --mount-adapter SFT` runs: frozen SFT + trainable DPO LoRA stacked on each layer; every
  step the reference (trainable scale 0, SFT on) forwards, then the policy
  forward/backward, with its gradient checkpointing. --optiq-preset NAME gives every side
  the LoRA shape of its `--preset NAME`.

Same model weights, same token pairs (generated chat rows through our chat-template
tokenization, cut to exactly --prompt-len prompt + --response-len response tokens, so
every sequence is prompt+response long and both trainers build the same (B, L) arrays
with no padding), same LoRA (rank, scale, dropout, blocks, keys from --preset), batch,
beta, sigmoid loss, steps. Each side runs in its own fresh process with OpenBLAS
preloaded; a process's peak memory is MLX's allocator peak over the whole process
(loading, reference pass, training) and the OS's max RSS (getrusage).

The two processes run in lock-step: each stops in its trainer's per-step report until
the bench hands it the next step, and the bench alternates single steps between them,
so only one side computes at any moment and a busy neighbour on the machine slows
both alike (the CPU time all other processes used during each side's steps is printed).
Step time: wall-clock from the moment a side is handed a step to its trainer's report of
it (ours: its per-step progress event; mlx-lm-lora: `on_train_loss_report` with
steps_per_report=1; mlx-optiq: its end-of-step buffer check, its metrics report being
4 extra forwards), after --warmup steps (mlx-lm-lora compiles its step on the first
one); the ratio uses the medians. Our one-off reference pass runs before the lock-step
(ours starts first and alone), is timed separately and is also shown amortized over one
epoch of the pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
PREP_VERSION = 1


def _load_spec(path):
    spec = json.loads(Path(path).read_text())
    spec["pairs"] = json.loads(Path(spec["data"]).read_text())
    return spec


# ------------------------------------------------------------------------ prep child


def child_prep(spec: dict) -> dict:
    """The SFT adapter (a short run of our trainer) and, for the peer, the base with that
    adapter fused in (mlx-lm's LoRALinear.fuse), both cached."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load

    from engine.data import Example
    from engine.events import NullRun
    from engine.train import train
    from engine.workspace import atomic_dir

    s = spec["settings"]
    sft_dir, fused_dir = Path(spec["sft_dir"]), Path(spec["fused_dir"])
    if not (sft_dir / "adapters.safetensors").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".sft-", dir=sft_dir.parent))
        ds = SimpleNamespace(method="sft", source="bench (generated chat rows)", valid=[], train=[
            Example(p["prompt"] + p["chosen"], len(p["prompt"]), "bench", i + 1) for i, p in enumerate(spec["pairs"])])
        train(spec["model_dir"], ds, "sft", tmp / "a", preset=s["preset"], iters=s["sft_iters"], rank=s["rank"],
              scale=s["scale"], dropout=s["dropout"], num_layers=s["num_layers"], keys=s["keys"],
              batch_size=s["batch_size"], max_seq_length=s["seq_len"], val_batches=0, steps_per_eval=10**9,
              steps_per_save=10**9, seed=s["seed"], learning_rate=1e-3, run=NullRun())
        shutil.rmtree(tmp / "a" / "checkpoints", ignore_errors=True)
        (tmp / "a" / ".train.lock").unlink(missing_ok=True)
        if sft_dir.exists():
            shutil.rmtree(sft_dir)
        os.replace(tmp / "a", sft_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    if not (fused_dir / "config.json").is_file():
        model, _ = load(spec["model_dir"], adapter_path=str(sft_dir))  # stock mlx-lm loads our SFT adapter
        fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]
        model.update_modules(tree_unflatten(fused))
        weights = dict(tree_flatten(model.parameters()))
        assert all(v.dtype == mx.float32 for v in weights.values())
        with atomic_dir(fused_dir) as tmp:
            mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
            for f in Path(spec["model_dir"]).iterdir():
                if f.suffix == ".json" and f.name != "bench_source.json":
                    shutil.copy(f, tmp / f.name)
    return {"side": "prep", "sft_dir": str(sft_dir), "fused_dir": str(fused_dir)}


# ------------------------------------------------------------------------ sides


def child_ours(spec: dict) -> dict:
    import mlx.core as mx

    from engine.data import Pair
    from engine.events import NullRun
    from engine.train import train

    s = spec["settings"]
    pairs = [Pair(p["prompt"], p["chosen"], p["rejected"], "bench", i + 1) for i, p in enumerate(spec["pairs"])]
    ds = SimpleNamespace(method="dpo", source="bench (generated pairs)", valid=[], train=pairs)
    baton, metrics, ref, peaks = Baton(s["warmup"] + s["steps"]), [], {}, []

    def listener(ev):
        if ev["type"] == "progress" and str(ev.get("message") or "").startswith("step "):
            if ev["step"] == 0:
                peaks.append(mx.get_peak_memory())  # train() resets the peak here; keep what came before
            baton.step(ev["step"])
        elif ev["type"] == "metric":
            metrics.append(ev["values"])
        elif ev["type"] == "log":
            if ev["message"].startswith("LoRA rank "):  # logged just before the reference pass starts
                ref["start"] = common.cpu_sample()
            m = re.match(r"reference log-probs for (\d+) pairs in ([\d.]+)s", ev["message"])
            if m:
                ref.update(pairs=int(m.group(1)), seconds=float(m.group(2)),
                           other_cpus=common.other_cpus_since(ref.pop("start", None)))

    out = Path(tempfile.mkdtemp(prefix="ours-", dir=spec["work"])) / "adapter"
    train(
        spec["model_dir"], ds, "dpo", out, preset=s["preset"], iters=s["warmup"] + s["steps"],
        mount_adapter=spec["sft_dir"], rank=s["rank"], scale=s["scale"], dropout=s["dropout"],
        num_layers=s["num_layers"], keys=s["keys"], learning_rate=s["learning_rate"], batch_size=s["batch_size"],
        max_seq_length=s["seq_len"], beta=s["beta"], dpo_loss="sigmoid", val_batches=0, steps_per_eval=10**9,
        steps_per_report=1, steps_per_save=10**9, seed=s["seed"], grad_checkpoint=s.get("grad_checkpoint", False),
        run=NullRun(listeners=[listener]),
    )
    mem = child_memory()
    mem["mlx_peak_gb"] = max([mem["mlx_peak_gb"]] + [p / 1e9 for p in peaks])
    cache = mx.load(str(out / "checkpoints" / "reference_logps.safetensors"))
    n = len(pairs)
    k = min(s["batch_size"], n)
    return {
        "side": "ours",
        "durations": baton.ordered(),
        "cpu_durations": baton.ordered_cpu(),
        "losses": [m["loss"] for m in metrics],
        "accuracy": [m["accuracy"] for m in metrics],
        "reference_pass": ref,
        "reference_logps": {"chosen": cache["sum"][:k].tolist(), "rejected": cache["sum"][n:n + k].tolist()},
        "trainable_params": int(sum(v.size for v in mx.load(str(out / "adapters.safetensors")).values())),
        "blas": child_blas(),
        "memory": mem,
    }


def _shim_device_info():
    """mlx-lm-lora's trainers call mx.set_wired_limit(mx.device_info()["max_recommended_working_set_size"]),
    a key only the Metal backend reports. Add it (the machine's RAM); nothing else changes."""
    import mlx.core as mx

    real = mx.device_info

    def device_info(*a, **k):
        info = dict(real(*a, **k))
        if "max_recommended_working_set_size" not in info:
            info["max_recommended_working_set_size"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return info

    mx.device_info = device_info
    return "mx.device_info wrapped to add max_recommended_working_set_size (CPU backend)"


def child_peer(spec: dict) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.utils import linear_to_lora_layers

    shim = _shim_device_info()
    from mlx_lm_lora.trainer.dpo_trainer import DPOTrainingArgs, get_token_scores, train_dpo

    s = spec["settings"]
    mx.random.seed(s["seed"])
    np.random.seed(s["seed"])
    model, _ = load(spec["fused_dir"])  # policy: base with the SFT adapter fused in ...
    model.freeze()
    linear_to_lora_layers(model, s["num_layers"], {"rank": s["rank"], "scale": s["scale"],
                                                    "dropout": s["dropout"], "keys": s["keys"]})
    ref_model, _ = load(spec["fused_dir"])  # ... and the reference: a second copy of it
    ref_model.freeze()
    data = [{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"],
             "chosen_prompt_length": len(p["prompt"]), "rejected_prompt_length": len(p["prompt"])}
            for p in spec["pairs"]]
    baton, reports = Baton(s["warmup"] + s["steps"]), []

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)
            baton.step(info["iteration"])

    work = Path(tempfile.mkdtemp(prefix="peer-", dir=spec["work"]))
    args = DPOTrainingArgs(
        batch_size=s["batch_size"], iters=s["warmup"] + s["steps"], val_batches=0, steps_per_report=1,
        steps_per_eval=10**9, steps_per_save=10**9, max_seq_length=s["seq_len"],
        adapter_file=str(work / "adapters.safetensors"), beta=s["beta"], loss_type="sigmoid",
    )
    optimizer = optim.Adam(learning_rate=s["learning_rate"])
    train_dpo(model, ref_model, optimizer, data, None, args=args, training_callback=Callback(), loss_type="sigmoid")
    mem = child_memory()  # before the check below

    # check: the peer's reference (fused base + SFT) scores the first pairs as our cache does
    k = min(s["batch_size"], len(data))
    ref = {}
    for which in ("chosen", "rejected"):
        toks = mx.array([d[which] for d in data[:k]])
        mask = np.zeros(toks.shape, np.float32)
        mask[:, data[0][f"{which}_prompt_length"]:] = 1.0
        ref[which] = get_token_scores(ref_model, toks, mx.array(mask)).sum(-1).tolist()
    return {
        "side": "mlx-lm-lora",
        "shim": shim,
        "durations": baton.ordered(),
        "cpu_durations": baton.ordered_cpu(),
        "losses": [r["train_loss"] for r in reports],
        "accuracy": [r["train_accuracies"] for r in reports],
        "reference_logps": ref,
        "trainable_params": int(sum(v.size for v in mx.load(str(work / "adapters.safetensors")).values())),
        "blas": child_blas(),
        "memory": mem,
    }


# ------------------------------------------------------------------------ parent


def settings_from(args) -> dict:
    return {
        **common.lora_settings(args, "dpo"),
        "beta": 0.1,
        "batch_size": args.batch_size,
        "prompt_len": args.prompt_len,
        "response_len": args.response_len,
        "seq_len": args.prompt_len + args.response_len,
        "pairs": args.pairs,
        "warmup": args.warmup,
        "steps": args.steps,
        "sft_iters": 2,
        "seed": 0,
    }


def main(argv=None) -> int:
    ap = common.trainer_bench_args(__doc__.split("\n\n")[0], "mlx-lm-lora",
                                   "where the float32 copy, the SFT adapter and the fused model are kept",
                                   steps=4, timeout=1500, children=["prep", "ours", "peer", "optiq"])
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--response-len", type=int, default=128, help="chosen and rejected tokens each")
    ap.add_argument("--pairs", type=int, default=8, help="training pairs (our reference pass covers them all)")
    optiq_trainer.add_args(ap)
    args = ap.parse_args(argv)

    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1 (mlx-lm-lora's first step compiles)")
    if args.child:
        spec = _load_spec(args.spec)
        fn = {"prep": child_prep, "ours": child_ours, "peer": child_peer, "optiq": optiq_trainer.child_dpo}[args.child]
        write_result(args.out, fn(spec))
        return 0

    sides = optiq_trainer.sides(args, ap)
    names = {"ours": "ours", "peer": "mlx-lm-lora", "optiq": "mlx-optiq"}
    info = common.machine_info()
    print("DPO (stacked on an SFT adapter): ours (engine.train) vs "
          + ", ".join({"peer": "mlx-lm-lora (dpo_trainer.train_dpo)",
                       "optiq": "mlx-optiq (optiq.lora.dpo.train_dpo)"}[p] for p in sides[1:]) + "\n")
    common.print_machine(info)
    if "peer" in sides and not info["versions"].get("mlx-lm-lora"):
        print("\nmlx-lm-lora is not installed: .venv/bin/pip install -e '.[bench]'  (or: pip install mlx-lm-lora)")
        return 2
    pythons = optiq_side(sides, info, args.cache_dir, args.optiq_python)
    src, model_dir = common.prepare_f32_model(args.model, args.cache_dir)
    s = settings_from(args)
    optiq_py = pythons.get("optiq") or (ensure_optiq_python(args.cache_dir, args.optiq_python)
                                        if args.optiq_preset else None)
    optiq_shape = optiq_trainer.apply_preset(args, s, optiq_py)
    common.resolve_layout(model_dir, s)
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    pairs = common.tokenized(model_dir, common.chat_rows(s["pairs"], "dpo"), "dpo", work)
    rows = common.dpo_token_rows(pairs, s["prompt_len"], s["response_len"])
    (work / "data.json").write_text(json.dumps(rows))
    key_src = json.dumps([PREP_VERSION, str(model_dir), (model_dir / "bench_source.json").read_text(), rows,
                          {k: s[k] for k in ("rank", "scale", "dropout", "num_layers", "keys", "sft_iters", "seq_len",
                                             "batch_size", "preset")}], sort_keys=True)
    prep_dir = args.cache_dir / f"dpo-{hashlib.sha256(key_src.encode()).hexdigest()[:12]}"
    prep_dir.mkdir(parents=True, exist_ok=True)
    spec = {"model_dir": str(model_dir), "data": str(work / "data.json"), "work": str(work), "settings": s,
            "sft_dir": str(prep_dir / "sft-adapter"), "fused_dir": str(prep_dir / "fused-model"),
            "optiq_mount_dir": str(prep_dir / "sft-adapter-optiq")}
    (work / "spec.json").write_text(json.dumps(spec))

    print(f"model     {src.name} dequantized to float32 ({model_dir}), {s['model_blocks']} blocks")
    shape_from = f"optiq's --preset {args.optiq_preset}" if args.optiq_preset else f"our preset {s['preset']}"
    print(f"LoRA      {shape_from}: rank {s['rank']}, scale {s['scale']}, dropout {s['dropout']}, "
          f"last {s['num_layers']} blocks, keys {','.join(s['keys'])} (the SFT adapter and the DPO LoRA alike, "
          "every side)")
    print(f"data      {len(rows)} generated pairs: prompt {s['prompt_len']} + chosen/rejected {s['response_len']} "
          f"tokens each; batch {s['batch_size']} pairs = {2 * s['batch_size']} x {s['seq_len']} tokens/step, no padding")
    print(f"DPO       sigmoid loss, beta {s['beta']}, lr {s['learning_rate']} "
          f"(ours: AdamW wd 0 + warmup/cosine; mlx-lm-lora: Adam, its CLI default; mlx-optiq: AdamW + its "
          "warmup/cosine)")
    print(f"steps     {s['warmup']} warm-up + {s['steps']} timed per side, in lock-step (one step of each side "
          f"in turn: {', '.join(names[x] for x in sides)})")
    if "peer" in sides:
        print("shim      mlx-lm-lora child: mx.device_info() wrapped to add 'max_recommended_working_set_size' "
              "(Metal-only key that train_dpo reads; the CPU backend lacks it)")
    if "optiq" in sides:
        print("optiq     its train_dpo with mount_adapter (= `optiq lora train --method dpo --mount-adapter SFT`), "
              "gradient checkpointing on (its default), the reference (trainable scale 0, SFT on) recomputed every "
              "step; step timed at its end-of-step buffer check (its per-step metrics report off)")
    print("ours      gradient checkpointing " + ("on (--grad-checkpoint, like mlx-optiq's default)"
                                                 if s["grad_checkpoint"] else "off (our default; --grad-checkpoint turns it on)"))
    print("timing    wall s/step from a side's turn to its end of step; each side in its own process "
          "(peak memory per process)\n")

    if not (Path(spec["fused_dir"]) / "config.json").is_file():
        print(f"preparing the SFT adapter (our trainer, {s['sft_iters']} steps) and its fused model for mlx-lm-lora "
              f"in {prep_dir} (once) ...", flush=True)
        res = common.run_child(SCRIPT, "prep", work / "spec.json", work / "prep.json", args.timeout)
        if "error" in res:
            print(f"  FAILED: {res['error']}")
            return 1
    if "optiq" in sides:
        optiq_trainer.mount_view(Path(spec["sft_dir"]), Path(spec["optiq_mount_dir"]), s["scale"])

    print(f"running {len(sides)} sides, each in its own process (ours first: its reference pass runs alone) ...",
          flush=True)
    runs = common.run_lockstep(SCRIPT, work / "spec.json", work, sides=sides, timeout=args.timeout, pythons=pythons)
    for side, res in runs.items():
        if "error" in res:
            print(f"  {side} FAILED: {res['error']} (logs in {work})")
            return 1
        res["stats"] = step_stats(res["durations"], s["warmup"])
        st = res["stats"]
        rp = res.get("reference_pass", {})
        extra = (f", reference pass {rp.get('seconds', float('nan')):.1f} s (other processes "
                 f"{common.fmt_cpus(rp.get('other_cpus'))} CPUs)" if side == "ours" else "")
        print(f"  {res['side']:11s} {st['median_s']:.2f} s/step median (mean {st['mean_s']:.2f}){extra}; peak MLX "
              f"{res['memory']['mlx_peak_gb']:.2f} GB, RSS {res['memory']['max_rss_gb']:.2f} GB; "
              f"BLAS {res['blas']['name']}; other processes used {common.fmt_cpus(res['other_cpus'])} CPUs "
              "during its steps", flush=True)

    def agg(side):
        res = runs[side]
        st = res["stats"]
        cpu = step_stats(res["cpu_durations"], s["warmup"])["median_s"]
        return {
            "cpu_median_s": cpu,
            "median_s": st["median_s"], "mean_s": st["mean_s"], "min_s": st["min_s"], "max_s": st["max_s"],
            "steps_s": st["steps_s"], "mlx_peak_gb": res["memory"]["mlx_peak_gb"],
            "max_rss_gb": res["memory"]["max_rss_gb"], "trainable_params": res["trainable_params"],
            "blas": res["blas"]["name"], "first_loss": res["losses"][0] if res["losses"] else None,
            "last_loss": res["losses"][-1] if res["losses"] else None,
            "reference_logps": res["reference_logps"], "other_cpus": res["other_cpus"],
        }

    a = {side: agg(side) for side in sides}
    ours, others = a["ours"], sides[1:]
    ref_s = runs["ours"]["reference_pass"]["seconds"]
    ref_per_step = ref_s * s["batch_size"] / s["pairs"]  # one epoch: each pair's reference computed once
    ours["reference_pass_s"], ours["reference_per_step_one_epoch_s"] = ref_s, ref_per_step
    ratios = {}
    for o in others:
        x = a[o]
        ratios[o] = {
            "step_time": x["median_s"] / ours["median_s"], "step_time_mean": x["mean_s"] / ours["mean_s"],
            "step_time_min": x["min_s"] / ours["min_s"],
            "step_pairs": common.paired_ratio(runs[o]["durations"], runs["ours"]["durations"], s["warmup"]),
            "cpu": x["cpu_median_s"] / ours["cpu_median_s"],
            "with_reference_one_epoch": x["median_s"] / (ours["median_s"] + ref_per_step),
            "mlx_peak_ours_over_side": ours["mlx_peak_gb"] / x["mlx_peak_gb"],
            "rss_ours_over_side": ours["max_rss_gb"] / x["max_rss_gb"],
            "reference_max_abs_diff": max(abs(p - q) for w in ("chosen", "rejected")
                                          for p, q in zip(ours["reference_logps"][w], x["reference_logps"][w])),
        }
    tokens = 2 * s["batch_size"] * s["seq_len"]

    def loss_cell(x):
        return "-" if x["first_loss"] is None else f"{x['first_loss']:.4f} -> {x['last_loss']:.4f}"

    def row(label, fmt, key, rkey=None):
        cells = [label, fmt(ours[key])] + [fmt(a[o][key]) for o in others]
        return cells + [f"{ratios[o][rkey]:.2f}x" if rkey else "-" for o in others]

    f2 = "{:.2f}".format
    rows_t = [
        row("s/step, median", f2, "median_s", "step_time"),
        row("s/step, mean", f2, "mean_s", "step_time_mean"),
        row("s/step, min", f2, "min_s", "step_time_min"),
        ["step pairs (same step n, back to back), median", "", *[""] * len(others),
         *[f"{ratios[o]['step_pairs']:.2f}x" for o in others]],
        row("CPU s/step, median (process, all threads)", f2, "cpu_median_s", "cpu"),
        ["s/step, ours + our reference pass (1 epoch)", f"{ours['median_s'] + ref_per_step:.2f}",
         *[f2(a[o]["median_s"]) for o in others], *[f"{ratios[o]['with_reference_one_epoch']:.2f}x" for o in others]],
        ["tokens/s (chosen+rejected, median)", f"{tokens / ours['median_s']:.0f}",
         *[f"{tokens / a[o]['median_s']:.0f}" for o in others], *[f"{ratios[o]['step_time']:.2f}x" for o in others]],
        row("peak memory, MLX (GB)", f2, "mlx_peak_gb", "mlx_peak_ours_over_side"),
        row("peak RSS (GB)", f2, "max_rss_gb", "rss_ours_over_side"),
        row("trainable parameters", "{:,}".format, "trainable_params"),
        ["loss, first -> last step", loss_cell(ours), *[loss_cell(a[o]) for o in others], *["-"] * len(others)],
        ["reference log-probs, max abs diff vs ours (nats)", "", *[""] * len(others),
         *[f"{ratios[o]['reference_max_abs_diff']:.1e}" for o in others]],
    ]
    n_timed = s["steps"]
    print()
    print(table(rows_t, ["measure", "ours", *[names[o] for o in others], *[f"{names[o]} vs ours" for o in others]]))
    print(f"\n{n_timed} timed steps per side. Time ratios = side / ours (higher: ours faster); "
          "memory ratios = ours / side (lower: ours smaller).")
    print(f"Our reference pass: {ref_s:.1f} s for {s['pairs']} pairs, once per run (cached on disk); "
          f"over one epoch that is {ref_per_step:.2f} s per step of {s['batch_size']} pairs. It runs alone, not in "
          f"lock-step: other processes used {common.fmt_cpus(runs['ours']['reference_pass'].get('other_cpus'))} "
          "CPUs meanwhile.")
    k = min(s["batch_size"], s["pairs"])
    for o in others:
        how = {"peer": "its reference model (base with the SFT adapter fused in)",
               "optiq": "its reference forward (trainable scale 0, mounted SFT on)"}[o]
        print(f"Reference check: base+SFT log-probs (summed over response tokens) of the first {k} pairs (chosen "
              f"and rejected), our cache vs {names[o]}, {how}: max |difference| "
              f"{ratios[o]['reference_max_abs_diff']:.2e} nats.")
    if "optiq" in sides:
        r = runs["optiq"]
        print(f"mlx-optiq mount: {r.get('mount')}; its own tokenization of the decoded text gave the bench's ids "
              f"for {r['own_tokenization_agrees']['same']}/{r['own_tokenization_agrees']['of']} sequences "
              "(the bench's ids were used for all)")
    note = common.busy_note(runs.values(), info["cpus"])
    if note:
        print(note)
    goals = {}
    for o in others:
        ok_t, ok_m = ratios[o]["step_time"] >= 1.5, ratios[o]["mlx_peak_ours_over_side"] <= 0.6
        goals[o] = {"step_time": ok_t, "memory": ok_m}
        print(f"\nDPO step time, {names[o]}/ours: {ratios[o]['step_time']:.2f}x by median "
              f"({ratios[o]['step_time_mean']:.2f}x by mean, {ratios[o]['step_pairs']:.2f}x by step pairs)  "
              f"(goal >= 1.5x: {'MET' if ok_t else 'MISSED'})")
        print(f"DPO peak memory (MLX), ours/{names[o]}: {ratios[o]['mlx_peak_ours_over_side']:.2f}x  "
              f"(goal <= 0.6x: {'MET' if ok_m else 'MISSED'}); peak RSS {ratios[o]['rss_ours_over_side']:.2f}x")

    out = {
        "bench": "dpo", "machine": info, "settings": s, "optiq_preset": args.optiq_preset,
        "optiq_preset_shape": optiq_shape, "sides": list(sides), "model_dir": str(model_dir), "source_model": str(src),
        "prep": {"sft_adapter": spec["sft_dir"], "fused_model": spec["fused_dir"],
                 "optiq_mount": spec["optiq_mount_dir"]},
        "timing": "every side in its own process, single steps in turn (lock-step); wall-clock seconds "
                  "from the step's start token to the trainer's report (mlx-optiq: its end-of-step buffer check) "
                  "of that step, after warm-up",
        "runs": runs, "ours": ours, "ratios": ratios, "goals": {"step_time": 1.5, "memory": 0.6}, "goals_met": goals,
    }
    if "peer" in sides:  # the names earlier JSON files used
        out.update({"mlx_lm_lora": a["peer"], "shim": "mx.device_info wrapped in the mlx-lm-lora child to add "
                                                      "max_recommended_working_set_size"})
    if "optiq" in sides:
        out["mlx_optiq"] = a["optiq"]
    common.save_json(args.json, out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
