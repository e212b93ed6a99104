"""The mlx-optiq side of the training benches (bench_sft.py, bench_dpo.py).

Its child runs optiq's own trainers, the functions `optiq lora train` calls
(optiq/cli.py `lora_train`): `optiq.lora.dpo.train_dpo` for `--method dpo
--mount-adapter SFT`, `optiq.lora.trainer.train_lora` for SFT, with the
`OptiqLoraConfig` the CLI would build from the same flags. It runs under the
interpreter of the mlx-optiq venv (bench/optiq_env.py), so it imports optiq; this
module imports neither optiq nor mlx at the top (the bench parent stays light).

Called as a library so that the lock-step (common.Baton) can hook each step, and so
that it trains on the bench's token rows. What the child changes in optiq, and why:
- DPO timing: optiq's loop ends every step with `mx.eval(model.parameters(),
  optimizer.state)` then `maybe_clear(...)` (its buffer-pool cap); the child wraps
  `optiq.lab.mlx_cleanup.maybe_clear` to report the step there. Its per-step report
  (`steps_per_report`) is NOT used: it re-runs the reference and policy forwards for
  metrics (`_dpo_metrics`), 4 extra forwards a step that its CLI default (every 10
  steps) mostly skips; it is switched off (steps_per_report huge), so its step is
  batch + reference forwards + policy forward/backward + update, like ours.
- DPO tokens: optiq tokenizes text every step (`_tokenize_pair`). train.jsonl holds
  the bench's token rows decoded to text; the wrapped `_tokenize_pair` still runs
  optiq's own tokenization (its cost stays in the step), then returns the bench's
  ids, so every side trains on the same tokens (how often optiq's own tokens agreed
  is reported).
- SFT tokens: `mlx_lm.tuner.datasets.load_dataset` (called by train_lora before
  training) returns the bench's (tokens, prompt length) rows; mlx-lm's training loop,
  which optiq drives, then batches them as the mlx-lm side does. SFT's per-step report
  is mlx-lm's `on_train_loss_report` (steps_per_report=1), cheap.
- The SFT adapter it mounts: a view of the bench's SFT adapter folder (same weights)
  whose adapter_config.json also says "scale" at the top level, where optiq reads it
  (optiq/lora/apply.py, apply_stacked_lora_for_dpo: `if "scale" in cfg_json`, else
  `lora_alpha / r`, else `sft_scale = 1.0`). Our folder is in mlx-lm's format (the
  scale under lora_parameters), which optiq does not read: mounted as it is, optiq
  would silently use SFT scale 1.0, a reference that is not base + SFT whenever the
  scale is not 1.
Everything else is optiq's default: gradient checkpointing on, AdamW, rank_scaling
by_bits (on a model without optiq metadata: every layer gets the base rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Baton, child_blas, child_memory  # noqa: E402

SIDE = "optiq"


# ------------------------------------------------------------------------ parent side


def add_args(ap) -> None:
    """The flags both training benches take for the optiq side."""
    ap.add_argument("--peers", default="peer,optiq",
                    help="comma-separated sides beside ours: peer (the bench's mlx-lm side), optiq "
                         "(default: %(default)s)")
    ap.add_argument("--optiq-python", help="interpreter of a venv with mlx-optiq (default: the bench cache's venv, "
                                           "made on first use; bench/optiq_env.py)")
    ap.add_argument("--optiq-preset", choices=["small", "default", "medium", "large", "xl", "xxl"],
                    help="every side gets the LoRA shape of optiq's `lora train --preset NAME` (rank, scale) with "
                         "optiq's defaults (every block, all 7 projections, dropout 0); explicit flags still win. "
                         "Without it, every side gets our --preset's shape")


def sides(args, ap) -> tuple:
    peers = tuple(p for p in (x.strip() for x in args.peers.split(",")) if p)
    bad = [p for p in peers if p not in ("peer", SIDE)]
    if bad:
        ap.error(f"--peers: unknown side(s) {', '.join(bad)}")
    return ("ours",) + peers


def preset_shape(python, name: str) -> dict:
    """What optiq's `--preset NAME` and its config defaults set, asked of optiq itself."""
    code = ("import json; from optiq.lora.config import RANK_PRESETS, OptiqLoraConfig as C; c = C(); "
            f"r, s = RANK_PRESETS[{name!r}]; "
            "print(json.dumps({'rank': r, 'scale': s, 'dropout': c.dropout, 'num_layers': c.num_layers, "
            "'keys': list(c.target_modules), 'grad_checkpoint': c.grad_checkpoint, "
            "'rank_scaling': c.rank_scaling}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def apply_preset(args, s: dict, python) -> dict | None:
    """With --optiq-preset: its shape into the settings `s` (explicit flags still win)."""
    if not args.optiq_preset:
        return None
    shape = preset_shape(python, args.optiq_preset)
    s["optiq_preset"] = args.optiq_preset  # s["preset"] stays ours: our trainer takes its learning rate from it
    s["rank"] = args.rank or shape["rank"]
    s["scale"] = shape["scale"] if args.scale is None else args.scale
    s["dropout"] = shape["dropout"] if args.dropout is None else args.dropout
    s["num_layers"] = args.num_layers or shape["num_layers"]
    s["keys"] = args.keys.split(",") if args.keys else shape["keys"]
    return shape


def mount_view(sft_dir: Path, dst: Path, scale: float) -> Path:
    """An optiq-readable view of our SFT adapter folder: the same weights (a link) and
    our adapter_config.json plus a top-level "scale" (see the module docstring)."""
    dst.mkdir(parents=True, exist_ok=True)
    link = dst / "adapters.safetensors"
    if not link.exists():
        link.symlink_to((sft_dir / "adapters.safetensors").resolve())
    cfg = json.loads((sft_dir / "adapter_config.json").read_text())
    cfg["scale"] = float(scale)
    (dst / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return dst


# ------------------------------------------------------------------------ child side


def _short_keys(keys) -> tuple:
    # optiq matches a module by the last part of its name (apply.py _match_target_suffix)
    return tuple(k.rsplit(".", 1)[-1] for k in keys)


def _config(s: dict, method: str, adapter: Path, **extra):
    from optiq.lora.config import OptiqLoraConfig

    return OptiqLoraConfig(
        rank=s["rank"], scale=s["scale"], dropout=s["dropout"], target_modules=_short_keys(s["keys"]),
        num_layers=s["num_layers"], method=method, batch_size=s["batch_size"], iters=s["warmup"] + s["steps"],
        learning_rate=s["learning_rate"], max_seq_length=s["seq_len"], val_batches=0, steps_per_eval=10**9,
        steps_per_save=10**9, adapter_path=str(adapter), **extra)


def _trainable(adapter_file: Path) -> int:
    import mlx.core as mx

    return int(sum(v.size for v in mx.load(str(adapter_file)).values()))


def _versions() -> dict:
    from importlib.metadata import version

    return {d: version(d) for d in ("mlx-optiq", "mlx", "mlx-lm")}


def child_dpo(spec: dict) -> dict:
    """optiq.lora.dpo.train_dpo with mount_adapter, as `optiq lora train --method dpo
    --mount-adapter SFT` runs it; the reference log-probs of the first pairs after it."""
    import mlx.core as mx
    from mlx_lm.utils import load_tokenizer

    import optiq.lab.mlx_cleanup as cleanup
    import optiq.lora.apply as apply_mod
    import optiq.lora.dpo as dpo

    s = spec["settings"]
    work = Path(tempfile.mkdtemp(prefix="optiq-", dir=spec["work"]))
    tok = load_tokenizer(Path(spec["model_dir"]))
    lookup, triples = {}, []
    for p in spec["pairs"]:
        t = {k: tok.decode(p[k]) for k in ("prompt", "chosen", "rejected")}
        for w in ("chosen", "rejected"):
            lookup[(t["prompt"], t[w])] = (p["prompt"] + p[w], len(p["prompt"]))
        triples.append(t)
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triples))

    agree = {"same": 0, "of": 0}
    their_tokenize = dpo._tokenize_pair

    def tokenize_pair(prompt, response, tokenizer, max_length):
        theirs = their_tokenize(prompt, response, tokenizer, max_length)  # its cost stays in the step
        ids, plen = lookup[(prompt, response)]
        agree["same"] += int(list(theirs[0]) == ids and theirs[1] == plen)
        agree["of"] += 1
        return list(ids), plen

    held = {}
    their_stack = apply_mod.apply_stacked_lora_for_dpo

    def stack(model, *a, **k):
        held["model"] = model
        out = their_stack(model, *a, **k)
        held["mount"] = out[1]
        return out

    total = s["warmup"] + s["steps"]
    baton, count = Baton(total), [0]
    their_clear = cleanup.maybe_clear

    def maybe_clear(*a, **k):  # called once a step, right after the step's mx.eval
        r = their_clear(*a, **k)
        count[0] += 1
        baton.step(count[0])
        return r

    dpo._tokenize_pair, apply_mod.apply_stacked_lora_for_dpo, cleanup.maybe_clear = tokenize_pair, stack, maybe_clear
    mx.random.seed(s["seed"])
    config = _config(s, "dpo", work / "adapter", dpo_beta=s["beta"], dpo_loss="sigmoid",
                     mount_adapter=spec["optiq_mount_dir"], steps_per_report=10**9)
    dpo.train_dpo(model_dir=spec["model_dir"], data_dir=str(work / "data"), config=config)
    mem = child_memory()  # before the check below
    tokenized = dict(agree)

    # the reference as optiq computes it each step: trainable scale 0, the mounted SFT on
    k = min(s["batch_size"], len(triples))
    model = held["model"]
    dpo._set_lora_scale(model, 0.0)
    c, r = dpo._compute_reference_logps(model, dpo._make_batch(triples[:k], tok, s["seq_len"]))
    return {
        "side": "mlx-optiq",
        "durations": baton.ordered(),
        "cpu_durations": baton.ordered_cpu(),
        "losses": [],
        "reference_logps": {"chosen": c.tolist(), "rejected": r.tolist()},
        "mount": held.get("mount"),
        "own_tokenization_agrees": tokenized,
        "grad_checkpoint": config.grad_checkpoint,
        "trainable_params": _trainable(work / "adapter" / "adapters.safetensors"),
        "blas": child_blas(),
        "memory": mem,
        "versions": _versions(),
    }


