"""engine/convert.py and `humanizer convert` on tiny random llama models."""

import argparse
import io
import itertools
import json
import random
from contextlib import redirect_stdout
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

import tests.tiny as tiny
from engine import convert as C
from engine.errors import HumanizerError
from engine.events import Cancelled, NullRun
from tests.tiny import make_tiny_llama

FAST = dict(samples=4, seq_len=32, heldout_tokens=256)
BITS = "2,3,4,6,8"


def _events_run(events, stop=None):
    def listen(ev):
        events.append(ev)
        if stop is not None and stop(ev):
            raise Cancelled()

    return NullRun(listeners=[listen])


def _convert(model, out, events=None, stop=None, **kw):
    events = [] if events is None else events
    opts = dict(target_bpw=4.5, candidate_bits=BITS, group_size=64, **FAST)
    opts.update(kw)
    return C.convert(model, out, run=_events_run(events, stop), **opts)


def _layers(events, phase):
    return [e for e in events if e["type"] == "layer" and e["phase"] == phase]


def _safetensors(folder):
    return mx.load(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def converted(tiny_model, tmp_path_factory):
    """One uninterrupted convert of the tiny model at 4.5 bpw (candidates 2,3,4,6,8, group size 64)."""
    events = []
    out = tmp_path_factory.mktemp("conv") / "out"
    result = _convert(tiny_model, out, events)
    return result, events, json.loads((out / C.META_FILE).read_text())


# --- the budget ---------------------------------------------------------------------------


def test_budget_holds_for_several_targets(converted, tiny_model):
    from engine.adapters.layers import load_model

    _, _, meta = converted

    model, _ = load_model(tiny_model, dequantize=True)
    layers = C.quantizable_layers(model, 64)
    budget = C.budget_of(layers, meta["bpw"]["total_params"])
    sens = {m["path"]: {int(k): v for k, v in m["sensitivity"].items()} for m in meta["layers"]}
    bits = [2, 3, 4, 6, 8]
    lo, hi = C.bpw_range(layers, budget, bits)
    last_kl = float("inf")
    for target in (lo, 2.8, 3.3, 4.0, 4.5, 5.2, 6.0, 7.3, hi):
        chosen = C.plan_allocation(layers, sens, bits, budget, target)
        assert set(chosen.values()) <= set(bits)
        used = sum(layer.cost_bits(chosen[layer.path]) for layer in layers)
        bpw = budget.bpw(used)
        assert bpw <= target + 1e-9 <= target + C.BUDGET_TOLERANCE
        # the budget is used: no single layer could take a larger width and still fit
        for layer in layers:
            for b in bits:
                if b > chosen[layer.path]:
                    extra = layer.cost_bits(b) - layer.cost_bits(chosen[layer.path])
                    assert budget.bpw(used + extra) > target
        kl = sum(sens[p][b] for p, b in chosen.items())
        assert kl <= last_kl + 1e-15  # more bits never predicts more damage
        last_kl = kl


@pytest.mark.parametrize("target,bits", [(3.0, "2,3,4,6,8"), (6.0, "4,8")])
def test_written_model_meets_the_budget(tiny_model, tmp_path, target, bits):
    result = _convert(tiny_model, tmp_path / "out", target_bpw=target, candidate_bits=bits)
    meta = json.loads((tmp_path / "out" / C.META_FILE).read_text())
    weights = _safetensors(tmp_path / "out")
    float_params = sum(v.size for v in mx.load(str(tiny_model / "model.safetensors")).values())
    counted = sum(v.nbytes * 8 for v in weights.values()) / float_params  # counted here, independently
    assert counted == pytest.approx(meta["bpw"]["achieved"]) == pytest.approx(result.summary["achieved_bpw"])
    assert counted <= target + C.BUDGET_TOLERANCE
    assert counted > target - 1.0  # and it is not wasted
    allowed = {int(b) for b in bits.split(",")}
    assert {m["chosen_bits"] for m in meta["layers"]} <= allowed
    assert "16-bit scale" in meta["bpw"]["counted"]


def test_allocate_matches_brute_force():
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(2, 6)
        options = []
        for _ in range(n):
            size = rng.choice([100, 250, 1000, 3000])
            sens = sorted((rng.random() for _ in range(3)), reverse=True)
            options.append([(b, size * (b + 0.5), s) for b, s in zip((2, 4, 8), sens)])
        lo = sum(o[0][1] for o in options)
        hi = sum(o[-1][1] for o in options)
        budget = lo + rng.random() * (hi - lo)
        picks = C.allocate(options, budget)
        cost = sum(options[j][i][1] for j, i in enumerate(picks))
        got = sum(options[j][i][2] for j, i in enumerate(picks))
        best = min(sum(options[j][i][2] for j, i in enumerate(c))
                   for c in itertools.product(range(3), repeat=n)
                   if sum(options[j][i][1] for j, i in enumerate(c)) <= budget)
        assert cost <= budget
        assert got == pytest.approx(best, rel=1e-9)


# --- the output ----------------------------------------------------------------------------


def test_output_loads_in_stock_mlx_lm_with_the_metadata_bits(converted):
    from mlx_lm.utils import dequantize_model, load

    result, _, meta = converted
    model, tokenizer = load(str(result.path))
    modules = dict(model.named_modules())
    config = json.loads((result.path / "config.json").read_text())
    for m in meta["layers"]:
        layer = modules[m["path"]]
        assert isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)), m["path"]
        assert (layer.bits, layer.group_size) == (m["chosen_bits"], m["group_size"])
        assert config["quantization"][m["path"]] == {"group_size": m["group_size"], "bits": m["chosen_bits"]}
    assert len({m["chosen_bits"] for m in meta["layers"]}) > 1  # mixed precision
    # the quantized kernels and the dequantized weights (what the CPU evaluation runs) agree
    x = mx.array([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    y_q = model(x)
    dequantize_model(model)
    model.set_dtype(mx.float32)
    assert mx.allclose(model(x), y_q.astype(mx.float32), atol=0.1, rtol=0.02)  # fp16 activations there
    s = result.summary
    assert s["ppl_source"] > 0 and s["ppl_result"] > 0 and s["kl_source_result"] >= 0
    assert s["heldout_tokens"] > 100 and s["size_bytes"] > 0
    assert meta["eval"]["text"].startswith("the default held-out text")
    assert meta["calibration"]["source"].startswith("the default calibration set")


def test_embedding_and_head_are_measured_tied(converted):
    _, events, meta = converted
    measured = _layers(events, "measured")
    emb = next(e for e in measured if e["path"] == "model.embed_tokens")
    assert emb["module"] == "embedding" and emb["modules"] == ["embedding", "head"]
    assert emb["roles"] == ["embedding", "head"]
    assert set(emb["role_sensitivity"]) == {"embedding", "head"}
    for role in ("embedding", "head"):
        assert all(v > 0 for v in emb["role_sensitivity"][role].values())
    assert {e["module"] for e in measured} == {"embedding", "q", "k", "v", "o", "gate", "up", "down"}
    assert len(measured) == len(meta["layers"]) == 1 + 2 * 7  # every quantizable layer, the shared one once
    for e in measured:  # sensitivity falls as bits rise
        vals = [e["sensitivity"][str(b)] for b in e["bits_measured"]]
        assert vals == sorted(vals, reverse=True) and vals[-1] > 0
    allocated = _layers(events, "allocated")
    assert [e["path"] for e in allocated] == [e["path"] for e in measured]
    assert all(e["chosen_bits"] in (2, 3, 4, 6, 8) for e in allocated)


def test_untied_embedding_and_head_are_separate_layers(tmp_path):
    model = make_tiny_llama(tmp_path / "untied", tie_word_embeddings=False)
    events = []
    _convert(model, tmp_path / "out", events, target_bpw=5.0)
    measured = {e["path"]: e for e in _layers(events, "measured")}
    assert measured["model.embed_tokens"]["module"] == "embedding"
    assert measured["lm_head"]["module"] == "head" and measured["lm_head"]["block"] is None
    assert measured["lm_head"]["sensitivity"]["2"] > 0 and measured["model.embed_tokens"]["sensitivity"]["2"] > 0
    q = json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]
    assert "lm_head" in q and "model.embed_tokens" in q


def test_sensitivity_tracks_the_kl_of_quantizing_one_layer(tmp_path):
    """The diagonal-Fisher estimate against the real KL increase of quantizing one layer alone."""
    from mlx.utils import tree_flatten

    from engine.adapters.layers import load_model

    folder = make_tiny_llama(tmp_path / "soft")
    w = mx.load(str(folder / "model.safetensors"))
    w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] * 0.2  # a calmer output distribution
    mx.save_safetensors(str(folder / "model.safetensors"), w)
    model, tok = load_model(folder, dequantize=True)
    layers = C.quantizable_layers(model, 32)
    samples = C.make_samples(C.tokenize_docs(C.default_calibration(), tok), 16, 64)
    fisher = {k: mx.zeros(next(layer.shape for layer in layers if k.split("#")[0] == layer.path))
              for k in C._fisher_keys(layers)}
    fisher = C._calibration_pass(model, layers, samples, 0, fisher, 0, NullRun(), lambda k, f: None, None, 0.0)
    tokens = sum(len(s) for s in samples)
    x = mx.array(samples)
    ref = nn.log_softmax(model(x), axis=-1)
    params = dict(tree_flatten(model.parameters()))
    modules = dict(model.named_modules())
    pred, real = [], []
    for layer in layers:
        weight = params[f"{layer.path}.weight"]
        est = C.measure_layer(layer, weight, fisher, [2, 3], tokens, mx.float16)["sensitivity"]
        for b in (2, 3):
            q, s, bi = mx.quantize(weight.astype(mx.float16), group_size=32, bits=b)
            modules[layer.path].weight = mx.dequantize(q, s, bi, group_size=32, bits=b).astype(mx.float32)
            lp = nn.log_softmax(model(x), axis=-1)
            real.append((mx.exp(ref) * (ref - lp)).sum(-1).mean().item())
            pred.append(est[b])
            modules[layer.path].weight = weight
    ratios = sorted(r / p for r, p in zip(real, pred))
    assert 0.5 < ratios[len(ratios) // 2] < 2.0  # the median estimate is the right size
    rank = lambda v: {i: r for r, i in enumerate(sorted(range(len(v)), key=v.__getitem__))}  # noqa: E731
    rp, rr = rank(pred), rank(real)
    n = len(pred)
    spearman = 1 - 6 * sum((rp[i] - rr[i]) ** 2 for i in range(n)) / (n * (n * n - 1))
    assert spearman > 0.8


# --- resume ----------------------------------------------------------------------------------


def _same_output(a: Path, b: Path):
    ma, mb = json.loads((a / C.META_FILE).read_text()), json.loads((b / C.META_FILE).read_text())
    assert [(m["path"], m["sensitivity"], m["chosen_bits"]) for m in ma["layers"]] == \
           [(m["path"], m["sensitivity"], m["chosen_bits"]) for m in mb["layers"]]
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    wa, wb = _safetensors(a), _safetensors(b)
    assert set(wa) == set(wb) and all(mx.array_equal(wa[k], wb[k]) for k in wa)


def test_resume_after_some_layers_measures_only_the_rest(converted, tiny_model, tmp_path):
    out = tmp_path / "out"
    first = []
    with pytest.raises(Cancelled):
        _convert(tiny_model, out, first, stop=lambda e: e.get("phase") == "measured" and e["index"] == 4)
    work = C.work_dir_for(out.resolve())
    state = json.loads((work / C.STATE_FILE).read_text())
    assert len(state["layers"]) == 5 and not out.exists()
    with pytest.raises(HumanizerError, match="--resume"):  # leftover measurements are never silently dropped
        _convert(tiny_model, out)
    second = []
    _convert(tiny_model, out, second, resume=True)
    fresh = [e["path"] for e in _layers(second, "measured") if not e["resumed"]]
    again = [e["path"] for e in _layers(second, "measured") if e["resumed"]]
    assert again == [e["path"] for e in _layers(first, "measured")]
    assert fresh == [e["path"] for e in _layers(converted[1], "measured")][5:]
    assert not [e for e in second if e.get("phase") == "statistics"]  # the calibration pass was not redone
    assert not work.exists()
    _same_output(out, converted[0].path)


def test_resume_inside_the_calibration_pass(converted, tiny_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        _convert(tiny_model, out, stop=lambda e: e.get("phase") == "statistics" and e["step"] == 2)
    second = []
    _convert(tiny_model, out, second, resume=True)
    steps = [e["step"] for e in second if e.get("phase") == "statistics"]
    assert steps == [3, 4]
    _same_output(out, converted[0].path)


def test_a_signal_inside_an_update_never_counts_a_sample_twice(converted, tiny_model, tmp_path, monkeypatch):
    """SIGTERM lands between statements: here right after a sample's sums are evaluated but
    before the pass has counted it. The checkpoint must pair sums and count correctly."""
    real_eval, calls = mx.eval, []

    def eval_then_cancel(*args):
        real_eval(*args)
        if args and isinstance(args[0], dict) and any("#head" in k for k in args[0]):
            calls.append(1)
            if len(calls) == 2:
                raise Cancelled()

    out = tmp_path / "out"
    monkeypatch.setattr(mx, "eval", eval_then_cancel)
    with pytest.raises(Cancelled):
        _convert(tiny_model, out)
    monkeypatch.setattr(mx, "eval", real_eval)
    events = []
    _convert(tiny_model, out, events, resume=True)
    assert [e["step"] for e in events if e.get("phase") == "statistics"] == [2, 3, 4]
    _same_output(out, converted[0].path)


def test_resume_with_other_settings_is_refused(tiny_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        _convert(tiny_model, out, stop=lambda e: e["type"] == "layer")
    with pytest.raises(HumanizerError, match="cannot resume.*candidate_bits"):
        _convert(tiny_model, out, resume=True, candidate_bits="4,8", target_bpw=5.0)


def test_finished_output_is_not_overwritten(converted, tiny_model):
    with pytest.raises(HumanizerError, match="already exists"):
        _convert(tiny_model, converted[0].path)
    events = []
    result = _convert(tiny_model, converted[0].path, events, resume=True)  # same settings: nothing to do
    assert result.summary["achieved_bpw"] == converted[0].summary["achieved_bpw"]
    assert not _layers(events, "measured")


# --- bad input -----------------------------------------------------------------------------


def _random_model(folder: Path, tokenizer_from: Path, cfg: dict) -> Path:
    """A random mlx-lm model of any architecture, with the tiny tokenizer."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    folder.mkdir(parents=True)
    cls, args = _get_classes(cfg)
    model = cls(args.from_dict(cfg))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((tokenizer_from / f).read_bytes())
    return folder


def _mixtral(folder: Path, tokenizer_from: Path) -> Path:
    return _random_model(folder, tokenizer_from, {
        "model_type": "mixtral", "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64,
        "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 2, "num_experts_per_tok": 1,
        "vocab_size": 384, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False})


def test_another_family_qwen2_with_attention_biases(tiny_model, tmp_path):
    model = _random_model(tmp_path / "qwen2", tiny_model, {
        "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 384, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "max_position_embeddings": 512})
    events = []
    result = _convert(model, tmp_path / "out", events, target_bpw=4.0)
    meta = json.loads((result.path / C.META_FILE).read_text())
    assert meta["bpw"]["achieved"] <= 4.0 + C.BUDGET_TOLERANCE
    assert meta["bpw"]["other_tensor_bits"] > 0  # norms and the q/k/v biases, at 16 bits
    from mlx_lm.utils import load

    loaded, _ = load(str(result.path))
    q = dict(loaded.named_modules())["model.layers.0.self_attn.q_proj"]
    assert isinstance(q, nn.QuantizedLinear) and "bias" in q


@pytest.mark.parametrize("kw,match", [
    (dict(target_bpw=4.0, candidate_bits="4,8"), "below the smallest candidate: 4-bit with group size 64 costs 4.5"),
    (dict(target_bpw=9.0, candidate_bits="4,8"), "above the largest candidate: 8-bit"),
    (dict(target_bpw=2.4, candidate_bits="2,4", group_size=32), "below the smallest candidate: 2-bit with group "
                                                                  "size 32 costs 3"),
    (dict(candidate_bits="4,7"), "unknown candidate bits 7"),
    (dict(candidate_bits="1,4"), "unknown candidate bits 1"),
    (dict(candidate_bits="four"), "unknown candidate bits 'four'"),
    (dict(candidate_bits=""), "no candidate bits"),
    (dict(group_size=48), "unknown group size 48"),
    (dict(group_size=256), "unknown group size 256"),
    (dict(calibration="missing.txt"), "calibration file not found"),
    (dict(calibration="EMPTY"), "is empty"),
    (dict(calibration="BLANK"), "is empty"),
    (dict(calibration="EMPTY.jsonl"), "empty"),
    (dict(model="FOO"), "unsupported architecture 'foo'"),
    (dict(model="MIXTRAL"), "unsupported architecture: its SwitchLinear layers"),
    (dict(samples=0), "--samples"),
])
def test_bad_input_is_refused_before_any_work(tiny_model, tmp_path, kw, match):
    kw = dict(kw)
    model = kw.pop("model", tiny_model)
    if model == "FOO":
        model = tmp_path / "foo"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "foo", "vocab_size": 10}))
        mx.save_safetensors(str(model / "model.safetensors"), {"w": mx.zeros((2, 2))})
    elif model == "MIXTRAL":
        model = _mixtral(tmp_path / "mixtral", tiny_model)
    if kw.get("calibration") in ("EMPTY", "BLANK", "EMPTY.jsonl"):
        f = tmp_path / ("calib.jsonl" if kw["calibration"].endswith("jsonl") else "calib.txt")
        f.write_text("  \n\n" if kw["calibration"] == "BLANK" else "")
        kw["calibration"] = str(f)
    elif kw.get("calibration"):
        kw["calibration"] = str(tmp_path / kw["calibration"])
    events = []
    out = tmp_path / "out"
    with pytest.raises(HumanizerError, match=match):
        _convert(model, out, events, **kw)
    assert not [e for e in events if e.get("phase") in ("statistics", "measure")]
    assert not out.exists() and not C.work_dir_for(out.resolve()).exists()


def test_target_below_what_the_model_can_reach(tmp_path, monkeypatch):
    """Norms and float16 fallback layers count too: 2.5 bpw is not reachable with them."""
    monkeypatch.setitem(tiny.TINY_CONFIG, "intermediate_size", 80)  # down_proj: kept in float16
    model = make_tiny_llama(tmp_path / "m")
    with pytest.raises(HumanizerError, match="below what this model can reach"):
        _convert(model, tmp_path / "out", target_bpw=2.5)


def test_offline_dataset_id_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(HumanizerError, match="can't load dataset 'someone/some-corpus'"):
        _convert(tiny_model, tmp_path / "out", calibration="someone/some-corpus")


# --- group sizes, calibration sources, quantized sources --------------------------------------------


def test_layers_not_divisible_by_the_group_size_are_handled_and_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(tiny.TINY_CONFIG, "intermediate_size", 80)  # 80: no group size divides it
    model = make_tiny_llama(tmp_path / "m80")
    events = []
    result = _convert(model, tmp_path / "out80", events, target_bpw=5.0, group_size=128)
    meta = json.loads((result.path / C.META_FILE).read_text())
    down = {m["path"]: m for m in meta["layers"]}["model.layers.0.mlp.down_proj"]
    q_proj = {m["path"]: m for m in meta["layers"]}["model.layers.0.self_attn.q_proj"]
    assert down["group_size"] is None and down["chosen_bits"] is None and "kept in float16" in down["note"]
    assert q_proj["group_size"] == 64 and "group size 64 instead" in q_proj["note"]  # 64 wide: 128 falls back
    assert {f["path"] for f in meta["fallbacks"]} >= {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    logs = " ".join(e["message"] for e in events if e["type"] == "log")
    assert "model.layers.0.mlp.down_proj: input width 80 is not divisible" in logs
    ev = next(e for e in _layers(events, "allocated") if e["path"] == "model.layers.0.mlp.down_proj")
    assert ev["chosen_bits"] == 16 and ev["note"]
    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.down_proj"] is False
    assert meta["bpw"]["float_layer_bits"] == 2 * 64 * 80 * 16  # counted, at 16 bits per weight
    assert meta["bpw"]["achieved"] <= 5.0 + C.BUDGET_TOLERANCE
    from mlx_lm.utils import load

    loaded, _ = load(str(result.path))
    assert type(dict(loaded.named_modules())["model.layers.0.mlp.down_proj"]) is nn.Linear


def test_calibration_from_text_and_jsonl_files(tiny_model, tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("Plain text for calibration. " * 200)
    docs, source = C.load_calibration(str(txt))
    assert docs and source == f"text file {txt}"
    rows = tmp_path / "c.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"text": "One row of text."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]},
        {"prompt": "Rewrite:", "completion": "Done."},
    ]))
    docs, _ = C.load_calibration(str(rows))
    assert docs == ["One row of text.", "Hi\n\nHello there.", "Rewrite:\n\nDone."]
    events = []
    result = _convert(tiny_model, tmp_path / "out", events, calibration=str(txt), samples=2)
    meta = json.loads((result.path / C.META_FILE).read_text())
    assert meta["calibration"]["source"] == f"text file {txt}" and meta["calibration"]["samples"] == 2


def test_default_calibration_and_heldout_are_separate_texts():
    calib, held = C.default_calibration(), C.default_heldout()
    assert len(calib) >= 20 and len(held) >= 5
    assert sum(len(d.split()) for d in calib) > 6000  # about 8,500 tokens: 32 samples of 256
    assert not set(calib) & set(held)
    assert not any(h[:80] in "\n".join(calib) for h in held)


def test_quantized_source_is_dequantized_and_reported(tiny_model, tmp_path):
    from mlx_lm.utils import load, quantize_model, save

    model, tok, config = load(str(tiny_model), return_config=True)
    model, config = quantize_model(model, config, group_size=32, bits=4)
    save(tmp_path / "q4", str(tiny_model), model, tok, config)
    events = []
    result = _convert(tmp_path / "q4", tmp_path / "out", events, target_bpw=5.0)
    assert "baked in" in result.summary["source_note"]
    assert any("baked in" in e.get("message", "") for e in events if e["type"] == "log")
    meta = json.loads((result.path / C.META_FILE).read_text())
    assert meta["source"]["quantization"]["bits"] == 4 and "dequantized" in meta["source"]["note"]


# --- the CLI -------------------------------------------------------------------------------------


def _cli(ws, argv):
    from tui.cli.convert import register

    parser = argparse.ArgumentParser(prog="humanizer")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        code = args.handler(ws, args, argv)
    return code, out.getvalue()


def test_cli_convert_json_events(ws, tiny_model, tmp_path):
    code, out = _cli(ws, ["convert", str(tiny_model), "--target-bpw", "4.5", "--candidate-bits", "2,4,8",
                          "--output", str(tmp_path / "out"), "--samples", "3", "--seq-len", "32",
                          "--heldout-tokens", "128", "--json"])
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    layer = next(e for e in events if e["type"] == "layer" and e["phase"] == "measured")
    assert {"path", "module", "modules", "block", "params", "shape", "group_size", "bits_measured", "sensitivity",
            "chosen_bits", "index", "total", "note", "resumed"} <= set(layer)
    assert any(e["type"] == "progress" and e.get("eta") is not None for e in events)
    done = [e for e in events if e["type"] == "done"]
    assert len(done) == 1 and done[0]["achieved_bpw"] <= 4.55 and done[0]["ppl_result"] > 0
    assert done[0]["result"] == str(tmp_path / "out")
    runs = list(ws.runs_dir.iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "job.json").read_text())["status"] == "done"


def test_cli_bad_input_fails_before_a_run_is_recorded(ws, tiny_model, tmp_path):
    with pytest.raises(HumanizerError, match="unknown group size 100"):
        _cli(ws, ["convert", str(tiny_model), "--target-bpw", "5", "--group-size", "100",
                  "--output", str(tmp_path / "out")])
    assert not list(ws.runs_dir.iterdir())


def test_cli_is_wired_into_humanizer():
    from tui.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "convert" not in sub.choices:
        pytest.skip("tui/cli/__init__.py does not register tui.cli.convert yet")
    args = parser.parse_args(["convert", "m", "--target-bpw", "5", "--output", "o"])
    assert args.candidate_bits == "4,8" and args.group_size == 64


def test_model_plan_for_the_convert_form(converted, tiny_model):
    plan = C.model_plan(tiny_model, 64, BITS)
    meta = converted[2]
    assert plan["params"] == meta["bpw"]["total_params"]
    assert [layer["path"] for layer in plan["layers"]] == [m["path"] for m in meta["layers"]]
    assert plan["min_bpw"] < 4.5 < plan["max_bpw"]
    assert plan["bytes_per_bpw"] * meta["bpw"]["achieved"] == pytest.approx(meta["bpw"]["total_bits"] / 8)


def test_cli_human_view_prints_a_bit_map_not_json(ws, tiny_model, tmp_path, capsys):
    code, out = _cli(ws, ["convert", str(tiny_model), "--target-bpw", "5", "--candidate-bits", "4,8",
                          "--output", str(tmp_path / "out"), "--samples", "2", "--seq-len", "32",
                          "--heldout-tokens", "64"])
    err = capsys.readouterr().err
    assert code == 0
    assert "model ready: " in out and "bits per weight: " in out and "held-out perplexity" in out
    assert "bits per layer: embedding+head " in err
    assert "  block    q    k    v    o gate   up down" in err
    assert '"sensitivity"' not in err  # no JSON per layer in the human view


def test_reuse_measurements_for_another_target(converted, tiny_model, tmp_path):
    events = []
    result = _convert(tiny_model, tmp_path / "out", events, target_bpw=3.0, candidate_bits="2,4,8",
                      measurements=converted[0].path)
    assert not [e for e in events if e.get("phase") in ("statistics", "measure")]
    assert all(e["resumed"] for e in _layers(events, "measured"))
    meta = json.loads((result.path / C.META_FILE).read_text())
    old = {m["path"]: m for m in converted[2]["layers"]}
    assert all(m["sensitivity"]["4"] == old[m["path"]]["sensitivity"]["4"] for m in meta["layers"])
    assert meta["bpw"]["achieved"] <= 3.0 + C.BUDGET_TOLERANCE
    with pytest.raises(HumanizerError, match="cannot reuse.*bits \\[5\\] were not measured"):
        _convert(tiny_model, tmp_path / "out5", candidate_bits="4,5", target_bpw=5.0, measurements=converted[0].path)
    with pytest.raises(HumanizerError, match="cannot reuse.*seed"):
        _convert(tiny_model, tmp_path / "out6", seed=1, measurements=converted[0].path)


def test_reuse_with_the_same_target_writes_the_same_weights(converted, tiny_model, tmp_path):
    """The clip rounding of a reused measurement comes from the stored Fisher factors: same bits, same codes."""
    assert (converted[0].path / C.ROUNDING_FILE).is_file()
    result = _convert(tiny_model, tmp_path / "again", measurements=converted[0].path)
    wa, wb = _safetensors(result.path), _safetensors(converted[0].path)
    assert set(wa) == set(wb) and all(mx.array_equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(HumanizerError, match="cannot reuse.*rounding"):
        _convert(tiny_model, tmp_path / "minmax", rounding="minmax", measurements=converted[0].path)


# --- rounding and the choice among allocations ----------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_clip_rounding_never_loses_to_min_max_on_its_own_weighting(bits):
    """Ratio 1 (plain min/max) is among the candidates, so the search can only lower the
    weighted error, and what it returns quantizes to exactly the dequantized weights it reports."""
    mx.random.seed(bits)
    w = mx.random.normal((48, 128)) * mx.random.uniform(0.5, 2.0, (48, 1))
    w = mx.where(mx.random.uniform(shape=w.shape) < 0.01, w * 6, w)  # a few outliers to clip
    imp = mx.random.uniform(0.1, 1.0, (48, 1)) * mx.random.uniform(0.1, 1.0, (1, 128))
    w_in, deq, choice = C.rounded_weight(w, bits, 64, mx.float16, imp)
    _, plain, none = C.rounded_weight(w, bits, 64, mx.float16, None)
    assert none is None and choice.shape == (48, 2, 1) and int(choice.max()) > 0
    err = lambda d: (imp * mx.square(d - w.astype(mx.float16).astype(mx.float32))).sum().item()  # noqa: E731
    assert err(deq) < err(plain)
    q, s, b = mx.quantize(w_in, group_size=64, bits=bits)
    assert mx.array_equal(mx.dequantize(q, s, b, group_size=64, bits=bits).astype(mx.float32), deq)
    again_in, again, _ = C.rounded_weight(w, bits, 64, mx.float16, imp, choice)  # replaying the choice
    assert mx.array_equal(again_in, w_in) and mx.array_equal(again, deq)


def test_split_check_holds_back_one_window_in_sixteen():
    calib = [[i] * 4 for i in range(32)]
    fisher, check = C.split_check(calib)
    assert len(check) == 2 and len(fisher) == 30 and not set(map(tuple, check)) & set(map(tuple, fisher))
    assert C.split_check(calib[:8]) == (calib[:8], [])


def test_the_kept_allocation_has_the_smallest_real_kl_on_held_back_tokens(tiny_model, tmp_path):
    events = []
    result = _convert(tiny_model, tmp_path / "out", events, samples=16, target_bpw=3.5)
    meta = json.loads((result.path / C.META_FILE).read_text())
    assert meta["calibration"]["check_samples"] == 1 and meta["calibration"]["fisher_samples"] == 15
    sel = meta["method"]["selection"]
    assert sorted(k for c in sel for k in c["kappas"]) == sorted(C.KAPPAS)
    kept = [c for c in sel if c["kept"]]
    assert len(kept) == 1
    assert len(sel) > 1  # on this tiny model the kappas give two different allocations
    assert kept[0]["check_kl"] == min(c["check_kl"] for c in sel)
    assert kept[0]["bits_params"] == result.summary["bits_histogram"]
    assert [e for e in events if e.get("phase") == "allocate"]


def test_cli_rounding_flag_reaches_the_convert(ws, tiny_model, tmp_path):
    out = tmp_path / "plain"
    code, _ = _cli(ws, ["convert", str(tiny_model), "--target-bpw", "5", "--candidate-bits", "4,8",
                        "--output", str(out), "--samples", "2", "--seq-len", "32", "--heldout-tokens", "64",
                        "--rounding", "minmax", "--json"])
    assert code == 0
    assert json.loads((out / C.META_FILE).read_text())["settings"]["rounding"] == "minmax"


def test_without_held_back_windows_the_uncorrected_allocation_is_kept(tiny_model, tmp_path):
    result = _convert(tiny_model, tmp_path / "few", samples=4, target_bpw=3.5)
    meta = json.loads((result.path / C.META_FILE).read_text())
    assert meta["calibration"]["check_samples"] == 0
    kept = [c for c in meta["method"]["selection"] if c["kept"]]
    assert len(kept) == 1 and 1.0 in kept[0]["kappas"]


def test_files_beside_the_weights_do_not_change_the_model_fingerprint(tiny_model, tmp_path):
    import shutil

    from engine import adapters as A

    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    before = A.model_fingerprint(copy)
    mx.save_safetensors(str(copy / C.ROUNDING_FILE), {"x": mx.zeros((2,))})
    assert A.model_fingerprint(copy) == before


def test_the_shown_floor_is_one_the_convert_accepts(tiny_model, tmp_path):
    """The form's hint and the refusal show the least target rounded up to 3 decimals (4.5 was
    refused while the hint said 4.50): that number is accepted, 0.001 less is not."""
    plan = C.model_plan(tiny_model, 64, "4,8")
    floor = plan["target_min"]
    assert floor >= plan["min_bpw"] - 1e-9 and floor - 0.001 < plan["min_bpw"]
    assert plan["target_max"] == 8.5  # the largest candidate's cost: check_settings' ceiling
    assert C.shown_floor(4.50271) == 4.503 and C.shown_floor(4.503) == 4.503 and C.shown_ceiling(8.5199) == 8.519
    with pytest.raises(HumanizerError) as refused:
        _convert(tiny_model, tmp_path / "low", candidate_bits="4,8", target_bpw=round(floor - 0.001, 3))
    assert f"at least {floor:.3f}" in refused.value.message and f"at least {floor:.3f}" in refused.value.hint
    events = []
    with pytest.raises(Cancelled):  # past the check: stopped in the calibration pass
        _convert(tiny_model, tmp_path / "ok", events, stop=lambda ev: ev.get("phase") == "statistics",
                 candidate_bits="4,8", target_bpw=float(f"{floor:.3f}"))


def test_layers_are_estimated_while_the_calibration_pass_runs(tiny_model, tmp_path):
    """The pass is most of a convert's time: after its first sample every quantized layer gets
    an estimate (sensitivity and provisional bits within the budget) before any is measured."""
    events = []
    _convert(tiny_model, tmp_path / "out", events, candidate_bits="4,8", target_bpw=5.0)
    kinds = [(e["type"], e.get("phase")) for e in events]
    first_measured = kinds.index(("layer", "measured"))
    estimates = [e for e in events[:first_measured] if e.get("phase") == "estimate"]
    last_sample = max(i for i, k in enumerate(kinds) if k == ("progress", "statistics"))
    assert estimates and events.index(estimates[0]) < last_sample  # during the pass, not after it
    first = [e for e in estimates if e["samples"] == estimates[0]["samples"]]
    assert len(first) == len(_layers(events, "allocated"))
    assert all(e["chosen_bits"] in (4, 8) and e["sensitivity"]["4"] > e["sensitivity"]["8"] >= 0 for e in first)
    assert first[0]["of"] == FAST["samples"] and 1 <= first[0]["samples"] < first[0]["of"]
    assert not [e for e in events[first_measured:] if e.get("phase") == "estimate"]


def test_convert_settings_restate_every_cli_flag():
    """engine.convert.settings.ConvertSettings holds the `humanizer convert` flags: one field per
    flag, with its default, choices and requiredness, so the two cannot drift apart."""
    from dataclasses import MISSING

    from engine.convert.settings import ConvertSettings, setting_fields
    from tui.cli.convert import register

    parser = argparse.ArgumentParser(prog="humanizer")
    register(parser.add_subparsers(dest="command"))
    sub = parser._subparsers._group_actions[0].choices["convert"]
    flags = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help", "json")}
    fields = {f.name: f for f in setting_fields()}
    assert set(fields) == set(flags)
    for name, action in flags.items():
        f = fields[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.required == (f.default is MISSING), name
        if not action.required:
            assert action.default == f.default, name
        assert list(action.choices or []) == list(f.metadata["choices"] or []), name
        assert (f.type == "bool") == (action.nargs == 0), name
    assert {f.name for f in setting_fields(form_only=True)} == {"target_bpw", "candidate_bits", "group_size",
                                                                "output", "samples", "seq_len", "resume"}
    s = ConvertSettings(target_bpw="4.5", candidate_bits="8,4", output="x").check()
    assert (s.target_bpw, s.candidate_bits, s.group_size) == (4.5, [4, 8], 64)
    with pytest.raises(HumanizerError, match="unknown rounding"):
        ConvertSettings(target_bpw=5, output="x", rounding="nearest").check()


def test_the_cli_flags_are_made_from_convert_settings():
    """Every `convert` flag's help, metavar and group are its ConvertSettings field's, and a
    default the settings change changes the flag (the CLI restates nothing); the settings'
    argv() parses back to the same settings."""
    from dataclasses import fields

    from engine.convert.settings import ConvertSettings, setting_fields
    from tui.cli.convert import register

    def convert_parser():
        parser = argparse.ArgumentParser(prog="humanizer")
        register(parser.add_subparsers(dest="command"))
        return parser, parser._subparsers._group_actions[0].choices["convert"]

    parser, sub = convert_parser()
    titles = {a.dest: g.title for g in sub._action_groups for a in g._group_actions}
    flags = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help", "json")}
    for f in setting_fields():
        action = flags[f.name]
        assert action.help.replace("%%", "%").startswith(f.metadata["help"]), f.name
        assert action.metavar == f.metadata["metavar"] and titles[f.name] == f.metadata["group"], f.name
    field = next(f for f in fields(ConvertSettings) if f.name == "samples")
    original = field.default
    try:
        field.default = 7  # as if the setting's default were changed in engine/convert/settings.py
        assert convert_parser()[1]._option_string_actions["--samples"].default == 7
    finally:
        field.default = original
    settings = ConvertSettings(target_bpw=4.75, candidate_bits=[2, 4, 8], group_size=32, output="out", samples=8,
                               rounding="minmax", resume=True)
    assert settings.argv() == ["--target-bpw", "4.75", "--candidate-bits", "2,4,8", "--group-size", "32",
                               "--output", "out", "--samples", "8", "--rounding", "minmax", "--resume"]
    args = parser.parse_args(["convert", "m", *settings.argv()])
    assert ConvertSettings(**{f.name: getattr(args, f.name) for f in fields(ConvertSettings)}).check() == \
        settings.check()
    assert ConvertSettings(target_bpw=5.0, output="o", candidate_bits=[4, 8]).argv() == ["--target-bpw", "5",
                                                                                         "--output", "o"]
