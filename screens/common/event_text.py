"""One event as one line: the wording the CLI's progress view prints (plain) and the Jobs
screen shows (styled). No Textual or Rich here, so the CLI uses it too: each piece comes with
a role (STAMP, HEAD, ...) that the screen maps to a style and the CLI drops."""

from __future__ import annotations

import json
import time

STAMP, HEAD, OK, BAD, HINT, DIM, PLAIN = "stamp", "head", "ok", "bad", "hint", "dim", ""


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _short(text: str, width: int = 150) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _pairs(values: dict, sep: str = " ") -> str:
    return sep.join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def event_parts(ev: dict) -> list[tuple[str, str]]:
    """(text, role) pieces of one event's line: time, what happened, then what it says."""
    t = ev.get("t")
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "--:--:--"
    out = [(f"{stamp} ", STAMP)]
    kind = ev.get("type", "?")
    if kind == "progress":
        total, step = ev.get("total"), ev.get("step", 0)
        out += [("progress ", DIM), (f"{step}/{total}" if total else f"step {step}", HEAD)]
        if ev.get("message"):
            out.append((f" {ev['message']}", PLAIN))
        if ev.get("eta"):
            out.append((f"  eta {fmt_duration(ev['eta'])}", DIM))
    elif kind == "metric":
        out += [(f"step {ev.get('step', '?')} ", HEAD), (_pairs(ev.get("values") or {}, "  "), PLAIN)]
    elif kind == "layer":
        rest = {k: v for k, v in ev.items() if k not in ("t", "type", "path", "name")}
        out += [(f"layer {ev.get('path') or ev.get('name', '?')} ", HEAD), (" ".join(f"{k}={v}" for k, v in rest.items()), PLAIN)]
    elif kind == "artifact":
        out += [("wrote ", HEAD), (str(ev.get("path", "")), PLAIN)]
    elif kind == "done":
        out.append(("✓ done", OK))
        extra = {k: v for k, v in ev.items() if k not in ("t", "type")}
        if extra:
            out.append(("  " + " ".join(f"{k}={v}" for k, v in extra.items()), PLAIN))
    elif kind == "error":
        out.append((f"✗ {ev.get('message', 'error')}", BAD))
        if ev.get("hint"):
            out.append((f"  hint: {ev['hint']}", HINT))
    elif kind in ("log", "ready"):
        out.append((str(ev.get("message", "")), PLAIN))
    elif kind == "ranks":  # a run on several ranks, as rank 0 found them
        out += [("ranks ", HEAD), (" · ".join(f"{r.get('rank')}: {r.get('host')} pid {r.get('pid')}"
                                              for r in ev.get("ranks") or [] if isinstance(r, dict)), PLAIN)]
    elif kind == "sample":  # a dataset build's or an eval's newest pair, shortened to a line a side
        sides = [(name, ev.get(name)) for name in ("human", "draft", "rewrite") if ev.get(name)]
        out += [("sample ", HEAD), (str(ev.get("key", "")), PLAIN)]
        out += [(f"\n  {name:>7}: {_short(text)}", PLAIN) for name, text in sides]
    else:
        rest = {k: v for k, v in ev.items() if k not in ("t", "type")}
        out += [(f"{kind}", HEAD), (f" {json.dumps(rest, default=str)}" if rest else "", PLAIN)]
    return out


def event_line(ev: dict) -> str:
    """One event as plain text (the CLI's view, `jobs show`)."""
    return "".join(text for text, _ in event_parts(ev)).rstrip()
