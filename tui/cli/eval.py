"""CLI verb of the eval:

    humanizer eval MODEL --adapter A [--adapter B] --data DATASET [--choices base,A,A+B] [--detector ...]
                   [--samples N] [--seed S] [--resume] [--json]

The flags are made from engine.eval.settings.EvalSettings (with
tui.cli.common.add_settings_arguments); MODEL and the repeated --adapter are this verb's
own. The eval is a recorded run: its events, report.json and samples.jsonl are in the run
folder; the table is printed at the end (with --json: the events, then the report as one
JSON line)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tui.cli.common import add_json, add_settings_arguments, for_engine, run_long


def _epilog() -> str:
    from engine.eval.table import COLUMNS

    return ("The table: one row for the source drafts, one per choice, one for the human references.\n"
            + "\n".join(f"  {k}: {v}" for k, v in COLUMNS.items())
            + "\n\nThe headline detector is the first at hand of radar, classifier, fast-detectgpt, binoculars that "
            "did not help make the training data (the dataset's manifest says which did). Written to the run "
            "folder: report.json, samples.jsonl (every rewrite and score), rewrites.jsonl (the cache --resume "
            "continues from).")


def register(sub) -> None:
    from engine.eval.settings import EvalSettings

    p = sub.add_parser("eval", help="rewrite held-out drafts with every choice, score them all: the table",
                       description="Rewrite every held-out draft of --data with every model choice (base, an "
                       "adapter, a stack) in one batched run, score drafts, rewrites and human references with "
                       "every detector at hand, and print the table.", epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_eval)
    p.add_argument("model", metavar="MODEL", help="the model to evaluate: smollm2-135m, a model folder, a .gguf, "
                   "a workspace model, an HF repo id")
    p.add_argument("--adapter", action="append", default=[], metavar="ADAPTER", dest="adapters",
                   help="adapter folder or workspace adapter name to mount; repeat for more (a DPO delta after its "
                   "parent); a choice names it by its folder name")
    add_settings_arguments(p, EvalSettings.flag_fields())
    add_json(p)


def cmd_eval(ws, args, argv) -> int:
    from dataclasses import fields

    from engine.eval.run import run_eval
    from engine.eval.settings import EvalSettings

    values = {f.name: getattr(args, f.name) for f in fields(EvalSettings) if getattr(args, f.name, None) is not None}
    values["adapters"] = tuple(args.adapters or ())
    settings = EvalSettings(**values).check()
    path = run_long(ws, "eval", argv, args.json, lambda run: run_eval(for_engine(settings), ws, run))
    return print_report(path, args.json)


def print_report(path, as_json: bool) -> int:
    """An eval's report: the table and where its files are (--json: the report as one line)."""
    from engine.eval.table import format_table

    report = json.loads(Path(path).read_text(encoding="utf-8"))
    if as_json:
        print(json.dumps({"type": "report", "path": str(path), **report}, default=str))
        return 0
    print(format_table(report))
    print(f"\nreport: {path}\nsamples: {Path(path).parent / 'samples.jsonl'}")
    return 0
