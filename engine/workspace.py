"""The workspace folder: models/, adapters/, datasets/, runs/, corpora/, config.toml.

Default ~/.humanizer; override with HUMANIZER_HOME or --home (which sets it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temp folder beside `final`; on success it replaces `final` by rename.

    On any error the temp folder is removed and `final` is left exactly as it was,
    so a crash never leaves a half-written artifact that looks complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the artifact should not be
    try:
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
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
