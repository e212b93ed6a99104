"""Settings dataclasses as command lines: the flags that reproduce a settings object, so a
form's settings become the argv of the job it starts (and a job's argv reads back the same).
Imports no MLX."""

from __future__ import annotations

from dataclasses import MISSING


def flags_of(settings, settings_fields) -> list[str]:
    """`--name value` for every field whose value is not its default; a true bool is the bare flag."""
    out: list[str] = []
    for f in settings_fields:
        value = getattr(settings, f.name)
        if f.default is not MISSING and value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out
