"""The adapter manager on the tiny llama: list/info, combine, fuse, export, push, and its CLI verbs."""

import json
import os
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import adapters as A
from engine.adapters import layers as lora
from engine.adapters.bundle import export
from engine.adapters.combine import combine
from engine.adapters.common import BUNDLE_RECORD
from engine.adapters.fuse import FUSE_RECORD, compare_logits, fuse, probe_logits, probe_tokens
from engine.adapters.push import push
from engine.errors import HumanizerError
from engine.events import NullRun
from tests.tiny import make_tiny_llama

TOKENS = mx.array([[5, 17, 42, 99, 7, 3, 250, 11], [8, 9, 10, 11, 12, 13, 14, 15]])
N_BLOCKS = 2  # tests.tiny.TINY_CONFIG


class Events(list):
    def __call__(self, ev):
        self.append(ev)

    def of(self, kind):
        return [e for e in self if e["type"] == kind]


def make_adapter(model_dir, out, *, blocks, keys, rank, scale, seed, method="sft", parent=None, training=None,
                 metrics=None):
    """An adapter with random, clearly non-zero A and B on `keys` of `blocks`, for `model_dir`."""
    dims = A.model_linear_dims(model_dir)
    rng = np.random.default_rng(seed)
    w = {}
    for b in blocks:
        for k in keys:
            path = f"model.layers.{b}.{k}"
            d_in, d_out = dims[path]
            bound = 1 / np.sqrt(d_in)
            w[f"{path}.lora_a"] = mx.array(rng.uniform(-bound, bound, (d_in, rank)).astype(np.float32))
            w[f"{path}.lora_b"] = mx.array((rng.standard_normal((rank, d_out)) * 0.05).astype(np.float32))
    par = None
    if parent is not None:
        p = A.read_adapter(parent)
        par = {"name": p.name, "path": str(p.path), "fingerprint": p.fingerprint, "method": p.method}
    meta = {"method": method, "base": {"name": model_dir.name, "fingerprint": A.model_fingerprint(model_dir)},
            "parent": par, "training": training or {}, "metrics": metrics or {}}
    cfg = {"num_layers": N_BLOCKS - min(blocks), "rank": rank, "scale": scale, "dropout": 0.0, "keys": keys}
    return A.save_adapter(w, out, cfg, meta)


def logits(model, tokens=TOKENS):
    out = model(tokens)
    mx.eval(out)
    return np.array(out)


def stacked_logits(model_dir, adapter_dirs, tokens=TOKENS):
    model, _ = lora.load_model(model_dir)  # CPU: float32, quantized layers dequantized
    for d in adapter_dirs:
        lora.mount_adapter(model, d)
    model.eval()
    return logits(model, tokens)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("manage")


@pytest.fixture(scope="module")
def base(root):
    return make_tiny_llama(root / "tiny")


@pytest.fixture(scope="module")
def sft(base, root):
    return make_adapter(base, root / "ad" / "humanizer-sft", blocks=[0, 1], keys=["self_attn.q_proj", "self_attn.v_proj"],
                        rank=4, scale=2.0, seed=1, training={"preset": "small", "data": "examples/sft", "train_rows": 20},
                        metrics={"val_loss": 1.5, "steps": 10})


@pytest.fixture(scope="module")
def dpo(base, sft, root):
    """A delta on a different set of layers (block 1 only, q_proj and down_proj)."""
    return make_adapter(base, root / "ad" / "humanizer-dpo", blocks=[1], keys=["self_attn.q_proj", "mlp.down_proj"],
                        rank=2, scale=3.0, seed=2, method="dpo", parent=sft)


