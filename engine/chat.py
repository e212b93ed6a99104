"""Chat conversations: the data (a conversation's settings and messages; an A/B message with
its judgement) and their files, one JSON file per conversation in the workspace's chats/
folder, written atomically. The Chat screen calls these; the saving runs in its worker threads.
No Textual here, so the CLI or a script can read and write the same files."""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.prefs import DEFAULT_SET
from engine.workspace import atomic_write_text

FORMAT = 1
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 256
TITLE_CHARS = 48
FINISHED = ("stop", "length", "stopped", "error")


def chats_dir(ws) -> Path:
    return ws.home / "chats"


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
