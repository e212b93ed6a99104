"""engine.train on the tiny llama: SFT, DPO stacked on SFT, checkpoints, resume, cancel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import adapters as A
from engine.adapters import layers as lora
from engine import train as T
from engine.data import Dataset, Example, Pair
from engine.errors import HumanizerError
from engine.events import Cancelled, NullRun
from engine.train import reference
from tests.tiny import make_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
FACTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris.",
    "Low-rank adapters are trained, stacked, fused and served on one machine.",
    "Numbers 0123456789 and punctuation: commas, dots; colons!",
]
GOOD = ["The capital of France is Paris.", "The quick brown fox jumps over the lazy dog."]
BAD = ["It is a truth universally acknowledged.", "café naïve résumé — unicode text"]
FAST = dict(rank=4, num_layers=2, keys="q_proj,v_proj,down_proj", batch_size=2, steps_per_report=2)


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def make_sft(tok) -> Dataset:
    prompt = _enc(tok, "<|im_start|>user\nTell me<|im_end|>\n<|im_start|>assistant\n")
    ex = [Example(prompt + _enc(tok, t + "<|im_end|>"), len(prompt), "mem", i + 1) for i, t in enumerate(FACTS)]
    return Dataset("sft", ex, ex[:2], [], 0, "memory")


def make_dpo(tok) -> Dataset:
    pairs = []
    for i, (q, good, bad) in enumerate(zip(["Say a fact", "Say another"], GOOD, BAD)):
        p = _enc(tok, f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
        pairs.append(Pair(p, _enc(tok, good + "<|im_end|>"), _enc(tok, bad + "<|im_end|>"), "mem", i + 1))
    return Dataset("dpo", pairs, pairs, [], 0, "memory")


class Events(list):
    def __call__(self, ev):
        self.append(ev)

    def metrics(self, key):
        return [(e["step"], e["values"][key]) for e in self if e["type"] == "metric" and key in e["values"]]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from mlx_lm.utils import load

    root = tmp_path_factory.mktemp("train")
    model_dir = make_tiny_llama(root / "tiny")
    _, tok = load(str(model_dir))
    return {"root": root, "model": model_dir, "sft": make_sft(tok), "dpo": make_dpo(tok)}


@pytest.fixture(scope="module")
def sft_run(env):
    ev = Events()
    out = T.train(env["model"], env["sft"], "sft", env["root"] / "sft", iters=40, learning_rate=1e-2,
                  steps_per_eval=20, steps_per_save=20, run=NullRun([ev]), **FAST)
    return out, ev


def test_presets_and_config():
    assert set(T.PRESETS) == {"small", "medium", "large"}
    for p in T.PRESETS.values():
        assert {"rank", "scale", "num_layers", "keys", "learning_rate", "dropout"} <= set(p)
        assert p["learning_rate"]["dpo"] < p["learning_rate"]["sft"]
    c = T.resolve_config("dpo", "large", rank=4, keys="q_proj, v_proj", iters=10)
    assert (c["rank"], c["keys"], c["learning_rate"], c["scale"]) == (4, ["q_proj", "v_proj"], 5e-6, 5.0)
    assert c["beta"] == 0.1 and c["dpo_loss"] == "sigmoid" and c["warmup_steps"] == 1
    assert T.resolve_config("sft", "small")["learning_rate"] == 1e-4
    with pytest.raises(HumanizerError, match="unknown preset"):
        T.resolve_config("sft", "huge")
    with pytest.raises(HumanizerError, match="unknown DPO loss"):
        T.resolve_config("dpo", "small", dpo_loss="hinge")
    sched = T.lr_schedule(1.0, 100, 10, 0.1)
    lrs = [sched(mx.array(s)).item() for s in (0, 9, 10, 55, 99, 200)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[3] == pytest.approx(0.55, abs=1e-3) and lrs[-1] == pytest.approx(0.1)


def test_sft_loss_falls_and_everything_is_saved(env, sft_run):
    out, ev = sft_run
    loss = [v for _, v in ev.metrics("loss")]
    val = ev.metrics("val_loss")
    assert loss[-1] < 0.5 * loss[0], loss
    assert [s for s, _ in val] == [0, 20, 40] and val[-1][1] < 0.5 * val[0][1]
    kl = dict(ev.metrics("val_kl"))
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[40] > 0
    for key in ("tokens_per_second", "learning_rate", "peak_memory_gb"):
        assert ev.metrics(key)
    progress = [e for e in ev if e["type"] == "progress"]
    assert progress[-1]["step"] == 40 and progress[-1]["total"] == 40 and progress[-1]["eta"] == 0
    assert len(progress) == 41
    info = A.read_adapter(out)
    assert info.method == "sft" and info.parent is None and info.rank == 4
    assert info.base["fingerprint"] == A.model_fingerprint(env["model"])
    assert info.metrics["steps"] == 40 and "val_loss" in info.metrics and info.training["learning_rate"] == 1e-2
    assert info.keys == ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
    assert [d.name for d in T.list_checkpoints(out / "checkpoints")] == ["step-000020"]
    best = A.read_adapter(out / "checkpoints" / "best")
    assert best.metrics["val_loss"] == pytest.approx(val[-1][1])
    assert [p.name for p in out.rglob(".*")] == [".train.lock"]  # no temp leftovers


def test_output_with_a_run_needs_resume(env, sft_run):
    out, _ = sft_run
    with pytest.raises(HumanizerError, match="already holds a training run"):
        T.train(env["model"], env["sft"], "sft", out, iters=40, **FAST)


@pytest.mark.parametrize("loss_kind", ["sigmoid", "ipo"])
def test_dpo_on_top_of_sft(env, sft_run, loss_kind, monkeypatch):
    sft_dir, _ = sft_run
    calls = []
    real = reference.reference_logps
    monkeypatch.setattr(reference, "reference_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    ev = Events()
    out = T.train(env["model"], env["dpo"], "dpo", env["root"] / f"dpo-{loss_kind}", iters=30, learning_rate=1e-2,
                  mount_adapter=sft_dir, beta=0.5, dpo_loss=loss_kind, steps_per_eval=10, steps_per_save=100,
                  run=NullRun([ev]), rank=2, batch_size=2, steps_per_report=2)
    assert len(calls) == 1  # reference log-probs: once, before training
    acc, margin = ev.metrics("accuracy"), ev.metrics("margin")
    # IPO pulls the (per-token) margin towards 1/(2 beta), a reward margin of 0.5 here
    assert margin[-1][1] > margin[0][1] + (1.0 if loss_kind == "sigmoid" else 0.3) and acc[-1][1] == 1.0
    for key in ("chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp", "val_loss", "val_kl",
                "val_accuracy", "val_margin"):
        assert ev.metrics(key), key
    val = dict(ev.metrics("val_loss"))
    assert val[0] == pytest.approx(np.log(2) if loss_kind == "sigmoid" else 1.0, rel=1e-4) and val[30] < val[0]
    kl = dict(ev.metrics("val_kl"))
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[30] > 0
    info = A.read_adapter(out)
    sft = A.read_adapter(sft_dir)
    assert info.method == "dpo" and info.parent["fingerprint"] == sft.fingerprint
    assert info.parent["name"] == "sft" and info.keys == sft.keys and info.num_layers == sft.num_layers
    assert (out / "checkpoints" / "reference_logps.safetensors").is_file()
    # the served stack (base + sft + dpo) prefers the chosen answers
    m, _ = lora.load_model(env["model"])
    lora.mount_adapter(m, sft_dir, "sft")
    lora.mount_adapter(m, out, "dpo")
    toks = T.dpo_batch(env["dpo"].train, 64)
    head = T.logits_head(m)
    assert head is not None  # llama: body then tied head
    logp, rows = T.response_logps(m, head, *toks)
    s, _ = T.row_sums(logp, rows, toks[0].shape[0])
    lora.set_active(m, ["sft"])
    logp0, rows0 = T.response_logps(m, None, *toks)  # the whole forward: the same positions
    s0, _ = T.row_sums(logp0, rows0, toks[0].shape[0])
    n = len(env["dpo"].train)
    assert ((s[:n] - s0[:n]) - (s[n:] - s0[n:]) > 0).all().item()


def _adapter(path):
    return {k: np.array(v) for k, v in mx.load(str(Path(path) / A.ADAPTER_FILE)).items()}


def _assert_same_adapter(a, b):
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-6, atol=1e-7, err_msg=k)


RESUME = dict(iters=12, learning_rate=5e-3, dropout=0.2, steps_per_eval=3, steps_per_save=4, **FAST)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_resume_after_cancel_gives_the_same_adapter(env, sft_run, method):
    extra = {"mount_adapter": sft_run[0]} if method == "dpo" else {}
    full = T.train(env["model"], env[method], method, env["root"] / f"full-{method}", **RESUME, **extra)

    def cancel_at_6(ev):
        if ev["type"] == "progress" and ev.get("step") == 6 and not ev.get("phase"):
            raise Cancelled()

    out = env["root"] / f"cut-{method}"
    with pytest.raises(Cancelled):
        T.train(env["model"], env[method], method, out, run=NullRun([cancel_at_6]), **RESUME, **extra)
    assert [d.name for d in T.list_checkpoints(out / "checkpoints")] == ["step-000006", "step-000004"]
    assert not (out / A.CONFIG_FILE).exists()
    state = json.loads((out / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and state["data_order"]["epoch"] == (6 * 2) // len(env[method].train)
    with pytest.raises(HumanizerError, match="cannot resume.*rank: 4 then, 8 now"):
        T.train(env["model"], env[method], method, out, resume=True, **{**RESUME, "rank": 8}, **extra)
    ev = Events()
    T.train(env["model"], env[method], method, out, resume=True, run=NullRun([ev]), **RESUME, **extra)
    assert [e["step"] for e in ev if e["type"] == "progress"][0] == 6
    if method == "dpo":
        assert any(e.get("message") == "reusing cached reference log-probs" for e in ev)
    _assert_same_adapter(full, out)
    with pytest.raises(HumanizerError, match="cannot resume.*rank"):
        T.train(env["model"], env[method], method, out, resume=True, **{**RESUME, "rank": 8}, **extra)


CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from mlx_lm.utils import load
from engine import train as T
from engine.events import NullRun
from tests.test_train import make_sft, FAST
_, tok = load({model!r})
def slow(ev):
    if ev["type"] == "progress":
        time.sleep(0.15)
T.train({model!r}, make_sft(tok), "sft", {out!r}, run=NullRun([slow]), **{kw!r})
"""


