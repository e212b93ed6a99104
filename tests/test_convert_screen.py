"""The Convert screen (mode 7): a real tiny convert started from the form fills the layer
grid and shows the final numbers; a restarted app shows the finished convert with its
whole history; a target outside the candidates' range is refused inline; the pure
renderers; snapshots at 80x24 and 120x40 of a deterministic finished convert."""

from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest

from engine.events import Run
from engine.jobs import find_job, list_jobs
from engine.workspace import Workspace
from screens.convert.screen import ConvertScreen
from screens.convert.widgets import ConvertHistory, render_gauge, render_grid
from tests.pilot import cli_settings, text_of, until
from tests.tiny import make_tiny_llama
from tui.app import HumanizerApp

MODULES = ("q", "k", "v", "o", "gate", "up", "down")


def _layer_events(blocks: int = 2, bits=(4, 8)) -> list[dict]:
    """layer events as engine.convert writes them: measured (chosen None), then allocated."""
    layers = [{"path": "model.embed_tokens", "module": "embedding", "modules": ["embedding", "head"], "block": None,
               "kind": "embedding", "roles": ["embedding", "head"], "params": 24576, "shape": [384, 64],
               "group_size": 64, "note": None}]
    for b in range(blocks):
        for i, m in enumerate(MODULES):
            layers.append({"path": f"model.layers.{b}.{'mlp' if i > 3 else 'self_attn'}.{m}_proj", "module": m,
                           "modules": [m], "block": b, "kind": "linear", "roles": [m], "params": 4096,
                           "shape": [64, 64], "group_size": 64, "note": None})
    out = []
    for idx, layer in enumerate(layers):
        s = 1e-4 * (1 + idx % 5) * (3 if layer["module"] in ("v", "down", "embedding") else 1)
        sens = {str(bits[0]): s, str(bits[-1]): s / 200}
        out.append(("measured", {**layer, "phase": "measured", "index": idx, "total": len(layers),
                                 "bits_measured": list(bits), "sensitivity": sens, "chosen_bits": None}))
    for idx, (_, ev) in enumerate(list(out)):
        chosen = bits[-1] if ev["module"] in ("v", "down", "embedding") else bits[0]
        out.append(("allocated", {**ev, "phase": "allocated", "chosen_bits": chosen,
                                  "bpw": chosen + 0.5}))
    return [ev for _, ev in out]


