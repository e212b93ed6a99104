"""`humanizer eval`: every held-out draft rewritten by every choice in one batched run, scored by
every detector at hand, the table, report.json and samples.jsonl, --resume, bad input.

Tiny models only: a lively tiny llama with an SFT adapter and a DPO delta (tests/test_generate),
fast-detectgpt on that llama calibrated on the dataset's training split, and the classifier on a
tiny random BERT (tests/test_eval_models). The dataset is built by the data builder from the
Wikipedia fixture (tests/fixtures/human, CC BY-SA 3.0) with the scripted 'AI' writer of
tests/test_data_build: no human text here is written by us. The numbers are plumbing checks,
not humanizer quality."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.data import build as B
from engine.data import writers
from engine.errors import HumanizerError
from engine.eval import rewrite as R
from engine.eval import run as E
from engine.eval.registry import calibrate_on_dataset
from engine.eval.settings import DetectSettings, EvalSettings
from engine.eval.table import COLUMNS, format_table
from engine.generate import Engine, SamplingParams
from engine.workspace import Workspace
from tests.test_data_build import DOCS, ScriptedWriter
from tests.test_data_build import settings as build_settings
from tests.test_generate import DPO, SFT, make_adapters, make_lively_llama

DATASET = "wiki"
CLF = "wikiclf"
GEN_TOKENS = "0"  # 1.6x the draft's tokens + 24
CHOICES = ["base", SFT, f"{SFT}+{DPO}"]
DET_KEYS = {"n", "n_scored", "skipped", "truncated", "mean_score", "p_ai", "p_ai_ci", "delta", "gap_closed", "auroc",
            "tpr_at_1pct_fpr", "missing"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A workspace with the built dataset, a fast-detectgpt profile for the tiny llama (fitted on
    the training split) and the classifier trained on it; the llama, its adapters, a second llama."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from engine.eval.classifier import train_classifier
    from tests.test_eval_models import make_tiny_bert

    root = tmp_path_factory.mktemp("evalrun")
    base = make_lively_llama(root / "models" / "tiny", seed=3)
    other = make_lively_llama(root / "models" / "other", seed=11)
    sft, dpo = make_adapters(base, root / "adapters")
    make_tiny_bert(root / "bert", max_seq_length=12, seed=1)
    home = Workspace.open(root / "home")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(writers, "open_writer", lambda *a, **k: ScriptedWriter())
        B.build(build_settings(output=DATASET, valid_share=0.0, heldout=1, min_words=20, max_words=60), home)
    calibrate_on_dataset(DetectSettings(scorer=str(base), dataset=DATASET, max_tokens=48, limit=8), home)
    train_classifier(home, DATASET, CLF, encoder=str(root / "bert"))
    return {"root": root, "home": home, "base": base, "other": other, "sft": sft, "dpo": dpo,
            "bert": root / "bert"}


def copy_home(env, ws):
    """A fresh workspace holding copies of the dataset and the detectors."""
    for sub in ("datasets", "detectors"):
        shutil.copytree(env["home"].home / sub, ws.home / sub, dirs_exist_ok=True)
    return ws


class Spy:
    """Counts engines loaded and every generation submitted (adapter selection, seed)."""

    def __init__(self, mp):
        self.loads, self.submits = 0, []
        load, submit = Engine.load.__func__, Engine.submit

        def spy_load(cls, *a, **k):
            self.loads += 1
            return load(cls, *a, **k)

        def spy_submit(engine, prompt, adapter=None, params=None, **k):
            self.submits.append((adapter, params.seed, params.max_tokens))
            return submit(engine, prompt, adapter, params, **k)

        mp.setattr(Engine, "load", classmethod(spy_load))
        mp.setattr(Engine, "submit", spy_submit)


def main(home, *argv, capsys=None):
    import tui.cli as C

    code = C.main(["--home", str(home), *map(str, argv)])
    out = capsys.readouterr() if capsys else None
    return code, out.out if out else "", out.err if out else ""


def eval_argv(env, *extra):
    return ["eval", env["base"], "--adapter", env["sft"], "--adapter", env["dpo"], "--data", DATASET,
            "--encoder", env["bert"], "--max-tokens", GEN_TOKENS, "--score-max-tokens", "48", *extra]


def flat(text: str) -> str:
    """Without white space: the run's view wraps long lines."""
    return "".join(text.split())


