"""The Adapters (4), Server (5) and Chat (6) screens, driven with Pilot against a real
`humanizer serve` job on a tiny llama with an SFT adapter and a DPO delta stacked on it:
the adapter list and details, a combine job from its dialog, mount/unmount over HTTP;
starting and stopping the server and its live request log; chat streaming, cycling the
adapter (the pane's label and the server's log both change), Esc stopping a reply, A/B
side by side, copy, saved conversations, and the offer to start a server. Snapshots at
80x24 and 120x40 of each screen on a fixed workspace (a stand-in for the HTTP client
there, so the live numbers are fixed too)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request

import numpy as np
import pytest

from engine.events import process_start_time, read_events
from engine.jobs import cancel_job, find_job, job_info, list_jobs
from engine.serve.client import ServerClient
from engine.workspace import Workspace
from screens.adapters.screen import AdaptersScreen
from screens.chat.screen import ChatScreen
from engine.chat import Conversation, list_conversations
from screens.chat.widgets import PairView, ReplyView, printable
from screens.common.forms import FormDialog, PickDialog
from screens.server.screen import ServerScreen, request_summary
from screens.common.serving import ServerMonitor, start_server
from screens.common.dialogs import ConfirmDialog
from screens.common.progress import JobProgress
from screens.common.widgets import StatusBar
from tests.test_generate import make_adapters, make_lively_llama
from tests.pilot import cli_settings, steady_cursors, text_of, until
from tests.tiny import make_tiny_llama
from tui.app import HumanizerApp

CHOICES = ["base", "sft", "sft+dpo"]


def rows(table) -> list[list[str]]:
    return [[str(c) for c in table.get_row(rk)] for rk in table.rows]


def monitor(app) -> ServerMonitor:
    return ServerMonitor.of(app)


# a workspace with the tiny model and two adapters, and a real server on it -------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = make_lively_llama(root / "models" / "tiny")
    cfg = json.loads((base / "config.json").read_text())
    cfg["max_position_embeddings"] = 8192  # room for long replies (Esc must stop one mid-stream)
    (base / "config.json").write_text(json.dumps(cfg))
    make_adapters(base, root / "adapters", "sft", "dpo")
    return root


@pytest.fixture
def sws(ws, assets) -> Workspace:
    for sub in ("models", "adapters"):
        shutil.copytree(assets / sub, ws.home / sub, dirs_exist_ok=True)
    (ws.config_path).write_text("[server]\nport = 0\n")  # any free port
    return ws


def _stop(ws, job_id: str) -> None:
    job = find_job(ws, job_id)
    if job.running:
        try:
            cancel_job(ws, job_id, timeout=10)
        except Exception:  # noqa: BLE001
            pass
        job = job_info(job.dir)
        if job.running:
            os.killpg(job.pid, signal.SIGKILL)


def wait_listening(job, timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events, _ = read_events(job.dir / "events.jsonl")
        url = next((e["url"] for e in events if e.get("url")), None)
        if url:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                assert json.loads(r.read())["status"] == "ok"
            return url
        assert job_info(job.dir).status in ("running", "starting"), (job.dir / "log.txt").read_text()
        time.sleep(0.05)
    raise AssertionError("the server did not start")


@pytest.fixture
def server(sws):
    job = start_server(sws, "tiny", ["sft", "dpo"], port=0)
    try:
        url = wait_listening(job)
        yield job, url
    finally:
        _stop(sws, job.id)


def serve_jobs(ws):
    return [j for j in list_jobs(ws) if j.kind == "serve"]


# helpers --------------------------------------------------------------------------------------
def test_printable_and_request_summary():
    assert printable("a\x1b[2Jb\tc\nd\x07\x9b") == "a␛[2Jb\tc\nd␇\ufffd"
    reqs = [{"adapter": "sft", "status": "stop", "latency_s": 0.5, "completion_tokens": 10, "tokens_per_second": 20},
            {"adapter": "base", "status": "error", "latency_s": 0.0, "completion_tokens": 0}]
    line = request_summary(reqs).plain
    assert "2 requests" in line and "1 failed" in line and "latency avg 0.50s" in line and "sft 1 · base 1" in line


# the Adapters screen -----------------------------------------------------------------------------
async def test_adapters_list_inspect_and_combine_job(sws):
    app = HumanizerApp(sws, mode="adapters")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, AdaptersScreen)
        table = screen.query_one("#ad-table")
        await until(pilot, lambda: table.row_count == 2 and "✓" in rows(table)[0][-1], 15, "the adapters")
        assert app.model == "tiny"  # picked from the models, as the Models screen would
        cells = {r[1]: r for r in rows(table)}
        # mark, name, method, base, parent, rank, layers, final metrics, fits
        assert cells["dpo"][2:7] == ["dpo", "tiny", "sft", "2", "2 blocks × 4"]
        assert cells["sft"][2:7] == ["sft", "tiny", "—", "4", "2 blocks × 4"]
        assert cells["dpo"][-1] == "✓ with parent" and cells["sft"][-1] == "✓ yes"
        assert "2 adapters · fits: tiny · server off" in text_of(screen, "#ad-heading")

        await pilot.press("home", "enter")  # inspect dpo
        detail = text_of(screen, "#ad-detail-text")
        assert "parent     sft (a delta: mounts only with it)" in detail
        assert "lora       rank 2 · scale 3 · dropout 0" in detail
        assert "8: 2 blocks (0-1) x down_proj, o_proj, q_proj, v_proj" in detail
        assert "fits tiny  yes: a delta" in detail and "no server running" in detail

        await pilot.press("c")  # combine dpo with… its parent, which goes first
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the combine dialog")
        dialog = app.screen
        assert dialog.values() == {"other": "sft", "output": "sft-dpo"}
        dialog.query_one("#fd-output").value = "sft+dpo"
        await pilot.press("ctrl+s")
        assert "no '+' in a name" in text_of(dialog, "#fd-errors")
        dialog.query_one("#fd-output").value = "merged"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is screen, 5, "the dialog to close")
        job = next(j for j in list_jobs(sws) if j.kind == "lora combine")
        args = job.argv[job.argv.index("combine") + 1:]
        assert args == [str(sws.adapters_dir / "sft"), str(sws.adapters_dir / "dpo"), "--output",
                        str(sws.adapters_dir / "merged")]
        progress = screen.query_one(JobProgress)
        await until(pilot, lambda: find_job(sws, job.id).status != "running", 40, "the combine job")
        assert find_job(sws, job.id).status == "done", (job.dir / "log.txt").read_text()
        await until(pilot, lambda: table.row_count == 3, 10, "the combined adapter in the list")
        await until(pilot, lambda: "✓ done" in text_of(progress, "#jp-message"), 5, "the job's outcome")
        merged = next(r for r in rows(table) if r[1] == "merged")
        assert merged[2] == "combined (sft+dpo)" and merged[5] == "6" and merged[-1] == "✓ yes"

        await pilot.press("e")  # the export dialog: the delta goes with its parent; cancelled
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the export dialog")
        assert app.screen.title_text == "Export a bundle: sft + dpo"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, 5, "the dialog to close")


async def test_adapters_fuse_export_and_push_checks(sws, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login
    app = HumanizerApp(sws, mode="adapters")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        table = screen.query_one("#ad-table")
        await until(pilot, lambda: table.row_count == 2 and "✓" in rows(table)[0][-1], 15, "the adapters")
        await pilot.press("home", "f")  # fuse dpo: with its parent
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the fuse dialog")
        assert app.screen.values() == {"model": str(sws.models_dir / "tiny"), "output": "tiny-dpo-fused",
                                       "mode": "auto"}
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any(j.kind == "lora fuse" for j in list_jobs(sws)), 5, "the fuse job")
        fuse = next(j for j in list_jobs(sws) if j.kind == "lora fuse")
        argv = fuse.argv[fuse.argv.index("fuse") + 1:]
        assert argv == [str(sws.models_dir / "tiny"), "--adapter", str(sws.adapters_dir / "sft"), "--adapter",
                        str(sws.adapters_dir / "dpo"), "--output", str(sws.models_dir / "tiny-dpo-fused")]
        await until(pilot, lambda: find_job(sws, fuse.id).status != "running", 40, "the fuse job to end")
        assert find_job(sws, fuse.id).status == "done", (fuse.dir / "log.txt").read_text()
        assert (sws.models_dir / "tiny-dpo-fused" / "config.json").is_file()

        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the export dialog")
        assert app.screen.values()["output"] == "tiny-dpo"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any(j.kind == "export" for j in list_jobs(sws)), 5, "the export job")
        export = next(j for j in list_jobs(sws) if j.kind == "export")
        await until(pilot, lambda: find_job(sws, export.id).status != "running", 40, "the export job to end")
        bundle = sws.home / "exports" / "tiny-dpo"
        assert find_job(sws, export.id).status == "done" and (bundle / "humanizer_bundle.json").is_file()

        await pilot.press("p")  # a dry run: the files, no network
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the push dialog")
        dialog = app.screen
        assert dialog.values()["bundle"] == str(bundle)
        dialog.query_one("#fd-repo").value = "me/tiny-humanizer"
        dialog.query_one("#fd-dry_run").value = True
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "dry run:" in text_of(screen, "#ad-detail-text"), 10, "the dry run")
        listing = text_of(screen, "#ad-detail-text")
        assert "README.md" in listing and "adapters/dpo/adapters.safetensors" in listing
        assert "no Hugging Face token found" in listing

        await pilot.press("p")  # for real: without a token it stops before any job
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the push dialog")
        app.screen.query_one("#fd-repo").value = "me/tiny-humanizer"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any("not logged in" in n.message for n in app._notifications), 10,
                    "the token error")
        assert not any(j.kind == "push" for j in list_jobs(sws))


async def test_adapters_mount_unmount_on_the_server(sws, server):
    app = HumanizerApp(sws, mode="adapters")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        table = screen.query_one("#ad-table")
        mon = monitor(app)
        await until(pilot, lambda: mon.up and table.row_count == 2 and rows(table)[0][0] == "●", 20,
                    "the mounted marks")
        assert mon.models == CHOICES
        assert [r[0] for r in rows(table)] == ["●", "●"]
        await pilot.press("home", "u")  # unmount dpo
        await until(pilot, lambda: mon.models == ["base", "sft"] and rows(table)[0][0] == "", 10, "dpo unmounted")
        assert "not mounted (m mounts it)" in text_of(screen, "#ad-detail-text")
        await pilot.press("m")
        await until(pilot, lambda: mon.models == CHOICES and rows(table)[0][0] == "●", 10, "dpo mounted again")
        assert "server: up 127.0.0.1:" in str(screen.query_one(StatusBar).render())
        events, _ = read_events(server[0].dir / "events.jsonl")
        logs = [e["message"] for e in events if e["type"] == "log"]
        assert "unmounted adapter 'dpo'" in logs and any(m.startswith("mounted adapter 'dpo'") for m in logs)


# the Server screen ---------------------------------------------------------------------------------
async def test_server_start_request_log_and_stop(sws):
    app = HumanizerApp(sws, mode="server")
    job_id = None
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            assert isinstance(screen, ServerScreen)
            mon = monitor(app)
            assert "no server running" in text_of(screen, "#srv-status")
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, FormDialog), 10, "the start dialog")
            dialog = app.screen
            v = dialog.values()
            assert v["model"] == str(sws.models_dir / "tiny") and sorted(v["adapters"]) == ["dpo", "sft"]
            assert v["port"] == "0" and v["host"] == "127.0.0.1"  # [server] in config.toml
            dialog.query_one("#fd-adapters").deselect("sft")
            await pilot.press("ctrl+s")
            assert "'dpo' is a delta on 'sft': choose its parent too" in text_of(dialog, "#fd-errors")
            dialog.query_one("#fd-adapters").select("sft")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: mon.state in ("starting", "up"), 10, "the server job")
            job_id = mon.view.job.id
            args = find_job(sws, job_id).settings
            assert args["adapters"] == [str(sws.adapters_dir / "sft"), str(sws.adapters_dir / "dpo")]  # parent first
            await until(pilot, lambda: mon.up, 30, "the server up")
            await until(pilot, lambda: "● up" in text_of(screen, "#srv-status"), 5, "the status")
            status = text_of(screen, "#srv-status")
            assert f"{mon.url}/v1" in status and "model tiny" in status
            assert "mounted sft (SFT, r4) · dpo (DPO Δ on sft, r2)" in status
            assert "models base · sft · sft+dpo" in status
            assert f"server: up {mon.url.split('://')[1]}" in str(screen.query_one(StatusBar).render())
            assert "No requests yet" in text_of(screen, "#srv-empty")

            client = ServerClient(mon.url)
            for adapter in ("sft", "base", "sft+dpo"):
                body = {"messages": [{"role": "user", "content": "hi"}], "adapter": adapter, "max_tokens": 5,
                        "temperature": 0}
                chunks = [c async for c in client.stream_chat(body)]
                assert chunks[-1]["usage"]["completion_tokens"] <= 5
            table = screen.query_one("#srv-requests")
            await until(pilot, lambda: table.row_count == 3, 10, "the request log")
            log = rows(table)
            assert [r[1] for r in log] == ["sft", "base", "sft+dpo"]  # time, adapter, in, out, latency, tok/s
            assert all(r[3] in ("1", "2", "3", "4", "5") and r[4].endswith("s") for r in log)
            assert all(r[-1] in ("✓ length", "✓ stop") for r in log)
            assert "3 requests" in text_of(screen, "#srv-summary")

            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the confirm")
            await pilot.press("y")
            await until(pilot, lambda: mon.state == "off", 20, "the server stopped")
            assert find_job(sws, job_id).status == "done"
            await until(pilot, lambda: "last run" in text_of(screen, "#srv-status"), 5, "the last run")
            assert "○ no server running" in text_of(screen, "#srv-status")
            assert table.row_count == 3  # its log stays on show
            assert "server: off" in str(screen.query_one(StatusBar).render())
    finally:
        if job_id:
            _stop(sws, job_id)


# the Chat screen -------------------------------------------------------------------------------------
def replies(screen) -> list:
    return [v.reply for v in screen.query(ReplyView)]


async def send(pilot, text: str) -> None:
    pilot.app.screen.query_one("#chat-input").text = text
    await pilot.press("ctrl+s")


async def test_chat_stream_cycle_stop_ab_copy(sws, server):
    job, url = server
    app = HumanizerApp(sws, mode="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        mon = monitor(app)
        await until(pilot, lambda: mon.up and screen.choices() == CHOICES, 20, "the server's model ids")
        await until(pilot, lambda: "sft+dpo" in text_of(screen, "#chat-bar"), 5, "the adapter label")
        assert screen.adapter == "sft+dpo"  # the fullest stack first
        assert screen.query_one("#chat-input").has_focus

        await pilot.press(*"Hi there")
        await pilot.press("enter")  # a new line, not a send
        assert screen.query_one("#chat-input").text == "Hi there\n" and not replies(screen)
        await pilot.press(*"second line", "ctrl+s")
        await until(pilot, lambda: replies(screen) and replies(screen)[-1].done, 20, "the first reply")
        first = replies(screen)[-1]
        assert first.adapter == "sft+dpo" and first.status in ("stop", "length") and first.content
        assert first.completion_tokens and first.prompt_tokens
        assert screen.query_one("#chat-input").text == ""
        await until(pilot, lambda: "generating" not in str(screen.query(ReplyView).last().render()), 3, "redraw")
        assert "sft+dpo" in str(screen.query(ReplyView).last().render())

        await pilot.press("ctrl+o")  # sft+dpo -> base
        assert screen.adapter == "base"
        bar = text_of(screen, "#chat-bar")
        assert bar.startswith("adapter  base ") and "ctrl+o: base · sft · sft+dpo" in bar
        await pilot.press("ctrl+o")
        assert screen.adapter == "sft" and text_of(screen, "#chat-bar").startswith("adapter  sft ")
        await send(pilot, "And now?")
        await until(pilot, lambda: len(replies(screen)) == 2 and replies(screen)[-1].done, 20, "the sft reply")
        assert replies(screen)[-1].adapter == "sft" and replies(screen)[-1].content

        # settings: system prompt, temperature, max tokens (checked); then Esc stops a long reply mid-stream
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the settings")
        dialog = app.screen
        dialog.query_one("#fd-system").text = "Answer at length."
        dialog.query_one("#fd-temperature").value = "3"
        dialog.query_one("#fd-max_tokens").value = "4000"
        await pilot.press("ctrl+s")
        assert "temperature: a number from 0 (greedy) to 2" in text_of(dialog, "#fd-errors")
        dialog.query_one("#fd-temperature").value = "0"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is screen, 5, "the settings saved")
        assert (screen.conv.system, screen.conv.temperature, screen.conv.max_tokens) == ("Answer at length.", 0, 4000)
        assert "temp 0 · max 4000 · system: Answer at length." in text_of(screen, "#chat-bar")
        names = [c[0] for c in app.palette_commands(screen)]
        assert {"New conversation", "Chat with adapter: base", "Compare with adapter: sft+dpo",
                "Start a server…", "Mode: Server"} <= set(names)
        screen.query_one("#chat-input").focus()
        await send(pilot, "Tell me everything.")
        await until(pilot, lambda: len(replies(screen)) == 3 and replies(screen)[-1].content, 20, "streaming")
        await pilot.press("escape")
        long = replies(screen)[-1]
        await until(pilot, lambda: long.done and not screen.streams, 10, "the stop")
        assert long.status == "stopped" and "⊘ stopped" in str(screen.query(ReplyView).last().render())
        assert not screen.streams

        # the request log on the Server screen: one request per reply, with its adapter
        assert screen.query_one("#chat-input").has_focus
        await pilot.press("escape")  # the transcript: a number key there is text, not a mode switch
        assert screen.query_one("#transcript").has_focus
        await pilot.press("5")
        assert app.current_mode == "chat" and screen.query_one("#chat-input").text == "5"
        screen.query_one("#chat-input").text = ""
        await pilot.press("ctrl+p", *"Mode: Server")  # other modes: the palette
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "server", 5, "the palette to switch to Server")
        log = app.screen.query_one("#srv-requests")
        await until(pilot, lambda: log.row_count == 3 and rows(log)[-1][-1] == "⊘ disconnected", 10,
                    "the requests with the stopped one")
        assert [r[2] for r in rows(log)] == ["sft+dpo", "sft", "sft"]  # time, request, adapter, ...
        await pilot.press("6")

        # A/B: one input, two replies side by side
        screen.conv.max_tokens = 24
        await pilot.press("ctrl+f")
        assert screen.compare == "base" and screen.adapter == "sft"
        assert text_of(screen, "#chat-bar").startswith("A  sft   B  base   side by side")
        screen.query_one("#chat-input").focus()
        await send(pilot, "Rewrite: it is a testament to our commitment.")
        await until(pilot, lambda: len(replies(screen)) == 5 and all(r.done for r in replies(screen)[-2:]), 20,
                    "both A/B replies")
        a, b = replies(screen)[-2:]
        assert (a.adapter, b.adapter) == ("sft", "base") and a.content and b.content
        assert a.status in ("stop", "length") and b.status in ("stop", "length")
        pair = screen.query(PairView).last()
        assert [v.side for v in pair.query(ReplyView)] == ["A", "B"]

        await pilot.press("ctrl+r")
        assert app.clipboard == f"A (sft):\n{a.content}\n\nB (base):\n{b.content}"
        await pilot.press("ctrl+f")  # B: the next choice, then A's own (two seeds), then off
        assert screen.compare == "sft+dpo"
        await pilot.press("ctrl+f")
        assert screen.compare == "sft"
        await pilot.press("ctrl+f")
        assert screen.compare is None

        # kept: saved as JSON in chats/, and reopened by the next app
        await until(pilot, lambda: list_conversations(sws)[0] and
                    len(list_conversations(sws)[0][0].messages) == 7, 5, "the saved conversation")
    saved, bad = list_conversations(sws)
    assert not bad and len(saved) == 1
    conv = saved[0]
    assert conv.title == "Hi there second line"
    assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant", "user", "assistant", "ab"]
    assert conv.messages[0].content == "Hi there\nsecond line"
    assert conv.messages[5].replies[0].status == "stopped"
    assert [r.adapter for r in conv.messages[6].replies] == ["sft", "base"]
    assert list((sws.home / "chats").iterdir()) == [sws.home / "chats" / f"{conv.id}.json"]  # no temp files

    app = HumanizerApp(sws, mode="chat")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.conv.id == conv.id and len(screen.query(ReplyView)) == 5, 10,
                    "the conversation reopened")
        assert screen.query(ReplyView).first().reply.content == conv.messages[1].replies[0].content
        await pilot.press("ctrl+n")
        assert screen.conv.id != conv.id and not screen.conv.messages and not screen.query(ReplyView)
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, PickDialog), 5, "the conversations")
        await pilot.press("enter")
        await until(pilot, lambda: screen.conv.id == conv.id and len(screen.query(ReplyView)) == 5, 5, "reopened")


async def test_chat_offers_to_start_a_server(sws):
    app = HumanizerApp(sws, mode="chat")
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            mon = monitor(app)
            assert "No server is running" in text_of(screen, "#chat-info")
            await send(pilot, "Hello?")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the offer")
            await pilot.press("y")
            await until(pilot, lambda: mon.state in ("starting", "up"), 10, "the server job")
            assert screen.pending == "Hello?" and "Waiting for the server" in text_of(screen, "#chat-info")
            args = mon.view.job.settings
            assert args["adapters"] == [str(sws.adapters_dir / "sft"), str(sws.adapters_dir / "dpo")]
            assert args["port"] == 0
            await until(pilot, lambda: replies(screen) and replies(screen)[-1].done, 30, "the reply")
            assert replies(screen)[-1].adapter == "sft+dpo" and replies(screen)[-1].content
            assert screen.pending is None
    finally:
        for job in serve_jobs(sws):
            _stop(sws, job.id)


# snapshots ------------------------------------------------------------------------------------------
T0 = 1735808400.0  # 2025-01-02 09:00:00 UTC
NOW = T0 + 3 * 3600
URL = "http://127.0.0.1:8080"
MOUNTED = [
    {"name": "humanizer-sft", "method": "sft", "is_delta": False, "parent": None, "rank": 8,
     "fingerprint": None},
    {"name": "humanizer-dpo", "method": "dpo", "is_delta": True, "parent": "humanizer-sft", "rank": 8,
     "fingerprint": None},
]
MODELS = ["base", "humanizer-sft", "humanizer-sft+humanizer-dpo"]


class FixedServer(ServerClient):
    """The snapshots' stand-in for the HTTP client: a server that is up, with fixed numbers."""

    async def request(self, method, path, body=None):
        if path == "/health":
            return {"status": "ok", "model": "tiny", "adapters": [m["name"] for m in MOUNTED], "uptime_s": 3723.0,
                    "mode": "batched", "max_rows": 8, "active": 1, "queued": 0, "tokens_generated": 18342}
        if path == "/v1/adapters":
            return {"data": MOUNTED, "models": MODELS}
        return {}


