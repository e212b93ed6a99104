"""What the verb modules share: the --json flag, flags made from a settings dataclass, the
parser class of the verbs, and running a long verb as a recorded run with live progress."""

from __future__ import annotations

import argparse
from dataclasses import MISSING


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (events as JSON lines)")


def add_settings_arguments(p: argparse.ArgumentParser, settings_fields) -> None:
    """One flag per settings field: type, default, choices and help from the dataclass."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in settings_fields:
        meta = f.metadata
        group = groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING
        if f.type in (bool, "bool"):
            group.add_argument(flag, action="store_true", help=meta["help"].replace("%", "%%"))
            continue
        type_name = (f.type if isinstance(f.type, str) else f.type.__name__).split("|")[0].strip()  # int | None
        kind = {"int": int, "float": float, "str": str}.get(type_name, str)
        default_text = "" if required or f.default in ("", None) else f" (default {f.default})"
        group.add_argument(flag, type=kind, required=required, choices=meta.get("choices"),
                           default=None if required else f.default, metavar=meta.get("metavar"),
                           help=(meta["help"] + default_text).replace("%", "%%"))


class VerbParser(argparse.ArgumentParser):
    """The class of the verbs' parsers (add_subparsers(parser_class=...)). Given `verbs`, a
    first argument naming one of them hands the rest to that parser (its own flags and
    --help): how `detect FILE...` and `detect calibrate ...` share one name."""

    verbs: dict[str, argparse.ArgumentParser] = {}  # an instance assigns its own

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] in self.verbs:
            return self.verbs[args[0]].parse_known_args(list(args[1:]), namespace)
        return super().parse_known_args(args, namespace)


def run_long(ws, kind: str, argv: list[str], as_json: bool, work, human_view=None):
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
