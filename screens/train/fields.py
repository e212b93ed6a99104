"""What the Train form's fields mean, without Textual: the presets line, the default output
name, the dataset's methods, and the "flags" field read into argv and settings (the allowed
flags come from TrainSettings). The form (form.py) and the tests use them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from engine.train import settings as train_settings
from engine.train.config import DEFAULTS, keys_text, layers_text, resolve_config

# Flags the "flags" field may add (the rest of the form sets the others): flag -> value type (None: on/off)
EXTRA_FLAGS = {train_settings.flag(f): train_settings.value_type(f) for f in train_settings.setting_fields()
               if not f.metadata["form"]}
FORM_FLAGS = (*(train_settings.flag(f) for f in train_settings.setting_fields(form_only=True)), "--json")


def preset_summary(method: str, preset: str, mounted: bool = False) -> str:
    cfg = resolve_config(method, preset)
    layers, keys = layers_text(cfg["num_layers"]), keys_text(cfg["keys"])
    text = (f"rank {cfg['rank']} · scale {cfg['scale']:g} · dropout {cfg['dropout']:g} · {layers} · {keys} · "
            f"lr {cfg['learning_rate']:.0e} · batch {cfg['batch_size']}")
    if mounted:
        text += " · layers and keys follow the mounted adapter"
    return text


def default_iters(method: str) -> int:
    return int(DEFAULTS["iters"][method])


def holds_run(folder: Path) -> bool:
    """A training run wrote here: checkpoints, or a finished adapter."""
    ckpt = folder / "checkpoints"
    return (folder / "adapters.safetensors").exists() or (ckpt.is_dir() and any(ckpt.iterdir()))


def next_free_name(name: str, taken) -> str:
    """`name` with the next -N suffix that `taken` does not refuse (my-run -> my-run-2, my-run-2 -> my-run-3)."""
    m = re.fullmatch(r"(.+)-(\d+)", name)
    base, n = (m.group(1), int(m.group(2)) + 1) if m else (name, 2)
    while taken(f"{base}-{n}"):
        n += 1
    return f"{base}-{n}"


def output_path(ws, name: str) -> Path:
    """A plain name is a folder in the workspace's adapters/; a path is used as it is."""
    if "/" in name or name.startswith("~"):
        return Path(name).expanduser().resolve()
    return ws.adapters_dir / name


def check_dataset(ws, spec: str) -> str | None:
    """Why `spec` cannot be a dataset (cheap, no reading), or None."""
    if not spec:
        return "required: a folder with train.jsonl, a .jsonl/.parquet file, a workspace dataset or an HF id"
    p = Path(spec).expanduser()
    if p.exists() or spec.startswith("hf:") or (ws.datasets_dir / spec).exists():
        return None
    looks_like_path = (spec.startswith((".", "/", "~")) or spec.lower().endswith((".jsonl", ".parquet", ".json"))
                       or spec.count("/") > 1)
    if looks_like_path:
        return f"no such file or folder: {spec}"
    return None  # a Hugging Face dataset id: read when the run starts


def dataset_methods(ws, spec: str) -> tuple[str, ...]:
    """The methods DATA's rows feed (("sft",), ("dpo",), both, or () when unknown): a workspace
    dataset or folder by its parts and first rows, a .jsonl file by its first row. Reads files:
    call it in a worker thread."""
    from engine.data.catalog import dataset_info, row_method

    p = Path(spec).expanduser()
    if not p.exists() and not Path(spec).is_absolute() and (ws.datasets_dir / spec).is_dir():
        p = ws.datasets_dir / spec
    if p.is_dir():
        info = dataset_info(p)
        return info.methods if info else ()
    if p.is_file() and p.suffix.lower() == ".jsonl":
        try:
            with open(p, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            method = row_method(json.loads(first)) if first else None
        except (OSError, ValueError, AttributeError):
            return ()
        return (method,) if method else ()
    return ()


def pick_method(current: str, methods) -> str:
    """Keep the current method when the dataset feeds it, else the one it feeds."""
    return current if current in methods or not methods else methods[0]


def parse_extra(text: str) -> tuple[list[str], str | None]:
    """The extra flags as argv, or an error."""
    tokens, _, error = read_extra(text)
    return tokens, error


def read_extra(text: str) -> tuple[list[str], dict, str | None]:
    """The extra flags as argv and as settings (keyed as the CLI's flags: --num-layers ->
    num_layers, values typed), or an error."""
    settings: dict = {}
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        return [], {}, f"cannot parse: {e}"
    i = 0
    while i < len(tokens):
        flag = tokens[i].split("=", 1)[0]
        if flag in FORM_FLAGS:
            return [], {}, f"{flag} is set by the form"
        if flag not in EXTRA_FLAGS:
            return [], {}, f"unknown flag {tokens[i]} (allowed: {', '.join(EXTRA_FLAGS)})"
        kind = EXTRA_FLAGS[flag]
        key = flag[2:].replace("-", "_")
        if kind is None:
            settings[key] = True
            i += 1
            continue
        if "=" in tokens[i]:
            value = tokens[i].split("=", 1)[1]
        elif i + 1 < len(tokens):
            value = tokens[i + 1]
            i += 1
        else:
            return [], {}, f"{flag} needs a value"
        try:
            settings[key] = kind(value)  # as the CLI records it (--keys: the comma list as typed)
        except ValueError:
            return [], {}, (f"{flag} {value}: not a{'n integer' if kind is int else ' number' if kind is float else ''}"
                            " value")
        i += 1
    return tokens, settings, None


def cell(value, width: int = 24) -> str:
    if isinstance(value, list):  # messages
        value = " / ".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                           for m in value)
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"
