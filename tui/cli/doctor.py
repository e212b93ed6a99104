"""CLI verb of the platform report:

    humanizer doctor [--json]"""

from __future__ import annotations

import json

from tui.cli.common import add_json


def register(sub) -> None:
    p = sub.add_parser("doctor", help="platform, MLX device, BLAS in use, workspace, models")
    p.set_defaults(handler=cmd_doctor)
    add_json(p)


def cmd_doctor(ws, args, argv) -> int:
    from engine.doctor import doctor_report, format_doctor

    report = doctor_report(ws)
    print(json.dumps(report, indent=2, default=str) if args.json else format_doctor(report))
    return 0
