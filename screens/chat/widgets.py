"""The Chat screen's pieces: replies that a stream fills in (stream_reply) while the UI
redraws them on a timer, the widgets that show a message, a reply and an A/B pair of replies
(with its judgement), and the bar above the transcript. The conversations themselves and
their files in chats/ are engine.chat's."""

from __future__ import annotations

import asyncio
import os
import time

from rich.text import Text
from textual import events
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from engine.chat import TITLE_CHARS, Conversation, Message, Reply
from engine.serve.client import ServerError
from engine.serve.settings import DEFAULT_MAX_TOKENS_LIMIT
from screens.common.serving import fit_lines

MAX_TOKENS_LIMIT = DEFAULT_MAX_TOKENS_LIMIT  # what a default server allows: the form asks for no more


# control characters (a model can emit any byte) would move the terminal's cursor: shown as
# their Unicode control pictures instead; newlines and tabs stay.
_CONTROLS = {c: 0x2400 + c for c in range(32) if c not in (9, 10)}
_CONTROLS.update({0x7F: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)}})


def printable(text: str) -> str:
    return text.translate(_CONTROLS)


def distinct_titles(convs: list[Conversation]) -> dict[str, str]:
    """Each conversation's title (by id), told apart where they collide: drafts pasted after
    the same instruction all began alike, so every saved chat had the same title. Colliding
    ones show their first message from where it starts to differ, then #2, #3 by age."""
    out = {c.id: c.title for c in convs}
    groups: dict[str, list[Conversation]] = {}
    for c in convs:
        groups.setdefault(c.title, []).append(c)
    for title, group in groups.items():
        if len(group) < 2 or title == "new conversation":
            continue
        texts = [" ".join(c.title_source.split()) for c in group]
        common = len(os.path.commonprefix(texts))
        cut = max(0, texts[0].rfind(" ", 0, common + 1) + 1) if common else 0  # at a word boundary
        for c, text in zip(group, texts):
            rest = text[cut:].strip()
            if rest and cut:
                out[c.id] = "…" + (rest if len(rest) <= TITLE_CHARS - 1 else rest[:TITLE_CHARS - 2] + "…")
        seen: dict[str, int] = {}
        for c in sorted(group, key=lambda c: c.created):
            n = seen[out[c.id]] = seen.get(out[c.id], 0) + 1
            if n > 1:
                out[c.id] += f" #{n}"
    return out


# streaming ---------------------------------------------------------------------------
async def stream_reply(client, reply: Reply, body: dict) -> None:
    """Stream one chat completion into `reply` (None: the server went away); cancelling
    the task stops it (status "stopped") and closes the stream."""
    t0 = time.monotonic()
    reply.status = "streaming"
    reply.version += 1
    try:
        if client is None:
            raise ServerError("the server went away")
        async for chunk in client.stream_chat(body):
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                reply.prompt_tokens = usage.get("prompt_tokens")
                reply.completion_tokens = usage.get("completion_tokens")
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if reply.ttft_s is None:
                        reply.ttft_s = time.monotonic() - t0
                    reply.content += text
                if choice.get("finish_reason"):
                    reply.status = str(choice["finish_reason"])
            reply.version += 1
        if not reply.done:
            reply.status = "stop"
    except asyncio.CancelledError:
        reply.status = "stopped"
        raise
    except ServerError as e:
        reply.status, reply.error = "error", e.message
    except Exception as e:  # noqa: BLE001 - a bad chunk must not take the app down
        reply.status, reply.error = "error", f"{type(e).__name__}: {e}"
    finally:
        reply.latency_s = time.monotonic() - t0
        reply.version += 1