@pytest.fixture(scope="module")
def qbase(base, root):
    """The tiny model quantized to 4 bits, group size 32 (every linear and the embedding)."""
    from mlx_lm import load
    from mlx_lm.utils import quantize_model, save_model

    model, _ = load(str(base))
    cfg = json.loads((base / "config.json").read_text())
    model, qcfg = quantize_model(model, cfg, group_size=32, bits=4)
    qdir = root / "tiny-q4"
    save_model(qdir, model)
    (qdir / "config.json").write_text(json.dumps(qcfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / f, qdir / f)
    return qdir


# --- combine --------------------------------------------------------------------------


def test_combine_equals_stacked_and_loads_in_stock_mlx_lm(base, sft, dpo, tmp_path):
    from mlx_lm import load

    ev = Events()
    out = combine(sft, dpo, tmp_path / "sft-dpo", run=NullRun([ev]))
    info = A.read_adapter(out)
    assert (info.method, info.rank, info.scale, info.parent, info.is_delta) == ("combined", 6, 1.0, None, False)
    assert info.base == A.read_adapter(sft).base
    src = info.config["humanizer"]["combined_from"]
    assert [s["name"] for s in src] == ["humanizer-sft", "humanizer-dpo"]
    assert [s["fingerprint"] for s in src] == [A.read_adapter(sft).fingerprint, A.read_adapter(dpo).fingerprint]
    assert info.keys == ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"] and info.num_layers == 2
    assert len(info.layers) == 5  # 4 of sft, 1 more (block 1 down_proj) of dpo
    w = mx.load(str(out / A.ADAPTER_FILE))
    # a layer only sft changes: zero blocks for dpo's rank
    assert w["model.layers.0.self_attn.q_proj.lora_a"].shape == (64, 6)
    assert not np.array(w["model.layers.0.self_attn.q_proj.lora_b"][4:]).any()
    assert not np.array(w["model.layers.1.mlp.down_proj.lora_b"][:4]).any()

    want = stacked_logits(base, [sft, dpo])
    assert np.abs(want - stacked_logits(base, [sft])).max() > 1e-2  # the delta does something
    np.testing.assert_allclose(stacked_logits(base, [out]), want, rtol=1e-5, atol=1e-5)
    stock, _ = load(str(base), adapter_path=str(out))
    np.testing.assert_allclose(logits(stock), want, rtol=1e-5, atol=1e-5)
    assert ev.of("artifact")[-1]["path"] == str(out)

    # a combined output folder is replaced by combining again; any other folder is not
    combine(sft, dpo, out)
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(HumanizerError, match="precious already exists and is not a combined adapter"):
        combine(sft, dpo, keep)
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(HumanizerError, match="overlaps the input"):
        combine(sft, dpo, sft)


def test_combine_refuses_other_bases_and_mismatched_deltas(base, sft, dpo, root, tmp_path):
    other = make_tiny_llama(tmp_path / "other-model", seed=7)  # same shapes, other weights
    foreign = make_adapter(other, tmp_path / "foreign", blocks=[1], keys=["self_attn.q_proj"], rank=2, scale=1.0, seed=3)
    with pytest.raises(HumanizerError) as e:
        combine(sft, foreign, tmp_path / "x")
    assert "different base models" in str(e.value) and "tiny" in str(e.value) and "other-model" in str(e.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(HumanizerError, match="same adapter"):
        combine(sft, root / "ad" / "humanizer-sft", tmp_path / "y")
    # two deltas on different parents would need both parents
    sft2 = make_adapter(base, tmp_path / "sft2", blocks=[1], keys=["self_attn.v_proj"], rank=2, scale=1.0, seed=4)
    dpo2 = make_adapter(base, tmp_path / "dpo2", blocks=[1], keys=["self_attn.v_proj"], rank=2, scale=1.0, seed=5,
                        method="dpo", parent=sft2)
    with pytest.raises(HumanizerError, match="deltas on different parents"):
        combine(dpo, dpo2, tmp_path / "z")
    # a delta combined with an unrelated adapter stays a delta on its parent
    out = combine(dpo, sft2, tmp_path / "still-delta")
    assert A.read_adapter(out).parent["fingerprint"] == A.read_adapter(sft).fingerprint


def test_bad_inputs_name_the_path(base, sft, tmp_path):
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(HumanizerError, match=f"no such adapter folder: {missing}"):
        combine(missing, sft, tmp_path / "out")
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    with pytest.raises(HumanizerError, match=f"{empty} is not an adapter .missing adapters.safetensors, adapter_config"):
        combine(sft, empty, tmp_path / "out")
    with pytest.raises(HumanizerError, match=f"{empty} is not an adapter"):
        fuse(base, [empty], tmp_path / "fused")
    with pytest.raises(HumanizerError, match=f"no such model folder: {tmp_path / 'nope'}"):
        fuse(tmp_path / "nope", [sft], tmp_path / "fused")
    with pytest.raises(HumanizerError, match=f"{empty} is not a model folder"):
        export(empty, [sft], tmp_path / "bundle")
    with pytest.raises(HumanizerError, match="no adapters given"):
        export(base, [], tmp_path / "bundle")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(HumanizerError, match=f"{f} is a file, not an adapter folder"):
        A.resolve_adapter(f)
    assert not (tmp_path / "out").exists() and not (tmp_path / "fused").exists() and not (tmp_path / "bundle").exists()


# --- fuse -----------------------------------------------------------------------------


def test_fuse_float_equals_stacked_and_loads_in_stock_mlx_lm(base, sft, dpo, tmp_path):
    from mlx_lm import load

    ev = Events()
    res = fuse(base, [dpo, sft], tmp_path / "fused", run=NullRun([ev]))  # order does not matter: parents first
    assert res.mode == "float" and res.path == tmp_path / "fused"
    r = res.report
    assert r["adapters"] == ["humanizer-sft", "humanizer-dpo"] and r["layers_fused"] == 5
    assert r["fused_vs_stacked"]["max_abs"] < 1e-4 and r["fused_vs_stacked"]["top1_agreement"] == 1.0
    assert r["requantize_cost"] is None and r["quantization"] is None  # a float model: nothing to re-quantize
    fused, _ = load(str(res.path))
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in fused.named_modules())
    np.testing.assert_allclose(logits(fused), stacked_logits(base, [sft, dpo]), rtol=1e-5, atol=1e-5)
    record = json.loads((res.path / FUSE_RECORD).read_text())
    assert record["base"]["fingerprint"] == A.model_fingerprint(base) and len(record["adapters"]) == 2
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= {p.name for p in res.path.iterdir()}
    assert ev.of("artifact")[-1]["report"]["mode"] == "float"
    with pytest.raises(HumanizerError, match="not quantized, so there is nothing to re-quantize"):
        fuse(base, [sft], tmp_path / "f2", requantize=True)
    with pytest.raises(HumanizerError, match="delta trained on top of adapter 'humanizer-sft'.*not among"):
        fuse(base, [dpo], tmp_path / "f3")


def test_fuse_quantized_requantize_reports_its_cost(qbase, tmp_path):
    from mlx_lm import load

    ad = make_adapter(qbase, tmp_path / "q-sft", blocks=[0, 1], keys=["self_attn.q_proj", "mlp.down_proj"], rank=4,
                      scale=2.0, seed=6)
    rq = fuse(qbase, [ad], tmp_path / "requantized")  # default for a quantized model: re-quantize
    rf = fuse(qbase, [ad], tmp_path / "float", requantize=False)
    assert (rq.mode, rf.mode) == ("requantized", "float")
    cost = rq.report["requantize_cost"]
    assert rq.report["quantization"] == [{"bits": 4, "group_size": 32, "mode": "affine"}]
    assert 0 < cost["mean_abs"] <= cost["max_abs"] and 0 <= cost["top1_agreement"] <= 1 and cost["mean_kl"] >= 0
    assert rf.report["requantize_cost"] == pytest.approx(cost)  # keep-float says what re-quantizing would cost
    assert rq.report["requantized_bytes"] < rq.report["float_bytes"]
    assert rq.report["output_bytes"] < rf.report["output_bytes"]
    assert rq.report["output_bytes"] == pytest.approx(rq.report["requantized_bytes"], abs=10_000)  # + headers
    assert rf.report["output_bytes"] == pytest.approx(rf.report["float_bytes"], abs=10_000)

    # both load in stock mlx-lm; only the fused layers changed kind
    qm, tok = load(str(rq.path))
    fm, _ = load(str(rf.path))
    fq = fm.model.layers[0].self_attn
    assert isinstance(qm.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(fq.q_proj, nn.Linear) and not isinstance(fq.q_proj, nn.QuantizedLinear)
    assert isinstance(fq.k_proj, nn.QuantizedLinear)  # untouched: still 4-bit
    cfg = json.loads((rf.path / "config.json").read_text())
    assert cfg["quantization"]["model.layers.0.self_attn.q_proj"] is False and cfg["quantization"]["bits"] == 4
    # the float fuse equals the quantized base + adapter stacked
    np.testing.assert_allclose(logits(fm), stacked_logits(qbase, [ad]), rtol=1e-4, atol=1e-4)
    # and the reported cost is what the two written models differ by on the probe prompts
    probes = probe_tokens(tok)
    measured = compare_logits(probe_logits(fm, probes), probe_logits(qm, probes))
    assert measured["max_abs"] == pytest.approx(cost["max_abs"], rel=1e-3, abs=1e-5)
    assert measured["mean_abs"] == pytest.approx(cost["mean_abs"], rel=1e-3, abs=1e-6)


# --- export ---------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def trained(base, root):
    """A real SFT adapter and a DPO delta on it, trained for a few steps, in a workspace."""
    from engine.train import train
    from engine.workspace import Workspace

    ws = Workspace.open(root / "home")
    words = ("one", "two", "three", "four", "five", "six")
    _write_jsonl(root / "data" / "sft" / "train.jsonl", [{"prompt": f"say {w}", "completion": f"{w} {w}."} for w in words])
    _write_jsonl(root / "data" / "dpo" / "train.jsonl",
                 [{"prompt": f"say {w}", "chosen": f"{w}.", "rejected": f"a testament to {w}"} for w in words[:4]])
    fast = dict(iters=4, batch_size=2, steps_per_eval=2, rank=4, num_layers=2, keys="q_proj,v_proj", learning_rate=1e-2)
    train(base, str(root / "data" / "sft"), "sft", ws.adapters_dir / "t-sft", ws=ws, **fast)
    train(base, str(root / "data" / "dpo"), "dpo", ws.adapters_dir / "t-dpo", ws=ws,
          mount_adapter=ws.adapters_dir / "t-sft", **{**fast, "iters": 3})
    return ws


def test_export_bundle_and_model_card(base, trained, tmp_path):
    ws = trained
    ev = Events()
    out = export(base, ["t-sft", "t-dpo"], tmp_path / "bundle", run=NullRun([ev]), ws=ws)  # workspace names
    assert {p.name for p in out.iterdir()} == {"model", "adapters", "README.md", BUNDLE_RECORD}
    assert {p.name for p in (out / "model").iterdir()} == {p.name for p in base.iterdir()}
    assert os.stat(out / "model" / "model.safetensors").st_ino == os.stat(base / "model.safetensors").st_ino  # linked
    for name in ("t-sft", "t-dpo"):
        assert {p.name for p in (out / "adapters" / name).iterdir()} == {A.ADAPTER_FILE, A.CONFIG_FILE}  # no checkpoints
    dpo = A.read_adapter(out / "adapters" / "t-dpo")
    assert dpo.parent["path"] == "adapters/t-sft" and dpo.parent["fingerprint"] == A.read_adapter(out / "adapters" / "t-sft").fingerprint
    manifest = json.loads((out / BUNDLE_RECORD).read_text())
    assert manifest["stacks"] == ["t-sft", "t-sft+t-dpo"] and manifest["model"]["fingerprint"] == A.model_fingerprint(base)

    card = (out / "README.md").read_text()
    sft_info = A.read_adapter(ws.adapters_dir / "t-sft")
    for text in (
        "humanizer serve --model ./model --adapter ./adapters/t-sft --adapter ./adapters/t-dpo",
        '"adapter": "t-sft+t-dpo"', 'extra_body={"adapter": "t-sft+t-dpo"}', "curl http://127.0.0.1:8080/v1/chat/completions",
        "DPO delta trained on top of `t-sft`", "### `t-sft`", "- **Method:** SFT",
        str(sft_info.training["data"]), f"{sft_info.training['train_rows']} training rows, 1 validation row",
        f"{dpo.training['train_rows']} training rows", "preset small", "iters 4", "iters 3",
        "| val_loss |", "beta 0.1", "`tiny`", A.model_fingerprint(base), "## License", "library_name: mlx",
        "humanizer lora combine ./adapters/t-sft ./adapters/t-dpo",
        "mlx_lm.generate --model ./model --adapter-path ./adapters/t-sft",
    ):
        assert text in card, text
    assert f"{sft_info.metrics['val_loss']:.4g}" in card

    # the bundle serves stacked as it is: mount the two on its own model
    m, _ = lora.load_model(out / "model")
    lora.mount_adapter(m, out / "adapters" / "t-sft")
    lora.mount_adapter(m, out / "adapters" / "t-dpo")
    assert ev.of("artifact")[-1]["path"] == str(out)

    # a delta without its parent is refused; a previous bundle is replaced, other folders are not
    with pytest.raises(HumanizerError, match="'t-dpo'.*delta.*not among the adapters given"):
        export(base, ["t-dpo"], tmp_path / "b2", ws=ws)
    export(base, ["t-sft"], out, ws=ws, link=False)
    assert not (out / "adapters" / "t-dpo").exists()
    assert os.stat(out / "model" / "model.safetensors").st_ino != os.stat(base / "model.safetensors").st_ino
    with pytest.raises(HumanizerError, match="not a bundle made by humanizer"):
        export(base, ["t-sft"], tmp_path, ws=ws)


def test_export_card_for_embedded_model_and_combined(base, sft, dpo, tmp_path):
    """An embedded model's Hub repo and license go into the front matter; a combined adapter lists its sources."""
    smol = tmp_path / "smollm2-135m"
    shutil.copytree(base, smol)
    comb = combine(sft, dpo, tmp_path / "sft-dpo")
    # the adapters were made for "tiny": same weights, so the fingerprint matches
    out = export(smol, [comb], tmp_path / "bundle")
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card
    assert "an exact merge of `humanizer-sft` (SFT) + `humanizer-dpo` (DPO)" in card
    assert "preset small" in card and "val_loss=1.5" in card


# --- list / info ----------------------------------------------------------------------


def test_list_and_info_with_fits(ws, base, sft, dpo, tmp_path):
    for src in (sft, dpo):
        shutil.copytree(src, ws.adapters_dir / src.name)
    other = make_tiny_llama(tmp_path / "other-model", seed=7)
    make_adapter(other, ws.adapters_dir / "foreign", blocks=[1], keys=["self_attn.q_proj"], rank=2, scale=1.0, seed=3)
    (ws.adapters_dir / "junk").mkdir()
    (ws.adapters_dir / ".half.tmp-123").mkdir()
    (ws.adapters_dir / "running" / "checkpoints").mkdir(parents=True)

    skipped = []
    found = A.list_adapters(ws, errors=skipped)
    assert [i.name for i in found] == ["foreign", "humanizer-dpo", "humanizer-sft"]
    assert all(i.fits is None for i in found)
    assert sorted((p.name, "not an adapter" in r or "not finished" in r) for p, r in skipped) == [
        ("junk", True), ("running", True)]
    by = {i.name: i for i in A.list_adapters(ws, base)}
    s, d, f = by["humanizer-sft"], by["humanizer-dpo"], by["foreign"]
    assert (s.method, s.rank, s.fits, s.fit_reason, len(s.layers)) == ("sft", 4, True, None, 4)
    assert s.base["name"] == "tiny" and s.metrics["val_loss"] == 1.5
    assert A.layer_summary(s) == "2 blocks (0-1) x q_proj, v_proj"
    assert d.fits and d.is_delta and "parent 'humanizer-sft'" in d.fit_reason
    assert f.fits is False and "different weights" in f.fit_reason and "other-model" in f.fit_reason
    assert json.loads(json.dumps(s.to_dict()))["fits"] is True
    assert A.resolve_adapter("humanizer-sft", ws) == ws.adapters_dir / "humanizer-sft"
    with pytest.raises(HumanizerError, match="no adapter named 'nope'.*") as e:
        A.resolve_adapter("nope", ws)
    assert "humanizer-sft" in e.value.hint


# --- push -----------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path):
    b = tmp_path / "bundle"
    (b / "adapters" / "a").mkdir(parents=True)
    (b / "README.md").write_text("# card\n")
    (b / "adapters" / "a" / "adapters.safetensors").write_bytes(b"x" * 1000)
    (b / ".hidden-temp").write_text("never uploaded")
    return b


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))