def finished_convert(ws: Workspace, name: str = "tiny-5bpw", done: bool = True) -> str:
    argv = ["humanizer", "convert", str(ws.models_dir / "tiny"), "--target-bpw", "5", "--candidate-bits", "4,8",
            "--group-size", "64", "--output", str(ws.models_dir / name)]
    run = Run.create(ws.runs_dir, "convert", argv, cli_settings(argv))
    layers = _layer_events()
    with run:
        for ev in layers[: len(layers) // 2]:
            run.emit("layer", **ev)
            run.progress(ev["index"] + 1, ev["total"], f"measured {ev['path']}", eta=0.0, phase="measure")
        for ev in layers[len(layers) // 2:]:
            run.emit("layer", **ev)
        run.metric(15, achieved_bpw=4.9512, target_bpw=5.0, predicted_kl=0.0012, size_mb=0.061)
        if done:
            run.done(output=str(ws.models_dir / name), target_bpw=5.0, achieved_bpw=4.9512, size_bytes=107988,
                     size_mb=0.11, ppl_source=12.345, ppl_result=12.6, ppl_increase_pct=2.07,
                     kl_source_result=0.0031, heldout_tokens=1984)
    return run.id


# pure pieces ---------------------------------------------------------------------------------
def test_grid_gauge_and_settings():
    h = ConvertHistory(SimpleNamespace(id="x", settings={"model": "m", "candidate_bits": "4,8"}))
    events = _layer_events()
    for ev in events[:4]:  # measured: ?, not yet: ·
        h.layers[ev["path"]] = ev
    lines = render_grid(h).plain.split("\n")
    assert lines[0].split() == ["q", "k", "v", "o", "gate", "up", "down", "emb", "head"]
    assert lines[1].split() == ["model", "?", "?"]  # tied embedding: both columns
    assert lines[2].split() == ["L0", "?", "?", "?", "·", "·", "·", "·"]
    for ev in events[15:]:
        h.layers[ev["path"]] = ev
    lines = render_grid(h).plain.split("\n")
    assert lines[1].split() == ["model", "8", "8"] and lines[3].split() == ["L1", "4", "4", "8", "4", "4", "4", "8"]
    g = render_gauge(4.75, 5.0, 4.5, 8.5, width=17).plain
    assert g.startswith("4.5 ") and g.endswith(" 8.5") and "┃" in g and g.count("━") == 2


async def test_the_grid_fills_in_while_the_calibration_pass_runs(ws):
    """A running convert: the estimates made during the calibration pass show as provisional
    bits (~4, ~8) and sensitivities at once; measured layers then replace them live."""
    argv = ["humanizer", "convert", str(ws.models_dir / "tiny"), "--target-bpw", "5", "--candidate-bits", "4,8",
            "--output", str(ws.models_dir / "live")]
    run = Run.create(ws.runs_dir, "convert", argv, cli_settings(argv)).start()
    layers = _layer_events()[:15]
    for ev in layers:
        bits = 8 if ev["module"] in ("v", "down", "embedding") else 4
        run.emit("layer", **{**ev, "phase": "estimate", "chosen_bits": bits, "samples": 3, "of": 30})
    run.progress(3, 30, "calibration pass: sample 3/30", eta=60.0, phase="statistics")
    try:
        app = HumanizerApp(ws, mode="convert")
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await until(pilot, lambda: "~8" in text_of(screen, "#cv-grid"), 10, "the provisional bits")
            grid = text_of(screen, "#cv-grid").split("\n")
            assert grid[1].split() == ["model", "~8", "~8"] and grid[2].split()[1:] == ["~4", "~4", "~8", "~4",
                                                                                          "~4", "~4", "~8"]
            sens = text_of(screen, "#cv-sens")
            assert "estimated from 3/30 calibration samples" in sens and "~ 4" in sens and "~ 8" in sens
            for ev in layers[:2]:
                run.emit("layer", **ev)  # measured, not allocated yet
            run.progress(2, 15, "measured", phase="measure")
            await until(pilot, lambda: "measuring layers" in text_of(screen, "#cv-title"), 10, "the measure phase")
            assert "2/15 layers" in text_of(screen, "#cv-title")
            assert text_of(screen, "#cv-grid").split("\n")[2].split()[1] == "~4"  # provisional until allocated
    finally:
        run.finish("cancelled")


# a real tiny convert from the form --------------------------------------------------------------
async def test_convert_from_the_form_and_restart(ws):
    make_tiny_llama(ws.models_dir / "tiny")
    job_id = None
    try:
        app = HumanizerApp(ws)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("7")
            screen = app.screen
            assert isinstance(screen, ConvertScreen) and app.current_mode == "convert"
            await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
            await until(pilot, lambda: "bpw ≈" in text_of(screen, "#f-plan"), 10, "what the target means in MB")
            assert "–8.500 bpw here" in text_of(screen, "#f-plan")
            assert screen.query_one("#f-output").value == "tiny-5.0bpw"
            # a bad target: below the smallest candidate (4-bit at group 64 costs 4.5)
            screen.query_one("#f-target").value = "3"
            await pilot.pause()
            await pilot.press("ctrl+s")
            errors = text_of(screen, "#f-errors")
            assert "target 3 bits per weight is below the smallest candidate" in errors
            assert screen.focused.id == "f-target" and not list_jobs(ws)
            screen.query_one("#f-target").value = "9"
            await pilot.pause()
            await pilot.press("ctrl+s")
            assert "above the largest candidate" in text_of(screen, "#f-errors") and not list_jobs(ws)
            screen.query_one("#f-target").value = "6"
            screen.query_one("#f-output").value = "tiny-mixed"
            screen.query_one("#f-samples").value = "4"
            screen.query_one("#f-seqlen").value = "32"
            await pilot.pause()
            await pilot.press("ctrl+s")
            await until(pilot, lambda: screen.shown is not None, 5, "the convert to start")
            job_id = screen.shown
            args = find_job(ws, job_id).settings
            assert args["target_bpw"] == 6 and args["samples"] == 4 and args["output"].endswith("tiny-mixed")
            h = screen.histories[job_id]
            await until(pilot, lambda: h.final and "Result" in text_of(screen, "#cv-result"), 40,
                        "the convert to finish")
            assert find_job(ws, job_id).status == "done", text_of(screen, "#cv-title")
            grid = text_of(screen, "#cv-grid").split("\n")
            assert len(grid) == 4 and "?" not in "".join(grid) and "·" not in "".join(grid)
            assert set("".join(grid[2].split()[1:])) <= {"4", "8"}
            result = text_of(screen, "#cv-result")
            assert "size on disk" in result and "achieved" in result and "held-out perplexity" in result
            assert "✓ done" in text_of(screen, "#cv-title") and "15/15 layers" in text_of(screen, "#cv-title")
            assert "→ 4" in text_of(screen, "#cv-sens") or "→ 8" in text_of(screen, "#cv-sens")

        app = HumanizerApp(ws, mode="convert")  # restarted: the finished convert from runs/
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await until(pilot, lambda: screen.shown == job_id and "Result" in text_of(screen, "#cv-result"), 10,
                        "the finished convert")
            assert len(screen.histories[job_id].layers) == 15
            assert "held-out perplexity" in text_of(screen, "#cv-result")
    finally:
        if job_id and find_job(ws, job_id).running:
            os.killpg(find_job(ws, job_id).pid, signal.SIGKILL)


async def test_the_hint_shows_a_floor_the_form_accepts(ws):
    """The least target in the hint is rounded up to 3 decimals: typed in, it passes the form's
    check; 0.001 less is refused with the same number."""
    import re

    make_tiny_llama(ws.models_dir / "tiny")
    app = HumanizerApp(ws, mode="convert")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: "bpw ≈" in text_of(screen, "#f-plan"), 10, "the plan hint")
        floor = re.search(r"(\d\.\d{3})–(\d\.\d{3}) bpw here", text_of(screen, "#f-plan")).group(1)
        screen.query_one("#f-target").value = f"{float(floor) - 0.001:.3f}"
        await pilot.pause()
        _, errors = screen.validate_form()
        assert [m for f, m in errors if f == "f-target" and f"at least {floor} bits" in m], errors
        screen.query_one("#f-target").value = floor
        await pilot.pause()
        _, errors = screen.validate_form()
        assert not [m for f, m in errors if f == "f-target"], errors


async def test_the_form_is_made_from_convert_settings(ws):
    """The form's fields are ConvertSettings' form fields, with its defaults and the values it
    offers, and each shows its flag's help while focused; what the form starts is the settings'
    argv(), which the `convert` flags (made from the same fields) parse back to the same settings."""
    import argparse
    from dataclasses import fields

    from textual.widgets import Select

    from engine.convert.settings import ConvertSettings, setting_fields
    from screens.convert.form import FIELDS, field_id
    from tui.cli.convert import register

    assert [f.name for f in FIELDS] == [f.name for f in setting_fields(form_only=True)]
    make_tiny_llama(ws.models_dir / "tiny")
    app = HumanizerApp(ws, mode="convert")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
        defaults = {f.name: f.default for f in FIELDS}
        group = screen.query_one(f"#{field_id('group_size')}", Select)
        offered = next(f for f in FIELDS if f.name == "group_size").metadata["options"]
        assert [v for _, v in group._options] == list(offered) and group.value == defaults["group_size"]
        assert screen.query_one(f"#{field_id('candidate_bits')}").value == defaults["candidate_bits"]
        for name in ("samples", "seq_len"):
            assert screen.query_one(f"#{field_id(name)}").placeholder.startswith(f"{defaults[name]} ")
        assert screen.query_one(f"#{field_id('resume')}").value is defaults["resume"]
        screen.query_one("#f-target").focus()
        await pilot.pause()
        assert screen.query_one("#help-target_bpw").display and not screen.query_one("#help-samples").display
        assert "--target-bpw BPW: bits per weight to reach" in text_of(screen, "#help-target_bpw")

        screen.query_one(f"#{field_id('seq_len')}").value = "64"
        screen.query_one(f"#{field_id('candidate_bits')}").value = "8,4,2"
        screen.query_one(f"#{field_id('output')}").value = "tiny-x"
        await pilot.pause()
        settings, errors = screen.validate_form()
        assert not errors and isinstance(settings, ConvertSettings)
        assert (settings.seq_len, settings.samples, settings.candidate_bits) == (64, defaults["samples"], [2, 4, 8])
        parser = argparse.ArgumentParser(prog="humanizer")
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["convert", "tiny", *settings.argv()])
        assert ConvertSettings(**{f.name: getattr(args, f.name) for f in fields(ConvertSettings)}).check() == settings


