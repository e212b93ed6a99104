"""Training data: read SFT / DPO rows, check every row, tokenize with the chat template.

A DATA spec is one of
  - a folder with ``train.jsonl`` (or ``train.parquet``) and optional ``valid.jsonl``
    (``valid.parquet``, ``validation.*``),
  - a folder written by ``datasets.Dataset(Dict).save_to_disk``, or laid out like a
    Hugging Face dataset repo (read through ``datasets.load_dataset``),
  - a single ``.jsonl`` or ``.parquet`` file,
  - the name of a folder under the workspace's ``datasets/``,
  - a Hugging Face dataset id (``owner/name`` or ``owner/name:config``, optionally
    prefixed ``hf:``), read through ``datasets.load_dataset``, which uses the local
    cache when the Hub can't be reached.

SFT rows: ``messages`` | ``prompt`` + ``completion`` | ``text``.
DPO rows: ``prompt``, ``chosen``, ``rejected`` (+ optional ``system``).

Every problem becomes a :class:`RowIssue` naming file, 1-based line and field. Rows are
never truncated: a row longer than ``max_seq_length`` is an error (or skipped).
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from urllib.parse import urlparse

from engine.errors import HumanizerError
from engine.jsonl import json_lines, type_name as _type_name

ROLES = ("system", "user", "assistant")
METHODS = ("sft", "dpo")
MAX_LISTED = 10

_TRAIN_NAMES = ("train",)
_VALID_NAMES = ("valid", "validation")
_EXTS = (".jsonl", ".parquet")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


# --------------------------------------------------------------------------- types


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
class Example:
    """SFT: one tokenized sequence; loss only on tokens[prompt_len:]."""

    tokens: list[int]
    prompt_len: int
    file: str
    line: int


@dataclass
class Pair:
    """DPO: prompt tokens (chat template with add_generation_prompt) and two responses."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    file: str
    line: int


@dataclass
class Dataset:
    method: str  # "sft" | "dpo"
    train: list  # Example or Pair
    valid: list
    issues: list[RowIssue]
    skipped: int  # bad rows dropped (only with skip_bad_rows)
    source: str  # what was loaded, for reports
    held_out: int = 0  # valid rows taken from train (no valid split given)
    template_fallbacks: int = 0  # rows where the templated prompt wasn't a prefix

    @staticmethod
    def _length(item) -> int:
        if isinstance(item, Pair):
            return len(item.prompt) + max(len(item.chosen), len(item.rejected))
        return len(item.tokens)

    def summary(self) -> str:
        kind = "examples" if self.method == "sft" else "pairs"
        lines = [f"{self.method.upper()} data from {self.source}: "
                 f"{len(self.train)} train / {len(self.valid)} valid {kind}"]
        if self.held_out:
            lines.append(f"  valid: {self.held_out} rows held out from train (no valid split given)")
        lengths = [self._length(x) for x in self.train]
        if lengths:
            lines.append(
                f"  {sum(lengths):,} train tokens, longest row {max(lengths)}, "
                f"mean {sum(lengths) / len(lengths):.0f}"
            )
        if self.skipped:
            lines.append(f"  skipped {self.skipped} bad row{'s' if self.skipped != 1 else ''}")
        warnings = sum(1 for i in self.issues if not i.fatal)
        if warnings:
            lines.append(f"  {warnings} warning{'s' if warnings != 1 else ''}")
        if self.template_fallbacks:
            lines.append(
                f"  {self.template_fallbacks} rows: chat template prompt was not a prefix of the "
                "full conversation; prompt and response were tokenized separately"
            )
        return "\n".join(lines)


