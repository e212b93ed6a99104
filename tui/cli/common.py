"""What the verb modules share: the --json flag, flags made from a settings dataclass, the
parser class of the verbs, and running a long verb as a recorded run with live progress."""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from dataclasses import MISSING

# Parser entries that say how the CLI runs, not what the verb does.
INTERNAL = ("handler", "command", "action", "corpus_action", "json", "home")
SECRETS = ("api_key", "token")  # recorded only as whether one is set
_verb_settings: dict | None = None  # this process's verb, set once by main() after parsing


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


def for_engine(settings):
    """A verb's settings as the engine gets them: --nproc/--hosts say where the CLI runs the work,
    not what it does, so they are left at their defaults (a dataset's manifest, an eval's report
    and a resume's check are the same whatever the rank count)."""
    from dataclasses import fields, replace

    from engine.distributed.settings import RANK_FIELDS

    return replace(settings, **{f.name: f.default for f in fields(settings) if f.name in RANK_FIELDS})


def verb_settings(args: argparse.Namespace) -> dict:
    """The verb's resolved settings (argparse's namespace, defaults filled) as job.json keeps
    them: JSON values, no parser internals, and for a secret only `NAME_set`."""
    out: dict = {}
    for key, value in vars(args).items():
        if key in INTERNAL or key.endswith("_action") or callable(value):
            continue
        if key in SECRETS:
            out[f"{key}_set"] = bool(value)
            continue
        out[key] = value
    return json.loads(json.dumps(out, default=str))


@contextmanager
def remember_settings(args: argparse.Namespace):
    """Around main()'s call of the verb's handler: run_long records these settings."""
    global _verb_settings
    _verb_settings = verb_settings(args)
    try:
        yield
    finally:
        _verb_settings = None


def run_long(ws, kind: str, argv: list[str], as_json: bool, work, human_view=None):
    """Run `work(run)` recorded as a run, showing its events live. `human_view(printer)`
    may wrap the printer for the human-readable view (--json always prints every event).

    A verb with --nproc/--hosts (engine.distributed.settings) asked for several ranks becomes
    their supervisor (engine.distributed.launch): the ranks run this same command line without
    those flags. Launched as a rank, rank 0 records into the supervisor's run as a run on one
    process does (HUMANIZER_RUN_DIR) and the others record nothing, then exit after the work:
    what the verb prints of its result is rank 0's."""
    from engine.distributed.launch import launched
    from engine.distributed.settings import Ranks
    from engine.events import open_run
    from tui.progress import EventPrinter

    ranks = Ranks.of(_verb_settings)
    if ranks is not None and ranks.spread and not launched():
        return _supervise(ws, kind, argv, as_json, ranks, human_view)
    found = _rank_record() if ranks is not None and launched() else None
    if found is not None and found[0] != 0:
        from engine.events import RankRun

        with RankRun() as quiet:
            work(quiet)
        raise SystemExit(0)
    run = open_run(ws.runs_dir, kind, ["humanizer", *argv], settings=_verb_settings)
    with EventPrinter(as_json) as printer:
        run.listeners.append(printer if as_json or human_view is None else human_view(printer))
        with run:
            if found is not None:
                run.record_ranks(found[1])
            result = work(run)
            run.done(result=str(result))
            return result


def _rank_record() -> tuple[int, list[dict]] | None:
    """(this rank, every rank's rank, host, pid and pid start) gathered over the ranks; None in a
    world of one."""
    import os
    import socket

    from engine.distributed.world import gather_objects, world
    from engine.events import process_start_time

    w = world()
    if w.size == 1:
        return None
    me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
    return w.rank, [{"rank": r, **x} for r, x in enumerate(gather_objects(me, w))]


def _supervise(ws, kind: str, argv: list[str], as_json: bool, ranks, human_view=None):
    """This process stands for the run; the ranks run `python -m tui.cli ARGV` without --nproc/--hosts."""
    import sys
    from pathlib import Path

    from engine.distributed.launch import Supervisor, strip_rank_flags
    from engine.events import current_run_dir, open_run
    from tui.progress import EventPrinter

    ranks.check()
    as_job = current_run_dir() is not None  # stdout is the job's log.txt already: the ranks' output goes there
    run = open_run(ws.runs_dir, kind, ["humanizer", *argv], settings=_verb_settings).start()
    command = [sys.executable, "-m", "tui.cli", *strip_rank_flags(argv)]
    with EventPrinter(as_json) as printer:
        show = None if as_job else (printer if as_json or human_view is None else human_view(printer))
        result = Supervisor(run, ranks, command, show)()
    return Path(result) if result else result