def lines_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def report_of(lines: list[dict]) -> dict:
    return next(e for e in lines if e["type"] == "report")


@pytest.fixture(scope="module")
def main_run(env):
    """The eval through the CLI with --json: every held-out sample, the three choices, the default
    detectors (the calibrated fast-detectgpt and the classifier trained on this dataset)."""
    import io
    from contextlib import redirect_stdout

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUMANIZER_NO_FAST_BLAS", "1")
        spy = Spy(mp)
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = main(env["home"].home, *eval_argv(env, "--json"))[0]
    assert code == 0, buf.getvalue()[-3000:]
    lines = lines_of(buf.getvalue())
    report = report_of(lines)
    run_dir = next(d for d in env["home"].runs_dir.iterdir() if (d / "report.json").is_file())
    return {"lines": lines, "report": report, "dir": run_dir, "spy": spy}


# --- settings and input --------------------------------------------------------------------------------


def test_settings_problems_name_their_flags():
    def flags(**kw):
        return [p[0] for p in EvalSettings(**{"model": "m", "data": "d", **kw}).problems()]

    assert flags() == [] and [p[0] for p in EvalSettings().problems()] == ["model", "data"]
    s = EvalSettings(model="m", data="d", adapters=("/x/sft", "/y/dpo"))
    assert s.choice_list() == ["base", "sft", "sft+dpo"]
    assert flags(adapters=("/x/sft",), choices="base,sft,nope") == ["choices"]
    assert flags(adapters=("/x/sft",), choices="base+sft,sft,sft") == ["choices", "choices"]
    assert flags(detector="radar,nope", samples=-1, rows=0, top_p=0, score_max_tokens=1) == \
        ["detector", "samples", "rows", "top-p", "score-max-tokens"]
    assert flags(detector="binoculars") == ["sampler"]
    with pytest.raises(HumanizerError, match="--choices: 'x' names 'x'"):
        EvalSettings(model="m", data="d", choices="x").check()
    assert s.detect_settings("fast-detectgpt").scorer == "m" and s.detect_settings("radar").profile == ""
    names = {f.name for f in EvalSettings.flag_fields()}
    assert "model" not in names and "adapters" not in names and {"data", "choices", "resume", "detector"} <= names


def test_read_heldout_errors_name_file_line_and_field(env, tmp_path):
    held = env["home"].datasets_dir / DATASET / "heldout.jsonl"
    rows = [json.loads(line) for line in held.read_text().splitlines()]
    f = tmp_path / "heldout.jsonl"
    f.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "draft"}) for r in rows) + "\n")
    with pytest.raises(HumanizerError) as e:
        E.read_heldout(f)
    assert e.value.message == f"{f}:1: field 'draft' is missing ({len(rows)} rows have a problem)" \
        if len(rows) > 1 else f"{f}:1: field 'draft' is missing"
    assert "'human'" in e.value.hint
    f.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[0], "human": " "}) + "\n")
    with pytest.raises(HumanizerError, match=r":2: field 'human' is empty\n"):
        E.read_heldout(f)
    f.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(HumanizerError, match=r":2 is not valid JSON\n"):
        E.read_heldout(f)
    f.write_text("\n")
    with pytest.raises(HumanizerError, match="has no rows"):
        E.read_heldout(f)
    # no prompt: rebuilt from the draft and locks, as the builder makes it
    f.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "prompt"}) + "\n")
    (s,) = E.read_heldout(f)
    assert s.prompt == rows[0]["prompt"] == B.instruction(rows[0]["draft"], rows[0]["locks"])
    # seeded pick of N: the same N for the same seed
    many = E.read_heldout(held)
    assert E.pick_samples(many, 0, 1) == many
    if len(many) > 2:
        assert E.pick_samples(many, 2, 5) == E.pick_samples(many, 2, 5) and len(E.pick_samples(many, 2, 5)) == 2