class DataError(HumanizerError):
    """Bad rows stop a run before training; `.issues` holds every problem found."""

    def __init__(self, issues: list[RowIssue], source: str = "the data", message: str | None = None,
                 hint: str | None = None):
        if isinstance(issues, str):  # DataError(message, hint), like any HumanizerError
            self.issues = []
            super().__init__(issues, None if source == "the data" else source)
            return
        self.issues = list(issues)
        fatal = [i for i in self.issues if i.fatal]
        if message is None:
            shown = sorted(fatal, key=lambda i: i.line != 0)  # file-level problems first
            n = len(fatal)
            head = f"{n} problem{'s' if n != 1 else ''} in {source}:"
            body = [f"  {i}" for i in shown[:MAX_LISTED]]
            if n > MAX_LISTED:
                body.append(f"  ... and {n - MAX_LISTED} more ({n} in all)")
            message = "\n".join([head, *body])
        if hint is None:
            rows = {(i.file, i.line) for i in fatal if i.line}
            if any(i.line == 0 for i in fatal):
                hint = "fix the file(s) named above" + (
                    f"; for the {len(rows)} bad row(s), fix them or pass --skip-bad-rows" if rows else ""
                )
            else:
                hint = f"fix these rows, or pass --skip-bad-rows to leave the {len(rows)} bad row(s) out"
        super().__init__(message, hint)


@dataclass
class _Row:
    """A checked row, not yet tokenized."""

    file: str
    line: int
    kind: str  # "text" | "chat"
    field: str  # the field named when the row is too long
    text: str = ""
    context: list[dict] = dc_field(default_factory=list)  # prompt conversation
    replies: tuple[str, ...] = ()  # sft: (completion,), dpo: (chosen, rejected)


# ----------------------------------------------------------------------- reading


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
        or not _HF_ID.match(spec)  # an id has at most one "/"; a deeper relative path is a path
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
        return _read_hf(str(folder), local=True)
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


def _read_hf(spec: str, local: bool = False) -> tuple[dict[str, list], str]:
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


def _read(spec: str, ws=None, method: str | None = None) -> tuple[dict[str, list], str]:
    kind, target = _resolve(spec, ws)
    if kind == "file":
        return {"train": _read_file(target, target.name)}, str(target)
    if kind == "dir":
        return _read_folder(target, method)
    return _read_hf(target)


def read_rows(spec: str, ws=None, method: str | None = None) -> dict[str, list[tuple[str, int, object]]]:
    """split name ("train"/"valid") -> [(file, line, row dict or RowIssue)]; no tokenizer needed."""
    return _read(spec, ws, method)[0]


# ---------------------------------------------------------------------- checking


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


def _check_sft(row: dict, file: str, line: int, warnings: list[RowIssue]) -> _Row:
    if "messages" in row:
        msgs = _messages(row["messages"], "messages", "a list of messages")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise _Bad("messages", "has no assistant message (nothing to learn)")
        if last != len(msgs) - 1:
            warnings.append(RowIssue(file, line, "messages",
                                     f"{len(msgs) - 1 - last} message(s) after the last assistant reply are ignored",
                                     fatal=False))
        return _Row(file, line, "chat", "messages", context=msgs[:last],
                    replies=(msgs[last]["content"],))
    if "prompt" in row or "completion" in row:
        for f in ("prompt", "completion"):
            if f not in row:
                raise _missing(row, f, "sft")
        prompt = _prompt(row)
        reply, ctx = _reply(row, "completion")
        prompt = _merge_context(prompt, ctx, "completion")
        return _Row(file, line, "chat", "completion", context=prompt, replies=(reply,))
    if "text" in row:
        return _Row(file, line, "text", "text", text=_text(row, "text"))
    raise _missing(row, "messages", "sft")


def _check_dpo(row: dict, file: str, line: int, warnings: list[RowIssue]) -> _Row:
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
    return _Row(file, line, "chat", "chosen", context=prompt, replies=(chosen, rejected))


def _check(method: str, splits: dict[str, list]) -> tuple[dict[str, list[_Row]], list[RowIssue], dict]:
    """Check rows without a tokenizer. -> (good rows per split, issues, {file: (rows, bad)})."""
    if method not in METHODS:
        raise HumanizerError(f"unknown training method {method!r}", "use --method sft or --method dpo")
    check = _check_sft if method == "sft" else _check_dpo
    good: dict[str, list[_Row]] = {}
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


def _no_valid_rows(counts: dict, bad_rows: dict[str, int] | None = None) -> list[RowIssue]:
    out = []
    for file, (n, bad) in counts.items():
        bad += (bad_rows or {}).get(file, 0)
        if n and bad >= n:
            out.append(RowIssue(file, 0, None, f"no valid rows (all {n} rows have errors)"))
    return out


# -------------------------------------------------------------------- tokenizing


