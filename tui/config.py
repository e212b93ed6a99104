"""The workspace's config.toml: `theme` and a `[keymap]` table of `binding_id = "key"`.

Reading never stops the app: a file that does not parse, or a value of the wrong type,
gives defaults plus a message naming the line. Writing changes one top-level value in
place (comments and other tables kept), atomically; Python only ships a TOML reader,
so the few value types we write are written by hand."""

from __future__ import annotations

import datetime as _dt
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine.errors import ConfigError
from engine.workspace import atomic_write_text

CONFIG_HINT = ("fix that line of config.toml (nothing was written over it), or move the file away to start "
               "from the defaults")


@dataclass
class Config:
    theme: str | None = None
    keymap: dict[str, str] = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def _decode_error(path: Path, text: str, e: tomllib.TOMLDecodeError) -> str:
    msg = str(e)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if not m:
        return f"{path.name}: {msg}"
    lineno = int(m.group(1))
    lines = text.splitlines()
    shown = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return f"{path.name} line {lineno}: {msg[:m.start()].strip()}" + (f": {shown}" if shown else "")


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """The line where `key` is set (inside [table] when given)."""
    in_table = table is None
    for n, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            in_table = table is not None and header.group(1).strip("\"' ") == table
            if table is None:
                return None
            continue
        if in_table and re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return n
    return None


def _where(path: Path, text: str, key: str, table: str | None = None) -> str:
    n = _line_of(text, key, table)
    return f"{path.name} line {n}" if n else path.name


def load_config(path: Path) -> tuple[Config, list[str]]:
    """The config, and what is wrong with the file (each message names its line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config(), []
    except (OSError, UnicodeDecodeError) as e:
        return Config(), [f"cannot read {path}: {e}; using defaults"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return Config(), [_decode_error(Path(path), text, e) + " — using the default settings"]
    problems: list[str] = []
    cfg = Config(data=data)
    theme = data.get("theme")
    if theme is not None:
        if isinstance(theme, str):
            cfg.theme = theme
        else:
            problems.append(f"{_where(path, text, 'theme')}: theme must be a string such as \"textual-dark\"")
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict):
        problems.append(f"{_where(path, text, 'keymap')}: keymap must be a table: [keymap] then binding_id = \"key\"")
        keymap = {}
    for binding_id, keys in keymap.items():
        if isinstance(keys, str) and keys.strip():
            cfg.keymap[binding_id] = keys.strip()
        else:
            problems.append(f"{_where(path, text, binding_id, 'keymap')}: [keymap] {binding_id} must be a key "
                            "name in quotes, such as \"ctrl+r\"")
    return cfg, problems


def keymap_line(path: Path, binding_id: str) -> str:
    """'config.toml line N' for a keymap entry, for messages about it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return Path(path).name
    return _where(Path(path), text, binding_id, "keymap")


# writing -------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(data: dict, _prefix: str = "") -> str:
    """`data` as TOML: plain values first, then each table under its [header]."""
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)
             and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
    out = [f"{_key(k)} = {toml_value(v)}" for k, v in plain.items()]
    for k, v in data.items():
        name = f"{_prefix}{_key(k)}"
        if isinstance(v, dict):
            body = dumps(v, name + ".")
            out.append(f"\n[{name}]\n{body}".rstrip("\n"))
        elif k not in plain:
            for item in v:
                out.append(f"\n[[{name}]]\n{dumps(item, name + '.')}".rstrip("\n"))
    return "\n".join(out).lstrip("\n") + "\n"


def set_value(path: Path, key: str, value, table: str | None = None) -> None:
    """Set `key` (top-level, or in [table]) in the TOML file at `path`, keeping everything else.

    Raises ConfigError (and writes nothing) when the file exists but does not parse, or
    `table` names something that is not a table: rewriting it would throw away what the
    user wrote."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_decode_error(path, text, e), CONFIG_HINT) from None
    if table is not None and not isinstance(data.get(table, {}), dict):
        raise ConfigError(f"{_where(path, text, table)}: {table} must be a table ([{table}])", CONFIG_HINT)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new_line = f"{_key(key)} = {toml_value(value)}\n"
    if table is None:
        start, end = 0, next((i for i, line in enumerate(lines) if re.match(r"\s*\[", line)), len(lines))
    else:
        header = next((i for i, line in enumerate(lines) if re.match(rf"\s*\[\s*{re.escape(table)}\s*\]", line)), None)
        if header is None:
            lines += (["\n"] if lines and lines[-1].strip() else []) + [f"[{_key(table)}]\n"]
            header = len(lines) - 1
        start = header + 1
        end = next((i for i in range(start, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    for i in range(start, end):
        if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[i]):
            lines[i] = new_line
            break
    else:
        at = end
        while at > start and not lines[at - 1].strip():  # after the last value, before blank lines
            at -= 1
        lines.insert(at, new_line)
    new_text = "".join(lines)
    try:
        got = tomllib.loads(new_text)
        ok = (got.get(key) if table is None else got.get(table, {}).get(key)) == value
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # an unusual layout (a multi-line value, a dotted key): write the whole file out instead
        new_text = dumps({**data, key: value} if table is None
                         else {**data, table: {**data.get(table, {}), key: value}})
    atomic_write_text(path, new_text)
