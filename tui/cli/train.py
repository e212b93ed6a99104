"""CLI verb of the trainer:

    humanizer lora train MODEL --data DATA --output DIR [--method sft|dpo] [--preset P] [flags...] [--json]"""

from __future__ import annotations

import argparse

from tui.cli.common import add_json, run_long

TRAIN_FLAGS = ("iters", "mount_adapter", "rank", "scale", "dropout", "num_layers", "keys", "learning_rate",
               "batch_size", "max_seq_length", "beta", "dpo_loss", "val_batches", "steps_per_eval",
               "steps_per_report", "steps_per_save", "seed", "resume", "skip_bad_rows")


def _presets_help() -> str:
    from engine.train import PRESETS_DOC

    return PRESETS_DOC


def register(lora) -> None:
    """Add `train` to the `lora` group's subparsers."""
    p = lora.add_parser("train", help="train a LoRA adapter (SFT, or DPO stacked on an SFT adapter)",
                        description="Train a LoRA adapter. Presets set rank, scale, layers, keys and learning rate; "
                        "explicit flags override them.", epilog=_presets_help(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_train)
    p.add_argument("model", help="model spec: smollm2-135m, a model folder, a .gguf, a workspace model, an HF repo id")
    p.add_argument("--data", required=True, help="folder with train.jsonl [valid.jsonl], a .jsonl/.parquet file, "
                   "a workspace dataset or an HF dataset id")
    p.add_argument("--method", choices=["sft", "dpo"], default="sft")
    p.add_argument("--preset", choices=["small", "medium", "large"], default="small")
    p.add_argument("--iters", type=int)
    p.add_argument("--output", required=True, help="adapter folder to write")
    p.add_argument("--mount-adapter", help="a trained SFT adapter to mount frozen; the new adapter is a delta on top of it")
    p.add_argument("--rank", type=int)
    p.add_argument("--scale", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--num-layers", type=int, help="adapt the last K transformer blocks (-1: all)")
    p.add_argument("--keys", type=lambda s: [k for k in s.split(",") if k], help="comma-separated, e.g. q_proj,v_proj")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--beta", type=float, help="DPO beta (default 0.1)")
    p.add_argument("--dpo-loss", choices=["sigmoid", "ipo"])
    p.add_argument("--val-batches", type=int, help="validation batches per eval (-1: all, 0: no eval)")
    p.add_argument("--steps-per-eval", type=int)
    p.add_argument("--steps-per-report", type=int)
    p.add_argument("--steps-per-save", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop rows with errors instead of stopping")
    add_json(p)


def cmd_train(ws, args, argv) -> int:
    from engine.train import train

    options = {name: getattr(args, name) for name in TRAIN_FLAGS}
    path = run_long(ws, f"lora train {args.method}", argv, args.json,
                    lambda run: train(args.model, args.data, args.method, args.output, preset=args.preset,
                                      run=run, ws=ws, **options))
    if not args.json:
        print(f"adapter ready: {path}")
    return 0
