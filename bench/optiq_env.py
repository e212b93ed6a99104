"""The reference product, mlx-optiq, in a virtual environment of its own.

mlx-optiq is the product whose recipe (mixed-precision convert, SFT then stacked DPO,
a multi-adapter server) Humanizer Studio reproduces, so every bench runs it beside ours.
It stays out of the project's dependencies: it pulls a web stack, pygame and a coding
agent that we do not want in our environment. The benches make this venv once, in the
bench cache, pinned to the same mlx and mlx-lm versions as ours so that both sides run the
very same MLX kernels (and, preloaded by the children, the same OpenBLAS). Its transformers
is its own pin: mlx-optiq 0.7.7 refuses ours (5.25), pip picks 5.12.

    .venv/bin/python bench/optiq_env.py          # make (or check) the venv, print versions

A bench takes `--optiq-python PATH` to use an interpreter you made yourself instead.

This module imports no mlx: the bench parent stays light.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import _version, default_cache_dir  # noqa: E402

OPTIQ_VERSION = "0.7.7"  # the version these benches were written against and measured with


def _requirements() -> list[str]:
    mlx_dist = "mlx[cpu]" if sys.platform.startswith("linux") else "mlx"
    pins = [f"mlx-optiq=={OPTIQ_VERSION}"]
    for dist, spec in (("mlx", mlx_dist), ("mlx-lm", "mlx-lm")):
        ours = _version(dist)
        pins.append(f"{spec}=={ours}" if ours else spec)
    return pins


def optiq_versions(python: str | Path) -> dict:
    """mlx-optiq, mlx and mlx-lm as installed for `python` (raises if optiq is missing)."""
    code = ("import json; from importlib.metadata import version as v; "
            "print(json.dumps({d: v(d) for d in ('mlx-optiq', 'mlx', 'mlx-lm', 'transformers')}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{python} has no working mlx-optiq: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def ensure_optiq_python(cache_dir: Path | None = None, python: str | Path | None = None, log=print) -> Path:
    """The interpreter of a venv with mlx-optiq: `python` if given (checked), else
    CACHE/optiq-venv, made on first use (about a minute from a package registry)."""
    if python:
        optiq_versions(python)
        return Path(python)
    venv = Path(cache_dir or default_cache_dir()) / "optiq-venv"
    exe = venv / "bin" / "python"
    if exe.is_file():
        try:
            optiq_versions(exe)
            return exe
        except RuntimeError:
            log(f"  {venv} is broken; installing into it again")
    reqs = _requirements()
    log(f"  making the mlx-optiq venv at {venv}: pip install {' '.join(reqs)}")
    if not exe.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(exe), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"could not install mlx-optiq into {venv}:\n{pip.stderr.strip()[-2000:]}\n"
                           "hint: check the package registry is reachable, or pass --optiq-python PATH")
    optiq_versions(exe)
    return exe


def optiq_side(sides, info: dict, cache_dir: Path, python: str | Path | None) -> dict:
    """{"optiq": its interpreter} when "optiq" is among `sides` (made or checked, its versions
    recorded in `info` and printed), else {}: the `pythons` of common.run_lockstep."""
    if "optiq" not in sides:
        return {}
    exe = ensure_optiq_python(cache_dir, python)
    info["optiq_versions"] = optiq_versions(exe)
    print("optiq     " + ", ".join(f"{k} {v}" for k, v in info["optiq_versions"].items()) + f" ({exe})")
    return {"optiq": exe}


def optiq_cli(python: str | Path) -> list[str]:
    """The `optiq` command of that venv (its console script beside the interpreter)."""
    script = Path(python).parent / "optiq"
    return [str(script)] if script.is_file() else [str(python), "-m", "optiq.cli"]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--optiq-python")
    a = ap.parse_args()
    exe = ensure_optiq_python(a.cache_dir, a.optiq_python)
    print(exe)
    print(json.dumps(optiq_versions(exe)))