def child_sft(spec: dict) -> dict:
    """optiq.lora.trainer.train_lora, as `optiq lora train` (method sft) runs it."""
    import mlx.core as mx
    import mlx_lm.tuner.datasets as datasets
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.utils import load_tokenizer

    from optiq.lora.trainer import train_lora

    s = spec["settings"]
    work = Path(tempfile.mkdtemp(prefix="optiq-", dir=spec["work"]))
    tok = load_tokenizer(Path(spec["model_dir"]))
    (work / "data").mkdir()
    # the rows as chat text, for what train_lora reads from the file itself (its multi-turn check)
    (work / "data" / "train.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": tok.decode(r["tokens"][:r["prompt_len"]])},
        {"role": "assistant", "content": tok.decode(r["tokens"][r["prompt_len"]:])}]}) + "\n" for r in spec["rows"]))

    class Rows(list):
        def process(self, d):  # CacheDataset's hook: already (tokens, prompt offset)
            return d

    rows = Rows((r["tokens"], r["prompt_len"]) for r in spec["rows"])
    datasets.load_dataset = lambda *a, **k: (rows, [], [])

    baton, reports = Baton(s["warmup"] + s["steps"]), []

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)
            baton.step(info["iteration"])

    mx.random.seed(s["seed"])
    config = _config(s, "sft", work / "adapter", steps_per_report=1)
    train_lora(model_dir=spec["model_dir"], data_dir=str(work / "data"), config=config, progress_callback=Callback())
    timed = reports[s["warmup"]:]
    return {
        "side": "mlx-optiq",
        "durations": baton.ordered(),
        "cpu_durations": baton.ordered_cpu(),
        "losses": [r["train_loss"] for r in reports],
        "own_tokens_per_s": sum(r["tokens_per_second"] for r in timed) / max(len(timed), 1),
        "grad_checkpoint": config.grad_checkpoint,
        "trainable_params": _trainable(work / "adapter" / "adapters.safetensors"),
        "blas": child_blas(),
        "memory": child_memory(),
        "mlx": mx.__version__,
        "versions": _versions(),
    }
