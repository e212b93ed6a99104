"""What the manager's steps share: the adapters they take, and the outputs they write.

Every output is written atomically (a temp folder renamed into place), and an existing
output is only ever replaced when it is one the manager made (its marker file says so)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine import adapters as A
from engine.errors import HumanizerError
from engine.events import Run

BUNDLE_RECORD = "humanizer_bundle.json"
IMPORT_RECORD = "gguf_import.json"  # engine.gguf's import record: a local path, not part of a fused model or bundle


def adapter_infos(adapter_dirs, ws=None) -> list[A.AdapterInfo]:
    """The adapters given (folders or workspace names), read, parents before their deltas."""
    if isinstance(adapter_dirs, (str, os.PathLike)):
        adapter_dirs = [adapter_dirs]
    infos = [A.read_adapter(A.resolve_adapter(d, ws)) for d in adapter_dirs or []]
    if not infos:
        raise HumanizerError("no adapters given", "pass at least one --adapter")
    return A.stack_order(infos)


def inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_output(out: Path, inputs, is_ours, what: str) -> None:
    """Refuse an output that is (or is inside, or holds) an input, and an existing non-empty
    folder that is not a `what` this module made (it would be replaced)."""
    for p in inputs:
        if inside(out, p) or inside(p, out):
            raise HumanizerError(f"the output {out} overlaps the input {p}", "write the output somewhere else")
    if out.exists() and not out.is_dir():
        raise HumanizerError(f"{out} exists and is a file", "choose another --output")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out):
        raise HumanizerError(
            f"{out} already exists and is not a {what} made by humanizer; it would be replaced",
            "choose another --output, or remove that folder first",
        )


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob(pattern) if f.is_file())


def source_record(info: A.AdapterInfo) -> dict:
    return {
        "name": info.name, "path": str(info.path.resolve()), "fingerprint": info.fingerprint,
        "method": info.method, "rank": info.rank, "scale": info.scale, "num_layers": info.num_layers,
        "keys": info.keys, "base": info.base, "parent": info.parent, "training": info.training,
        "metrics": info.metrics,
    }


def natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def model_adapters_output(model_spec, adapter_dirs, out_dir, record: str, what: str, ws, run: Run):
    """fuse's and export's inputs, checked: (the model folder, the adapters in stack order, each
    fitting it, the output folder, which must not overlap them nor be anything but a `what`
    holding the marker file `record`)."""
    from engine.models import resolve_model  # late: engine.models loads MLX (engine.gguf)

    model_dir = resolve_model(model_spec, ws, run)
    infos = adapter_infos(adapter_dirs, ws)
    out = Path(out_dir).expanduser()
    check_output(out, [model_dir, *[i.path for i in infos]], lambda d: (d / record).is_file(), what)
    for info in infos:
        A.check_fits(info, model_dir)
    return model_dir, infos, out
