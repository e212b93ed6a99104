"""CLI verbs of the job runner:

    humanizer jobs list [--json]
    humanizer jobs show ID [--json]
    humanizer jobs cancel ID [--grace SECONDS] [--json]
    humanizer jobs attach ID [--json]"""

from __future__ import annotations

import json

from tui.cli.common import add_json


def register(sub) -> None:
    group = sub.add_parser("jobs", help="list, show, cancel and attach to runs")
    group.set_defaults(handler=cmd_jobs)
    jobs = group.add_subparsers(dest="action", required=True)
    p = jobs.add_parser("list", help="every run in the workspace, newest first")
    add_json(p)
    for name, help_ in (("show", "a run's status and events"),
                        ("cancel", "stop a running job: SIGTERM (it saves a checkpoint), SIGKILL after --grace"),
                        ("attach", "follow a run's events until it ends")):
        p = jobs.add_parser(name, help=help_)
        p.add_argument("id", help="run id (a unique prefix is enough)")
        if name == "cancel":
            p.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                           help="time to stop after SIGTERM before SIGKILL (default 30)")
        add_json(p)


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
        for r in job.ranks:  # a run on several ranks
            print(f"  rank {r.get('rank')}: {r.get('host')}  pid {r.get('pid') or '-'}  {r.get('status')}")
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
