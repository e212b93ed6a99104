"""Fast BLAS for MLX on Linux CPU.

`mlx[cpu]` on Linux links a bundled reference (netlib) BLAS from
`mlx_cpu.libs/libblas-*.so.3`. Preloading OpenBLAS makes the dynamic loader
resolve `cblas_sgemm` (and the LAPACK symbols) to OpenBLAS instead, which makes
float32 matmul and float32 LoRA training an order of magnitude faster. It does
nothing for quantized or bf16 matmuls, which MLX runs with its own kernels.

`LD_PRELOAD` is read by the loader when a process starts, so it cannot be
turned on from inside a running process. `ensure_fast_blas()` therefore
re-executes the current process (same pid, same command line) with
`LD_PRELOAD` extended, once; the entry point calls it before importing mlx.

This module must stay importable before mlx: it imports nothing heavy at the top.

Environment variables:
  HUMANIZER_NO_FAST_BLAS=1    never preload OpenBLAS
  HUMANIZER_OPENBLAS=PATH     use this libopenblas instead of searching
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

DISABLE_ENV = "HUMANIZER_NO_FAST_BLAS"
LIB_ENV = "HUMANIZER_OPENBLAS"
# Set (to the pid) on the re-exec; exec keeps the pid, so a re-executed process
# sees its own pid here and never re-executes again, while its children (other
# pids) are still free to do their own check.
REEXEC_ENV = "HUMANIZER_FAST_BLAS_REEXEC"

APT_HINT = "sudo apt-get install libopenblas0-pthread"

_TRIPLETS = {
    "x86_64": "x86_64-linux-gnu",
    "amd64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
}
# ldconfig -p tags a library with its ABI, e.g. "(libc6,x86-64)" or "(libc6,AArch64)".
_LDCONFIG_ARCH = {
    "x86_64-linux-gnu": "x86-64",
    "aarch64-linux-gnu": "AArch64",
}
# Debian/Ubuntu alternatives dirs, threaded flavours first.
_FLAVOURS = ("openblas-pthread", "openblas-openmp", "openblas-serial", "openblas")
# Fedora/RHEL names: libopenblasp (pthreads), libopenblaso (OpenMP), libopenblas (serial).
_NAMES = ("libopenblas.so.0", "libopenblasp.so.0", "libopenblaso.so.0", "libopenblas.so")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _is_lib(path: str | os.PathLike) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _triplet() -> str | None:
    return _TRIPLETS.get(platform.machine().lower())


def _system_candidates() -> list[str]:
    out: list[str] = []
    triplet = _triplet()
    roots: list[str] = []
    if triplet:
        roots += [f"/usr/lib/{triplet}", f"/lib/{triplet}"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        roots.append("/usr/lib64")
    roots += ["/usr/lib", "/usr/local/lib"]
    for root in roots:
        for flavour in _FLAVOURS:
            out.append(f"{root}/{flavour}/libopenblas.so.0")
        for name in _NAMES:
            out.append(f"{root}/{name}")
    return out


def _ldconfig_candidates() -> list[str]:
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None
    )
    if not exe:
        return []
    try:
        text = subprocess.run(
            [exe, "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    want = _LDCONFIG_ARCH.get(_triplet() or "")
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*(libopenblas\S*\.so\S*)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
        if not m:
            continue
        name, tags, path = m.groups()
        if want and want not in tags:
            continue  # a foreign-architecture library on a multiarch system
        if "64_" in name:
            continue  # ILP64 builds with suffixed symbols do not interpose cblas_sgemm
        out.append(path)
    return out


def _site_dirs() -> list[str]:
    import site
    import sysconfig

    dirs: list[str] = []
    for key in ("platlib", "purelib"):
        with _suppress():
            dirs.append(sysconfig.get_paths()[key])
    with _suppress():
        dirs += site.getsitepackages()
    with _suppress():
        dirs.append(site.getusersitepackages())
    seen, out = set(), []
    for d in dirs:
        if d and d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


def _deps_resolve(lib: str) -> bool:
    """True when every shared library `lib` needs can be found (e.g. libgfortran.so.5)."""
    ldd = shutil.which("ldd")
    if ldd:
        try:
            res = subprocess.run([ldd, lib], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            res = None
        if res is not None and res.returncode == 0:
            return "not found" not in res.stdout
    # No ldd: try to load it in a throwaway interpreter.
    try:
        res = subprocess.run(
            [sys.executable, "-c", "import ctypes,sys; ctypes.CDLL(sys.argv[1])", lib],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def _cmeel_candidates() -> list[str]:
    """libopenblas.so.0 shipped by the PyPI wheel `cmeel-openblas` (unprefixed symbols)."""
    out = []
    for d in _site_dirs():
        lib_dir = Path(d) / "cmeel.prefix" / "lib"
        for name in ("libopenblas.so.0", "libopenblas.so"):
            p = lib_dir / name
            if _is_lib(p):
                out.append(str(p))
                break
    return out


def find_openblas() -> str | None:
    """Path of a libopenblas that can be preloaded into MLX, or None.

    Search order: $HUMANIZER_OPENBLAS; the Debian/Ubuntu/Fedora system paths for
    this machine's architecture (openblas-pthread/ first); `ldconfig -p`; a
    `cmeel-openblas` wheel in site-packages whose dependencies resolve."""
    env = os.environ.get(LIB_ENV)
    if env and _is_lib(env):
        return os.path.abspath(env)
    if not sys.platform.startswith("linux"):
        return None
    for cand in _system_candidates():
        if _is_lib(cand):
            return cand
    for cand in _ldconfig_candidates():
        if _is_lib(cand):
            return cand
    for cand in _cmeel_candidates():
        if _deps_resolve(cand):
            return cand
    return None


def _is_openblas_path(path: str) -> bool:
    base = os.path.basename(path)
    if "openblas" not in base.lower():
        return False
    try:
        real = os.path.basename(os.path.realpath(path)).lower()
    except OSError:
        real = base.lower()
    # numpy/scipy ship prefixed ILP64 builds (libscipy_openblas64_...) that never interpose.
    return not any("scipy_openblas" in n or "openblas64_" in n for n in (base.lower(), real))


def _preload_entries(env: dict | os._Environ | None = None) -> list[str]:
    value = (env if env is not None else os.environ).get("LD_PRELOAD", "")
    return [p for p in re.split(r"[:\s]+", value) if p]


def _openblas_preloaded(env=None) -> bool:
    """OpenBLAS is named in LD_PRELOAD (whether or not the loader accepted it)."""
    return any(_is_openblas_path(p) for p in _preload_entries(env))


def _openblas_active() -> bool:
    """OpenBLAS really provides cblas_sgemm in this process's global scope."""
    provider = _global_provider()
    return provider is not None and _is_openblas_path(provider)


