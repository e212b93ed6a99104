"""The datasets a person can pick: workspace datasets (built, preference sets, any folder
with train.jsonl) and the bundled examples, with rows per split, template, source and
licence; and a quick look at a dataset's rows. No MLX, no tokenizer: fast enough for a
screen to call in a thread worker on every refresh."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
PART_FILES = {"sft/train": "sft/train.jsonl", "sft/valid": "sft/valid.jsonl", "dpo/train": "dpo/train.jsonl",
              "dpo/valid": "dpo/valid.jsonl", "heldout": "heldout.jsonl", "train": "train.jsonl",
              "valid": "valid.jsonl"}


@dataclass
class DatasetInfo:
    name: str
    path: Path
    kind: str  # built | preferences | folder | example
    template: str
    source: str
    licence: str
    counts: dict[str, int] = field(default_factory=dict)  # part -> rows
    created: float | None = None
    methods: tuple[str, ...] = ()  # what `lora train --method` this dataset feeds

    @property
    def spec(self) -> str:
        """What `lora train --data` takes for it."""
        return self.name if self.kind != "example" else str(self.path)

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path), "methods": list(self.methods)}


def count_rows(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def row_method(row: dict) -> str | None:
    """sft or dpo, from the fields a row has (what the trainer would read it as)."""
    if "chosen" in row and "rejected" in row:
        return "dpo"
    if "messages" in row or "completion" in row or "text" in row:
        return "sft"
    return None


def infer_method(path: Path) -> str | None:
    """sft / dpo for a folder with a flat train.jsonl (its first row decides), else None."""
    train = path / "train.jsonl"
    try:
        with open(train, encoding="utf-8-sig") as f:  # a leading BOM is not part of the row
            for line in f:
                if line.strip():
                    return row_method(json.loads(line))
    except (OSError, ValueError):
        return None
    return None


def dataset_info(path: Path, kind: str | None = None) -> DatasetInfo | None:
    counts = {part: count_rows(path / f) for part, f in PART_FILES.items() if (path / f).is_file()}
    if not counts:
        return None
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    template = manifest.get("template", "")
    source = manifest.get("source") or {}
    if isinstance(source, dict):
        source_name, licence = source.get("name") or source.get("spec") or "", source.get("licence", "")
    else:
        source_name, licence = str(source), manifest.get("licence", "")
    methods = tuple(m for m in ("sft", "dpo") if counts.get(f"{m}/train"))
    if not methods and counts.get("train"):
        flat = infer_method(path)
        methods = (flat,) if flat else ()
    if kind is None:
        kind = "preferences" if template == "preferences" else "built" if template else "folder"
    return DatasetInfo(path.name, path, kind, template or ("example" if kind == "example" else "-"),
                       source_name or ("bundled examples (written for this project)" if kind == "example" else "-"),
                       licence or ("Apache-2.0 (this project)" if kind == "example" else "-"), counts,
                       manifest.get("updated") or manifest.get("created"), methods)


def list_datasets(ws, examples: bool = True) -> list[DatasetInfo]:
    """Workspace datasets by name (hidden and unfinished folders left out), then the examples."""
    out = []
    if ws.datasets_dir.is_dir():
        for d in sorted(ws.datasets_dir.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                info = dataset_info(d)
                if info is not None:
                    out.append(info)
    if examples and EXAMPLES_DIR.is_dir():
        for d in sorted(EXAMPLES_DIR.iterdir()):
            if d.is_dir():
                info = dataset_info(d, kind="example")
                if info is not None:
                    out.append(info)
    return out


def read_part(path: Path, part: str, limit: int = 200, offset: int = 0) -> tuple[list[dict], list[str]]:
    """Rows of one part ("sft/train", "heldout", ...) from `offset`, and the lines that are not
    valid JSON objects (as 'file:line: problem'), for the row browser."""
    file = path / PART_FILES.get(part, f"{part}.jsonl")
    rows, errors = [], []
    try:
        with open(file, encoding="utf-8-sig", errors="replace") as f:  # as engine.jsonl reads it
            n = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                n += 1
                if n <= offset:
                    continue
                if len(rows) >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError as e:
                    errors.append(f"{file.name}:{lineno}: not valid JSON ({e})")
                    continue
                if not isinstance(row, dict):
                    errors.append(f"{file.name}:{lineno}: not a JSON object")
                    continue
                rows.append(row)
    except OSError as e:
        errors.append(f"{file}: {e.strerror or e}")
    return rows, errors


def row_sides(row: dict) -> dict[str, str]:
    """A row as the browser shows it: draft | human | model rewrite (whichever it has)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt = "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    on_policy = bool(row.get("rewrites"))  # dpo-pairs: the rejected side is the model's own rewrite
    draft = row.get("draft") or (row.get("rejected") if "rejected" in row and not on_policy else None)
    return {
        "draft": str(draft or prompt or ""),
        "human": str(row.get("human") or row.get("completion") or row.get("chosen") or row.get("text") or ""),
        "rewrite": str(row.get("rejected") if on_policy else row.get("rewrite") or ""),
    }
