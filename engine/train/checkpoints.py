"""Checkpoints and OUTPUT: saving, listing and loading checkpoints, writing the final
adapter, and guarding OUTPUT (one run at a time, temp leftovers cleaned, a resume checked
against the run it continues). Every write is atomic."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from engine import adapters as A
from engine.adapters import layers as lora
from engine.errors import HumanizerError
from engine.events import Run
from engine.train.config import STRUCTURAL
from engine.workspace import atomic_dir, disk_errors

KEEP_CHECKPOINTS = 2


def _step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:06d}"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first (atomic writes: a visible one is complete)."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        d for d in ckpt_dir.iterdir()
        if d.is_dir() and d.name.startswith("step-") and (d / "state.json").is_file()
    ]
    return sorted(found, key=lambda d: d.name, reverse=True)


def _remove_dir(d: Path) -> None:
    """Hide then delete, so a crash mid-delete never leaves a half folder that looks whole."""
    hidden = d.with_name(f".del-{d.name}-{os.getpid()}")
    try:
        os.rename(d, hidden)
    except OSError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, adapter_cfg: dict, metadata: dict,
                    state: dict) -> Path:
    d = _step_dir(ckpt_dir, step)
    weights = lora.trainable_weights(model)
    opt_state = dict(tree_flatten(optimizer.state))
    need = nbytes(weights) + nbytes(opt_state)
    with atomic_dir(d, need, RESUME_HINT) as tmp:
        A.write_adapter_files(tmp, weights, A.adapter_config(adapter_cfg, metadata))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    for old in list_checkpoints(ckpt_dir)[KEEP_CHECKPOINTS:]:
        _remove_dir(old)
    return d


RESUME_HINT = ("free space on that disk (or train into another --output); nothing half-written was left, and "
               "the same command with --resume continues from the last checkpoint, if the run saved one")


def nbytes(arrays: dict) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in arrays.values())


def load_checkpoint(d: Path) -> tuple[dict, dict, dict]:
    """(state, lora weights, optimizer state tree)."""
    state = json.loads((d / "state.json").read_text(encoding="utf-8"))
    weights = A.load_weights(d)
    opt = tree_unflatten(list(mx.load(str(d / "optimizer.safetensors")).items()))
    return state, weights, opt


def write_final_adapter(output: Path, weights: dict, config: dict) -> None:
    """Put the two adapter files into OUTPUT (which also holds checkpoints/): staged in a
    temp folder inside it, the old config removed first and the new config moved in last,
    so OUTPUT looks like an adapter only when both new files are in place."""
    output.mkdir(parents=True, exist_ok=True)
    with disk_errors(output, nbytes(weights), RESUME_HINT):
        stage = Path(tempfile.mkdtemp(prefix=".final-", dir=output))
    try:
        with disk_errors(output / A.ADAPTER_FILE, nbytes(weights), RESUME_HINT):
            A.write_adapter_files(stage, weights, config)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(output / A.CONFIG_FILE)
        os.replace(stage / A.ADAPTER_FILE, output / A.ADAPTER_FILE)
        os.replace(stage / A.CONFIG_FILE, output / A.CONFIG_FILE)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def lock_output(output: Path):
    """Hold an exclusive lock on OUTPUT for the run: two runs never write one folder."""
    import fcntl

    output.mkdir(parents=True, exist_ok=True)
    path = output / ".train.lock"
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise HumanizerError(f"another training run is writing {output}", "wait for it, or cancel it") from None
        try:  # a run that wrote nothing removes its lock file (release_output): lock the file that is there now
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def release_output(output: Path, lock, before: set[str] | None) -> None:
    """Unlock OUTPUT. A run that wrote nothing there (it failed on its data, its model, a
    setting) leaves nothing behind: no lock file, no empty checkpoints/, and no OUTPUT
    folder unless it held something before (`before`: its entries then; None: no folder)."""
    try:
        added = {p.name for p in output.iterdir()} - (before or set()) - {".train.lock"}
        if added == {"checkpoints"} and not any((output / "checkpoints").iterdir()):
            (output / "checkpoints").rmdir()
            added = set()
        if not added:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(output / ".train.lock")  # still held: no other run can have taken it
            if not before:
                with contextlib.suppress(OSError):
                    output.rmdir()  # only when empty
    except OSError:
        pass
    finally:
        lock.close()



def clean_temp(output: Path) -> None:
    """Remove the hidden temp entries a killed run may have left (we hold the lock)."""
    for folder in (output, output / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name != ".train.lock" and any(
                    t in p.name for t in (".tmp-", ".del-", ".final-", ".reference-", ".old-")):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()


def finished_adapter(output: Path) -> tuple[int | None, dict]:
    """(step count, training config) of the finished adapter in OUTPUT; (None, {}) if none."""
    if not ((output / A.CONFIG_FILE).is_file() and (output / A.ADAPTER_FILE).is_file()):
        return None, {}
    try:
        hz = json.loads((output / A.CONFIG_FILE).read_text(encoding="utf-8"))["humanizer"]
        return int(hz["metrics"]["steps"]), dict(hz.get("training") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return 0, {}


def _key_names(keys) -> list[str] | None:
    return None if keys is None else sorted(k.rsplit(".", 1)[-1] for k in keys)


def check_same_settings(old: dict, cfg: dict, extra: list[str] = ()) -> None:
    """Refuse to continue a run whose structural settings differ (`keys` compared by layer name)."""
    diffs = list(extra)
    for k in STRUCTURAL:
        a, b = old.get(k), cfg.get(k)
        if k == "keys":
            a, b = _key_names(a), _key_names(b)
        if k in old and a != b:
            diffs.append(f"{k}: {old.get(k)!r} then, {cfg.get(k)!r} now")
    if diffs:
        raise HumanizerError(
            "cannot resume: the settings differ from the run being resumed (" + "; ".join(diffs) + ")",
            "resume with the same model, adapter and settings, or start a new run with another --output",
        )


def check_resume(state: dict, cfg: dict, base: dict, parent: dict | None, data_fp: str, run: Run) -> None:
    old = state.get("config") or {}
    diffs = []
    if state.get("base_fingerprint") != base["fingerprint"]:
        diffs.append("base model: a different model's weights")
    if state.get("parent_fingerprint") != (parent or {}).get("fingerprint"):
        diffs.append("mounted adapter: a different one")
    check_same_settings(old, cfg, diffs)
    if state.get("data_fingerprint") != data_fp:
        run.log("warning: the training data changed since the checkpoint; the data order will differ")
    for k in ("iters", "learning_rate", "warmup_steps", "max_seq_length", "beta", "dpo_loss"):
        if old.get(k) != cfg.get(k):
            run.log(f"warning: {k} was {old.get(k)!r}, now {cfg.get(k)!r}")



def existing_run(output: Path, cfg: dict, resume: bool) -> tuple[list[Path], int | None]:
    """(the complete checkpoints in OUTPUT, the step count of its finished adapter or None),
    after refusing what this run may not do there: a new run into an OUTPUT that holds one,
    or a resume with other structural settings than the finished adapter's. Call it holding
    the lock (`lock_output`)."""
    clean_temp(output)
    checkpoints = list_checkpoints(output / "checkpoints")
    final_steps, final_cfg = finished_adapter(output)
    if not resume and (checkpoints or final_steps is not None):
        raise HumanizerError(
            f"{output} already holds a training run",
            "pass --resume to continue it, or choose another --output",
        )
    if resume and final_steps is not None:
        check_same_settings(final_cfg, cfg)
    return checkpoints, final_steps


def load_latest(checkpoints: list[Path], run: Run) -> tuple[Path, dict, dict, dict]:
    """(folder, state, weights, optimizer state) of the newest readable one of `checkpoints`
    (not empty: list_checkpoints, newest first)."""
    for d in checkpoints:
        try:
            return (d, *load_checkpoint(d))
        except (OSError, ValueError, RuntimeError) as e:
            run.log(f"skipping unreadable checkpoint {d.name}: {e}")
    raise HumanizerError(f"no readable checkpoint in {checkpoints[0].parent}", "start a new run with another --output")
