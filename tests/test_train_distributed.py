"""Data-parallel SFT and DPO: engine.train.train over two real ranks of mlx.launch's ring backend
(loopback) against the same call in one plain process with the same global batch. Dropout is 0:
with dropout the draws differ by batch shape, so only a run without it can be compared exactly.

Tolerance: the ranks sum their shares of the loss and of the gradients, so the sums are taken
in another order, and each shard's padded width differs from the whole batch's; weights and
loss curves agree to float32 rounding, checked with rtol=1e-4, atol=1e-6."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine import adapters as A
from engine.distributed.world import World
from engine.errors import HumanizerError
from engine.train.parallel import check_batch
from tests.distributed_train_probe import probe_train
from tests.test_distributed import launch, results
from tests.tiny import make_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "distributed_train_probe.py"
RTOL, ATOL = 1e-3, 5e-5
# batch 3 over 2 ranks: shards of 2 and 1 rows (the global mean must weight them right); 4 SFT
# rows and 2 DPO pairs, so batches cross epochs
KW = dict(rank=4, num_layers=2, keys="q_proj,v_proj,down_proj", batch_size=3, iters=8, learning_rate=5e-3,
          dropout=0.0, steps_per_report=1, steps_per_eval=4, steps_per_save=4, seed=7)
CURVES = ("loss", "learning_rate", "trained_tokens", "val_loss", "val_kl", "chosen_reward", "rejected_reward",
          "margin", "accuracy", "chosen_logp", "rejected_logp", "val_accuracy", "val_margin", "val_ties")


def probe(nproc: int, method: str, out: Path, model: Path, **kw) -> dict[int, dict]:
    """Every rank's RESULT from one train() call on nproc ranks of mlx.launch; nproc=1: the same
    call in this process, a world of one (it imports no second MLX: faster than a new process)."""
    args = {"method": method, "out": str(out), "model": str(model), "stop_at": kw.pop("stop_at", None),
            "other_data_on": kw.pop("other_data_on", None), "kw": {**KW, **kw}}
    if nproc == 1:
        return {0: json.loads(json.dumps(probe_train(args)))}
    done = launch(nproc, str(PROBE), json.dumps(args))
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = results(done.stdout)
    assert sorted(ranks) == list(range(nproc)), done.stdout + done.stderr
    return ranks


def curves(result: dict) -> dict[str, list]:
    got: dict[str, list] = {}
    for step, values in result["metrics"]:
        for k in CURVES:
            # at step 1 the policy is the reference: every margin is 0 but for float rounding, which
            # differs with the batch's shape, and the accuracy counts a tie as 0.5, a win as 1
            if k in values and not (k == "accuracy" and step == 1):
                got.setdefault(k, []).append((step, values[k]))
    return got


def assert_same_curves(a: dict, b: dict, from_step: int = 0):
    ca, cb = curves(a), curves(b)
    assert ca.keys() == cb.keys()
    for k in ca:
        sa = [(s, v) for s, v in ca[k] if s > from_step]
        sb = [(s, v) for s, v in cb[k] if s > from_step]
        assert [s for s, _ in sa] == [s for s, _ in sb], k
        np.testing.assert_allclose([v for _, v in sa], [v for _, v in sb], rtol=RTOL, atol=ATOL, err_msg=k)


def assert_same_adapter(a: Path, b: Path):
    wa, wb = (mx.load(str(p / A.ADAPTER_FILE)) for p in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(np.array(wa[k]), np.array(wb[k]), rtol=RTOL, atol=ATOL, err_msg=k)


def assert_ranks_agree(ranks: dict[int, dict]):
    """Every rank applied the same updates (equal weights) and reported the same global values."""
    assert len({r["weights_sha"] for r in ranks.values()}) == 1
    assert all(curves(r) == curves(ranks[0]) for r in ranks.values())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return {"root": root, "model": make_tiny_llama(root / "tiny")}


@pytest.fixture(scope="module")
def sft_one(env):
    """The reference: SFT in one plain process, never interrupted."""
    out = env["root"] / "sft-one"
    return out, probe(1, "sft", out, env["model"])[0]


def test_sft_on_two_ranks_gives_the_one_process_adapter_and_curve(env, sft_one):
    one_out, one = sft_one
    out = env["root"] / "sft-two"
    two = probe(2, "sft", out, env["model"])
    assert two[0]["status"] == two[1]["status"] == "done" and one["size"] == 1 and two[0]["size"] == 2
    assert_ranks_agree(two)
    assert_same_adapter(one_out, out)
    assert_same_curves(one, two[0])
    assert [d.name for d in (out / "checkpoints").iterdir() if d.name.startswith("step-")] == ["step-000004"]
    assert A.read_adapter(out).metrics["steps"] == 8
    assert [p.name for p in out.rglob(".*")] == [".train.lock"]  # no temp leftovers from either rank


def test_dpo_on_two_ranks_gives_the_one_process_adapter_and_curve(env, sft_one):
    parent = str(sft_one[0])
    one_out, two_out = env["root"] / "dpo-one", env["root"] / "dpo-two"
    one = probe(1, "dpo", one_out, env["model"], mount_adapter=parent, beta=0.5)[0]
    two = probe(2, "dpo", two_out, env["model"], mount_adapter=parent, beta=0.5)
    assert_ranks_agree(two)
    assert_same_adapter(one_out, two_out)
    assert_same_curves(one, two[0])
    # the reference log-probs: computed by shards, gathered, cached by the writer as one process does
    ref = [mx.load(str(d / "checkpoints" / "reference_logps.safetensors")) for d in (one_out, two_out)]
    for k in ("sum", "count"):
        np.testing.assert_allclose(np.array(ref[0][k]), np.array(ref[1][k]), rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_ranks_ends_as_an_uninterrupted_run(env, sft_one, first, then):
    one_out, one = sft_one
    out = env["root"] / f"sft-{first}-then-{then}"
    cut = probe(first, "sft", out, env["model"], stop_at=4)
    assert {r["status"] for r in cut.values()} == {"cancelled"}
    assert [d.name for d in (out / "checkpoints").iterdir() if d.name.startswith("step-")] == ["step-000004"]
    assert not (out / A.ADAPTER_FILE).exists()
    rest = probe(then, "sft", out, env["model"], resume=True)
    assert {r["status"] for r in rest.values()} == {"done"}
    assert_ranks_agree(rest)
    assert_same_adapter(one_out, out)
    assert_same_curves(one, rest[0], from_step=4)
    assert min(s for s, _ in rest[0]["metrics"]) >= 4


def test_ranks_with_other_data_fail_on_every_rank_and_leave_nothing(env):
    out = env["root"] / "refused"
    ranks = probe(2, "sft", out, env["model"], other_data_on=1)
    for r in ranks.values():
        assert r["status"] == "error" and re.search("rank 1 on .* has another data than rank 0", r["error"]), r
    assert not out.exists()


def test_a_global_batch_smaller_than_the_ranks_is_refused():
    check_batch(2, World(1, 2))
    with pytest.raises(HumanizerError, match="--batch-size 1 is smaller than the 2 ranks"):
        check_batch(1, World(0, 2))
