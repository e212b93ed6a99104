"""Does an adapter fit a base model (check_fits), and does a delta go on the parent its config
records (is_recorded_parent, check_parent)?"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from engine.adapters.folder import (
    ADAPTER_FILE,
    BLOCK_RE,
    AdapterInfo,
    config_error,
    info_of,
    layer_blocks,
    model_fingerprint,
    model_linear_dims,
    safetensors_header,
    tensor_name,
)
from engine.errors import HumanizerError, NeedsParent


def check_fits(adapter, model_dir, *, strict: bool = True) -> list[str]:
    """Refuse (HumanizerError naming both) an adapter whose tensors do not fit the model's
    layers, or that was trained on a base with another fingerprint. With strict=False a
    fingerprint mismatch (same shapes) is returned as a warning instead."""
    a = info_of(adapter)
    model_dir = Path(model_dir)
    dims = model_linear_dims(model_dir)
    header, _ = safetensors_header(a.path / ADAPTER_FILE)
    base_name = (a.base or {}).get("name", "unknown")
    problems = []
    for stored, t in sorted(header.items()):
        key = tensor_name(stored)
        path, leaf = key.rsplit(".", 1)
        if path not in dims:
            problems.append(f"{path}: no such layer in {model_dir.name}")
            continue
        in_d, out_d = dims[path]
        shape = t["shape"]
        if leaf == "lora_a" and shape[0] != in_d:
            problems.append(f"{key}: adapter input {shape[0]}, model layer input {in_d}")
        elif leaf == "lora_b" and shape[-1] != out_d:
            problems.append(f"{key}: adapter output {shape[-1]}, model layer output {out_d}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HumanizerError(
            f"adapter '{a.name}' (trained on '{base_name}') does not fit model '{model_dir.name}': "
            + "; ".join(problems[:3]) + more,
            "mount an adapter on the base model it was trained on",
        )
    _check_num_layers(a, dims, model_dir)
    warnings = []
    want = (a.base or {}).get("fingerprint")
    if want:
        have = model_fingerprint(model_dir)
        if have != want:
            msg = (
                f"adapter '{a.name}' was trained on base model '{base_name}' (fingerprint {want}), "
                f"but model '{model_dir.name}' has different weights (fingerprint {have})"
            )
            if strict:
                raise HumanizerError(msg, "mount it on the model it was trained on, or train it again on this one")
            warnings.append(msg)
    return warnings


def _check_num_layers(a: AdapterInfo, dims: Mapping, model_dir: Path) -> None:
    """num_layers N means the last N blocks of the model (mlx-lm's reading); the weights must start at
    the first of them, and N may not exceed the model's blocks (-1 or 0: all of them)."""
    model_blocks = {int(m.group(1)) for p in dims if (m := BLOCK_RE.search(p))}
    blocks, _ = layer_blocks(a)
    if not model_blocks or not blocks:
        return
    n = max(model_blocks) + 1
    if a.num_layers > n:
        raise config_error(a, f"num_layers is {a.num_layers}, but model '{model_dir.name}' has {n} blocks "
                            f"(the weights change blocks {blocks[0]}-{blocks[-1]})", "num_layers")
    if a.num_layers > 0 and blocks[0] != n - a.num_layers:
        raise config_error(a, f"num_layers is {a.num_layers} (blocks {n - a.num_layers}-{n - 1} of model "
                            f"'{model_dir.name}'), but {ADAPTER_FILE} changes blocks {blocks[0]}-{blocks[-1]}",
                            "num_layers")


def _same_path(recorded, path: Path) -> bool:
    p = Path(str(recorded)).expanduser()
    if not p.is_absolute():  # e.g. a bundle's "adapters/NAME": the name says it
        return False
    try:
        return p.resolve() == Path(path).resolve()
    except OSError:
        return False


def is_recorded_parent(delta: AdapterInfo, candidate: AdapterInfo, mount_name: str | None = None) -> bool:
    """Whether `candidate` (mounted as `mount_name`) is the adapter the delta's config records as its
    parent: the same weights (fingerprint) AND the same identity (the recorded name is its mount name
    or folder name, or the recorded path is its folder). A copy under another name is not it."""
    p = delta.parent or {}
    if not p or not candidate.fingerprint or candidate.fingerprint != p.get("fingerprint"):
        return False
    if p.get("name") and p.get("name") in (candidate.name, mount_name):
        return True
    return bool(p.get("path")) and _same_path(p["path"], candidate.path)


def find_parent(delta: AdapterInfo, mounted: Mapping[str, AdapterInfo | None]) -> str | None:
    """The name in `mounted` (name -> info) of the delta's recorded parent, the one mounted under
    the recorded name first; None for an adapter that is no delta, or when its parent is absent."""
    if not delta.parent:
        return None
    hits = [n for n, i in mounted.items() if i is not None and i is not delta and is_recorded_parent(delta, i, n)]
    want = delta.parent.get("name")
    return want if want in hits else (hits[0] if hits else None)


def copies_note(delta: AdapterInfo, others: Mapping[str, AdapterInfo | None], rename: bool = True) -> str:
    """Why an adapter with the parent's weights but another identity is not taken for it."""
    p = delta.parent or {}
    copies = [n for n, i in others.items() if i is not None and i.fingerprint == p.get("fingerprint")]
    if not copies:
        return ""
    note = (f"; '{copies[0]}' has the same weights but is another adapter ({others[copies[0]].path}), and a delta "
            "stacks only on the parent its config records")
    return note + (f": mount that copy under the name '{p.get('name')}' to use it as the parent" if rename else "")


def check_parent(adapter, mounted: Mapping[str, AdapterInfo]) -> None:
    """A delta (DPO trained on top of an SFT adapter) needs its recorded parent among `mounted`."""
    a = info_of(adapter)
    if not a.parent or find_parent(a, mounted):
        return
    p = a.parent
    fp = p.get("fingerprint")
    what = f"a {a.method.upper()} " if a.method else "a "
    msg = (
        f"adapter '{a.name}' is {what}delta trained on top of adapter '{p.get('name')}' "
        f"({p.get('path')}, fingerprint {fp}); it holds only the change from that adapter, "
        "so alone it means nothing"
    )
    same_name = [n for n, i in mounted.items()
                 if (i.name == p.get("name") or n == p.get("name")) and i.fingerprint != fp]
    if same_name:
        msg += f"; the mounted '{same_name[0]}' is a different version (fingerprint {mounted[same_name[0]].fingerprint})"
    msg += copies_note(a, mounted)
    raise NeedsParent(msg, f"mount '{p.get('name')}' (from {p.get('path')}) first, then '{a.name}'")


def check_parent_active(names, mounted: Mapping[str, AdapterInfo | None]) -> None:
    """Every active delta must have the adapter it is stacked on active too."""
    active = {n: mounted[n] for n in names if mounted.get(n) is not None}
    for n, info in active.items():
        if not info.parent:
            continue
        parent = info.stacked_on or find_parent(info, mounted)
        if parent not in active:
            raise HumanizerError(
                f"adapter '{n}' is a delta on '{parent or info.parent.get('name')}' and cannot be used without it",
                f"use '{parent or info.parent.get('name')}+{n}'",
            )

