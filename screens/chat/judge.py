"""The Chat screen's A/B judgements: the person picks A, B, a tie or skip for the newest
A/B pair, and the pick is appended to a preference set in the workspace's datasets/
(engine.data.prefs), which `humanizer lora train --method dpo --data NAME` trains on.

- Keys (plain letters, so they work when the transcript has the focus; esc moves it there
  from the input, where letters type): a / b pick a side, t a tie, s skips, r runs the
  pair again with new seeds, h turns blind judging on or off.
- Blind: each new pair's sides are shuffled (seeded per message, kept in the saved
  conversation) and the labels say only A and B; the adapters show after the pick.
- The pick is written in a worker thread; the bar's prefs line then shows the set's count
  and each adapter's win rate."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Protocol

from rich.text import Text
from textual.binding import Binding

from engine.data.prefs import pref_stats, record_pick
from engine.errors import HumanizerError
from engine.chat import PICK_WORDS, Message, new_seed
from screens.chat.widgets import PairView, ReplyView
from screens.common.widgets import action_key

if TYPE_CHECKING:
    from textual.worker import Worker

    from engine.chat import Conversation, Reply

JUDGE_BINDINGS = [
    Binding("a", "pick('a')", "A wins", id="chat_pick_a", show=False,
            tooltip="A/B: side A is better (recorded in the preference set; the transcript must have the focus)"),
    Binding("b", "pick('b')", "B wins", id="chat_pick_b", show=False,
            tooltip="A/B: side B is better (recorded in the preference set)"),
    Binding("t", "pick('tie')", "Tie", id="chat_pick_tie", show=False,
            tooltip="A/B: neither is better (kept as a tie, not a training pair)"),
    Binding("s", "pick('skip')", "Skip", id="chat_pick_skip", show=False,
            tooltip="A/B: no judgement (only counted)"),
    Binding("r", "again", "Again", id="chat_again", show=False,
            tooltip="A/B: generate both sides of the newest pair again, with new seeds"),
    Binding("h", "toggle_blind", "Blind", id="chat_blind", show=False,
            tooltip="A/B blind judging: shuffle the sides, hide the adapters until the pick"),
]


def prefs_line(name: str, stats: dict | None, blind: str | None) -> Text:
    """ "prefs chat-picks: 12 pairs · sft+dpo 67% (8/12) · base 33% (4/12)": the preference
    set A/B picks go to, its counts and each adapter's win rate over decided picks (the most
    judged first, then the best); then whether judging is blind (`blind`: the key that turns it
    off, else None)."""
    t = Text("prefs ", style="dim")
    t.append(name, style="bold")
    t.append(": ", style="dim")
    if stats is None:
        t.append("…", style="dim")
    elif not (stats["pairs"] or stats["ties"] or stats["skips"]):
        t.append("no picks yet", style="dim")
    else:
        t.append(f"{stats['pairs']} pair{'s' * (stats['pairs'] != 1)}")
        if stats["ties"]:
            t.append(f" · {stats['ties']} tie{'s' * (stats['ties'] != 1)}", style="dim")
        decided = [(name, s) for name, s in stats["adapters"].items() if s["win_rate"] is not None]
        decided.sort(key=lambda kv: (-(kv[1]["wins"] + kv[1]["losses"]), -kv[1]["win_rate"], kv[0]))
        for adapter, s in decided:
            t.append(" · ", style="dim")
            t.append(f"{adapter} ", style="bold")
            t.append(f"{s['win_rate']:.0%}")
            t.append(f" ({s['wins']}/{s['wins'] + s['losses']})", style="dim")
    if blind:
        t.append(f" · blind ({blind})", style="bold")
    return t


class ChatJudge:
    """A/B pairs and their judgements (a mixin of the Chat screen, which has the #transcript
    and what Needs lists; tests/test_screen_mixins.py checks it has it all)."""

    class Needs(Protocol):
        conv: Conversation
        streams: list[Worker]

        @property
        def compare(self) -> str | None: ...  # the A/B side-B choice, None: A/B is off
        def _show(self, views: list) -> None: ...
        def _views(self, m: Message) -> list: ...  # ChatConversations'
        def _start_stream(self, reply: Reply, body: dict) -> None: ...
        def _save(self, conv: Conversation | None = None) -> None: ...  # ChatConversations'
        def _draw_bar(self) -> None: ...

    pref_stats: dict | None = None  # of the set named `_stats_name`
    _stats_name: str | None = None
    _judging: Message | None = None  # a pick being written

    # the newest pair ---------------------------------------------------------------------
    def _latest_ab(self) -> Message | None:
        return next((m for m in reversed(self.conv.messages) if m.role == "ab"), None)

    def _mark_latest(self) -> None:
        """Only the newest pair takes picks: tell every pair whether it is that one (and redraw
        the pairs now: a pick is rare, and its answer should not wait for the timer)."""
        latest = self._latest_ab()
        for view in self.query(PairView):
            view.latest = view.message is latest
            view.recording = view.message is self._judging
            view.sync()
            for side in view.query(ReplyView):
                side.sync()

    def _shows_prefs(self) -> bool:
        return self.compare is not None or any(m.role == "ab" for m in self.conv.messages)

    def _prefs_text(self) -> Text | None:
        if not self._shows_prefs():
            return None
        stats = self.pref_stats if self._stats_name == self.conv.prefs else None
        return prefs_line(self.conv.prefs, stats, action_key(self, "toggle_blind") if self.conv.blind else None)

    # a new pair, a pair streamed --------------------------------------------------------------
    def _add_pair(self, m: Message) -> None:
        """A new A/B pair: shown (source above, the two sides below), then both streamed."""
        self.conv.messages.append(m)
        self._show(self._views(m))
        self._mark_latest()
        self._load_stats()
        self._draw_bar()
        self._stream_pair(m)

    def _stream_pair(self, m: Message) -> None:
        """Stream both sides of A/B message `m`, each with its own seed, to the source text
        alone (with the system prompt): a pair is a side trip, not part of the dialogue."""
        m.sampling = {"temperature": self.conv.temperature, "max_tokens": self.conv.max_tokens}
        history = [{"role": "system", "content": self.conv.system}] if self.conv.system.strip() else []
        history.append({"role": "user", "content": m.content})
        for r in m.replies:
            self._start_stream(r, {"messages": history, "adapter": r.adapter, "seed": r.seed, **m.sampling})

    # the preference set's numbers ------------------------------------------------------------
    def _load_stats(self) -> None:
        if self._stats_name == self.conv.prefs and self.pref_stats is not None:
            return
        self.run_worker(partial(self._read_stats, self.conv.prefs), thread=True, group="chat-prefs",
                        exclusive=True)

    def _read_stats(self, name: str) -> None:
        """In a worker thread: the set's counts and win rates (zero for a set not made yet)."""
        try:
            stats = pref_stats(self.app.ws.datasets_dir / name)
        except (HumanizerError, OSError) as e:
            self.app.call_from_thread(self.notify, f"preference set {name}: {getattr(e, 'message', e)}",
                                      severity="warning", timeout=6)
            return
        self.app.call_from_thread(self._got_stats, name, stats)

    def _got_stats(self, name: str, stats: dict) -> None:
        if name != self.conv.prefs:
            return  # read for a set chosen before the current one
        self.pref_stats, self._stats_name = stats, name
        self._draw_bar()

    # picking ------------------------------------------------------------------------------------
    def action_pick(self, pick: str) -> None:
        m = self._latest_ab()
        if m is None:
            self.notify("no A/B pair to judge: ctrl+f compares two adapter choices", severity="warning", timeout=3)
            return
        if m.pick is not None:
            self.notify(f"this pair is judged ({PICK_WORDS[m.pick]}): r compares the same again",
                        severity="warning", timeout=3)
            return
        if self._judging is not None:
            return
        if not all(r.done for r in m.replies):
            self.notify("wait for both sides (esc stops them)", severity="warning", timeout=3)
            return
        if pick != "skip" and "error" in (m.replies[0].status, m.replies[1].status):
            self.notify("a side failed: r tries again, s skips", severity="warning", timeout=3)
            return
        a, b = m.replies
        sampling = dict(m.sampling or {"temperature": self.conv.temperature, "max_tokens": self.conv.max_tokens})
        sampling.update(seed_a=a.seed, seed_b=b.seed)
        kwargs = dict(prompt=m.content, a=a.content, b=b.content, a_adapter=a.adapter, b_adapter=b.adapter,
                      pick=pick, system=self.conv.system or None,
                      meta={"blind": m.blind, "sampling": sampling, "conversation": self.conv.id or None})
        self._judging = m
        self._mark_latest()
        self.run_worker(partial(self._record, self.conv, m, self.conv.prefs, kwargs), thread=True,
                        group="chat-judge")

    def _record(self, conv, m: Message, name: str, kwargs: dict) -> None:
        """In a worker thread: append the pick to the preference set."""
        try:
            stats = record_pick(self.app.ws, name, **kwargs)
        except (HumanizerError, OSError) as e:
            self.app.call_from_thread(self._record_failed, getattr(e, "message", None) or str(e),
                                      getattr(e, "hint", None))
            return
        self.app.call_from_thread(self._recorded, conv, m, name, kwargs["pick"], stats)

    def _recorded(self, conv, m: Message, name: str, pick: str, stats: dict) -> None:
        self._judging = None
        m.pick, m.prefs = pick, name
        self.pref_stats, self._stats_name = stats, name
        a, b = m.replies
        if pick in ("a", "b"):
            won, lost = (a, b) if pick == "a" else (b, a)
            said = f"{pick.upper()} wins: {won.adapter} over {lost.adapter}"
        elif pick == "tie":
            said = f"a tie: {a.adapter} and {b.adapter}"
        else:
            said = "skipped"
        self.notify(f"{said} · {name}: {stats['pairs']} pair{'s' * (stats['pairs'] != 1)}", timeout=4)
        self._mark_latest()
        self._load_stats()  # (only when the set was changed meanwhile)
        self._draw_bar()
        self._save(conv)

    def _record_failed(self, message: str, hint: str | None) -> None:
        self._judging = None
        self._mark_latest()
        self.notify(f"not recorded: {message}" + (f" ({hint})" if hint else ""), severity="error", timeout=8)

    # again, blind --------------------------------------------------------------------------------
    def action_again(self) -> None:
        m = self._latest_ab()
        if m is None:
            self.notify("no A/B pair to run again: ctrl+f compares two adapter choices", severity="warning",
                        timeout=3)
            return
        if self.streams:
            self.notify("a reply is still streaming: esc stops it", severity="warning", timeout=3)
            return
        if self._judging is not None:
            return
        if m.pick is None:  # the same pair, new seeds
            for r in m.replies:
                r.restart(new_seed())
            self._stream_pair(m)
            return
        # judged: a new pair for the same source, so the judged one stays as it was
        again = Message.ab(m.content, m.replies[0].adapter, m.replies[1].adapter, self.conv.blind)
        self._add_pair(again)

    def action_toggle_blind(self) -> None:
        self.conv.blind = not self.conv.blind
        self.notify("blind A/B on: new pairs shuffle their sides and hide the adapters until the pick"
                    if self.conv.blind else "blind A/B off", timeout=3)
        self._draw_bar()
