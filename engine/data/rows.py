"""Checking training rows without a tokenizer: every problem a `RowIssue` naming file, 1-based
line and field; a good row becomes a `Row` (its conversation and replies, not yet tokenized).

SFT rows: ``messages`` | ``prompt`` + ``completion`` | ``text``.
DPO rows: ``prompt``, ``chosen``, ``rejected`` (+ optional ``system``)."""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field

from engine.errors import HumanizerError
from engine.jsonl import type_name as _type_name

ROLES = ("system", "user", "assistant")
METHODS = ("sft", "dpo")


@dataclass
class RowIssue:
    file: str
    line: int  # 1-based; 0 = the file as a whole
    field: str | None
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}" if self.line else self.file
        parts = [loc]
        if not self.fatal:
            parts.append("warning")
        if self.field:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)


@dataclass
class Row:
    """A checked row, not yet tokenized."""

    file: str
    line: int
    kind: str  # "text" | "chat"
    field: str  # the field named when the row is too long
    text: str = ""
    context: list[dict] = dc_field(default_factory=list)  # prompt conversation
    replies: tuple[str, ...] = ()  # sft: (completion,), dpo: (chosen, rejected)


def _is_blank(s: str) -> bool:
    return not s.strip()


class _Bad(Exception):
    def __init__(self, field: str | None, message: str):
        self.field, self.message = field, message


def _messages(value, field: str, what: str) -> list[dict]:
    """Check a list of {role, content} messages; returns clean {role, content} dicts."""
    if not isinstance(value, list):
        raise _Bad(field, f"must be {what} (got {_type_name(value)})")
    if not value:
        raise _Bad(field, "is an empty list (no messages)")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise _Bad(field, f"message {i} must be an object with 'role' and 'content' (got {_type_name(m)})")
        if "role" not in m or m["role"] is None:
            raise _Bad(field, f"message {i} has no 'role'")
        if "content" not in m or m["content"] is None:
            raise _Bad(field, f"message {i} has no 'content'")
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise _Bad(field, f"message {i} has unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(content, str):
            raise _Bad(field, f"message {i} ({role}): 'content' must be a string (got {_type_name(content)})")
        if _is_blank(content):
            raise _Bad(field, f"message {i} ({role}) has empty content")
        out.append({"role": role, "content": content})
    return out


def _text(row: dict, field: str) -> str:
    v = row[field]
    if not isinstance(v, str):
        raise _Bad(field, f"must be a string (got {_type_name(v)})")
    if _is_blank(v):
        raise _Bad(field, "is empty" if not v else "is only whitespace")
    return v


def _system(row: dict) -> str | None:
    if "system" not in row:
        return None
    return _text(row, "system")


def _prompt(row: dict, field: str = "prompt") -> list[dict]:
    v = row[field]
    if isinstance(v, str):
        msgs = [{"role": "user", "content": _text(row, field)}]
    else:
        msgs = _messages(v, field, "a string or a list of messages")
    system = _system(row)
    if system is not None and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


def _reply(row: dict, field: str) -> tuple[str, list[dict] | None]:
    """A response: a string, or a message list whose last message is the assistant reply.
    Returns (reply text, the messages before it or None)."""
    v = row[field]
    if isinstance(v, str):
        return _text(row, field), None
    msgs = _messages(v, field, "a string or a list of messages")
    if msgs[-1]["role"] != "assistant":
        raise _Bad(field, f"the last message must be the assistant reply (got {msgs[-1]['role']})")
    return msgs[-1]["content"], msgs[:-1]


def _strip_system(msgs: list[dict]) -> list[dict]:
    return [m for m in msgs if m["role"] != "system"]


def _merge_context(prompt: list[dict], ctx: list[dict] | None, field: str) -> list[dict]:
    """A reply given as a whole conversation must continue the prompt."""
    if not ctx:
        return prompt
    if _strip_system(ctx) != _strip_system(prompt):
        raise _Bad(field, "the messages before the reply differ from 'prompt'")
    if prompt[0]["role"] != "system" and ctx[0]["role"] == "system":
        return [ctx[0], *prompt]
    return prompt


def _missing(row: dict, field: str, method: str) -> _Bad:
    keys = ", ".join(sorted(map(str, row))) or "none"
    if method == "dpo" and any(k in row for k in ("messages", "completion", "text")):
        hint = "; this looks like SFT data (use --method sft)"
    elif method == "sft" and any(k in row for k in ("chosen", "rejected")):
        hint = "; this looks like DPO data (use --method dpo)"
    else:
        hint = ""
    need = (
        "an SFT row needs 'messages', 'prompt' + 'completion', or 'text'"
        if method == "sft"
        else "a DPO row needs 'prompt', 'chosen' and 'rejected'"
    )
    return _Bad(field, f"missing ({need}; row has: {keys}){hint}")


def _check_sft(row: dict, file: str, line: int, warnings: list[RowIssue]) -> Row:
    if "messages" in row:
        msgs = _messages(row["messages"], "messages", "a list of messages")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise _Bad("messages", "has no assistant message (nothing to learn)")
        if last != len(msgs) - 1:
            warnings.append(RowIssue(file, line, "messages",
                                     f"{len(msgs) - 1 - last} message(s) after the last assistant reply are ignored",
                                     fatal=False))
        return Row(file, line, "chat", "messages", context=msgs[:last],
                    replies=(msgs[last]["content"],))
    if "prompt" in row or "completion" in row:
        for f in ("prompt", "completion"):
            if f not in row:
                raise _missing(row, f, "sft")
        prompt = _prompt(row)
        reply, ctx = _reply(row, "completion")
        prompt = _merge_context(prompt, ctx, "completion")
        return Row(file, line, "chat", "completion", context=prompt, replies=(reply,))
    if "text" in row:
        return Row(file, line, "text", "text", text=_text(row, "text"))
    raise _missing(row, "messages", "sft")


def _check_dpo(row: dict, file: str, line: int, warnings: list[RowIssue]) -> Row:
    for f in ("chosen", "rejected"):
        if f not in row:
            raise _missing(row, f, "dpo")
    chosen, chosen_ctx = _reply(row, "chosen")
    rejected, rejected_ctx = _reply(row, "rejected")
    if "prompt" in row:
        prompt = _prompt(row)
    elif chosen_ctx and chosen_ctx == rejected_ctx:
        # chosen/rejected given as whole conversations sharing the same prompt
        prompt = chosen_ctx
        system = _system(row)
        if system is not None and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}, *prompt]
    else:
        raise _missing(row, "prompt", "dpo")
    prompt = _merge_context(prompt, chosen_ctx, "chosen")
    prompt = _merge_context(prompt, rejected_ctx, "rejected")
    if chosen == rejected:
        warnings.append(RowIssue(file, line, "rejected", "is the same as 'chosen' (the pair teaches nothing)",
                                 fatal=False))
    return Row(file, line, "chat", "chosen", context=prompt, replies=(chosen, rejected))