# snapshots ----------------------------------------------------------------------------------------
T0 = 1735808400.0


@pytest.fixture
def studio(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setenv("HOME", str(tmp_path))
    ws = Workspace.open(tmp_path / ".humanizer")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    make_tiny_llama(ws.models_dir / "tiny")
    run_id = finished_convert(ws)
    d = ws.runs_dir / run_id
    info = json.loads((d / "job.json").read_text())
    info.update(id="20250102-090000-convert-3f9a", started=T0, ended=T0 + 95, pid=999999, host="studio")
    (d / "job.json").write_text(json.dumps(info))
    lines = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()]
    (d / "events.jsonl").write_text("".join(json.dumps({**e, "t": T0 + i}) + "\n" for i, e in enumerate(lines)))
    d.rename(ws.runs_dir / "20250102-090000-convert-3f9a")
    yield ws
    monkeypatch.undo()
    time.tzset()


def _settled():
    async def run_before(pilot) -> None:
        screen = pilot.app.screen
        await until(pilot, lambda: screen.shown in screen.histories and screen._value("f-model"), 10, "the run")
        await until(pilot, lambda: "bpw" in text_of(screen, "#f-plan"), 10, "the plan hint")
        await pilot.pause(0.5)
        await pilot.wait_for_scheduled_animations()
    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_convert_screen_snapshot(snap_compare, studio, size):
    app = HumanizerApp(studio, clock=lambda: T0 + 3600, mode="convert")
    assert snap_compare(app, terminal_size=size, run_before=_settled())


def test_convert_screen_narrow_grid_back_from_the_form(snap_compare, studio):
    """80x24: n shows the form (alone), ctrl+g brings the grid back, scrolled to its top."""
    async def run_before(pilot) -> None:
        await _settled()(pilot)
        await pilot.press("n", "ctrl+g")
        await pilot.pause(0.5)
        await pilot.wait_for_scheduled_animations()

    app = HumanizerApp(studio, clock=lambda: T0 + 3600, mode="convert")
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
