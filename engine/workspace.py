"""The workspace folder: models/, adapters/, datasets/, runs/, corpora/, config.toml.

Default ~/.humanizer; override with HUMANIZER_HOME or --home (which sets it)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import HumanizerError

SUBDIRS = ("models", "adapters", "datasets", "runs", "corpora")


def default_home() -> Path:
    return Path(os.environ.get("HUMANIZER_HOME") or Path.home() / ".humanizer").expanduser()


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def open(cls, home: str | os.PathLike | None = None) -> "Workspace":
        ws = cls(Path(home).expanduser().resolve() if home else default_home().resolve())
        for sub in SUBDIRS:
            (ws.home / sub).mkdir(parents=True, exist_ok=True)
        return ws

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"


def _is_write_failure(e: BaseException) -> bool:
    """A full disk (or quota) as Python reports it, or as MLX's writers do
    (RuntimeError "[write] Unable to write N bytes to file.")."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
    return isinstance(e, RuntimeError) and ("[write]" in str(e) or "Unable to write" in str(e))


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the disk that holds `path` (or would: its nearest existing folder)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: float | None, missing: str = "?") -> str:
    """A size as people read it, in decimal units (as disks and Hub pages give them):
    "8 B", "108.0 KB", "540.3 MB", "1.23 GB" (two decimals from GB on: sizes that differ by a
    tenth of a GB are worth telling apart)."""
    if n is None:
        return missing
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{2 if unit in ('GB', 'TB') else 1}f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike, need_bytes: int | None = None, hint: str | None = None):
    """Turn a failed write (a full disk) inside the block into a HumanizerError naming
    `path`, the space it needs (when known) and the space free."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not _is_write_failure(e):
            raise
        free = free_bytes(path)
        need = f"about {human_bytes(need_bytes)} needed, " if need_bytes else ""
        have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
        raise HumanizerError(
            f"can't write {path}: the disk is full ({need}{have}; {e})",
            hint or "free space on that disk, or write to another one; nothing half-written was left",
        ) from None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, need_bytes: int | None = None, hint: str | None = None):
    """Yield a temp folder beside `final`; on success it replaces `final` by rename.

    On any error the temp folder is removed and `final` is left exactly as it was,
    so a crash never leaves a half-written artifact that looks complete; a full disk
    is a HumanizerError naming `final` and the space (see `disk_errors`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(final, need_bytes, hint):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the artifact should not be
    try:
        with disk_errors(final, need_bytes, hint):
            yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file by temp-name-then-rename in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_errors(path, len(text.encode("utf-8"))):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with disk_errors(path, len(text.encode("utf-8"))):
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