def test_involvement_and_headline(tmp_path):
    parent, child = tmp_path / "p", tmp_path / "c"
    parent.mkdir()
    child.mkdir()
    (parent / "manifest.json").write_text(json.dumps(
        {"template": "style-transfer", "settings": {"model": "/m/drafter"},
         "filters": {"ai_detector": {"detector": "radar", "threshold": 0.5}}}))
    (child / "manifest.json").write_text(json.dumps({"template": "dpo-pairs", "parent": {"dataset": str(parent)},
                                                    "judge": {"detectors": ["fast-detectgpt-tiny.json"]}}))
    chain = E.manifest_chain(child)
    assert [link["dataset"] for link in chain] == ["c", "p"]
    radar = E.involvement("radar", {"models": {}}, chain, {})
    assert radar["helped"] and "p/manifest.json filters.ai_detector" in radar["why"]
    fd = E.involvement("fast-detectgpt", {"models": {"scorer": {"name": "drafter", "fingerprint": "x"}}}, chain,
                       {"fingerprint": "y"})
    assert fd["helped"] and "judge.detectors" in fd["why"] and fd["notes"] == ["its scorer (drafter) wrote the "
                                                                                "dataset's drafts"]
    clf = E.involvement("classifier", {"settings": {"name": "c1", "trained_on": "c"}}, chain, {})
    assert not clf["helped"] and "never the held-out split" in clf["notes"][0]
    assert not E.involvement("binoculars", {}, chain, {})["helped"]

    def entry(name, helped=False, calibrated=True):
        return {"name": name, "helped_make_training_data": helped, "calibrated": calibrated}

    h = E.pick_headline([entry("fast-detectgpt"), entry("classifier")])
    assert h["detector"] == "classifier" and h["reason"].startswith("the first at hand")
    h = E.pick_headline([entry("fast-detectgpt"), entry("classifier", helped=True), entry("radar", helped=True)])
    assert h["detector"] == "fast-detectgpt" and "radar, classifier helped make the training data" in h["reason"]
    h = E.pick_headline([entry("fast-detectgpt", calibrated=False), entry("binoculars")])
    assert h["detector"] == "binoculars"
    assert E.pick_headline([entry("fast-detectgpt", calibrated=False)])["detector"] == "fast-detectgpt"
    assert E.pick_headline([entry("radar", helped=True)])["detector"] is None
    assert E.pick_headline([])["detector"] is None


# --- the eval ------------------------------------------------------------------------------------------------


