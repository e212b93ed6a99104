"""CLI verb of the demo:

    humanizer demo [--quick] [--name PREFIX] [--model MODEL] [--corpus NAME] [--rows N] [--seed S] [--json]

The whole pipeline on the embedded model, offline, each stage a job (engine/demo/run.py);
run again to continue an interrupted demo. The flags are made from
engine.demo.settings.DemoSettings. Prints the eval's table at the end."""

from __future__ import annotations

import argparse

from tui.cli.common import add_json, add_settings_arguments, run_long


def _epilog() -> str:
    from engine.demo.settings import SIZES

    lines = ["Stages (each a job; one already done is kept): the embedded model; the human corpus; AI drafts of",
             "human passages (style-transfer dataset, held-out documents set aside); SFT; on-policy DPO pairs from",
             "the SFT model; DPO stacked on SFT; fast-detectgpt calibrated and the classifier trained on the",
             "training split; the eval of base, sft and sft+dpo on the held-out drafts.", "", "Sizes:"]
    for name, s in SIZES.items():
        lines.append(f"  {name:8} {s.passages} passages ({s.min_words}-{s.max_words} words), {s.heldout_documents} "
                     f"held-out documents, SFT {s.sft_iters} steps x {s.sft_batch}, {s.dpo_prompts} prompts x 2 "
                     f"for DPO pairs, DPO {s.dpo_iters} steps x {s.dpo_batch}, eval on "
                     f"{s.eval_samples or 'all'} held-out drafts")
    lines.append("\nThe default size took 23 minutes on a quiet 2-core x86 CPU (56 with other work beside it); "
                 "--quick a few minutes (its figures mean nothing: it proves the stages work).")
    return "\n".join(lines)


def register(sub) -> None:
    from engine.demo.settings import DemoSettings

    p = sub.add_parser("demo", help="the whole pipeline offline on the embedded model: data, SFT, DPO, eval",
                       description="Run the humanizer pipeline end to end on the embedded model, offline: corpus, "
                       "dataset, SFT, on-policy DPO pairs, DPO on SFT, detectors, eval; then print the table.",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_demo)
    add_settings_arguments(p, DemoSettings.flag_fields())
    add_json(p)


def cmd_demo(ws, args, argv) -> int:
    from dataclasses import fields

    from engine.demo.run import run_demo
    from engine.demo.settings import DemoSettings
    from screens.common.launch import humanizer_argv
    from tui.cli.eval import print_report

    settings = DemoSettings(**{f.name: getattr(args, f.name) for f in fields(DemoSettings)}).check()
    path = run_long(ws, "demo", argv, args.json, lambda run: run_demo(settings, ws, run, argv_of=humanizer_argv))
    return print_report(path, args.json)
