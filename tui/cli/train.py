"""CLI verb of the trainer, its flags built from engine.train.settings.TrainSettings:

    humanizer lora train MODEL --data DATA --output DIR [--method sft|dpo] [--preset P] [flags...] [--json]"""

from __future__ import annotations

import argparse

from engine.train.config import PRESETS_DOC
from engine.train.settings import TrainSettings, setting_fields
from tui.cli.common import add_json, add_settings_arguments, run_long


def register(lora) -> None:
    """Add `train` to the `lora` group's subparsers."""
    p = lora.add_parser("train", help="train a LoRA adapter (SFT, or DPO stacked on an SFT adapter)",
                        description="Train a LoRA adapter. Presets set rank, scale, layers, keys and learning rate; "
                        "explicit flags override them.", epilog=PRESETS_DOC,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_train)
    p.add_argument("model", help="model spec: smollm2-135m, a model folder, a .gguf, a workspace model, an HF repo id")
    add_settings_arguments(p, setting_fields())
    add_json(p)


def cmd_train(ws, args, argv) -> int:
    from engine.train import train

    s = TrainSettings(**{f.name: getattr(args, f.name) for f in setting_fields()})
    path = run_long(ws, f"lora train {s.method}", argv, args.json,
                    lambda run: train(args.model, s.data, s.method, s.output, run=run, ws=ws, **s.train_kwargs()))
    if not args.json:
        print(f"adapter ready: {path}")
    return 0
