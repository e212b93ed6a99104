"""Calibration text: the shipped sets, a user's file or dataset, its tokens and the windows
the Fisher pass and the allocation check read. Imports no MLX."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from engine.errors import HumanizerError


CALIBRATION_FILE = Path(__file__).parent.parent / "calibration.txt"  # engine/: the paths the docs name
HELDOUT_FILE = Path(__file__).parent.parent / "calibration_heldout.txt"
DOC_SEPARATOR = re.compile(r"\n-{3}[ \t]*\n")
TEXT_SUFFIXES = (".txt", ".md", ".text")
ROW_SUFFIXES = (".jsonl", ".parquet")
MAX_CHECK_SAMPLES = 2  # calibration windows held back to compare the candidate allocations' real KL


def _read_docs(path: Path) -> list[str]:
    """The documents of a shipped text file (split at '---' lines; the first part is a header)."""
    parts = DOC_SEPARATOR.split(path.read_text(encoding="utf-8"))
    return [p.strip() for p in parts[1:] if p.strip()]


def default_calibration() -> list[str]:
    return _read_docs(CALIBRATION_FILE)


def default_heldout() -> list[str]:
    return _read_docs(HELDOUT_FILE)


def _row_text(row: dict) -> str | None:
    """Plain text of a calibration row: text | content | messages | prompt + completion/chosen."""
    for key in ("text", "content"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    msgs = row.get("messages")
    if isinstance(msgs, list):
        parts = [m.get("content") for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), str)]
        if parts:
            return "\n\n".join(parts)
    prompt = row.get("prompt")
    reply = next((row[k] for k in ("completion", "chosen", "response", "answer") if isinstance(row.get(k), str)), None)
    if isinstance(prompt, list):
        prompt = "\n\n".join(m.get("content", "") for m in prompt if isinstance(m, dict))
    texts = [t for t in (prompt, reply) if isinstance(t, str) and t.strip()]
    return "\n\n".join(texts) if texts else None


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or Path(spec).suffix.lower() in (*TEXT_SUFFIXES, *ROW_SUFFIXES, ".json", ".csv")
        or spec.count("/") > 1
        or os.sep != "/" and os.sep in spec
    )


def load_calibration(spec=None, ws=None) -> tuple[list[str], str]:
    """(documents, description) for a calibration spec: None (the shipped set), a text
    file, a .jsonl/.parquet file or folder of rows, or a Hugging Face dataset id."""
    if spec is None or str(spec).strip() in ("", "default"):
        return default_calibration(), "the default calibration set (engine/calibration.txt)"
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            raise HumanizerError(
                f"calibration file not found: {path}",
                "pass a text file, a .jsonl/.parquet file with a 'text' field, a Hugging Face dataset id, "
                "or leave --calibration out to use the default calibration set",
            )
        from engine import data

        splits = data.read_rows(spec, ws)  # a dataset id: clear errors when offline or unknown
        return _docs_from_rows(splits, spec), f"dataset {spec}"
    if path.is_file() and path.suffix.lower() not in ROW_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise HumanizerError(f"calibration file {path} is not UTF-8 text ({e.reason})",
                                 "pass a plain text file or a .jsonl file") from None
        except OSError as e:
            raise HumanizerError(f"cannot read calibration file {path}: {e.strerror or e}") from None
        if not text.strip():
            raise HumanizerError(f"calibration file {path} is empty", "pass a file with some text in it")
        return [text], f"text file {path}"
    if path.is_file() and path.stat().st_size == 0:
        raise HumanizerError(f"calibration file {path} is empty", "pass a file with some text in it")
    from engine import data

    splits = data.read_rows(str(path), ws)
    return _docs_from_rows(splits, str(path)), f"{'file' if path.is_file() else 'folder'} {path}"


def _docs_from_rows(splits: dict, label: str) -> list[str]:
    rows = splits.get("train") or next(iter(splits.values()), [])
    docs = []
    for _, _, row in rows:
        if isinstance(row, dict):
            t = _row_text(row)
            if t and t.strip():
                docs.append(t)
    if not docs:
        raise HumanizerError(
            f"no calibration text in {label}: it is empty or its rows have no 'text', 'messages' or "
            "'prompt'/'completion' field",
            "pass rows with a 'text' field, or a plain text file",
        )
    return docs


def tokenize_docs(docs: list[str], tokenizer) -> list[int]:
    """The documents' tokens, one stream, with the end-of-sequence token between documents."""
    eos = getattr(tokenizer, "eos_token_id", None)
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)  # no "longer than the model's maximum" warnings
    out: list[int] = []
    for d in docs:
        if backend is not None:
            ids = backend.encode(d, add_special_tokens=False).ids
        else:
            try:
                ids = tokenizer.encode(d, add_special_tokens=False)
            except TypeError:
                ids = tokenizer.encode(d)
        if out and eos is not None:
            out.append(int(eos))
        out.extend(int(i) for i in ids)
    return out


def make_samples(tokens: list[int], samples: int, seq_len: int) -> list[list[int]]:
    """Up to `samples` windows of `seq_len` consecutive tokens, spread evenly over the stream
    (one shorter window when there are fewer than seq_len tokens)."""
    if len(tokens) < 2:
        return []
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        return [tokens]
    take = min(samples, n_windows)
    starts = [round(i * n_windows / take) * seq_len for i in range(take)]
    return [tokens[s:s + seq_len] for s in starts]


def _token_fingerprint(samples: list[list[int]]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps(s).encode())
    return "sha256:" + h.hexdigest()[:24]


def split_check(calib: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """(fisher samples, check samples): one calibration window in 16 (at most MAX_CHECK_SAMPLES,
    spread over the text) is held back from the Fisher pass to check allocations on."""
    n = min(MAX_CHECK_SAMPLES, len(calib) // 16)
    idx = {min(len(calib) - 1, round((i + 0.5) * len(calib) / n)) for i in range(n)} if n else set()
    return [c for i, c in enumerate(calib) if i not in idx], [calib[i] for i in sorted(idx)]
