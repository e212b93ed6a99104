"""A/B judgements in Chat become training data: Pilot drives the Chat screen with keys
against a stand-in server (the snapshots' FixedServer, plus a chat stream whose text says
which adapter and seed wrote it, and which records every request body). Picks A, B, tie
and skip land in datasets/chat-picks (train.jsonl, ties.jsonl, manifest.json), which
loads as DPO data; blind mode hides the adapters until the pick; "again" regenerates
with new seeds; ctrl+f reaches A's own choice; ctrl+r copies one side at a time."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import pytest
from mlx_lm.utils import load_tokenizer

from engine.data import load_data
from engine.data.prefs import DEFAULT_SET, pref_stats, read_pairs, read_ties
from engine.events import process_start_time
from screens.chat.screen import ChatScreen
from engine.chat import Conversation, list_conversations
from screens.chat.widgets import PairView, ReplyView
from screens.common.forms import FormDialog
from screens.common.serving import ServerMonitor
from tests.pilot import text_of, until
from tests.test_serving_screens import URL, FixedServer, send
from tests.tiny import train_tiny_tokenizer
from tui.app import HumanizerApp

SFT_DPO = "humanizer-sft+humanizer-dpo"  # A by default: the fullest stack
SIDES = ["base", "humanizer-sft", SFT_DPO]  # ctrl+f: the others (base first), then A's own choice


class StreamingServer(FixedServer):
    """Up, with fixed models; a chat stream writes "<adapter> rewrites it (seed N)." word by
    word, and every request body is kept in `bodies`."""

    bodies: list[dict] = []

    async def stream_chat(self, body):
        type(self).bodies.append(body)
        words = f"{body['adapter']} rewrites it (seed {body.get('seed')}).".split(" ")
        for w in words:
            await asyncio.sleep(0)
            yield {"choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 9, "completion_tokens": len(words)}}


@pytest.fixture
def up(ws, monkeypatch):
    """A workspace whose newest serve job is running (this process) at URL, answered by
    StreamingServer."""
    run = ws.runs_dir / "20250102-110000-serve-5e7a"
    run.mkdir()
    now = time.time()
    (run / "job.json").write_text(json.dumps({
        "id": run.name, "kind": "serve", "argv": ["humanizer", "serve", "--model", "tiny", "--port", "8080"],
        "pid": os.getpid(), "status": "running", "started": now, "ended": None,
        "pid_start": process_start_time(os.getpid())}))
    (run / "events.jsonl").write_text(json.dumps({"t": now, "type": "log", "message": f"serving on {URL}/v1",
                                                  "url": URL}) + "\n")
    monkeypatch.setattr(ServerMonitor, "client_class", StreamingServer)
    monkeypatch.setattr(StreamingServer, "bodies", [])
    return ws


async def chat(pilot) -> ChatScreen:
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    await until(pilot, lambda: screen.monitor.up and screen.choices() == SIDES, 10, "the server's model ids")
    return screen


def latest(screen):
    return screen._latest_ab()


async def pair_done(pilot, screen, n: int) -> None:
    """Wait for the conversation's n-th A/B pair to have both sides finished and drawn."""
    def ready():
        pairs = [m for m in screen.conv.messages if m.role == "ab"]
        return (len(pairs) == n and all(r.done for r in pairs[-1].replies) and not screen.streams
                and "judge it" in text_of(screen.query(PairView).last(), ".pair-verdict"))
    await until(pilot, ready, 10, f"A/B pair {n}")


async def judge(pilot, screen, key: str, pick: str) -> None:
    m = latest(screen)
    await pilot.press(key)
    await until(pilot, lambda: m.pick == pick and screen._judging is None, 10, f"the pick {pick!r}")


def sides_of(screen) -> list[str]:
    return [str(v.render()).split("\n")[0] for v in screen.query(PairView).last().query(ReplyView)]


