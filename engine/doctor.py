"""`humanizer doctor`: what this machine and workspace look like to the engine.

doctor_report(ws) gathers plain data (a JSON-able dict); format_doctor(report)
renders it as plain text. No Rich or Textual here."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from engine import blas
from engine.workspace import human_bytes


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _dir_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under path, not following symlinks."""
    total = files = 0
    for root, _dirs, names in os.walk(path, followlinks=False):
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except OSError:
                continue
            total += st.st_size
            files += 1
    return total, files


def _mlx_info() -> dict:
    info: dict = {"version": _version("mlx"), "default_device": None, "metal": False, "error": None}
    try:
        import mlx.core as mx
    except Exception as e:  # mlx missing or broken
        info["error"] = f"{type(e).__name__}: {e}"
        return info
    info["version"] = getattr(mx, "__version__", None) or info["version"]
    try:
        info["default_device"] = str(mx.default_device())
    except Exception as e:
        info["error"] = f"{type(e).__name__}: {e}"
    try:
        info["metal"] = bool(mx.metal.is_available())
    except Exception:
        info["metal"] = False
    return info


def _blas_info() -> dict:
    in_use = blas.blas_in_use()
    found = blas.find_openblas() if sys.platform.startswith("linux") else None
    out = {
        "in_use": in_use,
        "openblas_found": found,
        "fast": bool(in_use.get("fast")),
        "disabled": blas._truthy(os.environ.get(blas.DISABLE_ENV)),
        "hint": None,
    }
    if sys.platform.startswith("linux") and not out["fast"]:
        if found is None:
            out["hint"] = (
                "OpenBLAS not found: float32 matmul and LoRA training run on MLX's bundled "
                f"reference BLAS (~30x slower). Install it: {blas.APT_HINT}"
            )
        elif out["disabled"]:
            out["hint"] = f"fast BLAS disabled by {blas.DISABLE_ENV}=1; unset it to use {found}"
        else:
            out["hint"] = (
                f"OpenBLAS found at {found} but not loaded in this process; start through the "
                f"`humanizer` entry point or set LD_PRELOAD={found}"
            )
    return out


def _workspace_info(ws) -> dict:
    home = Path(getattr(ws, "home", ws)).expanduser()
    subdirs = {}
    for sub in ("models", "adapters", "datasets", "runs"):
        p = home / sub
        if p.is_dir():
            size, files = _dir_size(p)
            entries = sum(1 for _ in p.iterdir())
            subdirs[sub] = {"path": str(p), "exists": True, "size_bytes": size, "files": files,
                            "entries": entries}
        else:
            subdirs[sub] = {"path": str(p), "exists": False, "size_bytes": 0, "files": 0,
                            "entries": 0}
    return {
        "path": str(home),
        "exists": home.is_dir(),
        "config": str(home / "config.toml"),
        "config_exists": (home / "config.toml").is_file(),
        "subdirs": subdirs,
        "size_bytes": sum(s["size_bytes"] for s in subdirs.values()),
    }


def _models_info(ws) -> tuple[list[dict], str | None]:
    try:
        from engine.models import list_models  # written separately; may not exist yet
    except ImportError as e:
        return [], f"model listing unavailable ({e})"
    try:
        models = list_models(ws)
    except Exception as e:
        return [], f"listing models failed: {type(e).__name__}: {e}"
    out = []
    for m in models:
        try:
            d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
        except Exception as e:
            d = {"name": str(m), "error": f"{type(e).__name__}: {e}"}
        out.append(d)
    return out, None


def doctor_report(ws) -> dict:
    """Everything `humanizer doctor` shows, as a JSON-able dict.

    ws: an engine.workspace.Workspace (or a path to a workspace folder).
    Keys: platform, mlx, mlx_lm, blas, workspace, models, models_error."""
    models, models_error = _models_info(ws)
    return {
        "platform": {
            "os": platform.system(),
            "os_release": platform.release(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "python_executable": sys.executable,
            "cpu_count": os.cpu_count(),
        },
        "mlx": _mlx_info(),
        "mlx_lm": {"version": _version("mlx-lm")},
        "blas": _blas_info(),
        "workspace": _workspace_info(ws),
        "models": models,
        "models_error": models_error,
    }


def format_doctor(report: dict) -> str:
    """Plain-text rendering of doctor_report()."""
    lines: list[str] = []
    p = report.get("platform", {})
    lines.append("Platform")
    lines.append(f"  OS        {p.get('os')} {p.get('os_release', '')} ({p.get('machine')})".rstrip())
    lines.append(f"  Python    {p.get('python')}  {p.get('python_executable', '')}".rstrip())
    if p.get("cpu_count"):
        lines.append(f"  CPUs      {p['cpu_count']}")

    m = report.get("mlx", {})
    lines.append("MLX")
    lines.append(f"  mlx       {m.get('version') or 'not installed'}")
    lines.append(f"  mlx-lm    {report.get('mlx_lm', {}).get('version') or 'not installed'}")
    lines.append(f"  device    {m.get('default_device') or '?'}")
    lines.append(f"  Metal     {'available' if m.get('metal') else 'not available'}")
    if m.get("error"):
        lines.append(f"  error     {m['error']}")

    b = report.get("blas", {})
    in_use = b.get("in_use", {})
    lines.append("BLAS")
    lines.append(f"  in use    {in_use.get('name', '?')}" + (" (fast)" if b.get("fast") else ""))
    if in_use.get("path"):
        lines.append(f"  library   {in_use['path']}")
    if report.get("platform", {}).get("os") == "Linux":
        lines.append(f"  OpenBLAS  {b.get('openblas_found') or 'not found'}")
    if b.get("hint"):
        lines.append(f"  hint      {b['hint']}")

    w = report.get("workspace", {})
    lines.append("Workspace")
    lines.append(f"  path      {w.get('path')}" + ("" if w.get("exists", True) else " (missing)"))
    for name, s in (w.get("subdirs") or {}).items():
        if s.get("exists"):
            lines.append(f"  {name:<9} {human_bytes(s.get('size_bytes')):>10}  "
                         f"{s.get('entries', 0)} entries")
        else:
            lines.append(f"  {name:<9} {'missing':>10}")
    lines.append(f"  total     {human_bytes(w.get('size_bytes')):>10}")

    models = report.get("models") or []
    lines.append(f"Models ({len(models)})")
    if report.get("models_error"):
        lines.append(f"  {report['models_error']}")
    elif not models:
        lines.append("  none")
    for md in models:
        q = md.get("quantization")
        if isinstance(q, dict):
            q = ", ".join(f"{k}={v}" for k, v in q.items())
        lines.append(f"  {md.get('name', '?'):<28} {human_bytes(md.get('size_bytes')):>10}  "
                     f"{q or 'float'}")
    return "\n".join(lines) + "\n"


__all__ = ["doctor_report", "format_doctor", "human_bytes"]
