"""CLI verbs of the bundles:

    humanizer export MODEL --adapter A [--adapter B] --output BUNDLE [--copy] [--json]
    humanizer push BUNDLE --repo ID [--private] [--dry-run] [--message TEXT] [--json]

Adapters are given as folders or as names of adapters in the workspace."""

from __future__ import annotations

import json

from tui.cli.common import add_json, run_long


def register(sub) -> None:
    p = sub.add_parser("export", help="a bundle folder: model, adapters and a model card",
                       description="Write a bundle: model/ (hard-linked when possible), adapters/<name>/, and a "
                       "README.md model card that says how to serve it stacked and what the adapters were trained "
                       "on and scored.")
    p.set_defaults(handler=cmd_export)
    p.add_argument("model", help="model spec: a model folder, a workspace model, smollm2-135m, ...")
    p.add_argument("--adapter", action="append", required=True,
                   help="adapter folder or workspace adapter name; repeat for several (a delta needs its parent)")
    p.add_argument("--output", required=True, help="bundle folder to write")
    p.add_argument("--copy", action="store_true", help="copy the model files instead of hard-linking them")
    add_json(p)

    p = sub.add_parser("push", help="upload a bundle to the Hugging Face Hub",
                       description="Upload a bundle folder to a Hugging Face model repo (created if missing). "
                       "Needs a token: `hf auth login` or HF_TOKEN. --dry-run lists the files without the network.")
    p.set_defaults(handler=cmd_push)
    p.add_argument("bundle", help="bundle folder (from `humanizer export`)")
    p.add_argument("--repo", required=True, help="Hub repo id, OWNER/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    p.add_argument("--message", help="commit message")
    add_json(p)


def cmd_export(ws, args, argv) -> int:
    from engine.adapters.bundle import export

    path = run_long(ws, "export", argv, args.json,
                    lambda run: export(args.model, args.adapter, args.output, run=run, ws=ws, link=not args.copy))
    if not args.json:
        print(f"bundle ready: {path}\n  serve it: see {path}/README.md")
    return 0


def cmd_push(ws, args, argv) -> int:
    from engine.adapters.push import push
    from engine.workspace import human_bytes

    if args.dry_run:
        result = push(args.bundle, args.repo, private=args.private, dry_run=True, commit_message=args.message)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
            return 0
        from tui.progress import print_table

        print_table(["file", "size"], [[p, human_bytes(n)] for p, n in result.files])
        print(f"dry run: would upload {len(result.files)} files ({human_bytes(result.total_bytes)}) to "
              f"{result.url} ({'private' if result.private else 'public'}); nothing was sent")
        if not result.token_found:
            print("note: no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN before pushing")
        return 0
    from engine.adapters.push import bundle_files, check_repo_id, push_token

    check_repo_id(args.repo)  # the quick checks before a run is recorded
    bundle_files(args.bundle)
    push_token()
    result = run_long(ws, "push", argv, args.json,
                      lambda run: push(args.bundle, args.repo, private=args.private, run=run,
                                       commit_message=args.message))
    if not args.json:
        print(f"pushed to {result.url}" + (f" ({result.commit_url})" if result.commit_url else ""))
    return 0