def _has_chat_template(tokenizer) -> bool:
    has = getattr(tokenizer, "has_chat_template", None)
    if isinstance(has, bool):
        return has
    return getattr(tokenizer, "chat_template", None) is not None


def _encoder(tokenizer):
    """encode(texts, special) -> list of token lists, batched when the tokenizer allows it."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper holds the HF tokenizer
    batched = False
    try:
        from transformers import PreTrainedTokenizerBase

        batched = (
            isinstance(hf, PreTrainedTokenizerBase)
            and getattr(hf, "is_fast", False)
            and type(hf).encode is PreTrainedTokenizerBase.encode
            and type(hf).__call__ is PreTrainedTokenizerBase.__call__
        )
    except ImportError:
        pass

    def encode(texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        if batched:
            out = []
            for i in range(0, len(texts), 1024):
                out.extend(hf(texts[i:i + 1024], add_special_tokens=special)["input_ids"])
            return [list(t) for t in out]
        return [list(hf.encode(t, add_special_tokens=special)) for t in texts]

    return encode


def _tokenize(rows: list[_Row], tokenizer, max_seq_length: int, method: str):
    """-> (items: list[Example | Pair | RowIssue] in row order, template fallbacks)."""
    encode = _encoder(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    eos_ids = set(getattr(tokenizer, "eos_token_ids", None) or ([] if eos is None else [eos]))
    chat = [r for r in rows if r.kind == "chat"]
    if chat and not _has_chat_template(tokenizer):
        raise HumanizerError(
            "the model's tokenizer has no chat template, so chat rows "
            f"({'messages / prompt + completion' if method == 'sft' else 'prompt / chosen / rejected'}) "
            "can't be formatted",
            "use an instruct/chat model, or (SFT) plain 'text' rows",
        )

    # 1. render every chat text (per row, so a template error names its row)
    rendered: dict[int, tuple[str, list[str]]] = {}
    errors: dict[int, RowIssue] = {}
    for idx, r in enumerate(rows):
        if r.kind != "chat":
            continue
        try:
            p = tokenizer.apply_chat_template(r.context, tokenize=False, add_generation_prompt=True)
            fulls = [
                tokenizer.apply_chat_template([*r.context, {"role": "assistant", "content": reply}],
                                              tokenize=False, add_generation_prompt=False)
                for reply in r.replies
            ]
        except Exception as e:  # jinja TemplateError, raise_exception() in templates, ...
            errors[idx] = RowIssue(r.file, r.line, r.field, f"chat template failed: {e}")
            continue
        rendered[idx] = (p, fulls)

    # 2. tokenize in batches
    plain_idx = [i for i, r in enumerate(rows) if r.kind == "text"]
    plain_tok = dict(zip(plain_idx, encode([rows[i].text for i in plain_idx], True)))
    chat_idx = list(rendered)
    flat: list[str] = []
    for i in chat_idx:
        p, fulls = rendered[i]
        flat.append(p)
        flat.extend(fulls)
    flat_tok = iter(encode(flat, False))

    def ensure_eos(response: list[int]) -> list[int]:
        if eos is None:
            return response
        last = max((k for k, t in enumerate(response) if t in eos_ids), default=None)
        if last is None:
            return response + [eos]
        tail = response[last + 1:]
        if tail and not tokenizer.decode(tail).strip():
            return response[:last + 1]  # e.g. ChatML's "\n" after <|im_end|>
        return response

    fallbacks = 0
    items: list = []
    chat_tok: dict[int, tuple[list[int], list[list[int]]]] = {}
    for i in chat_idx:
        p = next(flat_tok)
        chat_tok[i] = (p, [next(flat_tok) for _ in rendered[i][1]])

    for idx, r in enumerate(rows):
        if idx in errors:
            items.append(errors[idx])
            continue
        if r.kind == "text":
            toks = plain_tok[idx]
            if eos is not None and (not toks or toks[-1] not in eos_ids):
                toks = toks + [eos]
            if len(toks) > max_seq_length:
                items.append(_too_long(r, len(toks), max_seq_length, "text"))
                continue
            items.append(Example(toks, 0, r.file, r.line))
            continue
        prompt, fulls = chat_tok[idx]
        responses = []
        fell_back = False
        for reply, full in zip(r.replies, fulls):
            if full[:len(prompt)] == prompt:
                responses.append(ensure_eos(full[len(prompt):]))
            else:
                fell_back = True
                responses.append(ensure_eos(encode([reply], False)[0]))
        fallbacks += fell_back
        if method == "sft":
            total = len(prompt) + len(responses[0])
            if total > max_seq_length:
                items.append(_too_long(r, total, max_seq_length, r.field, len(prompt)))
                continue
            items.append(Example(prompt + responses[0], len(prompt), r.file, r.line))
        else:
            chosen, rejected = responses
            total = len(prompt) + max(len(chosen), len(rejected))
            if total > max_seq_length:
                field = "chosen" if len(chosen) >= len(rejected) else "rejected"
                items.append(_too_long(r, total, max_seq_length, field, len(prompt)))
                continue
            items.append(Pair(prompt, chosen, rejected, r.file, r.line))
    return items, fallbacks


def _too_long(r: _Row, n: int, limit: int, field: str, prompt_len: int | None = None) -> RowIssue:
    detail = f" (prompt {prompt_len})" if prompt_len is not None else ""
    return RowIssue(r.file, r.line, field,
                    f"row is {n} tokens{detail}, longer than max_seq_length {limit} "
                    "(rows are never truncated: shorten it or raise --max-seq-length)")


# ----------------------------------------------------------------------- loading


def _hold_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    n = len(items)
    if fraction <= 0 or n < 2:
        return items, []
    k = min(n - 1, max(1, round(n * fraction)))
    chosen = set(random.Random(seed).sample(range(n), k))
    return [x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen]


def load_data(spec: str, method: str, tokenizer, max_seq_length: int, skip_bad_rows: bool = False,
              valid_fraction: float = 0.1, seed: int = 0, ws=None) -> Dataset:
    """Read, check and tokenize DATA for `method` ("sft" | "dpo").

    Raises DataError when any row has a fatal problem (unless skip_bad_rows, which drops
    those rows and counts them in `skipped`), and always when a file is empty or has no
    usable rows. Warnings never stop. Without a valid split, `valid_fraction` of the
    train rows (at least 1 when there are >= 2) is held out, chosen by `seed`."""
    splits, source = _read(spec, ws, method)
    good, issues, counts = _check(method, splits)

    tokenized: dict[str, list] = {}
    fallbacks = 0
    bad_after: dict[str, int] = {}
    for split, rows in good.items():
        items, fb = _tokenize(rows, tokenizer, max_seq_length, method)
        fallbacks += fb
        kept = []
        for it in items:
            if isinstance(it, RowIssue):
                issues.append(it)
                bad_after[it.file] = bad_after.get(it.file, 0) + 1
            else:
                kept.append(it)
        tokenized[split] = kept
    issues = _sort(issues)
    file_level = _no_valid_rows(counts, bad_after)
    fatal = [i for i in issues if i.fatal]
    if file_level or any(i.line == 0 for i in fatal) or (fatal and not skip_bad_rows):
        raise DataError(file_level + issues, source)
    skipped = len({(i.file, i.line) for i in fatal})

    train = tokenized.get("train", [])
    valid = tokenized.get("valid")
    held_out = 0
    if valid is None:
        train, valid = _hold_out(train, valid_fraction, seed)
        held_out = len(valid)
    return Dataset(method, train, valid, issues, skipped, source, held_out=held_out, template_fallbacks=fallbacks)


def preview(spec: str, method: str, limit: int = 20, ws=None) -> tuple[list[dict], int, list[RowIssue]]:
    """First `limit` rows (as read), the total row count and the issues found without
    tokenizing (too-long rows need the tokenizer and show up only in load_data)."""
    splits, _ = _read(spec, ws, method)
    _, issues, counts = _check(method, splits)
    rows = [row for entries in splits.values() for _, _, row in entries if isinstance(row, dict)]
    total = sum(n for n, _ in counts.values())
    return rows[:limit], total, _no_valid_rows(counts) + _sort(issues)


def _sort(issues: list[RowIssue]) -> list[RowIssue]:
    order: dict[str, int] = {}
    for i in issues:
        order.setdefault(i.file, len(order))
    return sorted(issues, key=lambda i: (order[i.file], i.line))
