"""The Chat screen's conversations: the latest one reopened when the screen opens, saved
as JSON (chats/) after every turn in a worker thread, a new one (ctrl+n), a saved one
reopened (ctrl+l), this one's settings (ctrl+g), and its last reply copied (ctrl+r)."""

from __future__ import annotations

import time
from functools import partial

from rich.text import Text
from textual.containers import VerticalScroll

from screens.chat_widgets import (
    MAX_TOKENS_LIMIT, Conversation, Message, PairView, ReplyView, UserView, list_conversations, save_conversation,
)
from screens.forms import Field, FormDialog, PickDialog
from screens.widgets import fmt_time


class ChatConversations:
    """The Chat screen's conversation actions (a mixin: the screen has the bindings, `conv`,
    `streams`, `pending`, the transcript, and `_draw_bar` and `_draw_info`)."""

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
        self._draw_bar()
        self._draw_info()
        self.call_after_refresh(box.scroll_end, animate=False)

    def _views(self, m: Message) -> list:
        if m.role == "user":
            return [UserView(m.content)]
        if m.role == "assistant":
            return [ReplyView(m.replies[0])]
        return [UserView(m.content, "you · A/B"), PairView(*m.replies)]

    def _save(self) -> None:
        if not self.conv.messages or not self.conv.id:
            return
        self.conv.updated = time.time()
        text = self.conv.to_json()
        self.run_worker(partial(self._write, text, self.conv.id), thread=True, group="chat-save")

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
        for c in found:
            label = Text(c.title, style="bold")
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
            return errors

        def done(v: dict | None) -> None:
            if not v:
                return
            self.conv.system = v["system"].strip()
            self.conv.temperature = float(v["temperature"])
            self.conv.max_tokens = int(v["max_tokens"])
            self._draw_bar()
            self._save()

        self.app.push_screen(FormDialog("Chat settings", [
            Field("system", "system", "text", self.conv.system, placeholder="a system prompt (optional)"),
            Field("temperature", "temperature", value=f"{self.conv.temperature:g}", help="0: greedy, 0.7: varied"),
            Field("max_tokens", "max tokens", value=str(self.conv.max_tokens)),
        ], ok="Save", validate=validate, intro="For this conversation (new ones start with the same)."), done)

    # copy --------------------------------------------------------------------------------------------
    def action_copy_reply(self) -> None:
        last = next((m for m in reversed(self.conv.messages) if m.role in ("assistant", "ab")), None)
        if last is None:
            self.notify("no reply to copy yet", severity="warning", timeout=2)
            return
        if last.role == "assistant":
            text = last.replies[0].content
            what = last.replies[0].adapter
        else:
            a, b = last.replies
            text = f"A ({a.adapter}):\n{a.content}\n\nB ({b.adapter}):\n{b.content}"
            what = f"A/B {a.adapter} | {b.adapter}"
        self.app.copy_to_clipboard(text)
        self.notify(f"copied the reply ({what}, {len(text)} characters)", timeout=2)
