"""push: a bundle to the Hugging Face Hub with huggingface_hub (create_repo + upload_folder);
dry_run lists what would be uploaded without touching the network."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.hub import LOGIN_HINT, PUSH_OFFLINE_HINT, SWITCHED_OFF, endpoint, hub_error, offline
from engine.workspace import human_bytes

REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_IGNORE = [".*", "*/.*"]  # hidden files and folders (temp files, .cache) are never uploaded


@dataclass
class PushResult:
    repo_id: str
    url: str
    files: list = field(default_factory=list)  # [(relative path, bytes)]
    total_bytes: int = 0
    dry_run: bool = False
    private: bool = False
    commit_url: str | None = None
    token_found: bool | None = None

    def __str__(self) -> str:
        return f"dry run: {len(self.files)} files for {self.url}" if self.dry_run else self.url

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "url": self.url, "dry_run": self.dry_run, "private": self.private,
                "files": [{"path": p, "bytes": n} for p, n in self.files], "total_bytes": self.total_bytes,
                "commit_url": self.commit_url, "token_found": self.token_found}


def check_repo_id(repo_id) -> str:
    """A Hub model repo id 'owner/name' (letters, digits, '-', '_', '.'; no '--' or '..';
    at most 96 characters a part), else HumanizerError."""
    text = str(repo_id or "").strip()
    parts = text.split("/")
    ok = (len(parts) == 2 and all(REPO_PART.match(p) and len(p) <= 96 and not p.endswith((".", "-"))
                                  for p in parts)
          and "--" not in text and ".." not in text and not parts[1].endswith(".git"))
    if not ok:
        raise HumanizerError(
            f"'{text}' is not a valid Hugging Face repo id",
            "use OWNER/NAME, e.g. your-name/humanizer-smollm2: letters, digits, '-', '_' and '.', "
            "at most 96 characters each, no '--' or '..'",
        )
    return text


def bundle_files(bundle_dir) -> list[tuple[str, int]]:
    """(path relative to the bundle, bytes) of every file push would upload."""
    d = Path(bundle_dir).expanduser()
    if not d.exists():
        raise HumanizerError(f"no such bundle folder: {d}", "make one with `humanizer export`")
    if not d.is_dir():
        raise HumanizerError(f"{d} is a file, not a bundle folder", "make one with `humanizer export`")
    files = []
    for f in sorted(d.rglob("*")):
        rel = f.relative_to(d)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), f.stat().st_size))
    if not files:
        raise HumanizerError(f"nothing to upload: {d} is empty", "make a bundle with `humanizer export`")
    return files


def push_token(token: str | None = None) -> str:
    """The token a push will use (given, HF_TOKEN, or the stored login), checked before any
    network: HumanizerError when the Hub is switched off or there is no token."""
    import huggingface_hub

    if offline():
        raise HumanizerError(SWITCHED_OFF, PUSH_OFFLINE_HINT)
    token = token or huggingface_hub.get_token()
    if not token:
        raise HumanizerError("not logged in to the Hugging Face Hub: pushing needs a token with write access",
                             LOGIN_HINT)
    return token


def push(bundle_dir, repo_id, private: bool = False, dry_run: bool = False, token: str | None = None,
         run: Run = NullRun(), commit_message: str | None = None) -> PushResult:
    """Upload a bundle folder to the Hub model repo `repo_id` (created if missing). With
    dry_run, only list the files and sizes that would go, without any network."""
    repo_id = check_repo_id(repo_id)
    bundle = Path(bundle_dir).expanduser()
    files = bundle_files(bundle)
    total = sum(n for _, n in files)
    url = f"{endpoint().rstrip('/')}/{repo_id}"
    if not (bundle / "README.md").is_file():
        run.log(f"{bundle} has no README.md model card (a bundle from `humanizer export` has one)")
    if dry_run:
        from huggingface_hub import get_token

        found = bool(token or get_token())
        for p, n in files:
            run.log(f"would upload {p} ({human_bytes(n)})")
        run.log(f"dry run: {len(files)} files, {human_bytes(total)} to {url} ({'private' if private else 'public'})"
                + ("" if found else "; note: no Hugging Face token found, a real push needs one"))
        return PushResult(repo_id, url, files, total, True, private, None, found)

    import huggingface_hub

    token = push_token(token)
    try:
        run.progress(0, 2, f"creating {repo_id}")
        repo_url = huggingface_hub.create_repo(repo_id, token=token, private=private, repo_type="model",
                                               exist_ok=True)
        run.progress(1, 2, f"uploading {len(files)} files ({human_bytes(total)})")
        commit = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(bundle), token=token, repo_type="model",
            commit_message=commit_message or f"Upload {bundle.name} with Humanizer Studio",
            ignore_patterns=HUB_IGNORE,
        )
    except HumanizerError:
        raise
    except Exception as e:  # noqa: BLE001 - mapped to a clear message, or re-raised
        err = hub_error(e, repo_id, push=True)
        if err is None:
            raise
        raise err from None
    url = str(getattr(repo_url, "url", None) or url)
    commit_url = getattr(commit, "commit_url", None)
    run.progress(2, 2, f"pushed to {url}")
    run.artifact(url, kind="hub repo", repo_id=repo_id, private=private)
    return PushResult(repo_id, url, files, total, False, private, commit_url, True)
