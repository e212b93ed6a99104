"""Where human text comes from, as documents, and how a document becomes passages.

A source is one of: a pulled corpus (`humanizer data corpus pull`), a folder of .txt/.md
files (or one such file), a .jsonl/.csv/.parquet file with a text column, a workspace
dataset (its human side), or a Hugging Face dataset id (through `datasets`, which uses the
local cache offline). Splits into train/valid/held-out are made by document, so
passages of one document never land on both sides; every error names the file, line or
column and says what to do."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import HumanizerError
from engine.jsonl import decode_text, json_lines

TEXT_EXTS = (".txt", ".md")
TABLE_EXTS = (".jsonl", ".csv", ".parquet")
HUMAN_FIELDS = ("human", "completion", "chosen")  # the human side of a workspace dataset's rows


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    origin: str = ""  # file:line or corpus name, for error messages and the manifest


@dataclass
class Source:
    spec: str
    kind: str  # corpus | folder | file | table | dataset | hub
    name: str
    licence: str
    description: str
    documents: list[Document] = field(default_factory=list)
    rows: list[tuple[str, dict]] = field(default_factory=list)  # (origin, row) for tabular sources

    def manifest(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "name": self.name, "licence": self.licence,
                "description": self.description, "documents": len(self.documents)}


# --- reading ------------------------------------------------------------------------------------------


def _decode(data: bytes, where: str) -> str:
    try:
        return decode_text(data)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise HumanizerError(f"{where}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})",
                             "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_text_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HumanizerError(f"can't read {path}: {e.strerror or e}") from None
    text = _decode(data, str(path))
    if not text.strip():
        raise HumanizerError(f"{path}: the file is empty", "remove it or put human-written text in it")
    return text


def read_table(path: Path) -> list[tuple[str, dict]]:
    """Rows of a .jsonl / .csv / .parquet file as (file:line, row); errors name the line."""
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict]] = []
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise HumanizerError(f"{path}: can't read the Parquet file: {e}", "check that it is Parquet") from None
        rows = [(f"{path}:{i + 1}", r) for i, r in enumerate(table)]
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise HumanizerError(f"can't read {path}: {e.strerror or e}") from None
        text = _decode(data, str(path))
        if suffix == ".jsonl":
            for n, row, problem in json_lines(data):
                if problem:
                    raise HumanizerError(f"{path}:{n}: {problem}", "one JSON object per line")
                rows.append((f"{path}:{n}", row))
        elif suffix == ".csv":
            reader = csv.reader(io.StringIO(text, newline=""))  # quoted fields may hold newlines
            header = next(reader, None)
            if not header:
                raise HumanizerError(f"{path}: the file is empty", "a CSV needs a header row and rows")
            for values in reader:
                n = reader.line_num
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise HumanizerError(
                        f"{path}:{n}: {len(values)} fields where the header has {len(header)} (a ragged row)",
                        "quote fields that contain commas or newlines, or fix that line")
                rows.append((f"{path}:{n}", dict(zip(header, values))))
        else:
            raise HumanizerError(f"{path}: unsupported file type {suffix or '(none)'}",
                                 "use .txt/.md, .jsonl, .csv or .parquet")
    if not rows:
        raise HumanizerError(f"{path}: the file is empty (no rows)", "put rows in it or pick another source")
    return rows


def text_of(rows: list[tuple[str, dict]], column: str, where: str) -> list[tuple[str, str]]:
    """(origin, text) of every row's `column`; a missing column or a non-text cell is an error."""
    if not any(column in r for _, r in rows):
        cols = sorted({k for _, r in rows[:50] for k in r})
        raise HumanizerError(f"{where}: no column '{column}' (columns: {', '.join(map(str, cols)) or 'none'})",
                             "name the text column with --text-column")
    out = []
    for origin, r in rows:
        value = r.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            raise HumanizerError(f"{origin}: column '{column}' is not text (got {type(value).__name__})",
                                 "name the text column with --text-column")
        out.append((origin, value))
    return out


