"""The eval's held-out split: where it is (`heldout_location`), its rows (`read_heldout`: a row
without a draft or a human reference is an error naming its file, line and field), the seeded
sample of them (`pick_samples`), and the chain of datasets it was built from (`manifest_chain`)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import HumanizerError
from engine.workspace import Workspace

REQUIRED = ("draft", "human")
MAX_CHAIN = 8  # parent datasets followed at most


@dataclass
class Sample:
    key: str
    line: int
    draft: str
    human: str
    prompt: str
    source_id: str | None = None
    locks: list[str] = field(default_factory=list)


def heldout_location(ws: Workspace, spec: str) -> tuple[Path, Path | None]:
    """(heldout.jsonl, its dataset folder or None) for a workspace dataset name, a dataset
    folder, or a held-out .jsonl file."""
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no dataset given", "pass --data NAME (humanizer data list shows them)")
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise HumanizerError(f"{path} is not a .jsonl file",
                                 "pass a dataset name, its folder, or its heldout.jsonl")
        return path, (path.parent if (path.parent / "manifest.json").is_file() else None)
    folder = path if path.is_dir() else (ws.datasets_dir / text if "/" not in text else None)
    if folder is None or not folder.is_dir():
        raise HumanizerError(f"no dataset named {text!r}",
                             "see `humanizer data list`; build one with `humanizer data build`")
    held = folder / "heldout.jsonl"
    if not held.is_file():
        raise HumanizerError(f"{folder} has no held-out split (heldout.jsonl)",
                             "build the dataset with `humanizer data build` (style-transfer or paired make one); "
                             "a preference set has none")
    return held, folder


def read_heldout(path: Path) -> list[Sample]:
    """Every row of a held-out file. A row that is not a JSON object, or lacks a non-empty
    "draft" or "human", stops the eval with its file, line and field (and how many rows share
    the problem). A missing "prompt" is rebuilt from the draft and locks with the builder's
    instruction (engine.data.build.instruction), as the dataset would have made it."""
    from engine.data.build import instruction

    from engine.jsonl import decode_text, json_lines, problem_kind

    data = path.read_bytes()
    try:
        decode_text(data)
    except UnicodeDecodeError as e:
        raise HumanizerError(f"{path} is not UTF-8 text (byte {e.start})") from None
    out: list[Sample] = []
    problems: list[tuple[int, str, str]] = []  # (line, field, what)
    seen: set[str] = set()
    for n, row, problem in json_lines(data):
        if problem:
            problems.append((n, "", "is " + problem_kind(problem)))
            continue
        bad = [(f, "is missing" if f not in row else "is not a string" if not isinstance(row[f], str) else "is empty")
               for f in REQUIRED if not isinstance(row.get(f), str) or not row[f].strip()]
        if bad:
            problems.append((n, *bad[0]))
            continue
        locks = [str(x) for x in row.get("locks") or [] if isinstance(x, (str, int, float))]
        prompt = row.get("prompt") if isinstance(row.get("prompt"), str) and row["prompt"].strip() else None
        key = str(row.get("key") or row.get("source_id") or f"line{n}")
        if key in seen:
            key = f"{key}@{n}"
        seen.add(key)
        out.append(Sample(key, n, row["draft"], row["human"], prompt or instruction(row["draft"], locks),
                          str(row["source_id"]) if row.get("source_id") is not None else None, locks))
    if problems:
        n, f, what = problems[0]
        where = f"{path}:{n}" + (f": field '{f}' {what}" if f else f" {what}")
        others = f" ({len(problems)} rows have a problem)" if len(problems) > 1 else ""
        raise HumanizerError(where + others, "every held-out row needs a non-empty 'draft' (the AI text to rewrite) "
                             "and 'human' (its human reference); rebuild the dataset or fix those rows")
    if not out:
        raise HumanizerError(f"{path} has no rows", "build the dataset with a held-out split (--heldout N)")
    return out


def pick_samples(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """The first `n` after a seeded shuffle (n = 0 or more than there are: all, in file order)."""
    if not n or n >= len(samples):
        return list(samples)
    order = list(samples)
    random.Random(seed).shuffle(order)
    return order[:n]


def manifest_chain(folder: Path | None) -> list[dict]:
    """[{"dataset", "path", "manifest"}] for the dataset and every dataset it was built from
    (manifest "parent" -> "dataset"), nearest first."""
    chain, seen = [], set()
    while folder is not None and len(chain) < MAX_CHAIN:
        folder = Path(folder)
        key = str(folder.resolve())
        if key in seen:
            break
        seen.add(key)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        if not isinstance(manifest, dict):
            manifest = {}
        chain.append({"dataset": folder.name, "path": str(folder), "manifest": manifest})
        parent = manifest.get("parent") if isinstance(manifest.get("parent"), dict) else {}
        folder = Path(parent["dataset"]) if parent.get("dataset") else None
    return chain