# the widgets -------------------------------------------------------------------------------
def reply_label(reply: Reply, side: str | None = None, hidden: bool = False, picked: bool = False) -> Text:
    """The line above a reply: its side, its adapter (hidden: "blind" instead, and no timings,
    which could give the adapter away), its numbers and its state."""
    t = Text()
    if side:
        t.append(f"{side} ", style="bold reverse")
        t.append(" ")
    if picked:
        t.append("✓ ", style="bold green")
    t.append("blind" if hidden else reply.adapter, style="dim italic" if hidden else "bold")
    stats = []
    if reply.completion_tokens is not None:
        stats.append(f"{reply.completion_tokens} tok")
    if reply.latency_s is not None and reply.done and not hidden:
        stats.append(f"{reply.latency_s:.2f}s")
    tps = reply.tokens_per_second
    if tps and reply.done and not hidden:
        stats.append(f"{tps:.1f} tok/s")
    if stats:
        t.append("  " + " · ".join(stats), style="dim")
    if reply.status in ("waiting", "streaming"):
        t.append("  generating… (esc stops)" if reply.status == "streaming" else "  waiting…", style="italic")
    elif reply.status == "stopped":
        t.append("  ⊘ stopped", style="dark_orange")
    elif reply.status == "length":
        t.append("  (max tokens)", style="dim")
    return t


def reply_body(reply: Reply) -> Text:
    t = Text(printable(reply.content))
    if reply.status == "streaming":
        t.append("▌", style="bold")
    if reply.status == "error":
        if t.plain:
            t.append("\n")
        t.append(f"✗ {reply.error or 'failed'}", style="bold red")
    elif not reply.content and reply.done:
        t.append("(no text)", style="dim italic")
    return t


class UserView(Static):
    DEFAULT_CSS = """
    UserView { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: outer $secondary; }
    UserView.-source { border-left: outer $accent; }
    """

    def __init__(self, text: str, label: str = "you") -> None:
        super().__init__()
        self.text, self.label = text, label

    def render(self) -> Text:
        t = Text(self.label + "\n", style="bold")
        t.append(printable(self.text))
        return t


class ReplyView(Static):
    """A reply; `sync()` redraws it when its stream has added something since the last time
    (or, in an A/B pair, when its judgement changed what the label shows)."""

    DEFAULT_CSS = """
    ReplyView { height: auto; margin: 1 0 0 0; padding: 0 1; border-left: outer $primary; }
    ReplyView.-error { border-left: outer $error; }
    ReplyView.-picked { border-left: outer $success; }
    """

    def __init__(self, reply: Reply, side: str | None = None, message: Message | None = None) -> None:
        super().__init__()
        self.reply, self.side, self.message = reply, side, message
        self.shown: tuple | int = -1

    @property
    def hidden(self) -> bool:
        return self.message is not None and self.message.hidden

    @property
    def picked(self) -> bool:
        return self.message is not None and self.side is not None and self.message.pick == self.side.lower()

    def render(self) -> Text:
        t = reply_label(self.reply, self.side, self.hidden, self.picked)
        t.append("\n")
        t.append_text(reply_body(self.reply))
        return t

    def sync(self) -> bool:
        state = (self.reply.version, self.hidden, self.picked)
        if state == self.shown:
            return False
        self.shown = state
        self.set_class(self.reply.status == "error", "-error")
        self.set_class(self.picked, "-picked")
        self.refresh(layout=True)
        return True


JUDGE_HINT = "judge it (esc: to the transcript): a · b · t tie · s skip · r again"


def verdict(m: Message, latest: bool, recording: bool = False) -> Text:
    """The line under an A/B pair: how to judge it, or how it was judged."""
    t = Text()
    a, b = m.replies
    where = f" → {m.prefs}" if m.prefs else ""
    if m.pick in ("a", "b"):
        won, lost = (a, b) if m.pick == "a" else (b, a)
        t.append(f"✓ {m.pick.upper()} wins", style="bold green")
        t.append(" (blind)" if m.blind else "", style="dim")
        t.append(f": {won.adapter} over {lost.adapter}{where}")
    elif m.pick == "tie":
        t.append("= tie", style="bold")
        t.append(" (blind)" if m.blind else "", style="dim")
        t.append(f": {a.adapter} and {b.adapter}{where}")
    elif m.pick == "skip":
        t.append("skipped", style="bold")
        t.append(f": A {a.adapter}, B {b.adapter}" if m.blind else "", style="dim")
    elif not (a.done and b.done):
        return t
    elif recording:
        t.append("recording the pick…", style="italic")
    elif not latest:
        t.append("not judged", style="dim")
    elif "error" in (a.status, b.status):
        t.append("a side failed: r tries again · s skips", style="dark_orange")
    else:
        t.append(JUDGE_HINT, style="italic")
    return t


