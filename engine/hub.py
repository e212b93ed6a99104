"""The Hugging Face Hub: where it is, whether it is switched off, and its failures as our errors.

One place turns huggingface_hub's exceptions into HumanizerErrors (hub_error), for a download
(engine.models: a model or an encoder from a repo id) and for a push (engine.adapters.push),
so the same failure reads the same everywhere: a gated or missing repo, a rejected token, no
write access, the Hub switched off, the network down."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import HumanizerError
from engine.events import NullRun, Run

LOGIN_HINT = ("run `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN to a token with write access "
              "from https://huggingface.co/settings/tokens")
READ_LOGIN_HINT = "log in (`hf auth login`, `huggingface-cli login` or HF_TOKEN)"
SWITCHED_OFF = "the Hugging Face Hub is switched off (HF_HUB_OFFLINE is set)"
PUSH_OFFLINE_HINT = "unset HF_HUB_OFFLINE to push; --dry-run lists the files without the network"
DOWNLOAD_OFFLINE_HINT = ("connect to the network, or set HF_HUB_OFFLINE=1 and use a model already in the "
                         "cache, or use a local folder or .gguf file")
_NETWORK_ERRORS = {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "RequestError",
                   "ProxyError", "SSLError"}  # httpx's and requests' names, whichever huggingface_hub uses


def endpoint() -> str:
    """The Hub's URL (HF_ENDPOINT, else huggingface_hub's default)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def offline() -> bool:
    """HF_HUB_OFFLINE, as set in the environment or (in this process) in huggingface_hub."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def is_network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & _NETWORK_ERRORS) or isinstance(e, OSError)


def hub_error(e: BaseException, repo_id: str, *, push: bool = False,
              offline_hint: str | None = None) -> HumanizerError | None:
    """`e`, raised by huggingface_hub while downloading from (or with push, uploading to) the
    repo `repo_id`, as a HumanizerError that says what to do; None for an error that is not the
    Hub's (a bug: the caller re-raises it)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return HumanizerError(f"the Hugging Face repo '{repo_id}' is gated",
                              f"accept its terms on huggingface.co and {READ_LOGIN_HINT}")
    if isinstance(e, OfflineModeIsEnabled) and push:
        return HumanizerError(SWITCHED_OFF, PUSH_OFFLINE_HINT)
    if not push and isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
        return HumanizerError(f"no model '{repo_id}' on the Hugging Face Hub (or it is private)",
                              f"check the repo id; for a private repo {READ_LOGIN_HINT}")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, HfHubHTTPError) and status == 401:
        return HumanizerError("the Hugging Face Hub rejected the token (HTTP 401: invalid or expired)", LOGIN_HINT)
    if isinstance(e, HfHubHTTPError) and push:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status == 403:
            return HumanizerError(
                f"the token may not write to '{repo_id}' (HTTP 403)",
                f"use a token with write access to the '{repo_id.split('/')[0]}' namespace; " + LOGIN_HINT)
        return HumanizerError(f"the Hugging Face Hub refused the push to '{repo_id}' (HTTP {status}): {first}",
                              "check the repo id and your access to it, then push again")
    if push and is_network_error(e):
        return HumanizerError(
            f"cannot reach the Hugging Face Hub at {endpoint()} ({type(e).__name__}: {e})",
            "check the network connection (and HF_ENDPOINT or proxy settings), then push again; "
            "--dry-run lists the files without the network",
        )
    if not push and isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError)):
        return HumanizerError(
            f"cannot reach the Hugging Face Hub to download '{repo_id}', and it is not in the local "
            f"Hugging Face cache ({type(e).__name__})",
            offline_hint or DOWNLOAD_OFFLINE_HINT,
        )
    return None


def snapshot(repo_id: str, patterns: list[str], run: Run = NullRun(), offline_hint: str | None = None) -> Path:
    """snapshot_download of `patterns` from a Hub repo (the local HF cache answers when offline),
    every Hub failure as a HumanizerError that says what to do (hub_error)."""
    from huggingface_hub import snapshot_download

    run.log(f"fetching {repo_id} from the Hugging Face Hub (or the local cache)")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - mapped to a clear message, or re-raised
        err = hub_error(e, repo_id, offline_hint=offline_hint)
        if err is None:
            raise
        raise err from None