def _adapter(ws, name, method, base, rank, metrics, parent=None, d_in=64):
    from engine import adapters as A

    rng = np.random.default_rng(rank + len(name))
    weights = {}
    for layer in (0, 1):
        for key, d_out in (("self_attn.q_proj", 64), ("self_attn.v_proj", 32)):  # the tiny llama's shapes
            p = f"model.layers.{layer}.{key}"
            weights[f"{p}.lora_a"] = rng.standard_normal((d_in, rank)).astype(np.float32)
            weights[f"{p}.lora_b"] = rng.standard_normal((rank, d_out)).astype(np.float32)
    import mlx.core as mx

    weights = {k: mx.array(v) for k, v in weights.items()}
    meta = {"method": method, "base": base, "parent": parent, "metrics": metrics,
            "training": {"iters": 600 if method == "sft" else 300, "preset": "large"}}
    return A.read_adapter(A.save_adapter(weights, ws.adapters_dir / name, {
        "num_layers": 2, "rank": rank, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj",
                                                                             "self_attn.v_proj"]}, meta))


@pytest.fixture
def studio(tmp_path, monkeypatch, utc) -> Workspace:
    """Fixed content: the tiny model, three adapters (one for another model), a running
    serve job with requests, and a saved conversation with an A/B turn."""
    from engine.adapters import model_fingerprint

    monkeypatch.setenv("HOME", str(tmp_path))
    ws = Workspace.open(tmp_path / ".humanizer")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    monkeypatch.setattr(ServerMonitor, "client_class", FixedServer)
    tiny = make_tiny_llama(ws.models_dir / "tiny")
    base = {"name": "tiny", "fingerprint": model_fingerprint(tiny)}
    sft = _adapter(ws, "humanizer-sft", "sft", base, 8, {"val_loss": 1.8342, "val_kl": 0.0213, "steps": 600})
    _adapter(ws, "humanizer-dpo", "dpo", base, 8, {"val_loss": 0.4121, "val_kl": 0.0457, "val_accuracy": 0.91},
             parent={"name": sft.name, "path": str(sft.path), "fingerprint": sft.fingerprint})
    _adapter(ws, "other-model-sft", "sft", {"name": "llama-1b", "fingerprint": "sha256:0"}, 4,
             {"val_loss": 2.01}, d_in=128)
    for a in MOUNTED:
        from engine.adapters import read_adapter

        a["fingerprint"] = read_adapter(ws.adapters_dir / a["name"]).fingerprint
    run = ws.runs_dir / "20250102-110000-serve-5e7a"
    run.mkdir()
    t = NOW - 3723
    argv = ["humanizer", "serve", "--model", str(tiny), "--adapter", "humanizer-sft", "--adapter", "humanizer-dpo",
            "--port", "8080"]
    (run / "job.json").write_text(json.dumps({
        "id": run.name, "kind": "serve", "argv": argv, "settings": cli_settings(argv), "pid": os.getpid(),
        "status": "running", "started": t,
        "ended": None, "pid_start": process_start_time(os.getpid())}))
    events = [{"t": t + 1, "type": "log", "message": f"loading {tiny} with 2 adapter(s)"},
              {"t": t + 2, "type": "log", "message": f"serving on {URL}/v1", "url": URL}]
    specs = [("base", 31, 64, "length"), ("humanizer-sft", 31, 52, "stop"),
             ("humanizer-sft+humanizer-dpo", 31, 47, "stop"), ("humanizer-sft+humanizer-dpo", 40, 12,
                                                               "disconnected"),
             (None, 0, 0, "error"), ("humanizer-sft", 58, 120, "stop")]
    for i, (adapter, p, c, status) in enumerate(specs):
        ev = {"t": t + 60 + 37 * i, "type": "request", "id": f"chatcmpl-{i:02d}a7c3e9f1b2d4", "adapter": adapter,
              "endpoint": "/v1/chat/completions", "stream": True, "prompt_tokens": p, "completion_tokens": c,
              "latency_s": round(0.05 + c / 41.3, 4), "ttft_s": 0.041 if c else None,
              "tokens_per_second": round(c / (c / 41.3), 2) if c else 0.0, "status": status}
        if status == "error":
            ev.update(id=None, http_status=400, message="unknown adapter 'dpo'")
        events.append(ev)
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    conv = Conversation("20250102-104500-c0de", T0 + 6300, T0 + 6400, system="Rewrite drafts so they read as a "
                        "person wrote them.", temperature=0.7, max_tokens=256,
                        adapter="humanizer-sft+humanizer-dpo")
    from engine.chat import Message, Reply

    conv.messages = [
        Message("user", "Rewrite: Our new policy is a testament to our unwavering commitment to excellence."),
        Message("assistant", replies=[Reply("humanizer-sft+humanizer-dpo", "We changed the policy because the old "
                                            "one kept letting customers down.", "stop", None, 31, 15, 0.41, 0.04)]),
        Message("ab", "Rewrite: This underscores the importance of clear communication.", [
            Reply("base", "This underscores the importance of clear and effective communication.", "stop", None,
                  29, 12, 0.33, 0.04),
            Reply("humanizer-sft+humanizer-dpo", "Say what you mean, plainly: that's the point.", "stop", None,
                  29, 11, 0.31, 0.04)]),
    ]
    (ws.home / "chats").mkdir()
    (ws.home / "chats" / f"{conv.id}.json").write_text(conv.to_json())
    return ws


