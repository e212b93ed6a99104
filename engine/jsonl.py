"""The one reader of row files (.jsonl) and text files: every place that reads rows uses it,
so they all accept the same files. A UTF-8 byte-order mark at the start (what Windows
editors and Excel write) is not part of the text."""

from __future__ import annotations

import codecs
import json
from typing import Iterator

BOM = codecs.BOM_UTF8


def decode_text(data: bytes) -> str:
    """UTF-8 text without a leading byte-order mark; raises UnicodeDecodeError."""
    return data.decode("utf-8-sig")


def json_lines(data: bytes) -> Iterator[tuple[int, dict | None, str | None]]:
    """(1-based line, row, None) for each non-blank line holding a JSON object, else
    (line, None, problem) with the problem in words; a bad line never stops the others."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start})"
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, None, f"not valid JSON: {e.msg} (column {e.colno})"
            continue
        if not isinstance(row, dict):
            yield lineno, None, f"not a JSON object (got {type_name(row)})"
            continue
        yield lineno, row, None


def type_name(v) -> str:
    """A JSON value's type in words, for messages."""
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(v), type(v).__name__)


def problem_kind(problem: str) -> str:
    """The kind of a json_lines problem without its details ("not valid JSON"), for counts."""
    return problem.split(":")[0].split(" (")[0]