@pytest.fixture
def no_network(monkeypatch):
    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("network call in a dry run")

    monkeypatch.setattr(huggingface_hub, "create_repo", refuse)
    monkeypatch.setattr(huggingface_hub, "upload_folder", refuse)


def test_push_dry_run_lists_files_without_network(bundle, no_token, no_network):
    ev = Events()
    res = push(bundle, "someone/humanizer-tiny", private=True, dry_run=True, run=NullRun([ev]))
    assert res.dry_run and res.private and res.token_found is False
    assert res.files == [("README.md", 7), ("adapters/a/adapters.safetensors", 1000)]
    assert res.total_bytes == 1007 and res.url.endswith("/someone/humanizer-tiny")
    logs = " ".join(e["message"] for e in ev.of("log"))
    assert "would upload adapters/a/adapters.safetensors" in logs and "no Hugging Face token" in logs


def test_push_without_token_is_a_clear_error(bundle, no_token, no_network):
    with pytest.raises(HumanizerError) as e:
        push(bundle, "someone/humanizer-tiny")
    assert "not logged in to the Hugging Face Hub" in e.value.message
    assert "hf auth login" in e.value.hint and "HF_TOKEN" in e.value.hint


def test_push_to_an_unreachable_hub_is_a_clear_error(bundle):
    assert os.environ["HF_ENDPOINT"] == "http://127.0.0.1:9"  # tests/conftest.py: a closed port
    with pytest.raises(HumanizerError) as e:
        push(bundle, "someone/humanizer-tiny", token="hf_not_a_real_token")
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:9" in e.value.message
    assert "--dry-run" in e.value.hint