def ensure_fast_blas(argv: list[str] | None = None) -> str:
    """Re-execute this process with OpenBLAS preloaded, when that helps.

    Call it first thing in the entry point, before mlx is imported. When it
    re-executes it does not return (os.execve keeps the pid and the command
    line). Otherwise it returns why not: "disabled" (HUMANIZER_NO_FAST_BLAS),
    "not-linux", "active" (OpenBLAS already provides cblas_sgemm here),
    "not-found", "loop-guard" (this process is the re-executed one, yet
    OpenBLAS is not active: the loader refused it), or "exec-failed".

    argv: the interpreter's command line to run again, as for os.execv; argv[0]
    is replaced by sys.executable. Default: sys.orig_argv, which also covers
    `python -m ...` and `python -c ...`."""
    if not sys.platform.startswith("linux"):
        return "not-linux"
    if _truthy(os.environ.get(DISABLE_ENV)):
        return "disabled"
    if _openblas_active():
        return "active"
    if os.environ.get(REEXEC_ENV) == str(os.getpid()):
        return "loop-guard"
    lib = find_openblas()
    if lib is None:
        return "not-found"
    if argv is None:
        argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    argv = [sys.executable, *argv[1:]]
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join([lib, *_preload_entries(env)])
    env[REEXEC_ENV] = str(os.getpid())
    for stream in (sys.stdout, sys.stderr):
        with _suppress():
            stream.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return "exec-failed"
    return "exec-failed"  # unreachable


def fast_blas_env(enable: bool, base: dict | None = None) -> dict:
    """Environment for a child process with (enable=True) or without the fast path.

    With enable=True, OpenBLAS (when found) is put first in LD_PRELOAD, so the
    child starts with it and needs no re-exec. With enable=False, any OpenBLAS
    is taken out of LD_PRELOAD and HUMANIZER_NO_FAST_BLAS=1 stops the child
    from re-executing itself, so it runs on MLX's bundled BLAS."""
    env = dict(os.environ if base is None else base)
    env.pop(REEXEC_ENV, None)
    rest = [p for p in _preload_entries(env) if not _is_openblas_path(p)]
    lib = find_openblas() if enable else None
    if lib:
        rest.insert(0, lib)
        env.pop(DISABLE_ENV, None)
    else:
        env[DISABLE_ENV] = "1"
    if rest:
        env["LD_PRELOAD"] = ":".join(rest)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def _mapped_libraries() -> list[str]:
    """Paths of the shared objects mapped into this process, in map order."""
    seen, out = set(), []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    path = parts[5].strip()
                    if ".so" in path and path not in seen:
                        seen.add(path)
                        out.append(path)
    except OSError:
        pass
    return out


