"""CLI verbs of the model store:

    humanizer models pull [NAME] [--json]
    humanizer models import FILE.gguf [--output DIR] [--json]
    humanizer models list [--json]"""

from __future__ import annotations

import json

from tui.cli.common import add_json, run_long


def register(sub) -> None:
    group = sub.add_parser("models", help="pull, import and list models")
    group.set_defaults(handler=cmd_models)
    models = group.add_subparsers(dest="action", required=True)
    p = models.add_parser("pull", help="fetch an embedded model into the workspace (default smollm2-135m)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    add_json(p)
    p = models.add_parser("import", help="import a llama-family .gguf file as an MLX model")
    p.add_argument("file")
    p.add_argument("--output", help="model folder to write (default: <workspace>/models/<file stem>)")
    add_json(p)
    p = models.add_parser("list", help="models in the workspace")
    add_json(p)


def cmd_models(ws, args, argv) -> int:
    from engine import models

    if args.action == "list":
        found = models.list_models(ws)
        if args.json:
            print(json.dumps([m.to_dict() for m in found], indent=2))
        else:
            from tui.progress import print_table

            print_table(["name", "size", "quantization", "architecture", "path"],
                        [[m.name, f"{m.size_bytes / 1e6:.1f} MB", m.quantization, m.architecture, str(m.path)]
                         for m in found], empty="no models yet: run `humanizer models pull smollm2-135m`")
        return 0
    if args.action == "pull":
        path = run_long(ws, "models pull", argv, args.json, lambda run: models.pull_default(ws, args.name, run=run))
    else:
        from pathlib import Path

        from engine.gguf import import_gguf

        src = Path(args.file).expanduser()
        out = Path(args.output).expanduser() if args.output else ws.models_dir / src.stem
        path = run_long(ws, "models import", argv, args.json, lambda run: import_gguf(src, out, run=run))
    if not args.json:
        print(f"model ready: {path}")
    return 0
