"""engine.blas (OpenBLAS preload for mlx[cpu] on Linux) and engine.doctor.

Everything that re-executes or preloads runs in a child process: the pytest
process itself must never be re-executed. No timing assertions here; the
speed figures live in bench/bench_blas.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine import blas
from engine.blas import (
    DISABLE_ENV,
    LIB_ENV,
    REEXEC_ENV,
    blas_in_use,
    fast_blas_env,
    find_openblas,
)

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")
DEBIAN_DIRS = [
    Path(f"/usr/lib/{t}-linux-gnu/{flavour}/libopenblas.so.0")
    for t in ("x86_64", "aarch64")
    for flavour in ("openblas-pthread", "openblas-openmp")
]

needs_openblas = pytest.mark.skipif(
    not LINUX or find_openblas() is None,
    reason="OpenBLAS preload is for Linux with libopenblas0-pthread installed",
)


def _clean_env(**extra) -> dict:
    """The test process's env without any fast-BLAS state, plus `extra`."""
    env = dict(os.environ)
    for k in ("LD_PRELOAD", DISABLE_ENV, REEXEC_ENV, LIB_ENV):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


CHILD = textwrap.dedent(
    """
    import json, os, sys
    from engine.blas import ensure_fast_blas, blas_in_use, REEXEC_ENV
    pid = os.getpid()
    status = ensure_fast_blas()
    import mlx.core as mx
    mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)))
    info = blas_in_use()
    info.update(status=status, pid=pid, argv=sys.argv[1:], reexec=os.environ.get(REEXEC_ENV),
                ld_preload=os.environ.get("LD_PRELOAD", ""))
    print("RESULT " + json.dumps(info))
    """
)


def _run_child(env: dict, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout  # printed once: the pre-exec image never got this far
    return json.loads(lines[0][len("RESULT "):])


# ------------------------------------------------------------------ find_openblas

def test_import_does_not_pull_mlx():
    code = "import sys, engine.blas; print('mlx' in sys.modules, 'mlx.core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not LINUX or not any(p.exists() for p in DEBIAN_DIRS),
                    reason="needs Linux with Debian's libopenblas0-pthread/-openmp")
def test_find_openblas_finds_debian_library(monkeypatch):
    monkeypatch.delenv(LIB_ENV, raising=False)
    lib = find_openblas()
    assert lib is not None
    assert Path(lib).is_file()
    assert "openblas" in Path(lib).name
    # the threaded Debian flavour for this machine's architecture is preferred
    assert "/openblas-pthread/" in lib or "/openblas-openmp/" in lib


def test_find_openblas_env_override(tmp_path, monkeypatch):
    fake = tmp_path / "libopenblas.so.0"
    fake.write_bytes(b"not really a library")
    monkeypatch.setenv(LIB_ENV, str(fake))
    assert find_openblas() == str(fake)
    # a missing override falls through to the normal search
    monkeypatch.setenv(LIB_ENV, str(tmp_path / "missing.so"))
    assert find_openblas() != str(tmp_path / "missing.so")


