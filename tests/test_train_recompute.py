"""--grad-checkpoint (engine/train/recompute.py): the same training, less activation memory."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load

from engine import adapters as A
from engine.adapters import layers as lora
from engine import train as T
from engine.errors import HumanizerError
from engine.events import NullRun
from engine.train.recompute import recompute_blocks
from tests.test_train import FAST, Events, make_dpo, make_sft
from tests.tiny import make_tiny_llama

SHAPE = {**FAST, "num_layers": -1, "keys": "q_proj,v_proj,down_proj,up_proj"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("recompute")
    model_dir = make_tiny_llama(root / "tiny")
    _, tok = load(str(model_dir))
    return {"root": root, "model": model_dir, "sft": make_sft(tok), "dpo": make_dpo(tok)}


def _weights(path):
    return {k: np.array(v) for k, v in mx.load(str(path / "adapters.safetensors")).items()}


def _losses(ev):
    return [v for _, v in ev.metrics("loss")]


def test_sft_then_dpo_train_the_same_with_and_without_recompute(env):
    runs = {}
    for on in (False, True):
        ev_sft, ev_dpo = Events(), Events()
        sft = T.train(env["model"], env["sft"], "sft", env["root"] / f"sft-{on}", iters=4, learning_rate=1e-2,
                      grad_checkpoint=on, run=NullRun([ev_sft]), **SHAPE)
        dpo = T.train(env["model"], env["dpo"], "dpo", env["root"] / f"dpo-{on}", iters=3, learning_rate=1e-3,
                      mount_adapter=sft, grad_checkpoint=on, run=NullRun([ev_dpo]), **SHAPE)
        runs[on] = (sft, dpo, _losses(ev_sft), _losses(ev_dpo), ev_sft)
    for i in (0, 1):
        a, b = _weights(runs[False][i]), _weights(runs[True][i])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(runs[True][2], runs[False][2], rtol=1e-5)
    np.testing.assert_allclose(runs[True][3], runs[False][3], rtol=1e-5)
    assert runs[True][2][-1] < runs[True][2][0]  # it trained
    logs = [e["message"] for e in runs[True][4] if e["type"] == "log"]
    assert any("gradient checkpointing: 2 blocks" in m for m in logs)
    assert A.read_adapter(runs[True][0]).training["grad_checkpoint"] is True


def test_only_this_models_blocks_change(env):
    model, _ = lora.load_model(env["model"])
    other, _ = lora.load_model(env["model"])
    cls = type(other.layers[0])
    assert recompute_blocks(model) == len(model.layers) and recompute_blocks(model) == 0
    assert type(other.layers[0]) is cls and type(model.layers[0]) is not cls
    assert isinstance(model.layers[0], cls)
    assert [k for k, _ in tree_flatten(model.parameters())] == [k for k, _ in tree_flatten(other.parameters())]
    x = mx.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(np.array(model(x)), np.array(other(x)), rtol=1e-5, atol=1e-6)


def test_dropout_is_refused_with_recompute():
    with pytest.raises(HumanizerError, match="--grad-checkpoint needs dropout 0") as e:
        T.resolve_config("dpo", "large", grad_checkpoint=True)
    assert "--dropout 0" in e.value.hint
    assert T.resolve_config("dpo", "large", grad_checkpoint=True, dropout=0.0)["grad_checkpoint"] is True
