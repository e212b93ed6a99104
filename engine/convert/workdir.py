"""The work folder beside the output (`.<name>.convert-work`): its lock, the resume state,
the Fisher checkpoint, and reading an earlier convert's measurements for reuse."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from engine.convert.layers import QLayer
from engine.convert.output import META_FILE
from engine.errors import HumanizerError
from engine.events import read_json


STATE_FILE = "state.json"
FISHER_FILE = "fisher.safetensors"
STATE_VERSION = 2  # 2: check windows held back from the Fisher pass, rounding in the key


def work_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.convert-work"


@contextlib.contextmanager
def _locked(work: Path):
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    f = open(work / "lock", "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise HumanizerError(f"another convert is writing {work.parent / work.name[1:-len('.convert-work')]}",
                             "wait for it to finish (humanizer jobs list), or choose another --output") from None
    try:
        yield
    finally:
        if not (work / STATE_FILE).exists():  # stopped before measuring anything: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        f.close()


def _save_fisher(work: Path, fisher: dict, done: int) -> None:
    import mlx.core as mx

    tmp = work / f".fisher.{os.getpid()}.tmp.safetensors"
    mx.save_safetensors(str(tmp), fisher, metadata={"batches_done": str(done)})
    os.replace(tmp, work / FISHER_FILE)


def _load_fisher(work: Path, keys: list[str]) -> tuple[dict | None, int]:
    import mlx.core as mx

    path = work / FISHER_FILE
    if not path.is_file():
        return None, 0
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        done = int(meta.get("batches_done", 0))
    except Exception:  # an unreadable checkpoint: start the pass again
        return None, 0
    if set(arrays) != set(keys):
        return None, 0
    return arrays, done


def reused_measurements(path, key: dict, layers: list[QLayer]) -> dict:
    """path -> measured info from an earlier convert's metadata, checked against this convert."""
    path = Path(path).expanduser()
    meta = read_json(path / META_FILE if path.is_dir() else path)
    if not meta or "layers" not in meta:
        raise HumanizerError(f"no convert metadata in {path}", f"pass the {META_FILE} of an earlier convert")
    settings, calib = meta.get("settings", {}), meta.get("calibration", {})
    have = {"source_fingerprint": meta.get("source", {}).get("fingerprint"), "calibration": calib.get("fingerprint"),
            "samples": calib.get("samples"), "seq_len": settings.get("seq_len"), "seed": settings.get("seed"),
            "group_size": settings.get("group_size"), "rounding": settings.get("rounding", "minmax")}
    diffs = [f"{k}: {have[k]!r} there, {key[k]!r} here" for k in have if have[k] != key[k]]
    missing = sorted(set(key["candidate_bits"]) - set(settings.get("candidate_bits") or []))
    if missing:
        diffs.append(f"bits {missing} were not measured there")
    if diffs:
        raise HumanizerError(f"cannot reuse the measurements in {path}: " + "; ".join(diffs),
                             "reuse them only for the same source, calibration, samples, seq-len, seed, group "
                             "size and rounding, with candidate bits it measured")
    by_path = {m["path"]: m for m in meta["layers"]}
    out = {}
    for layer in layers:
        m = by_path.get(layer.path)
        if layer.quantized:
            if not m or m.get("group_size") != layer.group_size:
                raise HumanizerError(f"cannot reuse the measurements in {path}: no measurement of {layer.path}")
            info = {"sensitivity": {str(b): m["sensitivity"][str(b)] for b in key["candidate_bits"]},
                    "weight_error": {str(b): m.get("weight_error", {}).get(str(b)) for b in key["candidate_bits"]}}
            if "role_sensitivity" in m:
                info["role_sensitivity"] = {r: {str(b): v[str(b)] for b in key["candidate_bits"]}
                                            for r, v in m["role_sensitivity"].items()}
            out[layer.path] = info
    return out


def _meta_folder(path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_dir() else path.parent


def _load_factors(path: Path) -> dict | None:
    import mlx.core as mx

    try:
        return dict(mx.load(str(path)))
    except Exception:  # missing or unreadable
        return None