def check_rows(method: str, splits: dict[str, list]) -> tuple[dict[str, list[Row]], list[RowIssue], dict]:
    """Check rows without a tokenizer. -> (good rows per split, issues, {file: (rows, bad)})."""
    if method not in METHODS:
        raise HumanizerError(f"unknown training method {method!r}", "use --method sft or --method dpo")
    check = _check_sft if method == "sft" else _check_dpo
    good: dict[str, list[Row]] = {}
    issues: list[RowIssue] = []
    counts: dict[str, list[int]] = {}
    for split, entries in splits.items():
        rows = good.setdefault(split, [])
        for file, line, row in entries:
            c = counts.setdefault(file, [0, 0])
            if isinstance(row, RowIssue):
                issues.append(row)
                if row.line:
                    c[0] += 1
                    c[1] += 1
                continue
            c[0] += 1
            warnings: list[RowIssue] = []
            try:
                rows.append(check(row, file, line, warnings))
            except _Bad as b:
                issues.append(RowIssue(file, line, b.field, b.message))
                c[1] += 1
            issues.extend(warnings)
    return good, issues, counts


def no_valid_rows(counts: dict, bad_rows: dict[str, int] | None = None) -> list[RowIssue]:
    out = []
    for file, (n, bad) in counts.items():
        bad += (bad_rows or {}).get(file, 0)
        if n and bad >= n:
            out.append(RowIssue(file, 0, None, f"no valid rows (all {n} rows have errors)"))
    return out


def sort_issues(issues: list[RowIssue]) -> list[RowIssue]:
    order: dict[str, int] = {}
    for i in issues:
        order.setdefault(i.file, len(order))
    return sorted(issues, key=lambda i: (order[i.file], i.line))