def test_every_sample_and_choice_rewritten_once_with_its_own_adapters(env, main_run):
    report, spy = main_run["report"], main_run["spy"]
    n = report["counts"]["samples"]
    assert n == report["dataset"]["rows"] >= 2 and spy.loads == 1
    assert report["choices"] == CHOICES
    assert len(spy.submits) == 3 * n == report["counts"]["rewrites"]["generated"]
    assert sorted(a for a, _, _ in spy.submits) == sorted(CHOICES * n)
    assert len({s for _, s, _ in spy.submits}) == 3 * n  # a seed per (sample, choice)
    rows = [json.loads(line) for line in (main_run["dir"] / "samples.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == report["dataset"]["sample_keys"] and len(rows) == n
    # a choice's rewrite is what that prompt gives alone with that adapter and seed
    held = {s.key: s for s in E.read_heldout(env["home"].datasets_dir / DATASET / "heldout.jsonl")}
    settings = report["settings"]
    with Engine.load(env["base"], adapters=[env["sft"], env["dpo"]], max_rows=1) as alone:
        for choice in CHOICES:
            row = rows[-1]
            got = row["rewrites"][choice]
            prompt = alone.encode_chat([{"role": "user", "content": held[row["key"]].prompt}])
            assert got["seed"] == R.rewrite_seed(0, row["key"], choice)
            g = alone.submit(prompt, choice, SamplingParams(temperature=settings["temperature"],
                                                            top_p=settings["top_p"], max_tokens=got["max_tokens"],
                                                            seed=got["seed"])).result(60)
            assert g.text == got["text"] and g.finish_reason == got["finish"]
    texts = {c: [r["rewrites"][c]["text"] for r in rows] for c in CHOICES}
    assert texts["base"] != texts[SFT] != texts[f"{SFT}+{DPO}"]


def test_report_has_the_table_with_every_column(env, main_run):
    report = main_run["report"]
    assert report["model"]["name"] == "tiny" and report["model"]["fingerprint"].startswith("sha256:")
    assert [a["name"] for a in report["adapters"]] == [SFT, DPO] and report["adapters"][1]["parent"] == SFT
    assert report["dataset"]["name"] == DATASET and report["dataset"]["licence"] and report["dataset"]["source"]
    dets = {d["name"]: d for d in report["detectors"]}
    assert list(dets) == ["classifier", "fast-detectgpt"]  # every one at hand, in the headline order
    assert dets["fast-detectgpt"]["calibrated"] and dets["fast-detectgpt"]["profile"]["calibrated_on"]["split"] == \
        "train"
    assert dets["classifier"]["trained_on"]["dataset"] == DATASET
    assert not dets["classifier"]["helped_make_training_data"]
    assert any("never the held-out split" in note for note in dets["classifier"]["notes"])
    assert any("evaluated model's base" in note for note in dets["fast-detectgpt"]["notes"])
    assert report["headline"]["detector"] == "classifier"
    assert set(report["columns"]) == set(COLUMNS)
    rows = {r["row"]: r for r in report["table"]["rows"]}
    assert list(rows) == ["source", *CHOICES, "human"]
    for label, r in rows.items():
        assert set(COLUMNS) - set(DET_KEYS) <= set(r), label  # every rewrite column, None or not
        for name in dets:
            cell = r["detectors"][name]
            assert set(cell) == DET_KEYS
            for k, v in cell.items():
                if v is None:
                    assert cell["missing"][k], (label, name, k)  # never None without a reason
        for k in COLUMNS:
            if k in r and r[k] is None:
                assert r["missing"][k], (label, k)
    for name in dets:
        src, hum = rows["source"]["detectors"][name], rows["human"]["detectors"][name]
        assert 0 <= src["p_ai"] <= 1 and 0 <= src["auroc"] <= 1 and src["delta"] is None
        assert hum["auroc"] is None and "reference" in hum["missing"]["auroc"]
        assert src["n_scored"] == hum["n_scored"] == report["counts"]["samples"]
        for c in CHOICES:
            cell = rows[c]["detectors"][name]
            assert cell["n_scored"] + sum(cell["skipped"].values()) == report["counts"]["samples"]
            if cell["n_scored"]:
                assert cell["delta"] == pytest.approx(cell["p_ai"] - src["p_ai"])
    # texts longer than a scorer's context are cut and counted (the tiny BERT reads 12 word pieces)
    assert report["counts"]["truncated"]["classifier"]["human"] == report["counts"]["samples"]
    assert rows["human"]["detectors"]["fast-detectgpt"]["truncated"] > 0
    for c in CHOICES:
        r = rows[c]
        assert r["degenerate_share"] is not None and r["slop_per_1k"] is not None
        assert sum(r["degenerate"].values()) == report["counts"]["rewrites"]["total"] // 3 - r["n_usable"]
    assert set(report["timings"]) >= {"rewrite_s", "score_s", "total_s", "rewrites_per_s"}
    # the events: progress with rows/s and ETA, artifacts, then the report
    lines = main_run["lines"]
    prog = [e for e in lines if e["type"] == "progress" and "rows_per_s" in e]
    assert prog and prog[-1]["step"] == prog[-1]["total"] and "eta" in prog[-1]
    assert {e.get("kind") for e in lines if e["type"] == "artifact"} >= {"eval report", "eval samples"}
    assert any(e["type"] == "sample" and e["choice"] in CHOICES for e in lines)
    sample = json.loads((main_run["dir"] / "samples.jsonl").read_text().splitlines()[0])
    assert set(sample["scores"]) == set(dets) and set(sample["scores"]["classifier"]) == set(rows)
    assert 0 <= sample["scores"]["classifier"]["human"]["p_ai"] <= 1 and sample["scores"]["classifier"]["human"][
        "truncated"]
    assert set(sample["slop"]) == set(rows)


def test_cli_prints_the_table_resumed_from_the_cache(env, main_run, capsys, monkeypatch):
    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")
    spy = Spy(monkeypatch)
    code, out, err = main(env["home"].home, *eval_argv(env, "--resume"), capsys=capsys)
    assert code == 0, err + out
    assert spy.loads == 0 and spy.submits == []  # every rewrite came from the cache
    head = next(line for line in out.splitlines() if line.startswith("row "))
    for col in ("P(AI) classifier", "gap closed", "slop/1K", "ΔP(AI)", "AUROC", "TPR@1%FPR", "cos→draft",
                "cos→human", "length", "degenerate"):
        assert col in head
    assert head.index("P(AI) classifier") < head.index("gap closed") < head.index("slop/1K") < head.index("AUROC")
    assert "headline detector: classifier" in out and "P(AI) fast-detectgpt" in out
    assert "texts cut to 12 tokens" in out and "report: " in out
    text = out.splitlines()
    start = text.index(head) + 1
    body = [line.split()[0] for line in text[start:start + 5]]
    assert body == ["source", *CHOICES, "human"]
    reports = sorted(env["home"].runs_dir.glob("*/report.json"))
    new = json.loads(max(reports, key=lambda p: p.stat().st_mtime).read_text())
    assert new["counts"]["rewrites"] == {"total": 3 * new["counts"]["samples"], "generated": 0,
                                         "from_cache": 3 * new["counts"]["samples"]}
    old = {r["row"]: r for r in main_run["report"]["table"]["rows"]}
    for r in new["table"]["rows"]:
        assert r["slop_per_1k"] == old[r["row"]]["slop_per_1k"]
        assert r["detectors"]["classifier"]["p_ai"] == pytest.approx(old[r["row"]]["detectors"]["classifier"]["p_ai"])

    # a named detector without a profile: scores, AUROC and TPR, "uncalibrated", never an invented P(AI)
    code, out, err = main(env["home"].home, *eval_argv(env, "--resume", "--detector", "fast-detectgpt", "--scorer",
                                                       env["other"], "--json"), capsys=capsys)
    assert code == 0, err + out
    rep = report_of(lines_of(out))
    (d,) = rep["detectors"]
    assert not d["calibrated"] and rep["headline"]["detector"] == "fast-detectgpt"
    assert "uncalibrated" in rep["headline"]["reason"]
    src = rep["table"]["rows"][0]["detectors"]["fast-detectgpt"]
    assert src["p_ai"] is None and src["missing"]["p_ai"].startswith("uncalibrated") and src["auroc"] is not None
    assert "score fast-detectgpt" in format_table(rep) and "uncalibrated" in format_table(rep)


def test_resume_after_cancel_writes_only_the_missing_rewrites(env, main_run, ws, monkeypatch, capsys):
    copy_home(env, ws)
    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")
    add, calls = R.RewriteCache.add, []

    def add_then_cancel(self, records):
        add(self, records)
        calls.append(len(records))
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(R.RewriteCache, "add", add_then_cancel)
    monkeypatch.setattr(R, "CHUNK_BATCHES", 1)
    code, out, err = main(ws.home, *eval_argv(env, "--rows", "2"), capsys=capsys)
    assert code == 130 and calls == [2]
    (cancelled,) = [d for d in ws.runs_dir.iterdir()]
    assert json.loads((cancelled / "job.json").read_text())["status"] == "cancelled"
    assert not (cancelled / "report.json").exists() and len((cancelled / R.CACHE).read_text().splitlines()) == 2

    spy = Spy(monkeypatch)
    code, out, err = main(ws.home, *eval_argv(env, "--rows", "2", "--resume", "--json"), capsys=capsys)
    assert code == 0, err + out
    rep = report_of(lines_of(out))
    total = 3 * rep["counts"]["samples"]
    assert rep["counts"]["rewrites"] == {"total": total, "generated": total - 2, "from_cache": 2}
    assert len(spy.submits) == total - 2 and spy.loads == 1
    # the same rewrites as the eval that was never interrupted: a seed per (sample, choice)
    done = {(r["key"], c): r["rewrites"][c]["text"] for r in map(json.loads, (main_run["dir"] / "samples.jsonl")
                                                                 .read_text().splitlines()) for c in CHOICES}
    new_dir = next(d for d in ws.runs_dir.iterdir() if (d / "report.json").is_file())
    again = {(r["key"], c): r["rewrites"][c]["text"] for r in map(json.loads, (new_dir / "samples.jsonl")
                                                                  .read_text().splitlines()) for c in CHOICES}
    assert again == done

    code, _, err = main(ws.home, *eval_argv(env, "--seed", "9", "--resume"), capsys=capsys)
    assert code == 2 and flat("no earlier eval with these rewrite settings (the newest differs in: seed)") in flat(err)


def test_degenerate_rewrites_are_counted_and_a_detector_that_made_the_data_is_not_the_headline(env, ws, monkeypatch):
    """Two tokens per rewrite: every rewrite is degenerate, so nothing about the choices is
    computed (None, with the reason); the manifest says the classifier filtered the data, so
    fast-detectgpt is the headline."""
    copy_home(env, ws)
    manifest = ws.datasets_dir / DATASET / "manifest.json"
    m = json.loads(manifest.read_text())
    m["filters"] = {"detector": f"classifier:{CLF}"}
    manifest.write_text(json.dumps(m))
    out = ws.runs_dir / "one"
    s = EvalSettings(model=str(env["base"]), adapters=(str(env["sft"]),), data=DATASET, choices=f"base,{SFT}",
                     samples=2, max_tokens=2, encoder=str(env["bert"]), score_max_tokens=48)
    path = E.run_eval(s, ws, out=out)
    rep = json.loads(path.read_text())
    assert rep["counts"]["samples"] == 2 and rep["dataset"]["rows"] >= 2
    dets = {d["name"]: d for d in rep["detectors"]}
    assert dets["classifier"]["helped_make_training_data"]
    assert f"manifest.json filters.detector = 'classifier:{CLF}'" in dets["classifier"]["involvement"]
    assert rep["headline"]["detector"] == "fast-detectgpt" and "classifier helped make" in rep["headline"]["reason"]
    rows = {r["row"]: r for r in rep["table"]["rows"]}
    for c in ("base", SFT):
        r = rows[c]
        assert r["degenerate_share"] == 1.0 and sum(rep["counts"]["degenerate"][c].values()) == 2
        for k in ("cos_draft", "cos_human", "length_ratio"):
            assert r[k] is None and "degenerate" in r["missing"][k]
        for name in dets:
            cell = r["detectors"][name]
            assert cell["n_scored"] == 0 and sum(cell["skipped"].values()) == 2
            assert all(k.startswith("degenerate rewrite: ") for k in cell["skipped"])
            for k in ("p_ai", "mean_score", "auroc", "tpr_at_1pct_fpr", "delta", "gap_closed"):
                assert cell[k] is None and cell["missing"][k], (c, name, k)
    assert rows["source"]["detectors"]["fast-detectgpt"]["p_ai"] is not None
    text = format_table(rep)
    assert "headline detector: fast-detectgpt" in text and "degenerate rewrites: base:" in text
    assert "'—' = not computed: " in text and "helped make the training data" in text
    # a draft whose prompt does not fit the model's context: not generated, counted; the draft is cut to the
    # scorer's context and counted (the held-out file given as a path; its prompt rebuilt from the draft)
    rows = [json.loads(line) for line in (ws.datasets_dir / DATASET / "heldout.jsonl").read_text().splitlines()]
    long_draft = " ".join(d["text"] for d in DOCS[:4])
    held = ws.home / "long" / "heldout.jsonl"
    held.parent.mkdir()
    held.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "prompt"} | {"draft": long_draft}) + "\n")
    s3 = EvalSettings(**{**s.to_dict(), "adapters": (str(env["sft"]),), "data": str(held), "samples": 0,
                         "detector": "fast-detectgpt"})
    rep3 = json.loads(E.run_eval(s3, ws, out=ws.runs_dir / "three").read_text())
    assert rep3["counts"]["not_generated"] == {c: {R.TOO_LONG: 1} for c in ("base", SFT)}
    assert rep3["counts"]["degenerate"] == {c: {"empty": 1} for c in ("base", SFT)}
    assert rep3["counts"]["truncated"]["fast-detectgpt"]["source"] == 1 and rep3["dataset"]["name"] == "heldout"
    (row,) = map(json.loads, (ws.runs_dir / "three" / "samples.jsonl").read_text().splitlines())
    assert row["rewrites"]["base"]["error"].startswith(R.TOO_LONG) and row["rewrites"]["base"]["text"] == ""
    assert row["scores"]["fast-detectgpt"]["base"]["skipped"] == "degenerate rewrite: empty"
    # no encoder: meaning kept is None with the reason, the rest is computed
    s2 = EvalSettings(**{**s.to_dict(), "adapters": (str(env["sft"]),), "encoder": "none", "resume": True,
                         "detector": "classifier"})
    rep2 = json.loads(E.run_eval(s2, ws, out=ws.runs_dir / "two").read_text())
    assert rep2["counts"]["rewrites"]["from_cache"] == 4 and rep2["encoder"] is None
    assert rep2["table"]["rows"][1]["missing"]["cos_draft"] == "no sentence encoder (--encoder none)"
    assert rep2["headline"]["detector"] is None and "every detector at hand helped" in rep2["headline"]["reason"]


