"""CLI verbs of the adapter manager:

    humanizer lora list [--model M] [--json]
    humanizer lora info DIR|NAME [--model M] [--json]
    humanizer lora combine A B --output C [--json]
    humanizer lora fuse MODEL --adapter A [--adapter B] --output DIR [--requantize|--keep-float] [--json]
    humanizer export MODEL --adapter A [--adapter B] --output BUNDLE [--copy] [--json]
    humanizer push BUNDLE --repo ID [--private] [--dry-run] [--message TEXT] [--json]

Adapters are given as folders or as names of adapters in the workspace.

Wiring into tui/cli/__init__.py, after the `lora` group exists (in build_parser):

    from tui.cli.adapters import register
    COMMANDS.update(register(sub))

`register` adds list/info/combine/fuse to the existing `lora` group and returns handlers
for `export`, `push` and `lora` (which runs these four actions and hands `train` on to
tui.cli.cmd_lora). Finer-grained: `register_lora_actions(lora_subparsers)` and
`handle_lora(ws, args, argv)`, which returns None for an action that is not one of these.
Handlers have tui.cli's signature: handler(ws, args, argv) -> int."""

from __future__ import annotations

import argparse
import json
import sys

LORA_ACTIONS = ("list", "info", "combine", "fuse")


def _add_json(p: argparse.ArgumentParser) -> None:
    from tui.cli import _add_json as add

    add(p)


def _run_long(ws, kind, argv, as_json, work):
    from tui.cli import _run_long as run_long

    return run_long(ws, kind, argv, as_json, work)


# --- registration ---------------------------------------------------------------------


def register_lora_actions(lora) -> None:
    """Add list/info/combine/fuse to the `lora` group's subparsers."""
    p = lora.add_parser("list", help="adapters in the workspace: method, base, parent, rank, layers, metrics, fit")
    p.add_argument("--model", help="also say whether each adapter fits this model (a folder or any model spec)")
    _add_json(p)

    p = lora.add_parser("info", help="everything about one adapter")
    p.add_argument("adapter", help="adapter folder or workspace adapter name")
    p.add_argument("--model", help="also say whether it fits this model")
    _add_json(p)

    p = lora.add_parser("combine", help="merge two adapters exactly into one (ranks concatenated)",
                        description="Merge adapters A and B into one plain adapter C whose outputs equal A and B "
                        "stacked (ranks concatenated, scales folded in). A DPO delta with its SFT parent is the "
                        "usual case; C then loads in stock mlx-lm on its own.")
    p.add_argument("a", help="adapter folder or workspace adapter name (e.g. the SFT adapter)")
    p.add_argument("b", help="adapter folder or workspace adapter name (e.g. the DPO delta)")
    p.add_argument("--output", required=True, help="adapter folder to write")
    _add_json(p)

    p = lora.add_parser("fuse", help="bake adapters into a copy of the model's weights",
                        description="Bake adapters into the weights: W' = W + sum of scale * (A B)^T. Fused layers of "
                        "a quantized model are re-quantized with their own bits and group size (default) or kept in "
                        "float (--keep-float); the cost of re-quantizing is measured on probe prompts either way.")
    p.add_argument("model", help="model spec: a model folder, a workspace model, smollm2-135m, ...")
    p.add_argument("--adapter", action="append", required=True,
                   help="adapter folder or workspace adapter name; repeat to fuse several (a delta with its parent)")
    p.add_argument("--output", required=True, help="model folder to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--requantize", dest="requantize", action="store_const", const=True, default=None,
                      help="re-quantize the fused layers (the default for a quantized model)")
    mode.add_argument("--keep-float", dest="requantize", action="store_const", const=False,
                      help="keep the fused layers in float (larger, exact)")
    _add_json(p)


