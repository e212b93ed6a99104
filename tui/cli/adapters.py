"""CLI verbs of the adapter manager, in the `lora` group:

    humanizer lora list [--model M] [--json]
    humanizer lora info DIR|NAME [--model M] [--json]
    humanizer lora combine A B --output C [--json]
    humanizer lora fuse MODEL --adapter A [--adapter B] --output DIR [--requantize|--keep-float] [--json]

Adapters are given as folders or as names of adapters in the workspace. The bundle verbs
(export, push) are in tui.cli.export; `lora train` in tui.cli.train."""

from __future__ import annotations

import json
import sys

from tui.cli.common import add_json, run_long


def register(lora) -> None:
    """Add list/info/combine/fuse to the `lora` group's subparsers."""
    p = lora.add_parser("list", help="adapters in the workspace: method, base, parent, rank, layers, metrics, fit")
    p.set_defaults(handler=lora_list)
    p.add_argument("--model", help="also say whether each adapter fits this model (a folder or any model spec)")
    add_json(p)

    p = lora.add_parser("info", help="everything about one adapter")
    p.set_defaults(handler=lora_info)
    p.add_argument("adapter", help="adapter folder or workspace adapter name")
    p.add_argument("--model", help="also say whether it fits this model")
    add_json(p)

    p = lora.add_parser("combine", help="merge two adapters exactly into one (ranks concatenated)",
                        description="Merge adapters A and B into one plain adapter C whose outputs equal A and B "
                        "stacked (ranks concatenated, scales folded in). A DPO delta with its SFT parent is the "
                        "usual case; C then loads in stock mlx-lm on its own.")
    p.set_defaults(handler=lora_combine)
    p.add_argument("a", help="adapter folder or workspace adapter name (e.g. the SFT adapter)")
    p.add_argument("b", help="adapter folder or workspace adapter name (e.g. the DPO delta)")
    p.add_argument("--output", required=True, help="adapter folder to write")
    add_json(p)

    p = lora.add_parser("fuse", help="bake adapters into a copy of the model's weights",
                        description="Bake adapters into the weights: W' = W + sum of scale * (A B)^T. Fused layers of "
                        "a quantized model are re-quantized with their own bits and group size (default) or kept in "
                        "float (--keep-float); the cost of re-quantizing is measured on probe prompts either way.")
    p.set_defaults(handler=lora_fuse)
    p.add_argument("model", help="model spec: a model folder, a workspace model, smollm2-135m, ...")
    p.add_argument("--adapter", action="append", required=True,
                   help="adapter folder or workspace adapter name; repeat to fuse several (a delta with its parent)")
    p.add_argument("--output", required=True, help="model folder to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--requantize", dest="requantize", action="store_const", const=True, default=None,
                      help="re-quantize the fused layers (the default for a quantized model)")
    mode.add_argument("--keep-float", dest="requantize", action="store_const", const=False,
                      help="keep the fused layers in float (larger, exact)")
    add_json(p)


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
    from engine.adapters.combine import combine

    path = run_long(ws, "lora combine", argv, args.json,
                    lambda run: combine(args.a, args.b, args.output, run=run, ws=ws))
    if not args.json:
        print(f"adapter ready: {path}")
    return 0


def lora_fuse(ws, args, argv) -> int:
    from engine.adapters.fuse import fuse, fuse_summary

    result = run_long(ws, "lora fuse", argv, args.json,
                      lambda run: fuse(args.model, args.adapter, args.output, args.requantize, run=run, ws=ws))
    if not args.json:
        print("\n".join(fuse_summary(result)))
    return 0


