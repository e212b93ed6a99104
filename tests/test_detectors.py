"""Zero-shot detectors (Fast-DetectGPT, Binoculars), calibration profiles and detection
metrics, on tiny random llamas. The strings scored here are arbitrary model inputs,
not human references; nothing written here is labelled as human text."""

from __future__ import annotations

import json
import math
import shutil

import mlx.core as mx
import numpy as np
import pytest

from engine.errors import HumanizerError
from engine.eval import calibrate, metrics
from engine.eval.detectors import LM, Binoculars, Detector, FastDetectGPT, Scores
from tests.test_generate import make_lively_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Low-rank adapters are trained, stacked, fused and served on one machine, then measured.",
    "Numbers 0123456789",
    "What is the capital of France? The capital of France is Paris, on the Seine.",
    "café naïve résumé",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    a = make_lively_llama(root / "a", seed=3)
    b = make_lively_llama(root / "b", seed=11)
    # a third model whose tokenizer maps two tokens to each other's ids: same size, other vocabulary
    c = root / "c"
    shutil.copytree(b, c)
    tj = json.loads((c / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    x, y = "e", "t"
    vocab[x], vocab[y] = vocab[y], vocab[x]
    (c / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    return {"a": LM.load(a), "b": LM.load(b), "c_dir": c}


# --- direct numpy computations of the papers' formulas, one text, no padding ------------------


def _logits(lm: LM, ids) -> np.ndarray:
    return np.array(lm.model(mx.array([ids])), dtype=np.float64)[0, :-1]


def _lsm(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def ref_fast_detectgpt(scorer: LM, sampler: LM, ids) -> float:
    lq = _lsm(_logits(scorer, ids))
    p = np.exp(_lsm(_logits(sampler, ids)))
    labels = np.array(ids[1:])
    ll = lq[np.arange(len(labels)), labels]
    mu = (p * lq).sum(-1)
    var = (p * lq**2).sum(-1) - mu**2
    return (ll.sum() - mu.sum()) / math.sqrt(var.sum())


def ref_binoculars(observer: LM, performer: LM, ids, ppl_from: str = "observer") -> float:
    lo, lp = _lsm(_logits(observer, ids)), _lsm(_logits(performer, ids))
    labels = np.array(ids[1:])
    src = lo if ppl_from == "observer" else lp
    log_ppl = -src[np.arange(len(labels)), labels].mean()
    log_xppl = -(np.exp(lo) * lp).sum(-1).mean()
    return log_ppl / log_xppl


def ids_of(lm: LM, text: str):
    return list(lm.tokenizer.encode(text))


# --- Fast-DetectGPT ------------------------------------------------------------------------


def test_fast_detectgpt_matches_the_formula(models):
    a = models["a"]
    det = FastDetectGPT(a)
    assert isinstance(det, Detector)
    text = TEXTS[1]
    s = det.score([text])
    assert s.score.shape == (1,) and s.p_ai is None and not s.skipped and not s.truncated
    assert s.n_tokens[0] == len(ids_of(a, text))
    ref = ref_fast_detectgpt(a, a, ids_of(a, text))
    assert s.score[0] == pytest.approx(ref, rel=1e-4, abs=1e-4)
    d = det.describe()
    assert d["detector"] == "fast-detectgpt" and d["models"]["scorer"]["fingerprint"].startswith("sha256:")
    assert d["models"]["sampler"] == d["models"]["scorer"] and d["max_tokens"] == 512  # the config's context


def test_batching_with_padding_changes_nothing(models):
    det = FastDetectGPT(models["a"])
    seen = []
    one = det.score(TEXTS, batch_size=1)
    batched = det.score(TEXTS, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(batched.score, one.score, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(one.score)) and len(set(np.round(one.score, 3))) == len(TEXTS)
    assert seen[-1] == (len(TEXTS), len(TEXTS))


def test_sampler_and_scorer_pair(models):
    a, b = models["a"], models["b"]
    det = FastDetectGPT(a, sampler_model=b)
    assert det.describe()["models"]["sampler"]["fingerprint"] != det.describe()["models"]["scorer"]["fingerprint"]
    s = det.score(TEXTS, batch_size=2)
    for i in (0, 3):
        ids = ids_of(a, TEXTS[i])
        assert s.score[i] == pytest.approx(ref_fast_detectgpt(a, b, ids), rel=1e-4, abs=1e-4)
        assert abs(s.score[i] - ref_fast_detectgpt(a, a, ids)) > 1e-3  # the sampler does matter


def test_mismatched_tokenizers_are_refused(models):
    c = LM.load(models["c_dir"])
    with pytest.raises(HumanizerError, match="do not share a tokenizer"):
        FastDetectGPT(models["a"], sampler_model=c)
    with pytest.raises(HumanizerError, match="do not share a tokenizer"):
        Binoculars(models["a"], c)


def test_long_texts_are_truncated_and_counted(models):
    a = models["a"]
    det = FastDetectGPT(a, max_tokens=8)
    long_text = TEXTS[3]
    ids = ids_of(a, long_text)
    assert len(ids) > 8
    s = det.score([TEXTS[2], long_text], batch_size=2)
    assert s.truncated == [1] and s.n_truncated == 1 and s.summary()["truncated"] == 1
    assert s.n_tokens[1] == 8 and not s.skipped
    assert s.score[1] == pytest.approx(ref_fast_detectgpt(a, a, ids[:8]), rel=1e-4, abs=1e-4)


def test_empty_texts_are_skipped_not_scored_zero(models):
    det = FastDetectGPT(models["a"])
    s = det.score(["", TEXTS[0], "   \n", None, "a"])
    assert s.skipped == {0: "empty", 2: "empty", 3: "empty", 4: "fewer than 2 tokens"}
    assert np.isnan(s.score[[0, 2, 3, 4]]).all() and np.isfinite(s.score[1])
    assert list(s.scored) == [False, True, False, False, False] and s.n_tokens[0] == 0
    assert s.summary()["skipped"] == {"empty": 3, "fewer than 2 tokens": 1}
    nothing = det.score(["", " "])
    assert len(nothing) == 2 and not nothing.scored.any()
    assert len(det.score([])) == 0
    with pytest.raises(HumanizerError, match="over nothing"):
        metrics.auroc(nothing.valid_scores(), s.valid_scores())
    with pytest.raises(HumanizerError, match="list of texts"):
        det.score("one string")


# --- Binoculars ------------------------------------------------------------------------------


def test_binoculars_matches_the_paper(models):
    a, b = models["a"], models["b"]
    det = Binoculars(a, b)
    d = det.describe()
    assert d["models"]["observer"]["path"].endswith("/a") and d["models"]["performer"]["path"].endswith("/b")
    s = det.score(TEXTS, batch_size=2)
    one = det.score(TEXTS, batch_size=1)
    np.testing.assert_allclose(s.score, one.score, rtol=1e-4, atol=1e-4)
    for i in (1, 4):
        ref = ref_binoculars(a, b, ids_of(a, TEXTS[i]))
        assert s.raw[i] == pytest.approx(ref, rel=1e-4)
        assert s.score[i] == pytest.approx(-ref, rel=1e-4)  # higher = more AI
    variant = Binoculars(a, b, perplexity_of="performer").score([TEXTS[1]])
    assert variant.raw[0] == pytest.approx(ref_binoculars(a, b, ids_of(a, TEXTS[1]), "performer"), rel=1e-4)
    assert abs(variant.raw[0] - s.raw[1]) > 1e-3
    empty = det.score(["", TEXTS[0]])
    assert empty.skipped == {0: "empty"} and np.isnan(empty.raw[0])


# --- calibration -----------------------------------------------------------------------------


def _clouds(n=400, shift=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n), rng.normal(shift, 1.0, n)


def test_calibration_recovers_the_logistic_fit():
    h, ai = _clouds()
    desc = {"detector": "fast-detectgpt", "models": {}, "settings": {}}
    p = calibrate.profile_from_scores(desc, h, ai, {"corpus": "synthetic normal clouds"})
    # equal-variance normals N(0,1) vs N(2,1): log-odds = 2 s - 2, AUROC = Phi(2 / sqrt 2)
    assert 1.6 < p.a < 2.4 and p.b / p.a == pytest.approx(-1.0, abs=0.15)
    known = 0.5 * (1 + math.erf(2 / math.sqrt(2) / math.sqrt(2)))
    assert p.auroc == pytest.approx(known, abs=0.03)
    assert 0.0 < p.tpr_at_1pct_fpr < 1.0
    assert p.n_human == p.n_ai == 400 and p.calibrated_on == {"corpus": "synthetic normal clouds"}
    probs = p.p_ai(np.array([-3.0, 1.0, 5.0, np.nan]))
    assert probs[0] < 0.05 and probs[1] == pytest.approx(0.5, abs=0.1) and probs[2] > 0.95 and np.isnan(probs[3])


def test_calibration_stays_finite_on_separable_scores_and_needs_enough_texts():
    desc = {"detector": "fast-detectgpt", "models": {}, "settings": {}}
    p = calibrate.profile_from_scores(desc, [0, 1, 2, 3, 4], [10, 11, 12, 13, np.nan], {})
    assert math.isfinite(p.a) and p.a > 0 and math.isfinite(p.b)
    assert p.auroc == 1.0 and p.n_ai == 4  # the NaN (a skipped text) is left out
    with pytest.raises(HumanizerError, match="too few human"):
        calibrate.profile_from_scores(desc, [0, 1, 2], [10, 11, 12, 13], {})
    with pytest.raises(HumanizerError, match="too few AI"):
        calibrate.profile_from_scores(desc, [0, 1, 2, 3], [10, np.nan, np.nan, np.nan], {})


class _Lookup:
    """A stand-in detector whose score of a text is looked up (tests the plumbing)."""

    name = "fast-detectgpt"
    profile = None

    def __init__(self, table):
        self.table = table

    def describe(self):
        return {"detector": self.name, "models": {"scorer": {"fingerprint": "sha256:x"}}, "settings": {}}

    def score(self, texts, batch_size=4, progress=None):
        return Scores(self.name, np.array([self.table.get(t, np.nan) for t in texts], dtype=float))


def test_fit_profile_scores_both_sets():
    h, ai = _clouds(50, seed=1)
    table = {f"class0-{i}": v for i, v in enumerate(h)} | {f"class1-{i}": v for i, v in enumerate(ai)}
    p = calibrate.fit_profile(_Lookup(table), list(table)[:50] + ["nope"], list(table)[50:], {"split": "x"})
    assert p.n_human == 50 and p.n_ai == 50 and p.a > 0
    assert p.auroc == pytest.approx(metrics.auroc(h, ai))
    assert p.counts["human"]["scored"] == 50 and p.counts["human"]["texts"] == 51
    with pytest.raises(HumanizerError, match="needs human and AI texts"):
        calibrate.fit_profile(_Lookup(table), [], list(table)[50:], {})


def test_profile_round_trip_and_refusals(models, tmp_path):
    a, b = models["a"], models["b"]
    det = FastDetectGPT(a)
    h, ai = _clouds(40, seed=2)
    prof = calibrate.profile_from_scores(det.describe(), h, ai, {"corpus": "synthetic"})
    path = calibrate.save_profile(prof, tmp_path / "profiles" / "fdg.json")
    assert not [p for p in path.parent.iterdir() if p.name != "fdg.json"]  # no temp file left
    back = calibrate.load_profile(path, det)
    assert back == prof
    # attached: P(AI) per text, NaN where skipped
    det.profile = back
    s = det.score(["", TEXTS[0]])
    assert np.isnan(s.p_ai[0]) and s.p_ai[1] == pytest.approx(1 / (1 + math.exp(-(prof.a * s.score[1] + prof.b))))
    assert calibrate.apply(prof, s.score)[1] == pytest.approx(s.p_ai[1])
    # another scorer model, another detector, other settings, a sampler that differs
    with pytest.raises(HumanizerError, match="another scorer model") as e:
        calibrate.load_profile(path, FastDetectGPT(b))
    assert "calibrate" in e.value.hint
    with pytest.raises(HumanizerError, match="binoculars detector|for the fast-detectgpt detector"):
        calibrate.load_profile(path, Binoculars(a, b))
    with pytest.raises(HumanizerError, match="another sampler model"):
        calibrate.load_profile(path, FastDetectGPT(a, sampler_model=b))
    bino = Binoculars(a, b)
    bpath = calibrate.save_profile(calibrate.profile_from_scores(bino.describe(), h, ai, {}), tmp_path / "b.json")
    with pytest.raises(HumanizerError, match="other binoculars settings"):
        calibrate.load_profile(bpath, Binoculars(a, b, perplexity_of="performer"))
    with pytest.raises(HumanizerError, match="another observer model"):
        calibrate.load_profile(bpath, Binoculars(b, a))
    # not a profile
    with pytest.raises(HumanizerError, match="no detector profile"):
        calibrate.load_profile(tmp_path / "missing.json", det)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HumanizerError, match="cannot read"):
        calibrate.load_profile(tmp_path / "bad.json", det)


# --- metrics -----------------------------------------------------------------------------------


def _pairwise_auroc(h, a):
    return np.mean([(x > y) + 0.5 * (x == y) for x in a for y in h])


def test_auroc_counts_ties_half():
    assert metrics.auroc([1, 2, 3], [2, 3, 4]) == pytest.approx(7 / 9)
    assert metrics.auroc([1, 1], [1, 1]) == 0.5
    assert metrics.auroc([0, 0.5], [1, 2]) == 1.0 and metrics.auroc([1, 2], [0, 0.5]) == 0.0
    rng = np.random.default_rng(0)
    h, a = rng.integers(0, 5, 30), rng.integers(1, 6, 25)  # many ties
    assert metrics.auroc(h, a) == pytest.approx(_pairwise_auroc(h, a))


def test_tpr_at_fpr():
    h = np.arange(200.0)  # k = floor(0.01 * 200) = 2 human texts may sit above the threshold: t = 197
    assert metrics.threshold_at_fpr(h, 0.01) == 197.0
    assert metrics.tpr_at_fpr(h, [196, 197, 198, 250], 0.01) == 0.5  # ties with t are not detected
    small = np.arange(10.0)  # fewer than 100 human texts: no false positive allowed, t = max
    assert metrics.threshold_at_fpr(small, 0.01) == 9.0
    assert metrics.tpr_at_fpr(small, [9, 10], 0.01) == 0.5
    assert metrics.tpr_at_fpr(small, [1, 2], 0.5) == 0.0  # t = 4 (5 of 10 above it)
    with pytest.raises(HumanizerError):
        metrics.tpr_at_fpr(small, [1], 1.0)


def test_gap_closed():
    assert metrics.gap_closed(0.51, 0.37, 0.37) == pytest.approx(1.0)
    assert metrics.gap_closed(0.51, 0.50, 0.37) == pytest.approx(0.01 / 0.14)
    assert metrics.gap_closed(0.5, 0.6, 0.3) == pytest.approx(-0.5)  # worse than the source
    assert metrics.gap_closed(0.4, 0.3, 0.4) is None
    assert metrics.gap_closed(0.4, 0.3, 0.4 + 1e-9) is None
    assert metrics.gap_closed(None, 0.3, 0.2) is None and metrics.gap_closed(0.5, float("nan"), 0.2) is None


def test_metrics_refuse_empty_or_nan_input():
    for call in (lambda: metrics.auroc([], [1.0]), lambda: metrics.auroc([1.0], []),
                 lambda: metrics.tpr_at_fpr([], [1.0]), lambda: metrics.tpr_at_fpr([1.0], []),
                 lambda: metrics.auroc([np.nan, 1.0], [2.0]), lambda: metrics.bootstrap_ci([])):
        with pytest.raises(HumanizerError):
            call()


def test_bootstrap_ci_is_seeded():
    v = np.random.default_rng(3).normal(1.0, 1.0, 200)
    lo, hi = metrics.bootstrap_ci(v, seed=7)
    assert lo < v.mean() < hi and (lo, hi) == metrics.bootstrap_ci(v, seed=7)
    assert (lo, hi) != metrics.bootstrap_ci(v, seed=8)
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / math.sqrt(200), rel=0.2)