def _export_push_parsers(sub) -> None:
    p = sub.add_parser("export", help="a bundle folder: model, adapters and a model card",
                       description="Write a bundle: model/ (hard-linked when possible), adapters/<name>/, and a "
                       "README.md model card that says how to serve it stacked and what the adapters were trained "
                       "on and scored.")
    p.add_argument("model", help="model spec: a model folder, a workspace model, smollm2-135m, ...")
    p.add_argument("--adapter", action="append", required=True,
                   help="adapter folder or workspace adapter name; repeat for several (a delta needs its parent)")
    p.add_argument("--output", required=True, help="bundle folder to write")
    p.add_argument("--copy", action="store_true", help="copy the model files instead of hard-linking them")
    _add_json(p)

    p = sub.add_parser("push", help="upload a bundle to the Hugging Face Hub",
                       description="Upload a bundle folder to a Hugging Face model repo (created if missing). "
                       "Needs a token: `hf auth login` or HF_TOKEN. --dry-run lists the files without the network.")
    p.add_argument("bundle", help="bundle folder (from `humanizer export`)")
    p.add_argument("--repo", required=True, help="Hub repo id, OWNER/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    p.add_argument("--message", help="commit message")
    _add_json(p)


def _subparsers_of(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps a group's subparsers as one of its actions
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register(sub) -> dict:
    """Register the verbs on the top-level subparsers `sub`; returns {command: handler}.

    The lora actions go into the existing `lora` group (or a new one when there is none);
    the returned `lora` handler runs them and hands any other action to tui.cli.cmd_lora."""
    lora_parser = sub.choices.get("lora")
    if lora_parser is None:
        lora = sub.add_parser("lora", help="train, list, combine and fuse LoRA adapters").add_subparsers(
            dest="action", required=True)
    else:
        lora = _subparsers_of(lora_parser)
        if lora is None:
            lora = lora_parser.add_subparsers(dest="action", required=True)
    register_lora_actions(lora)
    for choice in getattr(sub, "_choices_actions", []):  # the group's one-line help in `humanizer --help`
        if choice.dest == "lora":
            choice.help = "train, list, inspect, combine and fuse LoRA adapters"
    _export_push_parsers(sub)
    return {"lora": cmd_lora, "export": cmd_export, "push": cmd_push}


# --- handlers -------------------------------------------------------------------------


def handle_lora(ws, args, argv) -> int | None:
    """Run `lora list|info|combine|fuse`; None for any other action (e.g. train)."""
    handler = {"list": lora_list, "info": lora_info, "combine": lora_combine, "fuse": lora_fuse}.get(
        getattr(args, "action", None))
    return None if handler is None else (handler(ws, args, argv) or 0)


def cmd_lora(ws, args, argv) -> int:
    result = handle_lora(ws, args, argv)
    if result is not None:
        return result
    from tui.cli import cmd_lora as train

    return train(ws, args, argv)


def _model_dir(ws, spec):
    from engine.models import resolve_model

    return resolve_model(spec, ws) if spec else None


def adapter_dict(info) -> dict:
    from engine import adapters as A

    d = info.to_dict()
    d.update(method_label=A.describe_method(info), layer_summary=A.layer_summary(info),
             metrics_summary=A.metrics_summary(info.metrics))
    return d


def _fit_text(info) -> str:
    if info.fits is None:
        return ""
    if not info.fits:
        return "no"
    return "yes (with parent)" if info.is_delta else "yes"


def lora_list(ws, args, argv) -> int:
    from engine import adapters as A
    from tui.progress import print_table

    model_dir = _model_dir(ws, args.model)
    skipped: list = []
    found = A.list_adapters(ws, model_dir, skipped)
    for path, reason in skipped:
        print(f"note: skipped {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps([adapter_dict(i) for i in found], indent=2, default=str))
        return 0
    headers = ["name", "method", "base", "parent", "rank", "layers", "final metrics"]
    rows = []
    for i in found:
        row = [i.name, A.describe_method(i), (i.base or {}).get("name", "?"), (i.parent or {}).get("name", ""),
               str(i.rank), A.layer_summary(i), A.metrics_summary(i.metrics)]
        if model_dir is not None:
            row.append(_fit_text(i))
        rows.append(row)
    if model_dir is not None:
        headers.append(f"fits {model_dir.name}")
    print_table(headers, rows, empty=f"no adapters in {ws.adapters_dir}: train one with `humanizer lora train`")
    for i in found:
        if i.fits is False:
            print(f"  {i.name}: {i.fit_reason}")
    return 0


def lora_info(ws, args, argv) -> int:
    from engine import adapters as A

    info = A.read_adapter(A.resolve_adapter(args.adapter, ws))
    model_dir = _model_dir(ws, args.model)
    if model_dir is not None:
        info.fits, info.fit_reason = A.fit_status(info, model_dir)
    if args.json:
        d = adapter_dict(info)
        d["config"] = info.config
        print(json.dumps(d, indent=2, default=str))
        return 0
    base = info.base or {}
    rows = [("name", info.name), ("path", str(info.path)), ("method", A.describe_method(info))]
    if info.parent:
        p = info.parent
        rows.append(("parent", f"{p.get('name')} ({p.get('path')}, {p.get('fingerprint')}): a delta, "
                               "mounted only together with its parent"))
    for s in (info.config.get("humanizer") or {}).get("combined_from") or []:
        rows.append(("combined from", f"{s.get('name')} ({s.get('method')}, rank {s.get('rank')}, "
                                      f"scale {s.get('scale')}, {s.get('fingerprint')})"))
    rows += [
        ("base model", f"{base.get('name', 'unknown')} ({base.get('fingerprint', 'no fingerprint')})"),
        ("lora", f"rank {info.rank}, scale {info.scale:g}, dropout {info.dropout:g}, num_layers {info.num_layers}, "
                 f"keys {', '.join(info.keys) if info.keys else 'all linear layers'}"),
        ("layers", f"{len(info.layers)}: {A.layer_summary(info)}"),
    ]
    t = info.training
    if t:
        rows.append(("training", ", ".join(f"{k} {v}" for k, v in t.items() if not isinstance(v, (dict, list)))))
    if info.metrics:
        rows.append(("final metrics", ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.metrics.items())))
    rows += [("fingerprint", info.fingerprint), ("size", f"{info.size_bytes:,} bytes")]
    if info.fits is not None:
        rows.append((f"fits {model_dir.name}", ("yes" if info.fits else "no") +
                     (f": {info.fit_reason}" if info.fit_reason else "")))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def lora_combine(ws, args, argv) -> int:
    from engine.manage import combine

    path = _run_long(ws, "lora combine", argv, args.json,
                     lambda run: combine(args.a, args.b, args.output, run=run, ws=ws))
    if not args.json:
        print(f"adapter ready: {path}")
    return 0


def lora_fuse(ws, args, argv) -> int:
    from engine.manage import fuse, fuse_summary

    result = _run_long(ws, "lora fuse", argv, args.json,
                       lambda run: fuse(args.model, args.adapter, args.output, args.requantize, run=run, ws=ws))
    if not args.json:
        print("\n".join(fuse_summary(result)))
    return 0


def cmd_export(ws, args, argv) -> int:
    from engine.manage import export

    path = _run_long(ws, "export", argv, args.json,
                     lambda run: export(args.model, args.adapter, args.output, run=run, ws=ws, link=not args.copy))
    if not args.json:
        print(f"bundle ready: {path}\n  serve it: see {path}/README.md")
    return 0


def cmd_push(ws, args, argv) -> int:
    from engine.manage import _human_bytes, push

    if args.dry_run:
        result = push(args.bundle, args.repo, private=args.private, dry_run=True, commit_message=args.message)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
            return 0
        from tui.progress import print_table

        print_table(["file", "size"], [[p, _human_bytes(n)] for p, n in result.files])
        print(f"dry run: would upload {len(result.files)} files ({_human_bytes(result.total_bytes)}) to "
              f"{result.url} ({'private' if result.private else 'public'}); nothing was sent")
        if not result.token_found:
            print("note: no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN before pushing")
        return 0
    from engine.manage import bundle_files, check_repo_id, push_token

    check_repo_id(args.repo)  # the quick checks before a run is recorded
    bundle_files(args.bundle)
    push_token()
    result = _run_long(ws, "push", argv, args.json,
                       lambda run: push(args.bundle, args.repo, private=args.private, run=run,
                                        commit_message=args.message))
    if not args.json:
        print(f"pushed to {result.url}" + (f" ({result.commit_url})" if result.commit_url else ""))
    return 0
