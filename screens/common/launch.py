"""Starting `humanizer` verbs as jobs: the one place that knows how the CLI is run.

The engine's job runner starts any command line (engine.jobs.start_job); the screens, the
app and the CLI's demo start the CLI's own verbs through here, so engine/ never names the
UI. This module imports no Textual: the CLI uses it too."""

from __future__ import annotations

import sys

from engine.jobs import JobInfo, start_job


def humanizer_argv(*args: str) -> list[str]:
    """The command line that runs `humanizer ARGS` with this interpreter (the CLI's entry point)."""
    return [sys.executable, "-m", "tui.cli", *args]


def start_verb(ws, kind: str, args: list[str], settings: dict | None = None, env: dict | None = None) -> JobInfo:
    """Start `humanizer ARGS` as a job. `settings`: what a screen needs to show the job at once
    (JSON values, no secrets, keyed as the verb's flags' argparse names); the child records its
    resolved settings over them when it starts."""
    return start_job(ws, kind, humanizer_argv(*args), env=env, settings=settings)
