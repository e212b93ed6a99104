"""Finding adapters (a path or a workspace name; a workspace's list) and describing them."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from engine.adapters.checks import check_fits, is_recorded_parent
from engine.adapters.folder import AdapterInfo, info_of, layer_blocks, read_adapter
from engine.errors import HumanizerError

# --- finding and describing adapters -------------------------------------------------

SUMMARY_METRICS = ("val_loss", "val_kl", "val_accuracy", "val_margin", "loss", "steps")


def resolve_adapter(spec, ws=None) -> Path:
    """The folder of an adapter given as a path or as the name of a workspace adapter."""
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no adapter given", "pass an adapter folder or the name of an adapter in the workspace")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HumanizerError(f"{path} is a file, not an adapter folder",
                             "an adapter folder holds adapters.safetensors and adapter_config.json")
    if ws is not None and "/" not in text and "\\" not in text and not text.startswith(("~", ".")):
        local = ws.adapters_dir / text
        if local.is_dir():
            return local
    names = [i.name for i in list_adapters(ws)] if ws is not None else []
    where = f" and no adapter named '{text}' in {ws.adapters_dir}" if ws is not None else ""
    raise HumanizerError(
        f"no such adapter folder: {path}{where}",
        f"adapters in the workspace: {', '.join(names)}" if names else "check the path; train one with `humanizer lora train`",
    )


def list_adapters(ws, model_dir=None, errors: list | None = None) -> list[AdapterInfo]:
    """The adapters in the workspace's adapters/ folder, by name (hidden temp folders and
    folders without a finished adapter skipped; with `errors`, a list, (path, message) of
    each skipped folder is appended to it). With `model_dir`, each one's `fits` and
    `fit_reason` say whether it can be mounted on that model."""
    if ws is None or not ws.adapters_dir.is_dir():
        return []
    found = []
    for d in sorted(ws.adapters_dir.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            found.append(read_adapter(d))
        except HumanizerError as e:
            if errors is not None:
                in_progress = (d / "checkpoints").is_dir() or (d / ".train.lock").exists()
                errors.append((d, "training not finished (no final adapter yet)" if in_progress else e.message))
    if model_dir is not None:
        for info in found:
            info.fits, info.fit_reason = fit_status(info, model_dir)
            if info.fits and info.is_delta and not any(is_recorded_parent(info, o, o.name) for o in found):
                info.fit_reason += f"; its parent '{info.parent.get('name')}' is not in the workspace"
    return found


def fit_status(adapter, model_dir) -> tuple[bool, str | None]:
    """(fits, reason): False with check_fits's message when the adapter cannot go on the
    model; True with a note for a delta (it mounts only with its parent), else None."""
    a = info_of(adapter)
    try:
        check_fits(a, model_dir)
    except HumanizerError as e:
        return False, e.message
    if a.is_delta:
        return True, f"a delta: mount it together with its parent '{a.parent.get('name')}'"
    return True, None


def layer_summary(info: AdapterInfo) -> str:
    """E.g. '2 blocks (0-1) x q_proj, v_proj' for the layers an adapter changes."""
    blocks, keys = layer_blocks(info)
    short = ", ".join(k.rsplit(".", 1)[-1] for k in keys)
    if not blocks:
        return short or "none"
    span = f"{blocks[0]}" if len(blocks) == 1 else f"{blocks[0]}-{blocks[-1]}"
    if blocks != list(range(blocks[0], blocks[-1] + 1)):
        span = ",".join(map(str, blocks))
    return f"{len(blocks)} block{'s' if len(blocks) != 1 else ''} ({span}) x {short}"


def metrics_summary(metrics: Mapping, keys=SUMMARY_METRICS) -> str:
    """The headline final metrics, e.g. 'val_loss=1.234 val_kl=0.0123 steps=600'."""
    out = []
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, bool) or v is None:
            continue
        out.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(out)


def describe_method(info: AdapterInfo) -> str:
    if info.method == "combined":
        parts = [s.get("method") or "?" for s in (info.config.get("humanizer") or {}).get("combined_from") or []]
        return f"combined ({'+'.join(parts)})" if parts else "combined"
    return info.method or "unknown"
