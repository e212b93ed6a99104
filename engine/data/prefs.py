"""Preference sets: A/B judgements made in Chat, kept as DPO training data.

A preference set is a workspace dataset folder, ``datasets/NAME/``, laid out so that
``humanizer lora train --method dpo --data NAME`` reads it as it is (the loader reads
``train.jsonl`` and ignores the extra fields and files):

- ``train.jsonl``: one DPO row per decided pick (A or B): ``prompt`` (the source text the
  two sides rewrote), ``chosen``, ``rejected``, ``system`` (only when the chat had a
  system prompt) and ``meta`` (which adapter wrote which side, the pick, whether the
  judge was blind, the sampling with each side's seed, the time, the conversation).
- ``ties.jsonl``: ties, ``prompt``, ``a``, ``b`` (+ ``system``) and the same ``meta``. A
  tie teaches DPO nothing, so it stays out of train.jsonl, but it is a judgement worth
  keeping (it counts in the win rates and may feed other losses later).
- ``manifest.json``: template "preferences", name, source, licence, counts of pairs, ties
  and skips (a skip stores nothing else), created / updated.

Every change rewrites the whole file through a temp file and a rename
(``atomic_write_text``), rows first and the manifest after, so a crash never leaves a
torn file. Writes within one process are serialised by a lock (the Chat screen records
from a worker thread); two processes judging into the same set at the same moment are
not expected.

This module imports neither MLX nor any UI code: the Chat screen calls it, and so may
``humanizer data build``."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from engine.errors import HumanizerError
from engine.workspace import atomic_write_text

DEFAULT_SET = "chat-picks"
TEMPLATE = "preferences"
SOURCE = "A/B judgements in Chat"
LICENCE = "the judge's own"
PICKS = ("a", "b", "tie", "skip")
TRAIN_FILE = "train.jsonl"
TIES_FILE = "ties.jsonl"
MANIFEST_FILE = "manifest.json"
MAX_NAME = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOCK = threading.Lock()


def check_set_name(name) -> str:
    """The name, stripped, when it is a safe folder name (letters, digits, '.', '_', '-';
    not starting with '.' or '-'), else a HumanizerError. The name becomes a folder under
    datasets/ and the --data argument, so nothing that walks out of it or needs quoting."""
    if not isinstance(name, str) or not name.strip():
        raise HumanizerError("no preference set name given", f"use a name such as {DEFAULT_SET!r}")
    name = name.strip()
    if len(name) > MAX_NAME or not _NAME_RE.match(name) or name.endswith("."):
        raise HumanizerError(
            f"{name!r} is not a usable preference set name",
            f"letters, digits, '.', '_' and '-' only, starting with a letter or digit, at most {MAX_NAME} "
            f"characters (e.g. {DEFAULT_SET!r})")
    return name


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HumanizerError(f"can't read {path}: {e}", "fix or remove the file") from None
    return data if isinstance(data, dict) else None


def _read_rows(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file, in order ([] when it does not exist). A line that
    is not a JSON object is an error naming file and line: the file is never rewritten
    over rows it could not read."""
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # a BOM is no row
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise HumanizerError(f"{path}:{lineno}: not valid JSON ({e})", "fix or remove that line") from None
        if not isinstance(row, dict):
            raise HumanizerError(f"{path}:{lineno}: not a JSON object", "fix or remove that line")
        rows.append(row)
    return rows


def read_pairs(path) -> list[dict]:
    """The DPO rows (decided picks) of the preference set in folder `path`."""
    return _read_rows(Path(path) / TRAIN_FILE)


def read_ties(path) -> list[dict]:
    """The ties of the preference set in folder `path` ([] when there are none yet)."""
    return _read_rows(Path(path) / TIES_FILE)


def _adapter_entry(stats: dict, name) -> dict:
    return stats.setdefault(str(name), {"wins": 0, "losses": 0, "ties": 0, "win_rate": None})


def pref_stats(path) -> dict:
    """Counts and, per adapter, wins / losses / ties and the win rate over decided picks
    (wins / (wins + losses); None before any). A set that does not exist yet has zero of
    everything. An adapter judged against itself (two seeds) gets the win and the loss."""
    path = Path(path)
    pairs, ties = read_pairs(path), read_ties(path)
    manifest = _read_manifest(path) or {}
    skips = (manifest.get("counts") or {}).get("skips", 0) if isinstance(manifest.get("counts"), dict) else 0
    adapters: dict = {}
    for row in pairs:
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        _adapter_entry(adapters, meta.get("chosen_adapter"))["wins"] += 1
        _adapter_entry(adapters, meta.get("rejected_adapter"))["losses"] += 1
    for row in ties:
        sides = (row.get("meta") or {}).get("sides") if isinstance(row.get("meta"), dict) else None
        for name in {str(v) for v in (sides or {}).values()}:
            _adapter_entry(adapters, name)["ties"] += 1
    for entry in adapters.values():
        decided = entry["wins"] + entry["losses"]
        entry["win_rate"] = entry["wins"] / decided if decided else None
    return {"pairs": len(pairs), "ties": len(ties), "skips": int(skips) if isinstance(skips, int) else 0,
            "adapters": adapters}


