"""The Chat screen's pieces: conversations kept as JSON files in the workspace's chats/
folder (atomic writes), replies that a stream fills in (stream_reply) while the UI redraws
them on a timer, the widgets that show a message, a reply and an A/B pair of replies (with
its judgement), and the bar above the transcript."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from engine.data.prefs import DEFAULT_SET
from engine.workspace import atomic_write_text
from screens.common.serving import ServerError, fit_lines

FORMAT = 1
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
TITLE_CHARS = 48
FINISHED = ("stop", "length", "stopped", "error")


# control characters (a model can emit any byte) would move the terminal's cursor: shown as
# their Unicode control pictures instead; newlines and tabs stay.
_CONTROLS = {c: 0x2400 + c for c in range(32) if c not in (9, 10)}
_CONTROLS.update({0x7F: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)}})


def printable(text: str) -> str:
    return text.translate(_CONTROLS)


def chats_dir(ws) -> Path:
    return ws.home / "chats"


# the data ------------------------------------------------------------------------------
@dataclass
class Reply:
    """One assistant reply; a stream appends to `content` and bumps `version`."""

    adapter: str
    content: str = ""
    status: str = "waiting"  # waiting | streaming | stop | length | stopped | error
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    seed: int | None = None  # sent with the request (A/B: each side its own)
    version: int = 0

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def tokens_per_second(self) -> float | None:
        if not self.completion_tokens or not self.latency_s:
            return None
        gen = self.latency_s - (self.ttft_s or 0)
        return self.completion_tokens / gen if gen > 0 else None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("adapter", "content", "status", "error", "prompt_tokens",
                                            "completion_tokens", "latency_s", "ttft_s")}
        if self.seed is not None:
            d["seed"] = self.seed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Reply":
        r = cls(adapter=str(d.get("adapter") or "base"))
        for k in ("content", "status", "error", "prompt_tokens", "completion_tokens", "latency_s", "ttft_s"):
            if k in d:
                setattr(r, k, d[k])
        r.seed = d["seed"] if isinstance(d.get("seed"), int) else None
        if r.status not in FINISHED:  # saved while streaming (the app was closed): it stopped there
            r.status = "stopped"
        r.content = str(r.content or "")
        return r

    def restart(self, seed: int | None) -> None:
        """Empty it for a new generation (A/B "again"); the version only grows, so views redraw."""
        self.content, self.status, self.error, self.seed = "", "waiting", None, seed
        self.prompt_tokens = self.completion_tokens = self.latency_s = self.ttft_s = None
        self.version += 1


def new_seed() -> int:
    return secrets.randbelow(2**31)


PICK_WORDS = {"a": "A", "b": "B", "tie": "tie", "skip": "skipped"}


@dataclass
class Message:
    """role "user" (content), "assistant" (one reply) or "ab" (content = the source text, two
    replies in the order shown: side A, side B). An A/B message also keeps its judgement:
    `pick` ("a", "b", "tie", "skip"; None before), the preference set it went to, and
    whether it was blind (then `shuffle` is the seed that ordered the sides, and the
    adapters are hidden until the pick)."""

    role: str
    content: str = ""
    replies: list[Reply] = field(default_factory=list)
    pick: str | None = None
    prefs: str | None = None
    blind: bool = False
    shuffle: int | None = None
    sampling: dict | None = None  # A/B: the temperature and max tokens both sides were generated with

    @classmethod
    def ab(cls, text: str, a: str, b: str, blind: bool = False) -> "Message":
        """A new A/B message for choices a and b, each side with its own seed; blind: the
        sides in a random order (seeded per message, so the saved file says how)."""
        replies = [Reply(a, seed=new_seed()), Reply(b, seed=new_seed())]
        shuffle = None
        if blind:
            shuffle = new_seed()
            if random.Random(shuffle).random() < 0.5:
                replies.reverse()
        return cls("ab", text, replies, blind=blind, shuffle=shuffle)

    @property
    def hidden(self) -> bool:
        """Blind and not judged yet: which adapter wrote which side is not shown."""
        return self.blind and self.pick is None

    def to_dict(self) -> dict:
        d: dict = {"role": self.role}
        if self.role == "assistant":
            d.update(self.replies[0].to_dict())
        else:
            d["content"] = self.content
        if self.role == "ab":
            d["replies"] = [r.to_dict() for r in self.replies]
            d.update({k: getattr(self, k) for k in ("pick", "prefs", "shuffle", "sampling")
                      if getattr(self, k) is not None})
            if self.blind:
                d["blind"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Message | None":
        role = d.get("role")
        if role == "user":
            return cls("user", str(d.get("content") or ""))
        if role == "assistant":
            return cls("assistant", replies=[Reply.from_dict(d)])
        if role == "ab" and isinstance(d.get("replies"), list) and len(d["replies"]) == 2:
            m = cls("ab", str(d.get("content") or ""), [Reply.from_dict(r) for r in d["replies"]])
            m.pick = d.get("pick") if d.get("pick") in PICK_WORDS else None
            m.prefs = d.get("prefs") if isinstance(d.get("prefs"), str) else None
            m.blind = d.get("blind") is True
            m.shuffle = d.get("shuffle") if isinstance(d.get("shuffle"), int) else None
            m.sampling = d.get("sampling") if isinstance(d.get("sampling"), dict) else None
            return m
        return None


@dataclass
class Conversation:
    id: str
    created: float
    updated: float
    system: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int = DEFAULT_MAX_TOKENS
    adapter: str | None = None
    compare: str | None = None
    blind: bool = False  # A/B: shuffle the sides and hide the adapters until the pick
    prefs: str = DEFAULT_SET  # the preference set A/B picks go to
    messages: list[Message] = field(default_factory=list)

    @classmethod
    def new(cls, like: "Conversation | None" = None, now: float | None = None) -> "Conversation":
        now = time.time() if now is None else now
        cid = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)
        c = cls(cid, now, now)
        if like is not None:  # the settings carry over to a new conversation
            c.system, c.temperature, c.max_tokens = like.system, like.temperature, like.max_tokens
            c.adapter, c.compare, c.blind, c.prefs = like.adapter, like.compare, like.blind, like.prefs
        return c

    @property
    def title_source(self) -> str:
        """The first user message: the title is made from it."""
        return next((m.content for m in self.messages if m.role in ("user", "ab") and m.content.strip()), "")

    @property
    def title(self) -> str:
        text = " ".join(self.title_source.split())
        if not text:
            return "new conversation"
        return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"

    def history(self) -> list[dict]:
        """The messages a normal turn sends: the system prompt, then every user message and
        every reply with text (A/B comparisons are side trips, not part of the dialogue)."""
        out = [{"role": "system", "content": self.system}] if self.system.strip() else []
        for m in self.messages:
            if m.role == "user":
                out.append({"role": "user", "content": m.content})
            elif m.role == "assistant" and m.replies[0].content.strip():
                out.append({"role": "assistant", "content": m.replies[0].content})
        return out

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "id": self.id, "title": self.title, "created": self.created, "updated": self.updated,
            "system": self.system, "temperature": self.temperature, "max_tokens": self.max_tokens,
            "adapter": self.adapter, "compare": self.compare, "blind": self.blind, "prefs": self.prefs,
            "messages": [m.to_dict() for m in self.messages],
        }, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Conversation":
        d = json.loads(text)
        if not isinstance(d, dict) or not isinstance(d.get("id"), str):
            raise ValueError("not a conversation")
        c = cls(d["id"], float(d.get("created") or 0), float(d.get("updated") or 0))
        c.system = str(d.get("system") or "")
        temp = d.get("temperature")
        c.temperature = float(temp) if isinstance(temp, (int, float)) else DEFAULT_TEMPERATURE
        mt = d.get("max_tokens")
        c.max_tokens = int(mt) if isinstance(mt, int) and mt > 0 else DEFAULT_MAX_TOKENS
        c.adapter = d.get("adapter") if isinstance(d.get("adapter"), str) else None
        c.compare = d.get("compare") if isinstance(d.get("compare"), str) else None
        c.blind = d.get("blind") is True
        c.prefs = d["prefs"] if isinstance(d.get("prefs"), str) and d["prefs"].strip() else DEFAULT_SET
        c.messages = [m for m in (Message.from_dict(x) for x in d.get("messages") or [] if isinstance(x, dict)) if m]
        return c


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


def save_conversation(ws, text: str, conv_id: str) -> Path:
    """Write one conversation's JSON (made on the UI thread) atomically; call it in a thread."""
    path = chats_dir(ws) / f"{conv_id}.json"
    atomic_write_text(path, text)
    return path


def list_conversations(ws) -> tuple[list[Conversation], list[str]]:
    """Every saved conversation, the most recently updated first, and the files that could not be read."""
    folder = chats_dir(ws)
    found, bad = [], []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(Conversation.from_json(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            bad.append(f"{p.name}: {e}")
    found.sort(key=lambda c: c.updated, reverse=True)
    return found, bad


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

