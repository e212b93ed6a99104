"""Issue 11 hardening, driven with Pilot at 80x24 (an SSH terminal, keyboard only): Train and
Convert keep their charts reachable, typing in Chat never quits or switches modes, quitting
with unsent text or a running server asks first, the Models screen follows finished jobs."""

from __future__ import annotations

import json

from engine.events import Run
from screens.models.screen import ModelsScreen
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


# Chat: typing never quits or switches; quitting asks first ------------------------------------------
async def test_typing_in_the_chat_transcript_is_text_not_commands(ws):
    """With the transcript focused (esc from the input), a sentence with q and digits goes to
    the input: the app still runs, in Chat."""
    app = HumanizerApp(ws, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert screen.query_one("#chat-input").has_focus
        await pilot.press("escape")
        assert screen.query_one("#transcript").has_focus
        await pilot.press(*"q3 quits 1 time", "space", "9")
        await pilot.pause()
        assert app.return_code is None and app.current_mode == "chat" and app.screen is screen
        assert screen.query_one("#chat-input").text == "q3 quits 1 time 9"
        assert screen.query_one("#chat-input").has_focus
        await pilot.press("escape", "5")  # a digit alone, too
        assert app.current_mode == "chat" and screen.query_one("#chat-input").text.endswith("95")
        assert not [b for b in app.screen.active_bindings.values() if b.binding.action in ("quit", "mode('models')")
                    and b.binding.key in ("q", "1")]  # not offered in the footer either


async def test_chat_letter_keys_are_text_with_nothing_to_judge(ws):
    """t and h judge an A/B pair and toggle blind mode only when there is A/B: a sentence
    that starts with them, typed in the transcript, reaches the input whole."""
    app = HumanizerApp(ws, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("escape")
        assert screen.query_one("#transcript").has_focus and not screen.judging()
        await pilot.press("t")
        await pilot.press(*"his", "space", *"bash")
        assert screen.query_one("#chat-input").text == "this bash"
        assert not screen.conv.blind


async def test_quit_with_unsent_chat_text_asks_first(ws):
    from tui.app import QuitDialog

    app = HumanizerApp(ws, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press(*"half a thought")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, QuitDialog), 5, "the quit confirm")
        assert "not sent" in str(app.screen.query_one("Static").render())
        await pilot.press("n")
        await until(pilot, lambda: app.screen is screen, 5, "back in Chat")
        assert app.return_code is None and screen.query_one("#chat-input").text == "half a thought"
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, QuitDialog), 5, "the quit confirm")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, 5, "back in Chat")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, QuitDialog), 5, "the quit confirm")
        await pilot.press("enter")
        await until(pilot, lambda: app.return_code == 0, 5, "the app to quit")


async def test_quit_asks_while_a_server_runs_and_not_otherwise(ws):
    from tui.app import QuitDialog

    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await until(pilot, lambda: app.return_code == 0, 5, "a plain quit")
    run = Run.create(ws.runs_dir, "serve", ["humanizer", "serve", "--model", "tiny"]).start()
    try:
        app = HumanizerApp(ws)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, QuitDialog), 5, "the quit confirm")
            assert run.id in str(app.screen.query_one("Static").render())
            await pilot.press("y")
            await until(pilot, lambda: app.return_code == 0, 5, "the app to quit")
    finally:
        run.finish("done")


# Train and Convert: the charts are always in reach ---------------------------------------------------
def _on_screen(app, widget) -> bool:
    """Shown and wholly inside the terminal (not scrolled away, not hidden behind another pane)."""
    region = widget.region
    return widget.display and widget.visible and region.area > 0 and app.screen.region.contains_region(region)


