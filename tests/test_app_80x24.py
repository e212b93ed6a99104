"""Issue 11 hardening, driven with Pilot at 80x24 (an SSH terminal, keyboard only): Train and
Convert keep their charts reachable, typing in Chat never quits or switches modes, quitting
with unsent text or a running server asks first, the Models screen follows finished jobs."""

from __future__ import annotations

import json

from engine.events import Run
from screens.models import ModelsScreen
from tests.pilot import until
from tui.app import HumanizerApp

SIZE = (80, 24)


def fake_model(ws, name: str) -> None:
    d = ws.models_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "model.safetensors").write_bytes(b"\0" * 16)


async def test_models_refresh_when_a_convert_finishes(ws):
    """A convert (from the Convert screen, another app or the CLI) that finishes puts its model
    in the Models table without r."""
    fake_model(ws, "base")
    run = Run.create(ws.runs_dir, "convert", ["humanizer", "convert", "base", "--output", "base-5bpw"]).start()
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, ModelsScreen)
        await until(pilot, lambda: [m.name for m in screen.models] == ["base"], 5, "the first listing")
        fake_model(ws, "base-5bpw")
        await pilot.pause(0.6)
        assert [m.name for m in screen.models] == ["base"]  # nothing re-reads models/ while it runs
        run.finish("done")
        await until(pilot, lambda: "base-5bpw" in [m.name for m in screen.models], 5, "the converted model")
        assert screen.query_one("#models-table").row_count == 2
