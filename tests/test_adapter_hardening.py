"""Adapters that must not mount or stack: a config that does not describe its weights, a
weights file linked out of the workspace, a copy of a parent taken for the parent, and stacks
that apply the same weights twice. Server behaviour over real sockets (tests/test_server.py's
ServerThread); the adapters are tests/test_generate.py's tiny SFT + DPO-delta pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine import adapters as A
from engine.adapters import layers as lora
from engine.errors import HumanizerError
from engine.generate import Engine, EngineError
from tests.test_generate import DPO, SFT, make_adapters
from tests import test_server
from tests.test_server import ServerThread, assert_error, call

STACK = f"{SFT}+{DPO}"
setup = test_server.setup  # the same fixture (a tiny model, SFT and DPO adapters), this module's own copy


@pytest.fixture
def server(setup):
    """A server with nothing mounted that may mount from the workspace's adapters/."""
    ws, base, _, _ = setup
    engine = Engine.load(base, max_rows=2).start()
    srv = ServerThread(engine, adapters_root=ws.adapters_dir)
    yield srv
    srv.stop()
    engine.close()


def copy_adapter(src: Path, dst: Path, **lora_params) -> Path:
    """A copy of the adapter folder `src` at `dst` (replaced), with `lora_params` changed in its
    config (`num_layers` at the top level, the rest under lora_parameters)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    cfg_path = dst / A.CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    for k, v in lora_params.items():
        if k == "num_layers":
            cfg["num_layers"] = v
        else:
            cfg["lora_parameters"][k] = v
    cfg_path.write_text(json.dumps(cfg))
    return dst


# --- 5: a config that does not describe its weights -------------------------------------------------

BAD_CONFIGS = {  # folder name -> (config change, the field the refusal must name)
    "bad-rank": ({"rank": 16}, "rank"),  # the weights have rank 4
    "bad-layers": ({"num_layers": 1000}, "num_layers"),  # the model has 2 blocks
    "short-layers": ({"num_layers": 1}, "num_layers"),  # the weights change blocks 0-1
    "bad-keys": ({"keys": ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj",
                           "self_attn.nowhere"]}, "keys"),  # a key that matches no tensor
    "few-keys": ({"keys": ["self_attn.q_proj"]}, "keys"),  # tensors on layers the keys do not name
}


def test_config_that_does_not_match_its_weights_is_refused_over_http(setup, server):
    ws, _, sft, _ = setup
    for name, (change, field) in BAD_CONFIGS.items():
        copy_adapter(sft, ws.adapters_dir / name, **change)
        err = assert_error(call(server, "POST", "/v1/adapters", {"path": name}), 400, "adapter_config_mismatch",
                           "path")
        assert field in err["message"] and str(ws.adapters_dir / name / A.CONFIG_FILE) in err["message"], err
    status, listed = call(server, "GET", "/v1/adapters")
    assert status == 200 and listed["data"] == [] and listed["models"] == ["base"]
    # the untouched adapter still mounts, and reports its own values
    status, body = call(server, "POST", "/v1/adapters", {"path": SFT})
    assert status == 201 and body["rank"] == 4 and body["num_layers"] == 2


def test_config_mismatch_refused_when_loading_for_the_cli(setup, tmp_path):
    ws, base, sft, _ = setup
    for name, (change, field) in BAD_CONFIGS.items():
        bad = copy_adapter(sft, tmp_path / name, **change)
        with pytest.raises(HumanizerError) as e:  # chat / eval / serve load through Engine.load
            Engine.load(base, adapters=[bad])
        assert field in e.value.message and str(bad / A.CONFIG_FILE) in e.value.message
        assert e.value.hint
    # model-free checks already when reading the folder (lora list/info, stack_order)
    with pytest.raises(HumanizerError, match=r"lora_parameters.rank is 16.*rank 4") as e:
        A.read_adapter(tmp_path / "bad-rank")
    assert "adapter_config.json" in e.value.hint
    with pytest.raises(HumanizerError, match="num_layers is 1000.*2 blocks"):
        lora.mount_adapter(lora.load_model(base)[0], tmp_path / "bad-layers")


def test_serve_cli_refuses_a_mismatched_adapter(setup, tmp_path, monkeypatch, capsys):
    from tui.cli import main

    ws, base, sft, _ = setup
    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")  # no re-exec of the test process

    async def never_serve(*a, **k):  # if the adapter were accepted, fail instead of serving forever
        raise AssertionError("the mismatched adapter was mounted")

    monkeypatch.setattr("engine.serve.server._serve_async", never_serve)
    bad = copy_adapter(sft, tmp_path / "bad-rank", rank=16)
    rc = main(["--home", str(tmp_path / "h"), "serve", "--model", str(base), "--adapter", str(bad), "--port", "0"])
    out = capsys.readouterr()
    assert rc != 0 and "lora_parameters.rank is 16" in out.out + out.err


# --- 6: files linked out of the workspace ------------------------------------------------------------


def test_symlinked_files_out_of_the_workspace_are_refused(setup, server, tmp_path):
    ws, base, sft, _ = setup
    outside = tmp_path / "outside"
    make_adapters(base, outside)
    cases = {"linked-weights": A.ADAPTER_FILE, "linked-config": A.CONFIG_FILE}
    for name, linked in cases.items():
        d = ws.adapters_dir / name
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(sft, d)
        (d / linked).unlink()
        (d / linked).symlink_to(outside / SFT / linked)
        err = assert_error(call(server, "POST", "/v1/adapters", {"path": name}), 403, "path_not_allowed", "path")
        assert linked in err["message"]
    folder = ws.adapters_dir / "linked-folder"  # a symlinked folder: refused too
    if not folder.is_symlink():
        folder.symlink_to(outside / SFT)
    assert_error(call(server, "POST", "/v1/adapters", {"path": "linked-folder"}), 403, "path_not_allowed", "path")
    # a link that stays inside the workspace's adapters/ is fine
    d = ws.adapters_dir / "linked-inside"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(sft, d)
    (d / A.ADAPTER_FILE).unlink()
    (d / A.ADAPTER_FILE).symlink_to(sft / A.ADAPTER_FILE)
    assert call(server, "POST", "/v1/adapters", {"path": "linked-inside"})[0] == 201
    assert call(server, "GET", "/v1/models")[1]["data"][-1]["id"] == "linked-inside"


# --- 7: a copy of the parent is not the parent -------------------------------------------------------


def test_a_copy_of_the_parent_is_not_stacked_on(setup, server):
    ws, _, sft, _ = setup
    copy_adapter(sft, ws.adapters_dir / "sftbest")
    for path in (SFT, DPO, "sftbest"):
        assert call(server, "POST", "/v1/adapters", {"path": path})[0] == 201
    ids = [m["id"] for m in call(server, "GET", "/v1/models")[1]["data"]]
    assert ids == ["base", SFT, "sftbest", STACK]  # never DPO+sftbest
    listed = {a["name"]: a for a in call(server, "GET", "/v1/adapters")[1]["data"]}
    assert listed[DPO]["stacked_on"] == SFT and listed["sftbest"]["stacked_on"] is None
    # a delta goes only with the parent it records; the copy has the same weights, so never both
    assert_error(call(server, "POST", "/v1/completions", {"prompt": "The quick", "adapter": f"sftbest+{DPO}",
                                                          "max_tokens": 2}), 400, "adapter_needs_parent", "adapter")
    err = assert_error(call(server, "POST", "/v1/completions", {"prompt": "The quick", "adapter": f"{SFT}+sftbest",
                                                                "max_tokens": 2}), 400, "adapter_repeated", "adapter")
    assert "same weights" in err["message"]
    assert_error(call(server, "POST", "/v1/completions", {"prompt": "The quick", "adapter": f"{STACK}+sftbest",
                                                          "max_tokens": 2}), 400, "adapter_repeated", "adapter")
    # nothing stacks on the copy: it unmounts; the real parent still refuses
    status, body = call(server, "DELETE", "/v1/adapters/sftbest")
    assert status == 200 and body["models"] == ["base", SFT, STACK]
    assert_error(call(server, "DELETE", f"/v1/adapters/{SFT}"), 409, "adapter_has_dependents")
    # with only the copy mounted the delta is refused, naming the parent it records
    assert call(server, "DELETE", f"/v1/adapters/{DPO}")[0] == 200
    assert call(server, "DELETE", f"/v1/adapters/{SFT}")[0] == 200
    assert call(server, "POST", "/v1/adapters", {"path": "sftbest"})[0] == 201
    err = assert_error(call(server, "POST", "/v1/adapters", {"path": DPO}), 409, "adapter_needs_parent")
    assert "'sftbest' has the same weights" in err["message"] and f"under the name '{SFT}'" in err["message"]
    # ...and the copy mounted under the parent's recorded name is the parent
    assert call(server, "DELETE", "/v1/adapters/sftbest")[0] == 200
    assert call(server, "POST", "/v1/adapters", {"path": "sftbest", "name": SFT})[0] == 201
    assert call(server, "POST", "/v1/adapters", {"path": DPO})[0] == 201
    assert [m["id"] for m in call(server, "GET", "/v1/models")[1]["data"]] == ["base", SFT, STACK]


def test_stack_order_uses_the_recorded_parent(setup, tmp_path):
    ws, _, sft, dpo = setup
    copy = copy_adapter(sft, tmp_path / "sftbest")
    assert [i.name for i in A.stack_order([dpo, sft])] == [SFT, DPO]
    with pytest.raises(HumanizerError, match="'sftbest' has the same weights") as e:
        A.stack_order([copy, dpo])
    assert SFT in e.value.hint


# --- 15: no stack applies the same weights twice; the deepest real stack ----------------------------


def test_no_stack_repeats_weights_and_the_deepest_is_offered(setup, server):
    from engine.adapters.combine import combine

    ws, _, sft, dpo = setup
    combined = ws.adapters_dir / "sft-dpo"
    if not combined.exists():
        combine(sft, dpo, combined)
    for path in (SFT, "sft-dpo", DPO):
        assert call(server, "POST", "/v1/adapters", {"path": path})[0] == 201
    ids = [m["id"] for m in call(server, "GET", "/v1/models")[1]["data"]]
    assert ids == ["base", SFT, "sft-dpo", STACK]  # not sft+sft-dpo, not sft+sft-dpo+dpo
    for bad in (f"{SFT}+sft-dpo", f"{SFT}+sft-dpo+{DPO}"):
        err = assert_error(call(server, "POST", "/v1/completions", {"prompt": "Hi", "adapter": bad, "max_tokens": 2}),
                           400, "adapter_repeated", "adapter")
        assert "sft-dpo" in err["message"] and "twice" in err["message"]
        assert_error(call(server, "POST", "/v1/completions", {"prompt": "Hi", "model": bad, "max_tokens": 2}), 404,
                     "model_not_found", "model")
    status, listed = call(server, "GET", "/v1/adapters")
    assert listed["default"] == STACK
    holds = {a["name"]: set(a["holds"]) for a in listed["data"]}  # what a client must not mount twice
    assert holds[SFT] | holds[DPO] < holds["sft-dpo"] and not holds[SFT] & holds[DPO]  # its own and its sources
    assert server.engine.deepest_stack() == STACK
    assert A.deepest_stack(ids) == STACK and A.deepest_stack(["base"]) == "base" and A.deepest_stack([]) == "base"
    assert A.deepest_stack(["base", "a", "a+b", "c", "c+d"]) == "a+b"  # ties: the first listed
    ok = call(server, "POST", "/v1/completions", {"prompt": "Hi", "adapter": STACK, "max_tokens": 2})
    assert ok[0] == 200, ok


def scaled_copy(src: Path, dst: Path, factor: float) -> Path:
    """An independent adapter: `src`'s config and its weights times `factor` (other weights)."""
    import mlx.core as mx

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / A.CONFIG_FILE, dst / A.CONFIG_FILE)
    w = mx.load(str(src / A.ADAPTER_FILE))
    mx.save_safetensors(str(dst / A.ADAPTER_FILE), {k: v * factor for k, v in w.items()}, metadata={"format": "mlx"})
    return dst


def test_independent_adapters_may_be_summed_but_are_not_offered(setup, tmp_path):
    ws, base, sft, _ = setup
    a, b = scaled_copy(sft, tmp_path / "one", 0.5), scaled_copy(sft, tmp_path / "two", 2.0)
    with Engine.load(base, adapters=[a, b]) as eng:
        assert eng.model_ids() == ["base", "one", "two"]
        assert eng.resolve("two+one") == ("one", "two")  # a sum of different weights: allowed on request
        assert eng.deepest_stack() == "one"
        with pytest.raises(EngineError, match="twice") as e:
            eng.resolve("one+one")
        assert e.value.code == "adapter_repeated"


def test_mountable_together_keeps_one_copy_and_the_recorded_parents(setup, tmp_path):
    ws, _, sft, dpo = setup
    early = copy_adapter(sft, tmp_path / "a-copy")  # listed before the parent, same weights
    infos = [A.read_adapter(p) for p in (early, dpo, sft)]
    assert [i.name for i in A.mountable_together(infos)] == [SFT, DPO]
    # a delta whose recorded parent is absent (only a copy is there) is left out
    assert [i.name for i in A.mountable_together([A.read_adapter(early), A.read_adapter(dpo)])] == ["a-copy"]