class PairView(Vertical):
    """Two replies to the same source text, side by side, and the line that says how to
    judge them or how they were judged. `latest` (only the newest pair takes picks) and
    `recording` are set by the screen; `sync()` redraws what changed."""

    DEFAULT_CSS = """
    PairView { height: auto; }
    PairView > Horizontal { height: auto; }
    PairView ReplyView { width: 1fr; }
    PairView ReplyView.-side-a { margin-right: 1; }
    PairView > .pair-verdict { height: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, message: Message, latest: bool = False) -> None:
        a, b = message.replies
        self._line = Static("", classes="pair-verdict")
        super().__init__(Horizontal(ReplyView(a, "A", message).add_class("-side-a"), ReplyView(b, "B", message)),
                         self._line)
        self.message, self.latest, self.recording = message, latest, False
        self._shown: tuple | None = None
        self.sync()

    def sync(self) -> bool:
        m = self.message
        state = (m.pick, m.prefs, self.latest, self.recording, *(r.status for r in m.replies))
        if state == self._shown:
            return False
        self._shown = state
        text = verdict(m, self.latest, self.recording)
        self._line.update(text)
        self._line.display = bool(text.plain)
        return True


def chat_bar(conv: Conversation, a: str | None, b: str | None, choices: list[str], width: int,
             prefs: Text | None = None) -> Text:
    """The bar above the transcript: the adapter choice (A and B side by side; blind: the two
    choices, in no order), the choices, then the settings and the conversation's title, then
    (`prefs`) the preference set's line, each line cut to `width`."""
    t = Text()
    if b is None:
        t.append("adapter ", style="dim")
        t.append(f" {a or '—'} ", style="bold reverse")
    elif conv.blind:
        t.append("A/B blind ", style="bold")
        t.append(f" {a} ", style="bold reverse")
        t.append(" · ", style="dim")
        t.append(f" {b} ", style="bold reverse")
        t.append("  sides shuffled", style="dim")
    else:
        t.append("A ", style="bold")
        t.append(f" {a} ", style="bold reverse")
        t.append("  B ", style="bold")
        t.append(f" {b} ", style="bold reverse")
        t.append("  side by side", style="dim")
    if choices:
        listed = Text("   ctrl+o: ", style="dim")
        for i, c in enumerate(choices):
            listed.append(" · " if i else "", style="dim")
            listed.append(c, style="bold" if c in (a, b) else "dim")
        if t.cell_len + listed.cell_len <= width:
            t.append_text(listed)
        else:
            t.append(f"   {choices.index(a) + 1 if a in choices else '?'}/{len(choices)} · ctrl+o: next",
                     style="dim")
    else:
        t.append("   no server: the choices come from its models", style="dim")
    t.append("\n")
    t.append(f"temp {conv.temperature:g} · max {conv.max_tokens}", style="")
    if conv.system.strip():
        system = " ".join(conv.system.split())
        t.append(" · system: ", style="dim")
        t.append(system if len(system) <= 32 else system[:31] + "…", style="italic")
    t.append(" · ", style="dim")
    t.append(conv.title if conv.messages else "new conversation", style="bold")
    if prefs is not None:
        t.append("\n")
        t.append_text(prefs)
    return fit_lines(t, width)


class Transcript(VerticalScroll):
    """The conversation. A printable key that no Chat binding takes is text, not a command:
    it goes to the input (which takes the focus), and the app's plain keys (q quits, digits
    switch modes) are not offered while the transcript has the focus."""

    def check_consume_key(self, key: str, character: str | None) -> bool:
        if not (character and character.isprintable()):
            return False
        # Chat's letter keys (a/b/t/s judge, r again, h blind) act only while there is A/B to
        # judge; otherwise they are text too ("this..." typed here must not toggle blind mode)
        return key not in self.screen.own_keys or not self.screen.judging()

    def on_key(self, event: events.Key) -> None:
        if self.check_consume_key(event.key, event.character):
            event.stop()
            event.prevent_default()
            self.screen.type_into_input(event.character)
