"""One Hub error handler (engine.hub.hub_error) and one model-spec resolver (engine.models.resolve_model):
the same failure reads the same from every caller."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from engine.errors import HumanizerError
from engine.models import resolve_model
from tests.tiny import make_tiny_llama


def http_error(cls_name: str, status: int):
    import huggingface_hub.errors as errors

    response = SimpleNamespace(status_code=status, headers={}, request=None)  # what the errors read of it
    return getattr(errors, cls_name)(f"{status} Client Error", response=response)


@pytest.fixture
def hub_raises(monkeypatch):
    """Make every Hub call (download and push) raise the given exception."""
    import huggingface_hub

    def arm(exc):
        def boom(*a, **k):
            raise exc

        for name in ("snapshot_download", "create_repo", "upload_folder"):
            monkeypatch.setattr(huggingface_hub, name, boom)
    return arm


@pytest.fixture
def bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "README.md").write_text("# card\n")
    return b


def test_a_rejected_token_reads_the_same_for_download_and_push(ws, bundle, hub_raises):
    from engine.adapters.push import push

    hub_raises(http_error("HfHubHTTPError", 401))
    with pytest.raises(HumanizerError) as down:
        resolve_model("SomeOrg/x", ws)
    with pytest.raises(HumanizerError) as up:
        push(bundle, "SomeOrg/x", token="hf_x")
    assert down.value.message == up.value.message == \
        "the Hugging Face Hub rejected the token (HTTP 401: invalid or expired)"
    assert "hf auth login" in down.value.hint and "HF_TOKEN" in down.value.hint


def test_a_gated_repo_reads_the_same_for_download_and_push(ws, bundle, hub_raises):
    from engine.adapters.push import push

    hub_raises(http_error("GatedRepoError", 403))
    with pytest.raises(HumanizerError, match="'SomeOrg/x' is gated") as down:
        resolve_model("SomeOrg/x", ws)
    with pytest.raises(HumanizerError, match="'SomeOrg/x' is gated") as up:
        push(bundle, "SomeOrg/x", token="hf_x")
    assert down.value.hint == up.value.hint and "accept its terms" in up.value.hint


def test_a_missing_repo_download_and_a_refused_push(ws, bundle, hub_raises):
    from engine.adapters.push import push

    hub_raises(http_error("RepositoryNotFoundError", 404))
    with pytest.raises(HumanizerError, match="no model 'SomeOrg/x' on the Hugging Face Hub"):
        resolve_model("SomeOrg/x", ws)
    with pytest.raises(HumanizerError, match=r"refused the push to 'SomeOrg/x' \(HTTP 404\)"):
        push(bundle, "SomeOrg/x", token="hf_x")


def test_an_error_that_is_not_the_hubs_is_not_hidden(ws, hub_raises):
    hub_raises(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        resolve_model("SomeOrg/x", ws)


# --- one model-spec resolver ---------------------------------------------------------------


def test_a_folder_needs_no_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANIZER_HOME", str(tmp_path / "never-made"))
    model = make_tiny_llama(tmp_path / "m")
    assert resolve_model(str(model)) == model
    assert not (tmp_path / "never-made").exists()


def test_without_a_workspace_a_name_uses_the_default_one(ws):
    model = make_tiny_llama(ws.models_dir / "mine")
    assert resolve_model("mine") == model  # ws: HUMANIZER_HOME


def test_a_missing_folder_reads_the_same_with_or_without_a_workspace(tmp_path, ws):
    msgs = set()
    for w in (ws, None):
        with pytest.raises(HumanizerError, match="no such model folder") as e:
            resolve_model(str(tmp_path / "nope"), w)
        msgs.add(str(e.value))
    assert len(msgs) == 1


# --- the package --------------------------------------------------------------------------


def test_the_adapters_package_loads_without_mlx():
    """The UI and `humanizer lora list` read adapters without loading MLX; only layers.py needs it."""
    code = ("import sys, engine.adapters, engine.adapters.push, engine.adapters.card; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_adapter_errors_live_in_engine_errors():
    from engine import adapters as A
    from engine import errors

    assert A.AdapterConfigError is errors.AdapterConfigError and A.NeedsParent is errors.NeedsParent
    assert issubclass(errors.NeedsParent, errors.HumanizerError)
