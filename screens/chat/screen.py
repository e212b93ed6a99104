"""Chat mode: talk to the running server (or start one), one adapter choice at a time or
two side by side (A/B), with streaming replies.

- The adapter choices are the server's model ids (/v1/models: base, sft, sft+dpo, …, from
  the adapters actually mounted); ctrl+o cycles A, ctrl+f cycles B (the second column of
  an A/B comparison: one source text, two rewrites streamed side by side, each with its
  own seed; B may be A's choice too) and turns it off. (Not ctrl+b: that is tmux's prefix,
  and this app is often used over SSH inside tmux.)
- A/B pairs are judged with a / b / t (tie) / s (skip) into a preference set, blind or not;
  r runs the newest pair again (judge.py). A message sent while no server runs offers to start
  one (start_server.py).
- Replies stream over SSE in async workers that only append to a Reply; the screen
  redraws the replies that changed 4 times a second. Esc cancels the workers, which
  closes the streams (the server stops generating and frees the slot).
- ctrl+r copies the last reply with OSC 52 (works over SSH); of an A/B pair, both sides,
  then A, then B (a picked side first).
- System prompt, temperature and max tokens: ctrl+g. Conversations are saved as JSON in
  the workspace's chats/ folder after every turn; ctrl+l reopens one, ctrl+n starts one.
- The input is a multi-line TextArea: enter is a new line; ctrl+s sends (alt+enter too, in
  terminals that report it: most send it as a plain enter). Esc moves between the input and
  the transcript; keys typed in the transcript that no Chat binding takes (q, digits, words)
  are text for the input, so typing never quits the app or switches modes: other modes are
  in the command palette (ctrl+p), and ctrl+q quits (asking first while a message is unsent)."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static, TextArea
from textual.worker import Worker

from engine.chat import Conversation, Message, Reply
from screens.chat.conversations import ChatConversations
from screens.chat.judge import JUDGE_BINDINGS, ChatJudge
from screens.chat.start_server import ChatServerStart
from screens.chat.widgets import PairView, ReplyView, Transcript, UserView, chat_bar, stream_reply
from screens.common.serving import ServerMonitor, adapter_choices, first_choice, host_port, pick_default_model
from screens.common.widgets import FitFooter, ModeHeader, StatusBar, action_key, mode_ref

REDRAW_HZ = 4
SHORT = 30  # below this many rows: a shorter input box
SEND_KEYS = "ctrl+s"


class ChatScreen(ChatJudge, ChatConversations, ChatServerStart, Screen):
    DEFAULT_CSS = """
    ChatScreen #chat-bar { height: auto; padding: 0 1; background: $boost; }
    ChatScreen #transcript { height: 1fr; padding: 0 1; scrollbar-size-vertical: 1; }
    ChatScreen #transcript:focus { background-tint: $foreground 3%; }
    ChatScreen #chat-info { height: auto; color: $text-muted; margin-top: 1; }
    ChatScreen #chat-input { height: 6; border-top: hkey $primary-background; }
    ChatScreen.-short #chat-input { height: 4; }
    """
    BINDINGS = [
        Binding("ctrl+s,alt+enter", "send", "Send", id="chat_send", priority=True,
                tooltip="Send the message (enter is a new line; alt+enter sends where the terminal reports it)"),
        Binding("escape", "stop", "Stop", id="chat_stop",
                tooltip="Stop the reply (closes the stream); otherwise move between the input and the transcript"),
        Binding("ctrl+o", "cycle_adapter", "Adapter", id="chat_adapter",
                tooltip="Next adapter choice: the server's model ids (base, sft, sft+dpo, …)"),
        Binding("ctrl+f", "cycle_compare", "A/B", id="chat_compare",
                tooltip="Side by side: also send to a second adapter choice, any one, A's too "
                "(again: the next one, then off)"),
        Binding("ctrl+r", "copy_reply", "Copy", id="chat_copy",
                tooltip="Copy the last reply (OSC 52); A/B: both, again: A, again: B"),
        Binding("ctrl+g", "settings", "Settings", id="chat_settings",
                tooltip="System prompt, temperature, max tokens, preference set"),
        Binding("ctrl+n", "new_chat", "New", id="chat_new", tooltip="Start a new conversation"),
        Binding("ctrl+l", "open_chat", "Chats", id="chat_open", tooltip="Reopen a saved conversation"),
        *JUDGE_BINDINGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sub_title = "Chat"
        self.monitor: ServerMonitor | None = None
        self.conv = Conversation.new(now=0.0)
        self.conv.id = ""  # none yet: made when the first message is sent
        self.streams: list[Worker] = []
        self.pending: str | None = None  # a message waiting for the server to come up
        self._seen_version = -1
        self._short: bool | None = None
        self._loaded = False
        self._own_keys: set[str] | None = None

    def compose(self) -> ComposeResult:
        yield ModeHeader("chat")
        yield StatusBar()
        yield Static("", id="chat-bar")
        with Transcript(id="transcript"):
            yield Static("", id="chat-info")
        yield TextArea(id="chat-input", compact=True, soft_wrap=True,
                       placeholder=f"Type a message: {SEND_KEYS} sends, enter is a new line, esc leaves the input")
        yield FitFooter()

    @property
    def own_keys(self) -> set[str]:
        """The keys of Chat's own bindings, as the keymap has them (the transcript lets them through)."""
        if self._own_keys is None:
            bindings = self._bindings.copy()
            bindings.apply_keymap(getattr(self.app, "_keymap", {}))
            self._own_keys = set(bindings.key_to_bindings)
        return self._own_keys

    def judging(self) -> bool:
        """Whether the transcript's letter keys judge: A/B is on, or a pair is on screen."""
        return self.compare is not None or self._latest_ab() is not None

    def type_into_input(self, text: str) -> None:
        box = self.query_one("#chat-input", TextArea)
        box.focus()
        box.insert(text)

    def quit_concerns(self) -> list[str]:
        """What quitting the app now would lose (the app asks first when there is any)."""
        concerns = []
        if self.query_one("#chat-input", TextArea).text.strip():
            concerns.append("Chat: the message in the input is not sent; it is lost.")
        if self.pending is not None:
            concerns.append("Chat: a message waits for the server to come up; it is not sent.")
        if self.streams:
            concerns.append("Chat: a reply is streaming; it stops where it is.")
        return concerns

    def on_mount(self) -> None:
        self.monitor = ServerMonitor.of(self.app)
        self.run_worker(partial(pick_default_model, self.app), thread=True, group="chat-model")
        self._layout()
        self.query_one("#transcript").can_focus = True
        self.run_worker(self._load_latest, thread=True, group="chat-load")
        self.set_interval(1 / REDRAW_HZ, self.tick)
        self.query_one("#chat-input").focus()
        self._load_stats()
        self._draw_bar()
        self._draw_info()

    def on_resize(self) -> None:
        self._layout()
        self._draw_bar()

    def _layout(self) -> None:
        short = self.size.height < SHORT
        if short != self._short:
            self._short = short
            self.set_class(short, "-short")

    # adapters ------------------------------------------------------------------------------------
    def choices(self) -> list[str]:
        if not (self.monitor and self.monitor.models):
            return []
        return adapter_choices(self.monitor.models)

    @property
    def adapter(self) -> str | None:
        """A: the conversation's adapter if the server has it, else the deepest real stack it offers."""
        choices = self.choices()
        if not choices:
            return self.conv.adapter
        return self.conv.adapter if self.conv.adapter in choices else first_choice(self.monitor)

    @property
    def compare(self) -> str | None:
        choices = self.choices()
        if self.conv.compare is None or (choices and self.conv.compare not in choices):
            return None
        return self.conv.compare

    def action_cycle_adapter(self) -> None:
        choices = self.choices()
        if not choices:
            self.notify(f"no server is up: its model ids are the choices (start one in {mode_ref(self.app, 'server')})",
                        severity="warning")
            return
        current = self.adapter
        i = choices.index(current) if current in choices else -1
        self.conv.adapter = choices[(i + 1) % len(choices)]
        self._draw_bar()

    def compare_cycle(self) -> list[str]:
        """B's choices in ctrl+f order: the others (base first), then A's own choice (the same
        adapter twice, two seeds: how much of a difference is only sampling); then off."""
        choices, a = self.choices(), self.adapter
        others = [c for c in choices if c != a]
        first = "base" if "base" in others else (others[-1] if others else None)
        if first is not None:
            others.remove(first)
            others.insert(0, first)
        return others + [c for c in choices if c == a]

    def action_cycle_compare(self) -> None:
        cycle = self.compare_cycle()
        if not cycle:
            self.notify(f"no server is up: its model ids are the choices (start one in {mode_ref(self.app, 'server')})",
                        severity="warning")
            return
        i = cycle.index(self.compare) + 1 if self.compare in cycle else 0
        self.conv.compare = cycle[i] if i < len(cycle) else None
        if self.conv.compare is None:
            self.notify("A/B off", timeout=2)
        elif self.conv.compare == self.adapter:
            self.notify(f"A/B: {self.adapter} against itself (two seeds)", timeout=3)
        self._draw_bar()

    # sending --------------------------------------------------------------------------------------
    def action_send(self) -> None:
        box = self.query_one("#chat-input", TextArea)
        text = box.text.strip()
        if not text:
            self.notify(f"type a message first ({SEND_KEYS} sends)", severity="warning", timeout=3)
            return
        if self.streams:
            self.notify("a reply is still streaming: esc stops it", severity="warning", timeout=3)
            return
        state = self.monitor.state
        if state == "up" and self.choices():
            box.text = ""
            self._send(text)
            return
        if self.pending is not None:
            self.notify("waiting for the server to come up…", timeout=3)
            return
        if state in ("starting", "up"):
            box.text = ""
            self.pending = text
            self._draw_info()
            self.notify("the server is starting: the message goes when it is up", timeout=3)
            return
        if state == "down":
            self.notify(f"the server is not answering: {self.monitor.view.error}", severity="error", timeout=6)
            return
        self._offer_server(text)

    def _send(self, text: str) -> None:
        if not self.conv.id:
            self.conv = Conversation.new(like=self.conv)
        a, b = self.adapter, self.compare
        self.conv.adapter = a
        if b is not None:
            self._add_pair(Message.ab(text, a, b, self.conv.blind))
            return
        self.conv.messages.append(Message("user", text))
        history = self.conv.history()
        reply = Reply(a)
        self.conv.messages.append(Message("assistant", replies=[reply]))
        self._show([UserView(text), ReplyView(reply)])
        self._start_stream(reply, {"messages": history, "adapter": a, "temperature": self.conv.temperature,
                                   "max_tokens": self.conv.max_tokens})

    def _show(self, views: list) -> None:
        box = self.query_one("#transcript", VerticalScroll)
        box.mount_all(views)
        self._save()  # kept even if the app closes mid-reply (saved as stopped there)
        self._draw_info()
        self.call_after_refresh(box.scroll_end, animate=False)

    def _start_stream(self, reply: Reply, body: dict) -> None:
        worker = self.run_worker(self._stream(reply, body), group="chat-stream", exit_on_error=False)
        self.streams.append(worker)

    async def _stream(self, reply: Reply, body: dict) -> None:
        await stream_reply(self.monitor.client(timeout=10), reply, body)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker not in self.streams or not event.worker.is_finished:
            return
        self.streams.remove(event.worker)
        if not self.streams:
            self.tick()
            self._save()

    def action_stop(self) -> None:
        if self.streams:
            for w in list(self.streams):
                w.cancel()
            self.notify("stopped", timeout=2)
            return
        if self.pending is not None:
            self.query_one("#chat-input", TextArea).text = self.pending
            self.pending = None
            self._draw_info()
            self.notify("not sent: the message is back in the input", timeout=3)
            return
        box = self.query_one("#chat-input", TextArea)
        if box.has_focus:
            self.query_one("#transcript").focus()
        else:
            box.focus()

    # drawing ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        if not self.is_current:
            return
        box = self.query_one("#transcript", VerticalScroll)
        at_end = box.scroll_y >= box.max_scroll_y - 1
        changed = False
        for view in self.query(ReplyView):
            changed = view.sync() or changed
        for pair in self.query(PairView):
            changed = pair.sync() or changed
        if changed and at_end:
            self.call_after_refresh(box.scroll_end, animate=False)
        if self.monitor.version != self._seen_version:
            self._seen_version = self.monitor.version
            self._draw_bar()
            self._draw_info()
        if self.pending is not None and self.monitor.up and self.choices() and not self.streams:
            text, self.pending = self.pending, None
            self._send(text)

    def _draw_bar(self) -> None:
        bar = chat_bar(self.conv, self.adapter, self.compare, self.choices(), self.size.width - 2,
                       self._prefs_text())
        self.query_one("#chat-bar", Static).update(bar)

    def _draw_info(self) -> None:
        info = self.query_one("#chat-info", Static)
        mon = self.monitor
        t = Text()
        if self.pending is not None:
            t.append("Waiting for the server to come up; the message goes then (esc: take it back).\n",
                     style="italic")
        if mon.state == "off" and not self.conv.messages:
            t.append("No server is running. ", style="bold")
            t.append(f"Type a message and send it ({SEND_KEYS}): you will be offered to start one with the "
                     f"selected model and its adapters. Or start one in {mode_ref(self.app, 'server')}.")
        elif mon.state == "starting" and not self.conv.messages:
            t.append("The server is starting…")
        elif mon.state == "down":
            t.append(f"The server at {host_port(mon.url)} is not answering: {mon.view.error}", style="red")
        elif not self.conv.messages and mon.up:
            k = partial(action_key, self)
            t.append(f"Talking to {host_port(mon.url)}. {k('cycle_adapter')} picks the adapter, {k('cycle_compare')} "
                     f"compares two side by side (judge them with {k('pick', 'a')} / {k('pick', 'b')} / "
                     f"{k('pick', 'tie')} / {k('pick', 'skip')}: the picks become DPO data), {k('settings')} "
                     "sets the system prompt, temperature and max tokens.")
        info.update(t)
        info.display = bool(t.plain)

    # the palette ------------------------------------------------------------------------------------
    def palette_commands(self):
        k = partial(action_key, self)
        cmds = [("New conversation", k("new_chat"), self.action_new_chat),
                ("Open a conversation…", f"the saved ones, newest first ({k('open_chat')})", self.action_open_chat),
                ("Chat settings…", f"system prompt, temperature, max tokens, preference set ({k('settings')})",
                 self.action_settings),
                ("Copy the last reply", f"OSC 52 ({k('copy_reply')})", self.action_copy_reply),
                ("Blind A/B " + ("off" if self.conv.blind else "on"),
                 f"shuffle the sides, hide the adapters ({k('toggle_blind')})", self.action_toggle_blind)]
        latest = self._latest_ab()
        if latest is not None and latest.pick is None:
            cmds += [("A/B: A wins", k("pick('a')"), lambda: self.action_pick("a")),
                     ("A/B: B wins", k("pick('b')"), lambda: self.action_pick("b")),
                     ("A/B: a tie", k("pick('tie')"), lambda: self.action_pick("tie")),
                     ("A/B: skip", k("pick('skip')"), lambda: self.action_pick("skip"))]
        if latest is not None:
            cmds.append(("A/B: again", f"both sides with new seeds ({k('again')})", self.action_again))
        for c in self.choices():
            cmds.append((f"Chat with adapter: {c}", f"A ({k('cycle_adapter')} cycles)", lambda c=c: self._set_adapter(c)))
            cmds.append((f"Compare with adapter: {c}", f"B, side by side ({k('cycle_compare')} cycles)",
                         lambda c=c: self._set_compare(c)))
        if self.compare is not None:
            cmds.append(("Stop comparing (A/B off)", f"{k('cycle_compare')} until off", lambda: self._set_compare(None)))
        return cmds

    def _set_adapter(self, choice: str) -> None:
        self.conv.adapter = choice
        self._draw_bar()

    def _set_compare(self, choice: str | None) -> None:
        self.conv.compare = choice
        self._draw_bar()