async def test_picks_a_b_tie_skip_land_in_the_preference_set(up):
    app = HumanizerApp(up, mode="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await chat(pilot)
        await pilot.press("ctrl+f")
        assert (screen.adapter, screen.compare) == (SFT_DPO, "base")
        bar = text_of(screen, "#chat-bar")
        assert "prefs chat-picks: no picks yet" in bar
        await send(pilot, "Rewrite: it is a testament to our commitment.")
        await pair_done(pilot, screen, 1)
        source = screen.query("UserView.-source").last()
        assert str(source.render()).startswith("source · A/B") and "a testament" in str(source.render())
        assert sides_of(screen)[0].startswith(f"A  {SFT_DPO}") and sides_of(screen)[1].startswith("B  base")

        await pilot.press("a")  # the input has the focus: a letter types, it does not pick
        assert screen.query_one("#chat-input").text == "a" and latest(screen).pick is None
        screen.query_one("#chat-input").text = ""
        await pilot.press("escape")
        assert screen.query_one("#transcript").has_focus
        await judge(pilot, screen, "a", "a")
        first = latest(screen)
        verdict = text_of(screen.query(PairView).last(), ".pair-verdict")
        assert verdict == f"✓ A wins: {SFT_DPO} over base → chat-picks"
        await pilot.press("a")  # judged already: nothing more is recorded
        await pilot.pause(0.2)
        assert len(read_pairs(up.datasets_dir / DEFAULT_SET)) == 1

        for key, pick in (("a", "a"), ("b", "b"), ("t", "tie"), ("s", "skip")):
            n = len([m for m in screen.conv.messages if m.role == "ab"])
            await pilot.press("r")  # judged: again makes a new pair for the same source
            await pair_done(pilot, screen, n + 1)
            assert latest(screen).content == first.content
            await judge(pilot, screen, key, pick)
        await until(pilot, lambda: "3 pairs" in text_of(screen, "#chat-bar"), 5, "the prefs line")
        assert (f"prefs chat-picks: 3 pairs · 1 tie · {SFT_DPO} 67% (2/3) · base 33% (1/3)"
                in text_of(screen, "#chat-bar"))
        await until(pilot, lambda: list_conversations(up)[0] and
                    [m.pick for m in list_conversations(up)[0][0].messages] == ["a", "a", "b", "tie", "skip"],
                    5, "the picks saved with the conversation")

    folder = up.datasets_dir / DEFAULT_SET
    pairs, ties = read_pairs(folder), read_ties(folder)
    assert len(pairs) == 3 and len(ties) == 1
    bodies = StreamingServer.bodies
    assert len(bodies) == 10 and all(b["messages"] == [{"role": "user", "content": first.content}] for b in bodies)
    row = pairs[0]
    assert row["prompt"] == first.content and "system" not in row
    assert row["chosen"] == f"{SFT_DPO} rewrites it (seed {bodies[0]['seed']}). "
    assert row["rejected"] == f"base rewrites it (seed {bodies[1]['seed']}). "
    meta = row["meta"]
    assert meta["chosen_adapter"] == SFT_DPO and meta["rejected_adapter"] == "base" and meta["pick"] == "a"
    assert meta["sides"] == {"A": SFT_DPO, "B": "base"} and meta["blind"] is False
    assert meta["sampling"] == {"temperature": 0.7, "max_tokens": 256, "seed_a": bodies[0]["seed"],
                                "seed_b": bodies[1]["seed"]}
    assert meta["conversation"] == list_conversations(up)[0][0].id
    assert pairs[2]["meta"]["chosen_adapter"] == "base" and pairs[2]["chosen"].startswith("base rewrites")
    assert ties[0]["meta"]["pick"] == "tie" and ties[0]["a"].startswith(SFT_DPO)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["template"] == "preferences" and manifest["counts"] == {"pairs": 3, "ties": 1, "skips": 1}
    stats = pref_stats(folder)
    assert stats["adapters"][SFT_DPO] == {"wins": 2, "losses": 1, "ties": 1, "win_rate": 2 / 3}

    tok = load_tokenizer(train_tiny_tokenizer(up.home / "tok"))
    ds = load_data(str(folder), "dpo", tok, 512)  # what `lora train --method dpo --data chat-picks` reads
    assert len(ds.train) + len(ds.valid) == 3 and not ds.skipped


async def test_blind_hides_the_adapters_until_the_pick(up):
    app = HumanizerApp(up, mode="chat")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await chat(pilot)
        await pilot.press("escape", "ctrl+f", "h")  # h toggles blind while A/B is on (else it is text)
        assert screen.conv.blind and screen.compare == "base"
        bar = text_of(screen, "#chat-bar")
        assert bar.startswith(f"A/B blind  {SFT_DPO}  ·  base   sides shuffled") and "· blind (h)" in bar
        await send(pilot, "Rewrite: this underscores the importance of clarity.")
        await pair_done(pilot, screen, 1)
        m = latest(screen)
        assert m.blind and isinstance(m.shuffle, int)
        swapped = random.Random(m.shuffle).random() < 0.5  # the sides' order comes from the message's seed
        assert [r.adapter for r in m.replies] == (["base", SFT_DPO] if swapped else [SFT_DPO, "base"])
        shown = sides_of(screen)
        assert shown[0].startswith("A  blind") and shown[1].startswith("B  blind")
        assert not any(name in line for line in shown for name in ("base", "humanizer"))
        await pilot.press("ctrl+r")  # copying before the pick does not give the adapters away
        assert app.clipboard.startswith("A:\n") and "\n\nB:\n" in app.clipboard

        screen.query_one("#transcript").focus()
        await judge(pilot, screen, "b", "b")
        await until(pilot, lambda: sides_of(screen)[1].startswith(f"B  ✓ {m.replies[1].adapter}"), 5, "the reveal")
        assert sides_of(screen)[0].startswith(f"A  {m.replies[0].adapter}")
        verdict = text_of(screen.query(PairView).last(), ".pair-verdict")
        assert verdict == f"✓ B wins (blind): {m.replies[1].adapter} over {m.replies[0].adapter} → chat-picks"
        await until(pilot, lambda: list_conversations(up)[0] and list_conversations(up)[0][0].messages[0].pick, 5,
                    "saved")
    row = read_pairs(up.datasets_dir / DEFAULT_SET)[0]
    assert row["meta"]["blind"] is True and row["meta"]["sides"] == {"A": m.replies[0].adapter,
                                                                     "B": m.replies[1].adapter}
    assert row["chosen"] == m.replies[1].content and row["meta"]["chosen_adapter"] == m.replies[1].adapter
    saved = list_conversations(up)[0][0]
    assert saved.blind and saved.messages[0].shuffle == m.shuffle and saved.messages[0].blind

    app = HumanizerApp(up, mode="chat")  # reopened: the pick and the sides are shown as they were
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.query(PairView) and "B wins" in text_of(screen.query(PairView).last(),
                                                                                 ".pair-verdict"), 10, "reopened")
        # the pair's two reply views mount after its verdict line: wait for them too
        await until(pilot, lambda: len(sides_of(screen)) == 2, 10, "the reopened pair's sides")
        assert sides_of(screen)[1].startswith(f"B  ✓ {m.replies[1].adapter}")