def test_kill_9_mid_run_then_resume_finishes(env, tmp_path):
    kw = dict(iters=16, learning_rate=5e-3, dropout=0.2, steps_per_eval=3, steps_per_save=2, **FAST)
    full = T.train(env["model"], env["sft"], "sft", tmp_path / "full", **kw)
    out = tmp_path / "killed"
    code = CHILD.format(root=str(ROOT), model=str(env["model"]), out=str(out), kw=kw)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and len(T.list_checkpoints(out / "checkpoints")) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        time.sleep(0.1)  # somewhere in the middle of a step or a write
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    saved = T.list_checkpoints(out / "checkpoints")
    assert saved and not (out / A.CONFIG_FILE).exists()
    for d in saved:  # every visible checkpoint is whole and readable
        state, weights, opt = T.load_checkpoint(d)
        assert weights and "step" in opt and state["step"] == int(d.name.split("-")[1])
        A.read_adapter(d)
    T.train(env["model"], env["sft"], "sft", out, resume=True, **kw)
    _assert_same_adapter(full, out)
    assert [p.name for p in out.rglob(".*")] == [".train.lock"]  # the killed run's temp folders are gone
    ev = Events()  # finished: a second resume has nothing to do
    T.train(env["model"], env["sft"], "sft", out, resume=True, run=NullRun([ev]), **kw)
    assert "nothing to resume" in ev[0]["message"]


