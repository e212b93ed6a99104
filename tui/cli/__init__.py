"""The `humanizer` command: the TUI with no arguments, else a CLI verb.

Long verbs record a run under runs/ (or into the job's run folder when started by the
job runner) and show its events as a Rich progress view, or as JSON lines with --json."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (events as JSON lines)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="humanizer",
        description="Humanizer Studio: convert, train, serve and chat with stacked LoRA humanizers on MLX. "
        "Run with no arguments to open the terminal app.",
    )
    parser.add_argument("--home", help="workspace folder (default: $HUMANIZER_HOME or ~/.humanizer)")
    parser.add_argument("--model", help="model to select in the app (default: smollm2-135m)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="pull, import and list models").add_subparsers(dest="action", required=True)
    p = models.add_parser("pull", help="fetch an embedded model into the workspace (default smollm2-135m)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    _add_json(p)
    p = models.add_parser("import", help="import a llama-family .gguf file as an MLX model")
    p.add_argument("file")
    p.add_argument("--output", help="model folder to write (default: <workspace>/models/<file stem>)")
    _add_json(p)
    p = models.add_parser("list", help="models in the workspace")
    _add_json(p)

    jobs = sub.add_parser("jobs", help="list, show, cancel and attach to runs").add_subparsers(dest="action", required=True)
    p = jobs.add_parser("list", help="every run in the workspace, newest first")
    _add_json(p)
    for name, help_ in (("show", "a run's status and events"),
                        ("cancel", "stop a running job: SIGTERM (it saves a checkpoint), SIGKILL after --grace"),
                        ("attach", "follow a run's events until it ends")):
        p = jobs.add_parser(name, help=help_)
        p.add_argument("id", help="run id (a unique prefix is enough)")
        if name == "cancel":
            p.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                           help="time to stop after SIGTERM before SIGKILL (default 30)")
        _add_json(p)

    lora = sub.add_parser("lora", help="train LoRA adapters").add_subparsers(dest="action", required=True)
    p = lora.add_parser("train", help="train a LoRA adapter (SFT, or DPO stacked on an SFT adapter)",
                        description="Train a LoRA adapter. Presets set rank, scale, layers, keys and learning rate; "
                        "explicit flags override them.", epilog=_presets_help(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
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
    _add_json(p)

    from tui.cli.adapters import register  # lora list/info/combine/fuse, export, push

    COMMANDS.update(register(sub))
    from tui.cli.convert import register as register_convert

    COMMANDS.update(register_convert(sub))
    from tui.cli.data import register as register_data

    COMMANDS.update(register_data(sub))
    from tui.cli.detect import register as register_detect  # detect FILE..., detect calibrate/train/list
    COMMANDS.update(register_detect(sub))
    from tui.cli.eval import register as register_eval  # eval MODEL --adapter A --data DATASET: the table
    COMMANDS.update(register_eval(sub))
    from tui.cli.demo import register as register_demo  # demo [--quick]: the whole pipeline, each stage a job
    COMMANDS.update(register_demo(sub))

    p = sub.add_parser("serve", help="OpenAI-compatible server: one model, several adapters, each request picks its own",
                       description="Serve MODEL over an OpenAI-compatible API with the --adapter folders mounted. "
                       "Each request picks 'base', one adapter or a stack ('sft+dpo') with the body field "
                       "\"adapter\" or a model id from /v1/models. Stop with SIGTERM or Ctrl-C.")
    p.add_argument("--model", default="smollm2-135m",
                   help="model spec: smollm2-135m (default), a model folder, a .gguf, a workspace model, an HF repo id")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="adapter folder (or name in the workspace's adapters/) to mount; repeat for more, "
                   "a DPO delta after its parent")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                   "any other address needs --api-key)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=os.environ.get("HUMANIZER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                   "(default: $HUMANIZER_API_KEY)")
    p.add_argument("--max-concurrent", type=int, default=8, metavar="N",
                   help="requests decoded together at most (more wait in a queue; default 8)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, metavar="N",
                   help="largest max_tokens a request may ask for (default 4096)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, metavar="N",
                   help="longest prompt in tokens a request may send; longer ones get a 400 naming the limit "
                   "(default 4096)")
    p.add_argument("--quantized", action="store_true",
                   help="keep quantized weights on the CPU backend (default: dequantize to float32, "
                   "which decodes faster there; Metal always keeps them)")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="open connections at most; more are answered 503 (default: half the open-file limit, "
                   "at most 512)")
    p.add_argument("--header-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a request's headers may take to arrive (default 30; then 408 and close)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a request's body may take after its headers (default 30; then 408 and close)")
    p.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="S",
                   help="seconds an idle keep-alive connection stays open (default 75)")
    _add_json(p)

    p = sub.add_parser("doctor", help="platform, MLX device, BLAS in use, workspace, models")
    _add_json(p)
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
        return COMMANDS[args.command](ws, args, argv) or 0
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


def _run_long(ws, kind: str, argv: list[str], as_json: bool, work, human_view=None):
    """Run `work(run)` recorded as a run, showing its events live. `human_view(printer)`
    may wrap the printer for the human-readable view (--json always prints every event)."""
    from engine.events import open_run
    from tui.progress import EventPrinter

    run = open_run(ws.runs_dir, kind, ["humanizer", *argv])
    with EventPrinter(as_json) as printer:
        run.listeners.append(printer if as_json or human_view is None else human_view(printer))
        with run:
            result = work(run)
            run.done(result=str(result))
            return result


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
        path = _run_long(ws, "models pull", argv, args.json, lambda run: models.pull_default(ws, args.name, run=run))
    else:
        from pathlib import Path

        from engine.gguf import import_gguf

        src = Path(args.file).expanduser()
        out = Path(args.output).expanduser() if args.output else ws.models_dir / src.stem
        path = _run_long(ws, "models import", argv, args.json, lambda run: import_gguf(src, out, run=run))
    if not args.json:
        print(f"model ready: {path}")
    return 0


def cmd_jobs(ws, args, argv) -> int:
    from engine import jobs

    if args.action == "list":
        found = jobs.list_jobs(ws)
        if args.json:
            print(json.dumps([j.to_dict() for j in found], indent=2))
        else:
            from tui.progress import print_table

            print_table(["id", "kind", "status", "progress", "started"],
                        [[j.id, j.kind, j.status, _progress_text(j), _time_text(j.started)] for j in found],
                        empty="no runs yet")
        return 0
    job = jobs.find_job(ws, args.id)
    if args.action == "cancel":
        job = jobs.cancel_job(ws, job.id, timeout=args.grace)
        print(json.dumps(job.to_dict()) if args.json else f"{job.id}: {job.status}")
        return 0 if not job.running else 1
    if args.action == "show":
        events, _ = jobs.job_events(job)
        if args.json:
            print(json.dumps({**job.to_dict(), "events": events}, indent=2))
            return 0
        print(f"{job.id}  {job.kind}  {job.status}  pid {job.pid}\n  argv: {' '.join(job.argv)}")
        if job.error:
            print(f"  error: {job.error}")
        from tui.progress import format_event

        for ev in events:
            print(format_event(ev))
        return 0
    from tui.progress import EventPrinter  # attach

    with EventPrinter(args.json) as printer:
        for ev in jobs.follow(ws, job.id):
            printer(ev)
    job = jobs.job_info(job.dir)
    if not args.json:
        print(f"{job.id}: {job.status}")
    return 0 if job.status == "done" else 1


def _progress_text(job) -> str:
    from engine.jobs import job_events, last_progress

    if job.status == "done":
        return "100%"
    ev = last_progress(job_events(job)[0])
    if ev and ev.get("total"):
        return f"{100 * ev['step'] / ev['total']:.0f}%"
    return ""


def _time_text(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _presets_help() -> str:
    from engine.train import PRESETS_DOC

    return PRESETS_DOC


TRAIN_FLAGS = ("iters", "mount_adapter", "rank", "scale", "dropout", "num_layers", "keys", "learning_rate",
               "batch_size", "max_seq_length", "beta", "dpo_loss", "val_batches", "steps_per_eval",
               "steps_per_report", "steps_per_save", "seed", "resume", "skip_bad_rows")


def cmd_lora(ws, args, argv) -> int:
    from engine.train import train

    options = {name: getattr(args, name) for name in TRAIN_FLAGS}
    path = _run_long(ws, f"lora train {args.method}", argv, args.json,
                     lambda run: train(args.model, args.data, args.method, args.output, preset=args.preset,
                                       run=run, ws=ws, **options))
    if not args.json:
        print(f"adapter ready: {path}")
    return 0


def cmd_serve(ws, args, argv) -> int:
    from engine.events import Cancelled
    from engine.server import check_bind, check_port, serve

    check_bind(args.host, args.api_key)  # before loading anything
    check_port(args.host, args.port)
    try:
        url = _run_long(ws, "serve", argv, args.json,
                        lambda run: serve(args.model, args.adapter, ws=ws, run=run, host=args.host, port=args.port,
                                          api_key=args.api_key, max_concurrent=args.max_concurrent,
                                          max_tokens_limit=args.max_tokens_limit,
                                          max_prompt_tokens=args.max_prompt_tokens,
                                          dequantize=False if args.quantized else None,
                                          header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                                          keepalive_timeout=args.keepalive_timeout,
                                          max_connections=args.max_connections))
    except Cancelled:  # stopped while loading
        return 130
    if not args.json:
        print(f"server on {url} stopped")
    return 0


def cmd_doctor(ws, args, argv) -> int:
    from engine.doctor import doctor_report, format_doctor

    report = doctor_report(ws)
    print(json.dumps(report, indent=2, default=str) if args.json else format_doctor(report))
    return 0


COMMANDS = {"models": cmd_models, "jobs": cmd_jobs, "lora": cmd_lora, "serve": cmd_serve, "doctor": cmd_doctor}