async def test_again_new_seeds_b_any_choice_and_copy_one_side(up):
    app = HumanizerApp(up, mode="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await chat(pilot)
        seen = []
        for _ in SIDES:  # B: base, sft, then A's own choice; then off
            await pilot.press("ctrl+f")
            seen.append(screen.compare)
        assert seen == SIDES
        assert text_of(screen, "#chat-bar").startswith(f"A  {SFT_DPO}   B  {SFT_DPO}")
        await send(pilot, "Rewrite: moreover, it is worth noting.")
        await pair_done(pilot, screen, 1)
        a, b = latest(screen).replies
        assert a.adapter == b.adapter == SFT_DPO and a.seed != b.seed and a.content != b.content

        await pilot.press("escape", "r")  # not judged: the same pair again, new seeds
        await until(pilot, lambda: len(StreamingServer.bodies) == 4, 5, "the requests again")
        await pair_done(pilot, screen, 1)
        first, again = StreamingServer.bodies[:2], StreamingServer.bodies[2:]
        assert {b["seed"] for b in again}.isdisjoint({b["seed"] for b in first})
        assert [r.seed for r in latest(screen).replies] == [b["seed"] for b in again]
        assert latest(screen).replies[0].content == f"{SFT_DPO} rewrites it (seed {again[0]['seed']}). "
        assert len(screen.query(PairView)) == 1

        await pilot.press("ctrl+r")
        assert app.clipboard == f"A ({SFT_DPO}):\n{a.content}\n\nB ({SFT_DPO}):\n{b.content}"
        await pilot.press("ctrl+r")
        assert app.clipboard == a.content
        await pilot.press("ctrl+r")
        assert app.clipboard == b.content
        await until(pilot, lambda: any(str(n.message).startswith("side B (humanizer-sft+humanizer-dpo")
                                       and "OSC 52" in str(n.message) for n in app._notifications), 5, "the note")

        await judge(pilot, screen, "b", "b")
        await pilot.press("ctrl+r")  # judged: the picked side first
        assert app.clipboard == b.content
        row = read_pairs(up.datasets_dir / DEFAULT_SET)[0]
        assert row["meta"]["sampling"]["seed_a"] == again[0]["seed"]
        assert row["meta"]["chosen_adapter"] == row["meta"]["rejected_adapter"] == SFT_DPO
        await until(pilot, lambda: "50% (1/2)" in text_of(screen, "#chat-bar"), 5, "a win and a loss for itself")

        await pilot.press("ctrl+f")
        assert screen.compare is None


async def test_picks_refused_and_the_set_in_settings(up):
    other = up.datasets_dir / "my-sft"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"template": "style-transfer"}))
    (other / "train.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    app = HumanizerApp(up, mode="chat")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await chat(pilot)
        await pilot.press("escape", "a")  # nothing to judge: a letter typed in the transcript is text
        box = screen.query_one("#chat-input")
        assert box.text == "a" and box.has_focus and not any("judge" in n.message for n in app._notifications)
        box.clear()

        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, FormDialog), 5, "the settings")
        dialog = app.screen
        assert dialog.values()["prefs"] == DEFAULT_SET
        dialog.query_one("#fd-prefs").value = "../escape"
        await pilot.press("ctrl+s")
        assert "not a usable preference set name" in text_of(dialog, "#fd-errors")
        dialog.query_one("#fd-prefs").value = "my-sft"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is screen, 5, "the settings saved")
        assert screen.conv.prefs == "my-sft"

        await pilot.press("ctrl+f")
        await send(pilot, "Rewrite: a rich tapestry.")
        await pair_done(pilot, screen, 1)
        screen.query_one("#transcript").focus()
        await pilot.press("a")
        await until(pilot, lambda: any("not recorded" in n.message for n in app._notifications), 5, "the refusal")
        assert latest(screen).pick is None and screen._judging is None
        assert any("datasets/my-sft is not a preference set" in n.message for n in app._notifications)
        assert (other / "train.jsonl").read_text() == '{"prompt": "p", "completion": "c"}\n'
        assert "judge it" in text_of(screen.query(PairView).last(), ".pair-verdict")  # can still be judged


def test_old_conversation_files_still_load():
    old = {"format": 1, "id": "20250102-104500-c0de", "created": 1.0, "updated": 2.0, "system": "",
           "temperature": 0.7, "max_tokens": 256, "adapter": "sft", "compare": "base",
           "messages": [{"role": "ab", "content": "Rewrite: x", "replies": [
               {"adapter": "sft", "content": "y", "status": "stop"}, {"adapter": "base", "content": "z",
                                                                     "status": "stop"}]}]}
    conv = Conversation.from_json(json.dumps(old))
    m = conv.messages[0]
    assert (conv.blind, conv.prefs) == (False, DEFAULT_SET)
    assert (m.pick, m.blind, m.shuffle, m.prefs, m.sampling) == (None, False, None, None, None)
    assert [r.seed for r in m.replies] == [None, None]
    again = Conversation.from_json(conv.to_json())
    assert again.to_json() == conv.to_json()