def test_sigterm_saves_a_checkpoint_and_reraises(env, tmp_path):
    def term_at_3(ev):
        if ev["type"] == "progress" and ev.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Cancelled):
        T.train(env["model"], env["sft"], "sft", tmp_path / "t", iters=20, steps_per_save=10,
                run=NullRun([term_at_3]), **FAST)
    assert signal.getsignal(signal.SIGTERM) is old
    assert [d.name for d in T.list_checkpoints(tmp_path / "t" / "checkpoints")] == ["step-000003"]


def test_response_logps_match_the_whole_forward(env):
    """Head at the response positions only == log-softmax of the full logits there; a model whose
    forward does more than body + head (here: scaled logits) falls back to the whole forward."""
    m, _ = lora.load_model(env["model"])
    toks = T.dpo_batch(env["dpo"].train, 64)
    full = np.array(nn.log_softmax(m(toks[0][:, :-1]).astype(mx.float32), axis=-1))
    mask = np.array(T.response_mask(*toks))
    targets = np.array(toks[0][:, 1:])
    want = full[mask, targets[mask]]
    head = T.logits_head(m)
    logp, rows = T.response_logps(m, head, *toks)
    np.testing.assert_allclose(np.array(logp), want, rtol=1e-4, atol=1e-4)
    assert np.array_equal(rows, np.nonzero(mask)[0])
    sums, counts = T.row_sums(logp, rows, toks[0].shape[0])
    np.testing.assert_allclose(np.array(sums), [want[rows == i].sum() for i in range(toks[0].shape[0])],
                               rtol=1e-4, atol=1e-3)
    assert np.array_equal(np.array(counts), mask.sum(1))

    class Scaled(type(m)):
        def __call__(self, inputs, cache=None):
            return super().__call__(inputs, cache) * 0.5

    m.__class__ = Scaled
    assert T.logits_head(m) is None
    logp, _ = T.response_logps(m, None, *toks)
    half = np.array(nn.log_softmax(m(toks[0][:, :-1]).astype(mx.float32), axis=-1))
    np.testing.assert_allclose(np.array(logp), half[mask, targets[mask]], rtol=1e-4, atol=1e-4)