def test_ensure_fast_blas_is_noop_when_disabled(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    expected = "disabled" if LINUX else "not-linux"
    assert blas.ensure_fast_blas() == expected  # returns, does not exec pytest


def test_fast_blas_env(tmp_path):
    base = {"PATH": "/usr/bin", "LD_PRELOAD": "/x/libfoo.so:/y/libopenblas.so.0",
            REEXEC_ENV: "123"}
    slow = fast_blas_env(False, base)
    assert slow[DISABLE_ENV] == "1"
    assert slow["LD_PRELOAD"] == "/x/libfoo.so"
    assert REEXEC_ENV not in slow
    fast = fast_blas_env(True, base)
    lib = find_openblas()
    if lib:
        assert fast["LD_PRELOAD"].split(":") == [lib, "/x/libfoo.so"]
        assert DISABLE_ENV not in fast
    assert "LD_PRELOAD" not in fast_blas_env(False, {"LD_PRELOAD": "/y/libopenblas.so.0"})


# ------------------------------------------------------------------ re-exec in a child

@needs_openblas
def test_child_reexecs_onto_openblas():
    lib = find_openblas()
    info = _run_child(_clean_env(), "--keep", "these args")
    assert info["name"] == "OpenBLAS", info
    assert info["fast"] is True
    assert info["mlx_loaded"] is True
    assert info["status"] == "active"  # second image: already active, no further exec
    assert info["reexec"] == str(info["pid"])  # same pid across the exec
    assert info["ld_preload"].split(":")[0] == lib
    assert info["argv"] == ["--keep", "these args"]


@pytest.mark.skipif(not LINUX, reason="Linux mlx[cpu] only")
def test_child_disabled_uses_bundled_blas():
    info = _run_child(_clean_env(**{DISABLE_ENV: "1"}))
    assert info["status"] == "disabled"
    assert info["name"] == "reference BLAS (mlx bundled)", info
    assert "mlx_cpu.libs" in info["path"]
    assert info["fast"] is False
    assert info["reexec"] is None
    assert info["ld_preload"] == ""


@pytest.mark.skipif(not LINUX, reason="Linux only")
def test_loader_refusal_does_not_loop(tmp_path):
    # a "libopenblas" the loader cannot preload: one re-exec, then the pid guard stops it
    fake = tmp_path / "libopenblas.so.0"
    fake.write_bytes(b"not an ELF file")
    info = _run_child(_clean_env(**{LIB_ENV: str(fake)}))
    assert info["status"] == "loop-guard"
    assert info["reexec"] == str(info["pid"])
    assert info["name"] == "reference BLAS (mlx bundled)"


def test_blas_in_use_shape():
    info = blas_in_use()
    assert set(info) >= {"name", "path", "fast", "mlx_loaded", "source", "mapped"}
    assert isinstance(info["name"], str)


# ------------------------------------------------------------------ same numbers

MATMUL_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import mlx.core as mx
    from engine.blas import blas_in_use
    rng = np.random.default_rng(0)
    a = mx.array(rng.standard_normal((192, 256)).astype(np.float32))
    bn = rng.standard_normal((256, 160)).astype(np.float32)
    b = mx.array(bn)
    bt = mx.array(np.ascontiguousarray(bn.T))
    v = mx.array(rng.standard_normal((256,)).astype(np.float32))
    c = mx.array(rng.standard_normal((3, 64, 96)).astype(np.float32))
    d = mx.array(rng.standard_normal((3, 96, 48)).astype(np.float32))
    outs = {
        "ab": a @ b,
        "abT": a @ mx.transpose(bt),  # transposed-B gemm, same product
        "aTa": mx.transpose(a) @ a,
        "av": a @ v,
        "cd": c @ d,
        "addmm": mx.addmm(mx.ones((192, 160)), a, b, alpha=0.5, beta=2.0),
    }
    mx.eval(outs)
    np.savez(sys.argv[1], blas=np.array(blas_in_use()["name"]),
             **{k: np.array(o) for k, o in outs.items()})
    """
)


@needs_openblas
def test_fast_and_slow_matmul_agree(tmp_path):
    res = {}
    for mode, enable in (("fast", True), ("slow", False)):
        out = tmp_path / f"{mode}.npz"
        env = fast_blas_env(enable, _clean_env())
        proc = subprocess.run([sys.executable, "-c", MATMUL_CHILD, str(out)], env=env,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        res[mode] = dict(np.load(out))
    assert str(res["fast"]["blas"]) == "OpenBLAS"
    assert str(res["slow"]["blas"]) == "reference BLAS (mlx bundled)"
    np.testing.assert_allclose(res["fast"]["abT"], res["fast"]["ab"], rtol=1e-5, atol=1e-4)
    for key in ("ab", "abT", "aTa", "av", "cd", "addmm"):
        f, s = res["fast"][key], res["slow"][key]
        assert f.shape == s.shape
        np.testing.assert_allclose(f, s, rtol=1e-4, atol=1e-4, err_msg=key)
    # and both equal a float64 reference
    rng = np.random.default_rng(0)
    a = rng.standard_normal((192, 256)).astype(np.float32).astype(np.float64)
    b = rng.standard_normal((256, 160)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(res["fast"]["ab"], a @ b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ doctor

def test_doctor_report_keys(ws):
    from engine.doctor import doctor_report, format_doctor

    (ws.models_dir / "m").mkdir()
    (ws.models_dir / "m" / "weights.bin").write_bytes(b"\0" * 4096)
    report = doctor_report(ws)
    assert set(report) >= {"platform", "mlx", "mlx_lm", "blas", "workspace", "models",
                           "models_error"}
    assert set(report["platform"]) >= {"os", "machine", "python"}
    assert set(report["mlx"]) >= {"version", "default_device", "metal"}
    assert report["mlx"]["version"]
    assert "cpu" in report["mlx"]["default_device"] or "gpu" in report["mlx"]["default_device"]
    assert report["mlx_lm"]["version"]
    assert set(report["blas"]) >= {"in_use", "openblas_found", "fast", "hint"}
    assert set(report["blas"]["in_use"]) >= {"name", "path"}
    wsr = report["workspace"]
    assert wsr["path"] == str(ws.home)
    assert set(wsr["subdirs"]) == {"models", "adapters", "datasets", "runs"}
    assert wsr["subdirs"]["models"]["size_bytes"] >= 4096
    assert isinstance(report["models"], list)
    json.dumps(report)  # JSON-able for `humanizer doctor --json`

    text = format_doctor(report)
    assert isinstance(text, str)
    for word in ("Platform", "MLX", "BLAS", "Workspace", "Models", str(ws.home)):
        assert word in text


def test_doctor_hint_when_openblas_missing(ws, monkeypatch):
    from engine import doctor

    monkeypatch.setattr(doctor.blas, "find_openblas", lambda: None)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    report = doctor.doctor_report(ws)
    if LINUX and not report["blas"]["fast"]:
        assert "apt-get install libopenblas0-pthread" in report["blas"]["hint"]
        assert "apt-get install libopenblas0-pthread" in doctor.format_doctor(report)