def list_preference_sets(ws) -> list[str]:
    """Names of the workspace datasets that are preference sets (manifest template
    "preferences"), sorted."""
    out = []
    root = Path(ws.datasets_dir)
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            manifest = _read_manifest(folder)
        except HumanizerError:
            continue
        if manifest and manifest.get("template") == TEMPLATE:
            out.append(folder.name)
    return out


def _check_folder(folder: Path, name: str) -> dict | None:
    """The set's manifest (None for a new set). A folder that holds something else (another
    kind of dataset, or files without a preferences manifest) is refused: picks must never
    be mixed into data that came from elsewhere."""
    if folder.exists() and not folder.is_dir():
        raise HumanizerError(f"datasets/{name} exists and is not a folder", "choose another preference set name")
    manifest = _read_manifest(folder) if folder.is_dir() else None
    if manifest is not None:
        if manifest.get("template") != TEMPLATE:
            raise HumanizerError(
                f"datasets/{name} is not a preference set (its manifest says template "
                f"{manifest.get('template')!r})",
                "choose another preference set name (Chat settings, ctrl+g)")
        return manifest
    if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise HumanizerError(f"datasets/{name} already holds other files and no preference set manifest",
                             "choose another preference set name (Chat settings, ctrl+g)")
    return None


def _jsonl_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _append(path: Path, row: dict) -> None:
    """Rewrite `path` with one row more, atomically (the rows before are kept byte for byte)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + _jsonl_line(row))


def record_pick(ws, name: str, *, prompt: str, a: str, b: str, a_adapter: str, b_adapter: str, pick: str,
                system: str | None = None, meta: dict | None = None) -> dict:
    """Record one A/B judgement in the preference set `name` (made when missing) and return
    the set's `pref_stats` after it.

    pick "a" / "b" appends a DPO row (the picked side chosen, the other rejected); "tie"
    appends to ties.jsonl; "skip" only counts. `meta` adds to the row's meta (blind,
    sampling, conversation); the adapters, the pick, the sides and the time are filled in
    here."""
    name = check_set_name(name)
    if pick not in PICKS:
        raise HumanizerError(f"unknown pick {pick!r}", f"one of {', '.join(PICKS)}")
    texts = {"prompt": prompt, "a": a, "b": b} if pick != "skip" else {"prompt": prompt}
    for field, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            raise HumanizerError(f"the {field} text is empty: nothing to learn from",
                                 "regenerate the pair, or skip it" if field != "prompt" else "judge a real message")
    if pick in ("a", "b") and a.strip() == b.strip():
        raise HumanizerError("both sides wrote the same text, so neither can be preferred",
                             "record it as a tie, or skip it")
    folder = Path(ws.datasets_dir) / name
    now = time.time()
    full_meta = {"chosen_adapter": None, "rejected_adapter": None, "pick": pick,
                 "sides": {"A": str(a_adapter), "B": str(b_adapter)}, "blind": False, "sampling": {},
                 "time": now, "conversation": None}
    if pick in ("a", "b"):
        full_meta["chosen_adapter"] = str(a_adapter if pick == "a" else b_adapter)
        full_meta["rejected_adapter"] = str(b_adapter if pick == "a" else a_adapter)
    for k, v in (meta or {}).items():
        if k not in ("chosen_adapter", "rejected_adapter", "pick", "sides", "time"):
            full_meta[k] = v
    system = system if isinstance(system, str) and system.strip() else None

    with _LOCK:
        manifest = _check_folder(folder, name)
        counts = dict((manifest or {}).get("counts") or {})
        pairs, ties = read_pairs(folder), read_ties(folder)  # also checks they can be read
        counts = {"pairs": len(pairs), "ties": len(ties), "skips": int(counts.get("skips") or 0)}
        if pick in ("a", "b"):
            chosen, rejected = (a, b) if pick == "a" else (b, a)
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            if system:
                row["system"] = system
            row["meta"] = full_meta
            _append(folder / TRAIN_FILE, row)
            counts["pairs"] += 1
        elif pick == "tie":
            row = {"prompt": prompt, "a": a, "b": b}
            if system:
                row["system"] = system
            row["meta"] = full_meta
            _append(folder / TIES_FILE, row)
            counts["ties"] += 1
        else:
            counts["skips"] += 1
        out = {"template": TEMPLATE, "name": name, "source": SOURCE, "licence": LICENCE, "counts": counts,
               "created": (manifest or {}).get("created", now), "updated": now}
        atomic_write_text(folder / MANIFEST_FILE, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        return pref_stats(folder)