def _global_provider(symbol: str = "cblas_sgemm") -> str | None:
    """The file that provides `symbol` in the global scope, or None.

    Libraries in the global scope (the executable, its dependencies and
    LD_PRELOAD) are searched before libmlx's own dependencies, so when this
    finds a provider, that is the one MLX's calls resolve to."""
    try:
        import ctypes

        class DlInfo(ctypes.Structure):
            _fields_ = [
                ("dli_fname", ctypes.c_char_p),
                ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p),
            ]

        proc = ctypes.CDLL(None)
        try:
            addr = ctypes.cast(getattr(proc, symbol), ctypes.c_void_p).value
        except AttributeError:
            return None
        dladdr = proc.dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
        dladdr.restype = ctypes.c_int
        info = DlInfo()
        if not addr or not dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
            return None
        return os.fsdecode(info.dli_fname)
    except Exception:
        return None


def blas_in_use() -> dict:
    """Which BLAS this process's MLX actually calls.

    Returns {"name", "path", "fast", "mlx_loaded", "source", "mapped"}:
    name is "OpenBLAS", "reference BLAS (mlx bundled)", "Accelerate", ... ;
    path the library file; fast whether it is an optimized BLAS; mlx_loaded
    whether libmlx is mapped yet (before mlx is imported the answer says what
    is preloaded, with mlx_loaded False); source how it was decided; mapped
    every BLAS-like library mapped into the process."""
    if sys.platform == "darwin":
        metal = None
        if "mlx.core" in sys.modules:
            with _suppress():
                metal = bool(sys.modules["mlx.core"].metal.is_available())
        name = "Accelerate" + (" (GPU work on Metal)" if metal else "")
        return {
            "name": name,
            "path": "/System/Library/Frameworks/Accelerate.framework",
            "fast": True,
            "mlx_loaded": "mlx.core" in sys.modules,
            "source": "macOS",
            "mapped": [],
        }
    if not sys.platform.startswith("linux"):
        return {
            "name": "unknown",
            "path": None,
            "fast": False,
            "mlx_loaded": "mlx.core" in sys.modules,
            "source": sys.platform,
            "mapped": [],
        }

    libs = _mapped_libraries()
    mlx_loaded = any(os.path.basename(p).startswith("libmlx") for p in libs)
    blas_like = [
        p for p in libs if re.search(r"blas|lapack|mkl|blis|accelerate", os.path.basename(p), re.I)
    ]
    bundled = next(
        (p for p in libs if "mlx_cpu.libs" in p and os.path.basename(p).startswith("libblas")),
        None,
    )
    provider = _global_provider()
    if provider and "mlx_cpu.libs" not in provider:
        base = os.path.basename(os.path.realpath(provider)).lower()
        if "openblas" in base:
            name = "OpenBLAS"
        elif "mkl" in base:
            name = "Intel MKL"
        elif "blis" in base:
            name = "BLIS"
        else:
            name = f"system BLAS ({os.path.basename(provider)})"
        return {
            "name": name,
            "path": provider,
            "fast": name != f"system BLAS ({os.path.basename(provider)})",
            "mlx_loaded": mlx_loaded,
            "source": "preloaded" if _openblas_preloaded() else "global symbol",
            "mapped": blas_like,
        }
    if bundled:
        return {
            "name": "reference BLAS (mlx bundled)",
            "path": bundled,
            "fast": False,
            "mlx_loaded": mlx_loaded,
            "source": "mlx_cpu.libs",
            "mapped": blas_like,
        }
    return {
        "name": "none loaded yet" if not mlx_loaded else "unknown",
        "path": None,
        "fast": False,
        "mlx_loaded": mlx_loaded,
        "source": "maps",
        "mapped": blas_like,
    }


def describe(info: dict | None = None) -> str:
    """One line, e.g. 'OpenBLAS (/usr/lib/.../libopenblas.so.0)'."""
    info = info or blas_in_use()
    return f"{info['name']} ({info['path']})" if info.get("path") else str(info["name"])


__all__ = [
    "APT_HINT",
    "DISABLE_ENV",
    "LIB_ENV",
    "blas_in_use",
    "describe",
    "ensure_fast_blas",
    "fast_blas_env",
    "find_openblas",
]
