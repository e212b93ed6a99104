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

Training rows: reading.py (a spec to raw rows), rows.py (checking them), tokenizing.py (the chat
template), loading.py (`load_data`, `preview`). The dataset builder (`humanizer data build`):
settings, sources, corpus, locks, filters, prefs, writers, build, catalog. DataError lives in
engine/errors.py.
"""

from engine.data.loading import Dataset, load_data, preview
from engine.data.reading import read_rows
from engine.data.rows import METHODS, ROLES, RowIssue
from engine.data.tokenizing import Example, Pair
from engine.errors import MAX_LISTED, DataError

__all__ = ["DataError", "Dataset", "Example", "MAX_LISTED", "METHODS", "Pair", "ROLES", "RowIssue", "load_data",
           "preview", "read_rows"]
