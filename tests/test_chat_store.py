"""Chat conversations kept in the workspace's chats/ (engine.chat: no Textual), without the app."""

import json
import subprocess
import sys
from pathlib import Path

from engine.chat import Conversation, Message, Reply, chats_dir, list_conversations, save_conversation

ROOT = Path(__file__).resolve().parent.parent


def _conv(text: str, now: float) -> Conversation:
    c = Conversation.new(now=now)
    c.messages = [Message("user", text), Message("assistant", replies=[Reply("sft", "a reply", status="stop")])]
    c.updated = now
    return c


def test_saved_conversations_list_newest_first_and_round_trip(ws):
    old, new = _conv("first question", 100.0), _conv("second question", 200.0)
    for c in (old, new):
        path = save_conversation(ws, c.to_json(), c.id)
        assert path == chats_dir(ws) / f"{c.id}.json"
    found, bad = list_conversations(ws)
    assert bad == []
    assert [c.id for c in found] == [new.id, old.id]
    assert found[0].to_json() == new.to_json()
    assert found[1].messages[1].replies[0].content == "a reply"
    # written by temp-name-then-rename: nothing but the two files is left in chats/
    assert sorted(p.name for p in chats_dir(ws).iterdir()) == sorted(f"{c.id}.json" for c in (old, new))


def test_a_file_that_is_not_a_conversation_is_reported_not_fatal(ws):
    good = _conv("hello", 50.0)
    save_conversation(ws, good.to_json(), good.id)
    (chats_dir(ws) / "broken.json").write_text("{not json", encoding="utf-8")
    (chats_dir(ws) / "other.json").write_text(json.dumps({"no": "id"}), encoding="utf-8")
    found, bad = list_conversations(ws)
    assert [c.id for c in found] == [good.id]
    assert sorted(b.split(":")[0] for b in bad) == ["broken.json", "other.json"]


def test_no_chats_folder_yet_is_an_empty_list(ws):
    assert list_conversations(ws) == ([], [])


def test_a_reply_saved_while_streaming_loads_as_stopped(ws):
    c = _conv("q", 10.0)
    c.messages[1].replies[0].status = "streaming"
    save_conversation(ws, c.to_json(), c.id)
    assert list_conversations(ws)[0][0].messages[1].replies[0].status == "stopped"


def test_engine_chat_loads_without_textual():
    code = ("import sys, engine.chat; loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('textual', 'rich', 'screens', 'tui')); sys.exit(f'loaded: {loaded}' if loaded else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
