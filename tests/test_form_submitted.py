"""A new-run form starts nothing itself: ctrl+s posts its Submitted message with the values it
checked and the job's arguments, and the screen holding the form starts the job. Here the
screen's handler is replaced by one that only records the message."""

from __future__ import annotations

from engine.data.settings import BuildSettings
from screens.data.form import DataForm
from screens.data.screen import DataScreen
from screens.train.screen import TrainScreen
from tests.pilot import text_of, until
from tests.test_data_screen import CLASSICS, _jsonl, _table_ready, data_ws, fake_start_job  # noqa: F401 (fixture)
from tui.app import HumanizerApp


def _record(monkeypatch, screen_class, handler: str) -> list:
    posted: list = []
    monkeypatch.setattr(screen_class, handler, lambda self, message: posted.append(message))
    return posted


async def test_data_form_posts_submitted_with_its_settings(data_ws, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("screens.common.launch.start_job", fake_start_job(calls))
    posted = _record(monkeypatch, DataScreen, "on_data_form_submitted")
    pairs = tmp_path / "pairs.jsonl"
    _jsonl(pairs, [{"text": human, "text_type": "human_written", "source_id": doc} for doc, human, _ in CLASSICS])
    app = HumanizerApp(data_ws, mode="data")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, _table_ready(screen), 10, "the datasets")
        screen.query_one("#f-template").value = "paired"
        await pilot.pause()
        screen.query_one("#f-source").focus()
        await pilot.press(*str(pairs))
        screen.query_one("#f-heldout").value = "1"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: posted, 5, "the Submitted message")
        (message,) = posted
        assert isinstance(message, DataForm.Submitted) and isinstance(message.values, BuildSettings)
        s = message.values
        assert (s.template, s.source, s.output, s.heldout) == ("paired", str(pairs), "pairs.jsonl-paired", 1)
        assert message.kind == "data build" and message.args == ["data", "build", *s.argv()]
        assert calls == [] and screen.shown is None  # the form started nothing: starting is the screen's
        assert not text_of(screen, "#f-errors")


async def test_train_form_posts_submitted_with_its_values(data_ws, monkeypatch):
    calls: list = []
    monkeypatch.setattr("screens.common.launch.start_job", fake_start_job(calls))
    posted = _record(monkeypatch, TrainScreen, "on_train_form_submitted")
    app = HumanizerApp(data_ws, mode="train")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
        screen.query_one("#f-data").focus()
        await pilot.press(*"chat-picks")
        await until(pilot, lambda: "2 rows · DPO" in text_of(screen, "#preview-summary"), 10, "the preview")
        screen.query_one("#f-output").value = "picks-dpo"
        screen.query_one("#f-iters").value = "5"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: posted, 5, "the Submitted message")
        (message,) = posted
        v = message.values
        assert (v["model"], v["data"], v["method"], v["iters"]) == (
            str(data_ws.models_dir / "smollm2-135m"), "chat-picks", "dpo", 5)
        assert v["output"] == data_ws.adapters_dir / "picks-dpo"
        assert message.kind == "lora train dpo"
        assert message.args[:2] == ["lora", "train"] and message.args[message.args.index("--output") + 1] == str(
            data_ws.adapters_dir / "picks-dpo")
        assert calls == []
