"""Reading a DATA spec into raw rows: (file, line, row dict or RowIssue) per split, with no
tokenizer. A spec is a folder (train/valid .jsonl or .parquet, a `datasets` save, a Hub-style
repo, or a `humanizer data build` folder with sft/ and dpo/), a single file, a workspace
dataset name, or a Hugging Face dataset id (read through the local cache when offline)."""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from engine.data.rows import METHODS, RowIssue
from engine.errors import HumanizerError
from engine.jsonl import json_lines

_TRAIN_NAMES = ("train",)
_VALID_NAMES = ("valid", "validation")
_EXTS = (".jsonl", ".parquet")
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def _default_datasets_dir() -> Path:
    from engine.workspace import Workspace, default_home

    return Workspace(default_home()).datasets_dir


def _resolve(spec: str, ws=None) -> tuple[str, object]:
    """-> ("file", Path) | ("dir", Path) | ("hf", id); raises HumanizerError for missing paths."""
    if not isinstance(spec, str) or not spec.strip():
        raise HumanizerError("no dataset given", "pass --data: a folder, a .jsonl/.parquet file or a dataset id")
    spec = spec.strip()
    if spec.startswith("hf:"):
        return "hf", spec[3:]
    path = Path(spec).expanduser()
    if path.is_file():
        return "file", path
    if path.is_dir():
        return "dir", path
    datasets_dir = ws.datasets_dir if ws is not None else _default_datasets_dir()
    named = datasets_dir / spec
    if not Path(spec).is_absolute() and named.exists():
        return ("dir" if named.is_dir() else "file"), named
    looks_like_path = (
        spec.startswith((".", "/", "~"))
        or spec.lower().endswith((".jsonl", ".parquet", ".json"))
        or not HF_ID.match(spec)  # an id has at most one "/"; a deeper relative path is a path
    )
    if looks_like_path:
        raise HumanizerError(
            f"dataset not found: {spec} (no such file or folder, and no dataset of that name in {datasets_dir})",
            "check the path; DATA is a folder with train.jsonl, a .jsonl/.parquet file, "
            "a workspace dataset name or a Hugging Face dataset id",
        )
    return "hf", spec