def _doc_id(row: dict, origin: str) -> str:
    for key in ("source_id", "id", "doc_id", "document_id"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return origin


def _folder(path: Path) -> list[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_EXTS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise HumanizerError(f"{path}: no .txt or .md files in this folder",
                             "point --source at a folder of human-written .txt/.md files, or a file")
    return [Document(str(p.relative_to(path)), read_text_file(p), p.stem, str(p)) for p in files]


def _workspace_dataset(folder: Path) -> list[Document]:
    """The human side of a workspace dataset (sft rows' completions and held-out references)."""
    docs: dict[str, list[str]] = {}
    for part in ("sft/train.jsonl", "sft/valid.jsonl", "heldout.jsonl", "train.jsonl"):
        p = folder / part
        if not p.is_file():
            continue
        for origin, row in read_table(p):
            text = next((row[k] for k in HUMAN_FIELDS if isinstance(row.get(k), str)), None)
            if text and text not in docs.setdefault(_doc_id(row, origin), []):
                docs[_doc_id(row, origin)].append(text)
    if not docs:
        raise HumanizerError(f"{folder}: this dataset has no human texts (human / completion / chosen)",
                             "pick a dataset built with --template style-transfer or paired")
    return [Document(k, "\n\n".join(v), origin=str(folder)) for k, v in docs.items()]


def open_source(spec: str, ws, text_column: str = "text", tabular: bool = False) -> Source:
    """Resolve SRC to documents (or, with `tabular`, to raw rows for the paired template)."""
    from engine.data.reading import HF_ID, read_hf
    from engine.data.corpus import CORPORA, corpus_info, corpus_path, is_pulled

    spec = (spec or "").strip()
    if not spec:
        raise HumanizerError("no source given", "pass --source: a corpus, folder, file or dataset")
    path = Path(spec).expanduser()
    if spec in CORPORA or (not path.exists() and is_pulled(ws, spec)):
        if not is_pulled(ws, spec):
            raise HumanizerError(f"corpus '{spec}' is not in the workspace yet",
                                 f"fetch it once: humanizer data corpus pull {spec}")
        info = corpus_info(ws, spec)
        rows = read_table(corpus_path(ws, spec))
        src = Source(spec, "corpus", spec, info.get("licence", "?"), info.get("source", ""), rows=rows)
        src.documents = [Document(str(r["id"]), r["text"], r.get("title", ""), o) for o, r in rows]
        return src
    if path.is_dir():
        return Source(spec, "folder", path.name, "as given by you (a folder of text files)",
                      str(path.resolve()), _folder(path))
    if path.is_file():
        if path.suffix.lower() in TEXT_EXTS:
            return Source(spec, "file", path.name, "as given by you", str(path.resolve()),
                          [Document(path.name, read_text_file(path), path.stem, str(path))])
        rows = read_table(path)
        return _from_rows(spec, "table", path.name, str(path.resolve()), rows, text_column, tabular)
    folder = ws.datasets_dir / spec
    if not Path(spec).is_absolute() and folder.is_dir():
        manifest = _manifest(folder)
        src = Source(spec, "dataset", spec, (manifest.get("source") or {}).get("licence", "see its manifest"),
                     f"workspace dataset {folder}")
        src.documents = [] if tabular else _workspace_dataset(folder)
        return src
    if spec.startswith(("/", ".", "~")) or spec.lower().endswith(TEXT_EXTS + TABLE_EXTS) or not HF_ID.match(spec):
        raise HumanizerError(
            f"source not found: {spec} (no such file or folder, corpus or workspace dataset)",
            "SRC is a corpus name (humanizer data corpus list), a folder of .txt/.md, a .jsonl/.csv/.parquet "
            "file, a workspace dataset or a Hugging Face dataset id")
    splits, label = read_hf(spec[3:] if spec.startswith("hf:") else spec)
    rows = []
    for split, entries in splits.items():
        for file, line, row in entries:
            if isinstance(row, dict):
                rows.append((f"{file}:{line}", {**row, "split": row.get("split", split)} if tabular else row))
    if not rows:
        raise HumanizerError(f"{spec}: the dataset has no rows")
    return _from_rows(spec, "hub", spec, label, rows, text_column, tabular,
                      licence="see the dataset card on the Hugging Face Hub")


def _from_rows(spec, kind, name, where, rows, column, tabular, licence="as given by you") -> Source:
    src = Source(spec, kind, name, licence, where, rows=rows)
    if not tabular:
        texts = text_of(rows, column, spec)
        if not texts:
            raise HumanizerError(f"{spec}: column '{column}' is empty in every row", "pick another column or source")
        by_origin = dict(rows)
        src.documents = [Document(_doc_id(by_origin[o], o), t, origin=o) for o, t in texts]
        src.documents = _merge_same_id(src.documents)
    return src


def _merge_same_id(docs: list[Document]) -> list[Document]:
    """Rows sharing a source id are one document (so they are split together)."""
    merged: dict[str, Document] = {}
    for d in docs:
        if d.id in merged:
            merged[d.id].text += "\n\n" + d.text
        else:
            merged[d.id] = Document(d.id, d.text, d.title, d.origin)
    return list(merged.values())


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- passages ---------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def _sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s.strip()]


def passages(text: str, min_words: int, max_words: int) -> list[str]:
    """Paragraphs (split on blank lines) joined or split at sentences so each passage has
    min_words..max_words words; a remainder shorter than min_words is dropped."""
    out: list[str] = []
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        para = re.sub(r"\s+", " ", para).strip()
        if not para:
            continue
        if len(para.split()) <= max_words:
            pieces.append(para)
            continue
        chunk: list[str] = []
        for sentence in _sentences(para):  # a long paragraph: cut at sentence ends
            if chunk and len(" ".join(chunk + [sentence]).split()) > max_words:
                pieces.append(" ".join(chunk))
                chunk = []
            chunk.append(sentence)
        if chunk:
            pieces.append(" ".join(chunk))
    current: list[str] = []
    for piece in pieces:
        words = len(" ".join(current).split())
        if current and words >= min_words:
            out.append("\n\n".join(current))
            current = []
        elif current and words + len(piece.split()) > max_words:
            current = []  # too short alone, too long joined: drop the short start
        current.append(piece)
    if current and min_words <= len(" ".join(current).split()) <= max_words:
        out.append("\n\n".join(current))
    return [p for p in out if min_words <= len(p.split()) <= max_words]