def test_push_offline_mode_is_a_clear_error(bundle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HumanizerError, match="HF_HUB_OFFLINE is set"):
        push(bundle, "someone/humanizer-tiny", token="hf_x")


@pytest.mark.parametrize("repo", ["noslash", "a/b/c", "a/-x", "a/x--y", "a/x..y", "a/x.", "", "a/has space",
                                  "a/" + "n" * 97, "a/x.git"])
def test_push_validates_repo_id(bundle, repo):
    with pytest.raises(HumanizerError, match="not a valid Hugging Face repo id"):
        push(bundle, repo, dry_run=True)


def test_push_calls_the_hub_as_expected(bundle, monkeypatch):
    import huggingface_hub

    calls = {}

    class Url(str):
        url = "https://hub.example/someone/humanizer-tiny"

    class Commit:
        commit_url = "https://hub.example/someone/humanizer-tiny/commit/abc"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **k: calls.setdefault("create", (repo_id, k)) and Url())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: calls.setdefault("upload", k) and Commit())
    res = push(bundle, "someone/humanizer-tiny", private=True, token="hf_x")
    assert calls["create"] == ("someone/humanizer-tiny", {"token": "hf_x", "private": True, "repo_type": "model",
                                                          "exist_ok": True})
    assert calls["upload"]["folder_path"] == str(bundle) and ".*" in calls["upload"]["ignore_patterns"]
    assert (res.url, res.commit_url, res.dry_run) == (Url.url, Commit.commit_url, False)