def _app(ws: Workspace, mode: str) -> HumanizerApp:
    return HumanizerApp(ws, clock=lambda: NOW, mode=mode)


def _settled(check):
    async def run_before(pilot) -> None:
        await until(pilot, lambda: monitor(pilot.app).up and check(pilot.app.screen), 15, "the screen settled")
        steady_cursors(pilot.app.screen)
        await pilot.pause(0.6)  # a redraw tick
        await pilot.wait_for_scheduled_animations()
    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_adapters_screen(snap_compare, studio, size):
    ready = lambda s: s.query_one("#ad-table").row_count == 3 and "●" in str(s.query_one("#ad-table").get_row_at(0))  # noqa: E731
    assert snap_compare(_app(studio, "adapters"), terminal_size=size, run_before=_settled(ready))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_server_screen(snap_compare, studio, size):
    ready = lambda s: s.query_one("#srv-requests").row_count == 6 and "● up" in text_of(s, "#srv-status")  # noqa: E731
    assert snap_compare(_app(studio, "server"), terminal_size=size, run_before=_settled(ready))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_chat_screen(snap_compare, studio, size):
    ready = lambda s: len(s.query(ReplyView)) == 3 and "ctrl+o" in text_of(s, "#chat-bar")  # noqa: E731
    assert snap_compare(_app(studio, "chat"), terminal_size=size, run_before=_settled(ready))
