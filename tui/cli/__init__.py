"""The `humanizer` command: the TUI with no arguments, else a CLI verb.

The parser is assembled here, top-down: each verb module adds its parsers with
`register(subparsers)` and binds its handler, handler(ws, args, argv) -> int, with
set_defaults(handler=...). Long verbs record a run under runs/ (or into the job's run folder
when started by the job runner) and show its events as a Rich progress view, or as JSON
lines with --json (tui.cli.common.run_long)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tui.cli import adapters, convert, data, demo, detect, doctor, export, jobs, models, serve, train
from tui.cli import eval as eval_
from tui.cli.common import VerbParser, remember_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="humanizer",
        description="Humanizer Studio: convert, train, serve and chat with stacked LoRA humanizers on MLX. "
        "Run with no arguments to open the terminal app.",
    )
    parser.add_argument("--home", help="workspace folder (default: $HUMANIZER_HOME or ~/.humanizer)")
    parser.add_argument("--model", help="model to select in the app (default: smollm2-135m)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=VerbParser)
    models.register(sub)
    jobs.register(sub)
    lora = sub.add_parser("lora", help="train, list, inspect, combine and fuse LoRA adapters")
    lora_actions = lora.add_subparsers(dest="action", required=True)
    train.register(lora_actions)
    adapters.register(lora_actions)  # list, info, combine, fuse
    export.register(sub)  # export, push
    convert.register(sub)
    data.register(sub)
    detect.register(sub)  # detect FILE..., detect calibrate/train/list
    eval_.register(sub)
    demo.register(sub)
    serve.register(sub)
    doctor.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from engine.blas import ensure_fast_blas  # before anything imports mlx

    ensure_fast_blas()
    args = build_parser().parse_args(argv)
    from engine.errors import HumanizerError
    from engine.events import Cancelled
    from engine.workspace import Workspace

    if args.home:
        os.environ["HUMANIZER_HOME"] = os.path.abspath(os.path.expanduser(args.home))
    try:
        ws = Workspace.open(args.home)
        if args.command is None:
            from tui.app import run_app

            run_app(ws, model=args.model)
            return 0
        with remember_settings(args):  # what job.json records of this verb (tui.cli.common.run_long)
            return args.handler(ws, args, argv) or 0
    except HumanizerError as e:
        if getattr(e, "reported", False):  # a run's view already showed it as an error event
            return 2
        if getattr(args, "json", False):
            print(json.dumps({"type": "error", "message": e.message, "hint": e.hint}))
        else:
            print(f"error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):  # Ctrl-C, or SIGTERM from `jobs cancel`: the run saved what it could
        if not getattr(args, "json", False):
            print(f"{args.command} cancelled; where the verb has --resume, the same command with it continues",
                  file=sys.stderr)
        return 130