async def test_train_at_80x24_switches_between_charts_and_form(ws):
    from tests.test_train_screen import T0, _run_dir, _sft_events

    (ws.models_dir / "tiny").mkdir()
    (ws.models_dir / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    _run_dir(ws, "20250102-090000-lora-train-sft-3f9a", "lora train sft",
             ["humanizer", "lora", "train", str(ws.models_dir / "tiny"), "--data", "/data/sft", "--method", "sft",
              "--iters", "200", "--output", str(ws.adapters_dir / "sft")], _sft_events(T0), "done", T0, T0 + 400)
    app = HumanizerApp(ws, mode="train")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.shown in screen.histories and screen.query_one("#charts").display, 10,
                    "the run's charts")
        await pilot.pause(0.2)
        loss, table = screen.query_one("#chart-loss"), screen.query_one("#runs-table")
        assert table.has_focus and _on_screen(app, loss) and _on_screen(app, table)
        await pilot.press("n")  # the form: alone on the screen
        await pilot.pause(0.2)
        assert screen.query_one("#f-model").has_focus and not _on_screen(app, loss)
        await pilot.press("ctrl+g")  # the key that brings the charts back
        await pilot.pause(0.2)
        assert table.has_focus and _on_screen(app, loss) and _on_screen(app, screen.query_one("#chart-tps"))
        await pilot.press("ctrl+g", "tab", "tab")  # moving through the form keeps the form shown
        await pilot.pause(0.2)
        assert screen.pane == "form" and not _on_screen(app, loss)
        await pilot.press("escape")  # back to the runs, charts included
        await pilot.pause(0.2)
        assert table.has_focus and _on_screen(app, loss)
        footer_keys = {b.binding.key for b in screen.active_bindings.values() if b.enabled}
        assert "ctrl+g" in footer_keys
    async with HumanizerApp(ws, mode="train").run_test(size=(120, 40)) as pilot:  # wide: both, no key
        screen = pilot.app.screen
        await pilot.pause(0.3)
        assert "ctrl+g" not in {b.binding.key for b in screen.active_bindings.values() if b.enabled}
        assert _on_screen(pilot.app, screen.query_one("#f-model")) and _on_screen(pilot.app, screen.query_one("#charts"))


async def test_convert_at_80x24_switches_between_grid_and_form(ws):
    from tests.test_convert_screen import finished_convert
    from tests.tiny import make_tiny_llama

    make_tiny_llama(ws.models_dir / "tiny")
    finished_convert(ws)
    app = HumanizerApp(ws, mode="convert")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.shown in screen.histories and "L1" in str(
            screen.query_one("#cv-grid").render()), 10, "the grid")
        grid = screen.query_one("#cv-grid")
        await pilot.press("n")
        await pilot.pause(0.2)
        assert screen.query_one("#f-model").has_focus and not _on_screen(app, grid)
        await pilot.press("ctrl+g")
        await pilot.pause(0.2)
        main = screen.query_one("#cv-main")
        assert main.has_focus and main.scroll_y == 0 and _on_screen(app, grid)
        await pilot.press("pagedown")  # the run pane scrolls with the keys (the sensitivity list below)
        await pilot.pause(0.2)
        assert main.scroll_y > 0
        await pilot.press("ctrl+g")
        await pilot.pause(0.2)
        assert screen.pane == "form" and _on_screen(app, screen.query_one("#f-start"))


async def test_narrowing_the_terminal_shows_the_pane_with_the_focus(ws):
    """Typing in the form at 120 columns, then the terminal narrows to 80: the form stays on screen."""
    from tests.test_convert_screen import finished_convert
    from tests.tiny import make_tiny_llama

    make_tiny_llama(ws.models_dir / "tiny")
    finished_convert(ws)
    app = HumanizerApp(ws, mode="convert")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.shown in screen.histories, 10, "the convert")
        await pilot.press("n")
        await pilot.resize_terminal(*SIZE)
        await until(pilot, lambda: screen._narrow and screen.pane == "form", 5, "the form pane")
        assert screen.query_one("#f-model").has_focus and _on_screen(app, screen.query_one("#f-model"))
