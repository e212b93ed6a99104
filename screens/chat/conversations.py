"""The Chat screen's conversations: the latest one reopened when the screen opens, saved
as JSON (chats/, by engine.chat) after every turn in a worker thread, a new one (ctrl+n), a saved one
reopened (ctrl+l), this one's settings (ctrl+g: with the preference set A/B picks go to),
and its last reply copied (ctrl+r; of an A/B pair, one side at a time)."""

from __future__ import annotations

import os
import time
from functools import partial
from typing import TYPE_CHECKING, Protocol

from rich.text import Text
from textual.containers import VerticalScroll

from engine.chat import Conversation, Message, list_conversations, save_conversation
from engine.data.prefs import check_set_name
from engine.errors import HumanizerError
from engine.workspace import atomic_write_text
from screens.chat.widgets import MAX_TOKENS_LIMIT, PairView, ReplyView, UserView, distinct_titles
from screens.common.forms import Field, FormDialog, PickDialog
from screens.common.widgets import display_path, fmt_time, key_of

if TYPE_CHECKING:
    from textual.worker import Worker

CLIPBOARD_FILE = "clipboard.txt"  # the last copied text, for when OSC 52 reaches no clipboard


class ChatConversations:
    """The Chat screen's conversation actions (a mixin: the screen has the bindings, the
    #transcript and what Needs lists; tests/test_screen_mixins.py checks it has it all)."""

    class Needs(Protocol):
        conv: Conversation  # the open conversation
        streams: list[Worker]  # replies streaming now
        pending: str | None  # a message waiting for the server

        def _draw_bar(self) -> None: ...
        def _draw_info(self) -> None: ...
        def _latest_ab(self) -> Message | None: ...  # ChatJudge's
        def _load_stats(self) -> None: ...  # ChatJudge's

    _copied: tuple[int, int] | None = None  # (id of the A/B message, how many times ctrl+r copied it)

    # conversations ------------------------------------------------------------------------
    def _load_latest(self) -> None:
        """In a worker thread: reopen the most recent conversation."""
        found, _ = list_conversations(self.app.ws)
        self.app.call_from_thread(self._opened, found[0] if found else None, True)

    def _opened(self, conv: Conversation | None, initial: bool = False) -> None:
        self._loaded = True
        if conv is None:
            return
        if initial and (self.conv.messages or self.streams):
            return  # the user started typing a new one meanwhile
        self.conv = conv
        self._rebuild()

    def _rebuild(self) -> None:
        box = self.query_one("#transcript", VerticalScroll)
        for w in list(box.children):
            if w.id != "chat-info":
                w.remove()
        box.mount_all([w for m in self.conv.messages for w in self._views(m)])
        self._load_stats()
        self._draw_bar()
        self._draw_info()
        self.call_after_refresh(box.scroll_end, animate=False)

    def _views(self, m: Message) -> list:
        if m.role == "user":
            return [UserView(m.content)]
        if m.role == "assistant":
            return [ReplyView(m.replies[0])]
        source = UserView(m.content, "source · A/B: both sides rewrite this").add_class("-source")
        return [source, PairView(m, latest=m is self._latest_ab())]

    def _save(self, conv: Conversation | None = None) -> None:
        conv = conv or self.conv
        if not conv.messages or not conv.id:
            return
        conv.updated = time.time()
        text = conv.to_json()
        self.run_worker(partial(self._write, text, conv.id), thread=True, group="chat-save")

    def _write(self, text: str, conv_id: str) -> None:
        try:
            save_conversation(self.app.ws, text, conv_id)
        except OSError as e:
            self.app.call_from_thread(self.notify, f"conversation not saved: {e}", severity="error")

    def action_new_chat(self) -> None:
        if self.streams:
            self.notify("a reply is streaming: esc stops it first", severity="warning")
            return
        self.conv = Conversation.new(like=self.conv)
        self.pending = None
        self._rebuild()
        self.query_one("#chat-input").focus()

    def action_open_chat(self) -> None:
        if self.streams:
            self.notify("a reply is streaming: esc stops it first", severity="warning")
            return
        self.run_worker(self._gather_chats, thread=True, group="chat-list")

    def _gather_chats(self) -> None:
        found, bad = list_conversations(self.app.ws)
        self.app.call_from_thread(self._pick_chat, found, bad)

    def _pick_chat(self, found: list[Conversation], bad: list[str]) -> None:
        options = []
        titles = distinct_titles(found)
        for c in found:
            label = Text(titles[c.id], style="bold")
            n = sum(1 for m in c.messages if m.role in ("user", "ab"))
            label.append(f"  {fmt_time(c.updated)} · {n} message{'s' * (n != 1)}", style="dim")
            if c.id == self.conv.id:
                label.append(" · open", style="italic")
            options.append((label, c))
        help_ = f"{len(bad)} file(s) could not be read: {bad[0]}" if bad else ""
        self.app.push_screen(PickDialog("Conversations", options, help=help_,
                                        empty="no saved conversations yet"), self._opened)

    # settings -----------------------------------------------------------------------------------
    def action_settings(self) -> None:
        def validate(v: dict) -> list[tuple[str, str]]:
            errors = []
            try:
                t = float(v["temperature"])
                if not 0 <= t <= 2:
                    raise ValueError
            except ValueError:
                errors.append(("temperature", "temperature: a number from 0 (greedy) to 2"))
            if not v["max_tokens"].isdigit() or not 1 <= int(v["max_tokens"]) <= MAX_TOKENS_LIMIT:
                errors.append(("max_tokens", f"max tokens: a whole number from 1 to {MAX_TOKENS_LIMIT}"))
            try:
                check_set_name(v["prefs"])
            except HumanizerError as e:
                errors.append(("prefs", f"{e.message}: {e.hint}"))
            return errors

        def done(v: dict | None) -> None:
            if not v:
                return
            self.conv.system = v["system"].strip()
            self.conv.temperature = float(v["temperature"])
            self.conv.max_tokens = int(v["max_tokens"])
            self.conv.prefs = check_set_name(v["prefs"])
            self._load_stats()
            self._draw_bar()
            self._save()

        self.app.push_screen(FormDialog("Chat settings", [
            Field("system", "system", "text", self.conv.system, placeholder="a system prompt (optional)"),
            Field("temperature", "temperature", value=f"{self.conv.temperature:g}", help="0: greedy, 0.7: varied"),
            Field("max_tokens", "max tokens", value=str(self.conv.max_tokens)),
            Field("prefs", "preference set", value=self.conv.prefs,
                  help="A/B picks go to datasets/NAME (train on it: lora train --method dpo --data NAME)"),
        ], ok="Save", validate=validate, intro="For this conversation (new ones start with the same)."), done)

    # copy --------------------------------------------------------------------------------------------
    def action_copy_reply(self) -> None:
        last = next((m for m in reversed(self.conv.messages) if m.role in ("assistant", "ab")), None)
        if last is None:
            self.notify("no reply to copy yet", severity="warning", timeout=2)
            return
        if last.role == "assistant":
            text = last.replies[0].content
            what = f"the reply ({last.replies[0].adapter}, {len(text)} characters)"
        else:
            text, what = self._copy_side(last)
        self.app.copy_to_clipboard(text)  # OSC 52: nothing tells us whether it reached a clipboard
        self.run_worker(partial(self._copied_to_file, text, what), thread=True, group="chat-copy")

    def _copied_to_file(self, text: str, what: str) -> None:
        """In a thread: keep the text in the workspace's clipboard.txt too, then say honestly what was done."""
        path = self.app.ws.home / CLIPBOARD_FILE  # beside chats/, whose files are all conversations
        try:
            atomic_write_text(path, text)
            saved = f"; also written to {display_path(path)}"
        except OSError as e:
            saved = f"; not written to {path.name}: {e}"
        if os.environ.get("TMUX"):
            how = "sent to the terminal as OSC 52: tmux passes it on only with `set -g set-clipboard on`"
        else:
            how = "sent to the terminal as OSC 52 (it reaches the clipboard if the terminal allows that)"
        self.app.call_from_thread(self.notify, f"{what}: {how}{saved}", timeout=6, markup=False)

    def _copy_side(self, m: Message) -> tuple[str, str]:
        """ctrl+r on an A/B pair, pressed again and again: both sides, then A, then B (judged:
        the picked side first, then the other, then both). Blind and not judged yet: the
        adapters stay hidden."""
        presses = self._copied[1] + 1 if self._copied and self._copied[0] == id(m) else 0
        self._copied = (id(m), presses)
        order = {"a": ["a", "b", "both"], "b": ["b", "a", "both"]}.get(m.pick, ["both", "a", "b"])
        side, after = order[presses % 3], order[(presses + 1) % 3]
        name = (lambda r: "" if m.hidden else f" ({r.adapter})")
        a, b = m.replies
        if side == "both":
            text = f"A{name(a)}:\n{a.content}\n\nB{name(b)}:\n{b.content}"
            what = "both sides"
        else:
            r = a if side == "a" else b
            text, what = r.content, f"side {side.upper()}{name(r)}"
        again = key_of(self.app, "chat_copy", "ctrl+r")
        return text, f"{what}, {len(text)} characters ({again} again: {'both' if after == 'both' else after.upper()})"