def test_bad_input_is_refused_before_anything_is_generated(env, ws, monkeypatch, capsys):
    copy_home(env, ws)
    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")
    spy = Spy(monkeypatch)
    code, _, err = main(ws.home, "eval", env["base"], "--data", DATASET, "--resume", capsys=capsys)
    assert code == 2 and flat("nothing to resume") in flat(err)
    held = ws.datasets_dir / DATASET / "heldout.jsonl"
    rows = [json.loads(line) for line in held.read_text().splitlines()]
    held.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "draft"}) + "\n" for r in rows))
    code, _, err = main(ws.home, *eval_argv(env), capsys=capsys)
    assert code == 2 and flat(f"{held}:1: field 'draft' is missing") in flat(err)
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a profile fitted for another model is refused
    profile = ws.home / "detectors" / "fast-detectgpt-tiny.json"
    code, _, err = main(ws.home, *eval_argv(env, "--detector", "fast-detectgpt", "--scorer", env["other"],
                                            "--profile", profile), capsys=capsys)
    assert code == 2 and flat("calibrated for another scorer model") in flat(err)
    code, out, _ = main(ws.home, *eval_argv(env, "--detector", "fast-detectgpt", "--scorer", env["other"],
                                            "--profile", profile, "--json"), capsys=capsys)
    err_ev = lines_of(out)[-1]
    assert code == 2 and err_ev["type"] == "error" and err_ev["hint"].startswith("fit a profile for this scorer")
    code, _, err = main(ws.home, *eval_argv(env, "--choices", "base,nope"), capsys=capsys)
    assert code == 2 and "--choices: 'nope' names 'nope'" in err
    code, _, err = main(ws.home, *eval_argv(env, "--choices", f"base,{DPO}"), capsys=capsys)
    assert code == 2 and flat(f"adapter '{DPO}' is a delta on '{SFT}' and cannot be used without it") in flat(err)
    assert flat(f"stack them: {SFT}+{DPO}") in flat(err)
    code, _, err = main(ws.home, "eval", env["base"], "--adapter", env["dpo"], "--data", DATASET, capsys=capsys)
    assert code == 2 and flat(f"--adapter {DPO} is a delta on '{SFT}', which is not given before it") in flat(err)
    code, _, err = main(ws.home, "eval", env["base"], "--data", "nope", capsys=capsys)
    assert code == 2 and flat("no dataset named 'nope'") in flat(err)
    (ws.datasets_dir / "noheld").mkdir()
    code, _, err = main(ws.home, "eval", env["base"], "--data", "noheld", capsys=capsys)
    assert code == 2 and flat("has no held-out split") in flat(err)
    assert spy.submits == []  # nothing generated by any of them
    assert not list(ws.runs_dir.glob("*/" + R.CACHE)) or all(
        not p.read_text().strip() for p in ws.runs_dir.glob("*/" + R.CACHE))


def test_help_text(capsys, monkeypatch):
    import tui.cli as C

    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")
    with pytest.raises(SystemExit) as e:
        C.main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for needle in ("--adapter", "--choices", "--samples", "--resume", "--detector", "gap_closed", "report.json",
                   "did not help make the training data"):
        assert needle in out, needle
