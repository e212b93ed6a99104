"""Small things seen at 80x24 over SSH (issue 11): the footer fits, `?` opens our help with
the user's keys, a bad [keymap] id is named first, checkboxes differ without colour, the
Jobs table names each job, the Adapters details follow the cursor and scroll by key,
messages name remapped keys, the server port is remembered, saved chats get distinct
titles, and ctrl+r says what reached the clipboard. Each driven with Pilot at 80x24."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
from textual.widgets import SelectionList

from tests.pilot import cli_settings, notifications, screen_text, until
from tui.app import HumanizerApp
from tui.keymap import MODES

SIZE = (80, 24)


# the footer and the help -------------------------------------------------------------------
async def test_footer_fits_80_columns_on_every_screen(ws):
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        for mode, _, key in sorted(MODES, key=lambda m: m[0] == "chat"):  # Chat last: its text field takes keys
            await pilot.press(key)

            def drawn() -> bool:  # the footer composed and laid out (it recomposes as bindings change)
                keys = list(app.screen.query("FooterKey"))
                return (app.current_mode == mode and len(keys) > 1 and all(k.region.width for k in keys)
                        and "^p palette" in screen_text(app)[-1])

            await until(pilot, drawn, 10, f"the footer of {mode}")
            keys = list(app.screen.query("FooterKey"))
            palette = [k for k in keys if k.has_class("-command-palette")]
            right = max(k.region.right for k in keys if k not in palette)
            assert right <= palette[0].region.x, (mode, [f"{k.key_display} {k.description}" for k in keys])


async def test_question_mark_shows_our_help_with_the_users_keys(ws):
    ws.config_path.write_text('[keymap]\nadapters_mount = "M"\n')
    app = HumanizerApp(ws, mode="adapters")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", 5, "the help")
        assert not app.query("HelpPanel")  # not Textual's key panel beside the screen
        text = "\n".join(screen_text(app))
        assert "Keys: Adapters" in text
        row = next(r for r in app.screen.rows if r[3] == "adapters_mount")
        assert row[0] == "M" and "running server" in row[2]  # the remapped key, the tooltip
        assert any(r[3] == "toggle_theme" for r in app.screen.rows)  # out of the footer, still here
        await pilot.press("escape")
        assert type(app.screen).__name__ == "AdaptersScreen"
        await pilot.press("f1")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "AdaptersScreen"


async def test_bad_keymap_id_is_named_first_and_briefly(ws):
    ws.config_path.write_text('[keymap]\nadapter_mount = "M"\n')
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        found = notifications(app)
        assert len(found) == 1, found
        msg = found[0]
        assert msg.startswith("[keymap] adapter_mount = 'M'"), msg
        assert "line 2" in msg and "did you mean adapters_mount" in msg and len(msg) < 200, msg
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"


# item 15: the stacks the Server form ticks and Chat starts with ------------------------------
URL = "http://127.0.0.1:8080"


@pytest.fixture
def stacked(ws):
    """The tiny model; an SFT adapter, a DPO delta on it, their exact combination
    (`lora combine`) and a plain copy of the SFT folder."""
    from engine.adapters import model_fingerprint
    from tests.test_serving_screens import _adapter
    from tests.tiny import make_tiny_llama

    tiny = make_tiny_llama(ws.models_dir / "tiny")
    base = {"name": "tiny", "fingerprint": model_fingerprint(tiny)}
    sft = _adapter(ws, "humanizer-sft", "sft", base, 8, {"val_loss": 1.8})
    dpo = _adapter(ws, "humanizer-dpo", "dpo", base, 4, {"val_loss": 0.4},
                   parent={"name": sft.name, "path": str(sft.path), "fingerprint": sft.fingerprint})
    comb = _adapter(ws, "humanizer-sft-dpo", "combined", base, 12, {})
    cfg_path = comb.path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["humanizer"]["combined_from"] = [{"name": a.name, "fingerprint": a.fingerprint, "method": a.method}
                                         for a in (sft, dpo)]
    cfg_path.write_text(json.dumps(cfg))
    shutil.copytree(sft.path, ws.adapters_dir / "sft-copy")
    return ws


async def test_server_form_ticks_the_deepest_stack_and_refuses_repeats(stacked):
    from screens.common.forms import FormDialog
    from tests.pilot import text_of

    app = HumanizerApp(stacked, mode="server")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 10, "the start dialog")
        dialog = app.screen
        assert sorted(dialog.values()["adapters"]) == ["humanizer-dpo", "humanizer-sft"]
        picks = dialog.query_one("#fd-adapters", SelectionList)
        picks.select("humanizer-sft-dpo")
        await pilot.press("ctrl+s")
        errors = text_of(dialog, "#fd-errors")
        assert "'humanizer-sft-dpo' already holds the weights of" in errors, errors
        picks.deselect_all()
        picks.select("humanizer-sft")
        picks.select("sft-copy")
        await pilot.press("ctrl+s")
        assert "'humanizer-sft' and 'sft-copy' have the same weights" in text_of(dialog, "#fd-errors")
        assert isinstance(app.screen, FormDialog)


class StackedServer:
    """The HTTP client's stand-in for a server with sft, dpo and their combination mounted:
    the ids are those the engine lists (its real stacks: tests/test_adapter_hardening.py)."""

    def __init__(self, url, api_key=None, timeout=5.0):
        self.url = url

    home = None

    async def request(self, method, path, body=None):
        names = ["humanizer-sft", "humanizer-dpo", "humanizer-sft-dpo"]
        if path == "/health":
            return {"status": "ok", "model": "tiny", "adapters": names}
        if path == "/v1/adapters":
            from engine.adapters import read_adapter

            data = [{"name": n, "path": str(self.home / "adapters" / n), "method": None,
                     "fingerprint": read_adapter(self.home / "adapters" / n).fingerprint,
                     "is_delta": n == "humanizer-dpo", "parent": "humanizer-sft" if n == "humanizer-dpo" else None}
                    for n in names]
            models = ["base", "humanizer-sft", "humanizer-sft-dpo", "humanizer-sft+humanizer-dpo"]
            return {"data": data, "models": models}
        return {}

    async def get(self, path):
        return await self.request("GET", path)


def fake_serve_job(ws) -> None:
    """A running serve job (this process stands in for it) that has logged its URL."""
    import os

    from engine.events import process_start_time

    run = ws.runs_dir / "20250102-110000-serve-5e7a"
    run.mkdir(parents=True)
    argv = ["humanizer", "serve", "--model", "tiny", "--adapter", "humanizer-sft", "--port", "8080"]
    (run / "job.json").write_text(json.dumps({
        "id": run.name, "kind": "serve", "argv": argv, "settings": cli_settings(argv), "pid": os.getpid(),
        "status": "running", "started": 1.0, "ended": None, "pid_start": process_start_time(os.getpid())}))
    (run / "events.jsonl").write_text(json.dumps({"t": 2.0, "type": "log", "message": "serving", "url": URL}) + "\n")


async def test_chat_starts_with_the_deepest_stack_and_the_hint_shows_real_ids(stacked, monkeypatch):
    from screens.common.serving import ServerMonitor
    from tests.pilot import text_of

    StackedServer.home = stacked.home
    monkeypatch.setattr(ServerMonitor, "client_class", StackedServer)
    fake_serve_job(stacked)
    app = HumanizerApp(stacked, mode="server")
    async with app.run_test(size=SIZE) as pilot:
        mon = ServerMonitor.of(app)
        await until(pilot, lambda: mon.up and "sft" in text_of(app.screen, "#srv-empty"), 10, "the hint with ids")
        hint = text_of(app.screen, "#srv-empty")
        assert '"humanizer-sft"' in hint and '"sft"' not in hint, hint
        await pilot.press("6")
        await until(pilot, lambda: app.current_mode == "chat" and app.screen.choices(), 10, "chat")
        assert app.screen.adapter == "humanizer-sft+humanizer-dpo"  # the deepest, not the last or the combined
        assert app.screen.choices() == ["base", "humanizer-sft", "humanizer-sft-dpo", "humanizer-sft+humanizer-dpo"]
        await until(pilot, lambda: "humanizer-sft+humanizer-dpo" in text_of(app.screen, "#chat-bar"), 5, "the bar")
        assert "humanizer-sft+humanizer-dpo" in text_of(app.screen, "#chat-bar")
        await pilot.press("ctrl+o")  # the next choice: none that repeats weights is offered
        assert app.screen.adapter == "base"


async def test_server_port_is_remembered(stacked):
    import socket

    from screens.common.forms import FormDialog
    from tests.test_serving_screens import _stop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = HumanizerApp(stacked, mode="server")
    job = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, FormDialog), 10, "the start dialog")
            assert app.screen.values()["port"] == "8080"
            app.screen.query_one("#fd-port").value = str(port)
            picks = app.screen.query_one("#fd-adapters", SelectionList)
            picks.deselect_all()
            picks.select("humanizer-sft")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.jobs and app.jobs[0].kind == "serve", 10, "the serve job")
            job = app.jobs[0]
            assert tomllib.loads(stacked.config_path.read_text())["server"] == {
                "host": "127.0.0.1", "port": port, "max_concurrent": 8}
            _stop(stacked, job.id)
            app.poll_jobs()
            await until(pilot, lambda: app.screen.monitor.view.job is None, 10, "the server gone")
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, FormDialog), 10, "the start dialog again")
            assert app.screen.values()["port"] == str(port)
    finally:
        if job is not None:
            _stop(stacked, job.id)


# item 18: Jobs ---------------------------------------------------------------------------------
def fake_job(ws, job_id: str, kind: str, argv: list[str], status: str = "running") -> None:
    import os

    from engine.events import process_start_time

    run = ws.runs_dir / job_id
    run.mkdir(parents=True, exist_ok=True)
    (run / "job.json").write_text(json.dumps({
        "id": job_id, "kind": kind, "argv": argv, "settings": cli_settings(argv), "pid": os.getpid(),
        "status": status, "started": 1.0e9,
        "ended": None if status == "running" else 1.0e9 + 75, "pid_start": process_start_time(os.getpid())}))
    (run / "events.jsonl").touch()


async def test_jobs_table_names_jobs_and_shows_whole_statuses(ws):
    train = ["python", "-m", "tui.cli", "lora", "train", "tiny", "--data", "d", "--output",
             str(ws.adapters_dir / "humanizer-sft")]
    fake_job(ws, "20250102-110000-lora-train-5e7a", "lora train", train)
    fake_job(ws, "20250102-100000-models-pull-0b1c", "models pull",
             ["python", "-m", "tui.cli", "models", "pull", "smollm2-135m"], status="done")
    app = HumanizerApp(ws)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: app.current_mode == "jobs" and app.screen.query_one("#jobs-table").row_count == 2,
                    10, "the jobs")
        job = ws.runs_dir / "20250102-110000-lora-train-5e7a" / "job.json"
        info = json.loads(job.read_text())
        job.write_text(json.dumps({**info, "status": "cancelled", "ended": 1.0e9 + 75}))
        app.poll_jobs()
        await until(pilot, lambda: "⊘ cancelled" in "\n".join(screen_text(app)), 10, "the whole status")
        lines = screen_text(app)
        row = next(line for line in lines if "lora-train-5e7a" in line)
        assert "humanizer-sft" in row and "⊘ cancelled" in row and "1m15s" in row, row
        assert "smollm2-135m" in next(line for line in lines if "models-pull" in line)
        assert " name " in next(line for line in lines if " id " in line)


# item 18: Adapters details ------------------------------------------------------------------------
async def test_adapter_details_follow_the_cursor_and_scroll_by_key(stacked):
    from textual.containers import VerticalScroll

    cfg_path = stacked.adapters_dir / "humanizer-dpo" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["humanizer"]["training"] = {"iters": 300, "preset": "large", "learning_rate": 1e-5, "batch_size": 4,
                                    "beta": 0.1, "dpo_loss": "sigmoid", "data": "datasets/demo-dpo",
                                    "data_fingerprint": "sha256:9f2c4e1a", "seed": 0, "max_seq_length": 2048}
    cfg_path.write_text(json.dumps(cfg))  # as training writes it: the details no longer fit 80x24
    app = HumanizerApp(stacked, mode="adapters")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        table = screen.query_one("#ad-table")
        await until(pilot, lambda: table.row_count == 4, 10, "the adapters")
        detail = screen.query_one("#ad-detail", VerticalScroll)

        def shown() -> str:
            return str(screen.query_one("#ad-detail-text").render()).splitlines()[0]

        await pilot.pause()
        assert shown() == "humanizer-dpo"
        await pilot.press("down")
        await pilot.pause()
        assert shown() == screen.selected().name == "humanizer-sft"  # the cursor, no enter
        await pilot.press("up")
        await pilot.pause()
        assert shown() == "humanizer-dpo" and detail.max_scroll_y > 0
        await pilot.press("d")
        assert detail.has_focus
        await pilot.press("pagedown")
        await until(pilot, lambda: detail.scroll_y > 0, 5, "the details scrolled")
        await pilot.press("escape")
        assert table.has_focus
        await pilot.press("down")
        await pilot.pause()
        assert shown() == "humanizer-sft" and detail.scroll_y == 0  # another adapter: from its top


# item 18: checkboxes without colour --------------------------------------------------------------
async def test_no_color_checkboxes_show_ticked_or_not(stacked, monkeypatch):
    from screens.common.forms import Field, FormDialog

    monkeypatch.setenv("NO_COLOR", "1")
    app = HumanizerApp(stacked, mode="server")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 10, "the start dialog")
        await pilot.pause()
        text = "\n".join(screen_text(app))
        assert "[x] humanizer-dpo" in text and "[ ] humanizer-sft-dpo" in text, text
        await pilot.press("tab")  # from the model to the adapters
        picks = app.screen.query_one("#fd-adapters", SelectionList)
        assert picks.has_focus
        picks.highlighted = 2
        await pilot.press("space")
        await pilot.pause()
        assert "[x] humanizer-sft-dpo" in "\n".join(screen_text(app))
        await pilot.press("escape")
        app.push_screen(FormDialog("Push", [Field("private", "private repo", "check", False)]))
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the form")
        await pilot.pause()
        assert "[ ] private repo" in "\n".join(screen_text(app))
        await pilot.press("space")
        await pilot.pause()
        assert "[x] private repo" in "\n".join(screen_text(app))


# item 18: Chat: titles and the clipboard ---------------------------------------------------------
def saved_chat(ws, cid: str, created: float, first: str, reply: str = "") -> None:
    from engine.chat import Conversation, Message, Reply

    conv = Conversation(cid, created, created + 60)
    conv.messages = [Message("user", first)]
    if reply:
        conv.messages.append(Message("assistant", replies=[Reply("base", reply, "stop", None, 9, 5, 0.2, 0.04)]))
    (ws.home / "chats").mkdir(exist_ok=True)
    (ws.home / "chats" / f"{cid}.json").write_text(conv.to_json())


async def test_saved_chats_get_distinct_titles(ws):
    from screens.common.forms import PickDialog

    ask = "Rewrite this draft so it reads as if a person wrote it, keep the meaning: "
    saved_chat(ws, "20250102-090000-aaaa", 1.0e9, ask + "The committee met on Tuesday.")
    saved_chat(ws, "20250102-090100-bbbb", 1.0e9 + 60, ask + "Our policy is a testament to excellence.")
    saved_chat(ws, "20250102-090200-cccc", 1.0e9 + 120, ask + "Our policy is a testament to excellence.")
    app = HumanizerApp(ws, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, PickDialog), 5, "the conversations")
        titles = [str(label).split("  ")[0] for label, _ in app.screen.options]
        assert len(set(titles)) == 3, titles
        assert any("committee" in t for t in titles) and any(t.endswith("#2") for t in titles), titles


async def test_copy_says_what_reached_the_clipboard_under_tmux(ws, monkeypatch):
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    saved_chat(ws, "20250102-090000-aaaa", 1.0e9, "Rewrite: hello", reply="Hi there, plainly.")
    app = HumanizerApp(ws, mode="chat")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.screen.conv.messages, 5, "the saved conversation")
        await pilot.press("ctrl+r")
        path = ws.home / "clipboard.txt"
        await until(pilot, lambda: any("OSC 52" in m for m in notifications(app)), 5, "the note")
        msg = next(m for m in notifications(app) if "OSC 52" in m)
        assert "set -g set-clipboard on" in msg and "clipboard.txt" in msg and "copied" not in msg, msg
        assert path.read_text() == "Hi there, plainly." == app.clipboard


# item 18: messages name the user's keys ----------------------------------------------------------
async def test_messages_name_the_remapped_keys(ws):
    from tests.pilot import text_of

    ws.config_path.write_text('[keymap]\nmode_models = "f2"\nmode_jobs = "j"\nmodels_pull = "P"\n'
                              'server_start = "S"\nmode_adapters = "a"\n')
    app = HumanizerApp(ws, mode="server")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        status = text_of(app.screen, "#srv-status")
        assert "S: start one" in status and "s: start" not in status, status
        assert "press P to pull" in text_of(app.screen, "StatusBar")
        await pilot.press("S")
        await until(pilot, lambda: any("no models yet" in m for m in notifications(app)), 5, "the message")
        assert "pull or import one in Models (f2)" in notifications(app)[-1], notifications(app)
        await pilot.press("a")
        await until(pilot, lambda: app.current_mode == "adapters", 5, "Adapters")
        await until(pilot, lambda: "no model selected" in text_of(app.screen, "#ad-heading"), 5, "the heading")
        assert "Models (f2)" in text_of(app.screen, "#ad-heading")
        await pilot.press("ctrl+p")
        await pilot.press(*"mode jobs")
        await until(pilot, lambda: "key j" in "\n".join(screen_text(app)), 5, "the palette's hint")



async def test_palette_hints_and_the_model_prompt_name_the_remapped_keys(ws):
    from textual.widgets import Select

    ws.config_path.write_text('[keymap]\nmode_models = "f2"\ntrain_start = "f5"\ntrain_new = "N"\n')
    app = HumanizerApp(ws, mode="train")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        prompt = str(app.screen.query_one("#f-model", Select).prompt)
        assert "Models (f2)" in prompt and "(1)" not in prompt, prompt
        hints = {name: hint for name, hint, _ in app.screen.palette_commands()}
        assert hints["Start training"] == "with the form's settings (f5)", hints
        assert hints["New training run"] == "go to the form (N)", hints


def test_every_check_box_marks_its_state_in_text():
    """Every form check box is a TickBox ([x] / [ ]): a plain Checkbox looks the same ticked or
    not under NO_COLOR (the Convert form's resume box did)."""
    import re
    from pathlib import Path

    plain = [f"{p.name}:{n}" for p in sorted(Path("screens").glob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bCheckbox\(\s*['\"]", line)]
    assert plain == [], plain