def test_push_missing_bundle_names_the_path(tmp_path):
    with pytest.raises(HumanizerError, match=f"no such bundle folder: {tmp_path / 'nope'}"):
        push(tmp_path / "nope", "someone/x", dry_run=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HumanizerError, match="nothing to upload"):
        push(tmp_path / "empty", "someone/x", dry_run=True)


# --- the CLI verbs --------------------------------------------------------------------


@pytest.fixture
def cli(ws, monkeypatch, capsys):
    """tui.cli.main on the test's workspace."""
    import tui.cli as C

    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")  # no re-exec of the test process

    def run(*argv):
        code = C.main(["--home", str(ws.home), *map(str, argv)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_verbs(cli, ws, base, sft, dpo, tmp_path, monkeypatch):
    for src in (sft, dpo):
        shutil.copytree(src, ws.adapters_dir / src.name)
    code, out, err = cli("lora", "list", "--json")
    assert code == 0 and [a["name"] for a in json.loads(out)] == ["humanizer-dpo", "humanizer-sft"]
    code, out, _ = cli("lora", "list", "--model", base)
    assert code == 0 and "humanizer-sft" in out and "yes (with parent)" in out and "fits tiny" in out
    assert "2 blocks (0-1) x q_proj, v_proj" in out and "val_loss=1.5" in out
    code, out, _ = cli("lora", "info", "humanizer-dpo", "--model", base, "--json")
    d = json.loads(out)
    assert code == 0 and d["is_delta"] and d["fits"] and d["parent"]["name"] == "humanizer-sft" and d["rank"] == 2
    code, out, _ = cli("lora", "info", "humanizer-dpo")
    assert code == 0 and "delta" in out and "rank 2, scale 3" in out

    code, out, err = cli("lora", "combine", "humanizer-sft", "humanizer-dpo", "--output", tmp_path / "c", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events[-1]["type"] == "done" and events[-1]["result"] == str(tmp_path / "c")
    assert A.read_adapter(tmp_path / "c").rank == 6

    code, out, err = cli("lora", "fuse", base, "--adapter", "humanizer-sft", "--adapter", "humanizer-dpo",
                         "--output", tmp_path / "f", "--keep-float")
    assert code == 0 and "fused model (float)" in out and "fused vs stacked" in out, err
    code, out, err = cli("lora", "fuse", base, "--adapter", "humanizer-sft", "--output", tmp_path / "g", "--requantize")
    assert code == 2 and "nothing to re-quantize" in err

    code, out, err = cli("export", base, "--adapter", "humanizer-sft", "--adapter", "humanizer-dpo",
                         "--output", tmp_path / "b")
    assert code == 0 and "bundle ready" in out and (tmp_path / "b" / "README.md").is_file(), err
    code, out, _ = cli("push", tmp_path / "b", "--repo", "someone/tiny", "--dry-run", "--json")
    res = json.loads(out)
    assert code == 0 and res["dry_run"] and "README.md" in [f["path"] for f in res["files"]]
    code, out, _ = cli("push", tmp_path / "b", "--repo", "someone/tiny", "--dry-run")
    assert code == 0 and "nothing was sent" in out and "adapters/humanizer-sft/adapters.safetensors" in out
    code, _, err = cli("push", tmp_path / "b", "--repo", "bad id")
    assert code == 2 and "not a valid Hugging Face repo id" in err

    code, _, err = cli("lora", "info", tmp_path / "missing")
    assert code == 2 and f"no such adapter folder: {tmp_path / 'missing'}" in err
    runs = json.loads(cli("jobs", "list", "--json")[1])
    assert {r["kind"] for r in runs} >= {"lora combine", "lora fuse", "export"}

    # `lora train` still goes to the trainer's handler
    import tui.cli.train as T

    seen = []
    monkeypatch.setattr(T, "cmd_train", lambda ws, args, argv: seen.append(args.action) or 0)
    code, _, _ = cli("lora", "train", base, "--data", tmp_path, "--output", tmp_path / "t")
    assert code == 0 and seen == ["train"]


def test_one_byte_formatter():
    from engine.workspace import human_bytes

    assert [human_bytes(n) for n in (8, 108_000, 540_300_000, 1_234_000_000)] == [
        "8 B", "108.0 KB", "540.3 MB", "1.23 GB"]
    assert human_bytes(None) == "?" and human_bytes(None, missing="—") == "—"