def _read_jsonl(path: Path, name: str) -> list[tuple[str, int, object]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HumanizerError(f"can't read {path}: {e.strerror or e}") from e
    out: list[tuple[str, int, object]] = [
        (name, lineno, row if problem is None else RowIssue(name, lineno, None, problem))
        for lineno, row, problem in json_lines(data)
    ]
    if not out:
        out.append((name, 0, RowIssue(name, 0, None, "file is empty (no rows)")))
    return out


def _read_parquet(path: Path, name: str) -> list[tuple[str, int, object]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for unreadable files
        return [(name, 0, RowIssue(name, 0, None, f"can't read Parquet file: {e}"))]
    if not rows:
        return [(name, 0, RowIssue(name, 0, None, "file is empty (no rows)"))]
    return [(name, i + 1, _drop_nulls(r)) for i, r in enumerate(rows)]


def _drop_nulls(row: dict) -> dict:
    """Parquet/Arrow fill absent columns with null: treat null as absent."""
    return {k: v for k, v in row.items() if v is not None}


def _read_file(path: Path, name: str) -> list[tuple[str, int, object]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, name)
    if suffix == ".parquet":
        return _read_parquet(path, name)
    raise HumanizerError(
        f"unsupported data file: {path} (expected .jsonl or .parquet)",
        "convert it to JSON Lines (one JSON object per line) or Parquet",
    )


def _split_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    found = [folder / f"{n}{ext}" for n in names for ext in _EXTS if (folder / f"{n}{ext}").is_file()]
    if len(found) > 1:
        raise HumanizerError(
            f"{folder} has more than one file for the same split: {', '.join(p.name for p in found)}",
            "keep one of them",
        )
    return found[0] if found else None


def _read_folder(folder: Path, method: str | None = None) -> tuple[dict[str, list], str]:
    train = _split_file(folder, _TRAIN_NAMES)
    if train is None and any((folder / m).is_dir() for m in METHODS):
        # a dataset built by `humanizer data build`: sft/ and dpo/ side by side
        if method in METHODS and _split_file(folder / method, _TRAIN_NAMES) is not None:
            return _read_folder(folder / method)
        has = [m for m in METHODS if (folder / m).is_dir() and _split_file(folder / m, _TRAIN_NAMES) is not None]
        raise HumanizerError(
            f"{folder} has no {method or 'sft or dpo'} rows (it has: {', '.join(has) or 'nothing trainable'})",
            f"train with --method {has[0]}" if has else "build the dataset again with `humanizer data build`",
        )
    if train is None:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            return _read_saved(folder)
        return read_hf(str(folder), local=True)
    label = folder.name or str(folder)
    splits = {"train": _read_file(train, f"{label}/{train.name}")}
    files = [train.name]
    valid = _split_file(folder, _VALID_NAMES)
    if valid is not None:
        splits["valid"] = _read_file(valid, f"{label}/{valid.name}")
        files.append(valid.name)
    return splits, f"{folder} ({', '.join(files)})"


def _pick_splits(names: list[str]) -> tuple[str | None, str | None]:
    train = "train" if "train" in names else next((n for n in names if n.startswith("train")), None)
    if train is None and len(names) == 1 and names[0] not in ("valid", "validation", "val", "dev", "test"):
        train = names[0]
    valid = next((n for n in ("valid", "validation", "val", "dev", "test") if n in names), None)
    if valid is None and train is not None and train.startswith("train"):
        suffix = train[len("train"):]  # e.g. train_prefs -> test_prefs
        if suffix:
            valid = next((p + suffix for p in ("valid", "validation", "test") if p + suffix in names), None)
    return train, valid


def _hf_splits(dd, label: str) -> dict[str, list]:
    import datasets

    if isinstance(dd, datasets.Dataset):
        dd = {"train": dd}
    names = list(dd.keys())
    train, valid = _pick_splits(names)
    if train is None:
        raise HumanizerError(
            f"{label}: no train split (splits: {', '.join(names) or 'none'})",
            "name the training split 'train'",
        )
    out = {}
    for split, key in (("train", train), ("valid", valid)):
        if key is None:
            continue
        name = f"{label}[{key}]"
        rows = dd[key].to_list()
        out[split] = [(name, i + 1, _drop_nulls(r)) for i, r in enumerate(rows)] or [
            (name, 0, RowIssue(name, 0, None, "split is empty (no rows)"))
        ]
    return out


def _read_saved(folder: Path) -> tuple[dict[str, list], str]:
    import datasets

    try:
        dd = datasets.load_from_disk(str(folder))
    except Exception as e:
        raise HumanizerError(f"can't read the saved dataset in {folder}: {e}") from e
    return _hf_splits(dd, folder.name), f"{folder} (saved Hugging Face dataset)"


def _hub_reachable(timeout: float = 3.0) -> bool:
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        return False
    url = urlparse(datasets.config.HF_ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline():
    """Make datasets/huggingface_hub go straight to the local cache (no retries for ~20 s)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_progress():
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def read_hf(spec: str, local: bool = False) -> tuple[dict[str, list], str]:
    """Load through datasets.load_dataset: a Hub id (cache when offline) or a local repo-style folder."""
    import datasets

    name, config = spec, None
    if not local and ":" in spec:
        name, config = spec.rsplit(":", 1)
    reachable = True if local else _hub_reachable()
    offline = contextlib.nullcontext() if reachable else _offline()
    try:
        with offline, _quiet_progress():
            dd = datasets.load_dataset(name, config)
    except HumanizerError:
        raise
    except Exception as e:
        if local:
            raise HumanizerError(
                f"{spec} has no train.jsonl or train.parquet, and datasets can't read it as a dataset folder: {e}",
                "put the training rows in train.jsonl (and optionally valid.jsonl)",
            ) from e
        text = f"{type(e).__name__}: {e}"
        cache = datasets.config.HF_DATASETS_CACHE
        if not reachable or isinstance(e, ConnectionError):
            raise HumanizerError(
                f"can't load dataset '{spec}': it is not a local file or folder, the Hugging Face Hub "
                f"can't be reached (offline), and it isn't in the local datasets cache ({cache})",
                "download it once while online, or pass a local folder or .jsonl/.parquet file",
            ) from e
        if isinstance(e, FileNotFoundError) or "doesn't exist" in text or "not found" in text.lower():
            raise HumanizerError(
                f"dataset not found: '{spec}' is not a local file or folder, and not a dataset on the "
                f"Hugging Face Hub ({e})",
                "check the path or the dataset id",
            ) from e
        raise HumanizerError(f"can't load Hugging Face dataset '{spec}': {text}") from e
    label = Path(spec).name if local else name  # the config is in `source`, not in every issue
    where = "dataset folder" if local else ("Hugging Face dataset" + ("" if reachable else ", from the local cache"))
    return _hf_splits(dd, label), f"{spec} ({where})"


def read_spec(spec: str, ws=None, method: str | None = None) -> tuple[dict[str, list], str]:
    kind, target = _resolve(spec, ws)
    if kind == "file":
        return {"train": _read_file(target, target.name)}, str(target)
    if kind == "dir":
        return _read_folder(target, method)
    return read_hf(target)


def read_rows(spec: str, ws=None, method: str | None = None) -> dict[str, list[tuple[str, int, object]]]:
    """split name ("train"/"valid") -> [(file, line, row dict or RowIssue)]; no tokenizer needed."""
    return read_spec(spec, ws, method)[0]
