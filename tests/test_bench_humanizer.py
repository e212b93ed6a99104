"""bench/bench_humanizer.py and bench/bench_detectors.py without models: the table and goal
formatting, the paired bootstrap of the gap closed, the detector validity figures, picking the
detectors at hand, the orchestration of the CLI steps (the CLI faked), and the refusals (too
few drafts, empty or one-class sets). The benches' figures are measured by the benches, never
asserted here.

The report is shaped exactly like run_eval's report.json: its rows and detector cells are made
by the eval's own functions (engine.eval.table.rewrite_cells / detector_cells over
engine.eval.rewrite_metrics summaries), its top level as run_eval writes it. Human texts are
the Wikipedia fixture's (tests/fixtures/human, CC BY-SA 3.0); the drafts and rewrites are
written for this test (text we write is AI-side text); P(AI) values are chosen.

A smoke run of both benches on tiny models (marked slow, ~2 minutes) runs the real CLI."""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_detectors as BD  # noqa: E402
import bench_humanizer as BH  # noqa: E402

from engine.eval import metrics  # noqa: E402
from engine.eval.rewrite_metrics import summarize_choice, summarize_texts  # noqa: E402
from engine.eval.table import COLUMNS, HUMAN, SOURCE, RowScores, detector_cells, rewrite_cells  # noqa: E402

HUMANS = [json.loads(line)["text"] for line in
          (ROOT / "tests" / "fixtures" / "human" / "wikipedia.jsonl").read_text(encoding="utf-8").splitlines()]
SFT, DPO = "bbc-sft", "bbc-dpo"
CHOICES = ["base", SFT, f"{SFT}+{DPO}"]


class BagOfWords:
    """A stand-in sentence encoder: hashed word counts, unit rows (deterministic)."""

    def embed(self, texts):
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w.strip(".,;:"))) % 64] += 1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(n > 0, n, 1.0)


def _draft(human: str) -> str:
    words = human.split()[:40]
    return ("It is worth noting that " + " ".join(words) + ". In conclusion, this plays a pivotal role.")


def _rewrite(draft: str, how: str) -> str:
    """A stand-in rewrite: the draft's words reversed (no 4-gram copied, the same bag of words)."""
    body = draft.removeprefix("It is worth noting that ").split(". In conclusion")[0]
    rev = lambda t: " ".join(reversed(t.split()))  # noqa: E731
    return {"base": rev(draft) + " Moreover, it is important to delve into the rich tapestry of it.",
            SFT: rev(body) + ". That is how it went.",
            f"{SFT}+{DPO}": rev(body) + ". It was written down then, and it is still read."}[how]


# chosen mean P(AI): drafts 0.9, base 0.85, sft 0.5, sft+dpo 0.15, human 0.2 -> gap closed 0.07, 0.57, 1.07
P_AI = {SOURCE: 0.9, "base": 0.85, SFT: 0.5, f"{SFT}+{DPO}": 0.15, HUMAN: 0.2}


def make_report(n: int = 10, calibrated=True, helped=False) -> tuple[dict, list[dict]]:
    """(report.json, samples.jsonl rows) of an eval of base, SFT and SFT+DPO on n samples."""
    humans = [HUMANS[i % len(HUMANS)] for i in range(n)]
    drafts = [_draft(h) for h in humans]
    rewrites = {c: [_rewrite(d, c) for d in drafts] for c in CHOICES}
    enc = BagOfWords()
    summaries = {c: summarize_choice(drafts, rewrites[c], humans, enc, c, encoder_name="bow") for c in CHOICES}
    labels = [SOURCE, *CHOICES, HUMAN]
    cells = {SOURCE: rewrite_cells(SOURCE, "source", summarize_texts(drafts, SOURCE)),
             HUMAN: rewrite_cells(HUMAN, "human", summarize_texts(humans, HUMAN))}
    for c in CHOICES:
        cells[c] = rewrite_cells(c, "choice", summaries[c])
        cells[c]["detectors"] = {}
    cells[SOURCE]["detectors"], cells[HUMAN]["detectors"] = {}, {}
    spread = np.linspace(-0.05, 0.05, n)
    det_rows = {}
    for name, shift in (("classifier", 0.0), ("fast-detectgpt", 0.02)):
        rows = {}
        for lab in labels:
            p = np.clip(P_AI[lab] + shift + spread, 0, 1)
            rows[lab] = RowScores(score=np.log(p / (1 - p)), p_ai=p if calibrated else None)
        det_rows[name] = rows
        for lab, cell in detector_cells(rows, calibrated).items():
            cells[lab]["detectors"][name] = cell
    detectors = [
        {"name": "classifier", "describe": {"detector": "classifier", "models": {}, "settings": {"name": "bbc-clf"}},
         "calibrated": calibrated, "max_tokens": 256, "profile": {"path": "/w/detectors/bbc-clf/classifier.json",
                                                                  "evaluation": {"auroc": 0.97}, "encoder": "bow"},
         "trained_on": {"dataset": "bbc", "path": "/w/datasets/bbc", "split": "train", "source": "bbc-news"},
         "helped_make_training_data": helped, "involvement": "bbc/manifest.json filter.detector = 'classifier'"
         if helped else "", "notes": ["trained on bbc's training split: it saw the training texts, never the "
                                      "held-out split, and chose none of them (independent of the held-out rewrites)"]},
        {"name": "fast-detectgpt", "describe": {"detector": "fast-detectgpt", "models": {}, "settings": {}},
         "calibrated": calibrated, "max_tokens": 8192,
         "profile": {"path": "/w/detectors/bbc-fast-detectgpt.json", "calibrated_on": {"dataset": "bbc", "split": "train"},
                     "auroc": 0.8, "tpr_at_1pct_fpr": 0.2, "n_human": 90, "n_ai": 90, "created": "2026"},
         "trained_on": None, "helped_make_training_data": False, "involvement": "",
         "notes": ["its scorer is the evaluated model's base (smollm2-135m)"]},
    ]
    if not calibrated:
        for d in detectors:
            d["notes"].append("uncalibrated: no P(AI); scores, AUROC and TPR only")
    from engine.eval.run import pick_headline

    report = {
        "format": 1, "kind": "humanizer eval", "created": "2026-12-04T00:00:00Z",
        "settings": {"model": "smollm2-135m", "adapters": [SFT, DPO], "data": "bbc", "choices": ",".join(CHOICES),
                     "samples": n, "seed": 0},
        "model": {"name": "smollm2-135m", "path": "/w/models/smollm2-135m", "fingerprint": "sha256:00"},
        "adapters": [{"name": SFT, "path": f"/w/adapters/{SFT}", "fingerprint": "sha256:01", "method": "sft",
                      "parent": None},
                     {"name": DPO, "path": f"/w/adapters/{DPO}", "fingerprint": "sha256:02", "method": "dpo",
                      "parent": SFT}],
        "choices": CHOICES, "choice_adapters": {c: [] if c == "base" else c.split("+") for c in CHOICES},
        "dataset": {"name": "bbc", "path": "/w/datasets/bbc", "heldout": "/w/datasets/bbc/heldout.jsonl",
                    "heldout_sha256": "sha256:03", "template": "style-transfer", "source": "bbc-news",
                    "licence": "(c) BBC, research use", "chain": ["bbc"], "rows": n, "samples": n,
                    "sample_keys": [f"k{i}" for i in range(n)]},
        "detectors": detectors, "headline": pick_headline(detectors), "columns": COLUMNS,
        "table": {"rows": [cells[lab] for lab in labels]},
        "counts": {"samples": n, "heldout_rows": n, "rewrites": {"total": 3 * n, "generated": 3 * n, "from_cache": 0},
                   "degenerate": {c: dict(summaries[c].degenerate) for c in CHOICES},
                   "not_generated": {c: {} for c in CHOICES},
                   "truncated": {d["name"]: {lab: 0 for lab in labels} for d in detectors},
                   "skipped": {d["name"]: {lab: {} for lab in labels} for d in detectors},
                   "encoder_truncated": {c: 0 for c in CHOICES}},
        "encoder": {"name": "bow", "path": ""}, "encoder_why_none": None,
        "timings": {"resolve_s": 1.0, "rewrite_s": 10.0, "measure_s": 0.5, "score_s": 2.0, "total_s": 13.5,
                    "rewrites_per_s": 3.0},
    }
    samples = []
    for i in range(n):
        samples.append({"key": f"k{i}", "line": i + 1, "source_id": f"doc{i}", "draft": drafts[i], "human": humans[i],
                        "locks": [], "rewrites": {c: {"text": rewrites[c][i]} for c in CHOICES},
                        "scores": {name: {lab: {"score": float(r[lab].score[i]),
                                                "p_ai": float(r[lab].p_ai[i]) if r[lab].p_ai is not None else None,
                                                "truncated": False, "skipped": None} for lab in labels}
                                   for name, r in det_rows.items()},
                        "slop": {}})
    return report, samples


@pytest.fixture(scope="module")
def made():
    return make_report()


def _row(report, label):
    return next(r for r in report["table"]["rows"] if r["row"] == label)


def _status(goals, word):
    return next(g for g in goals if word in g["goal"])


# --- the humanizer table and goals ------------------------------------------------------------------------


def test_the_fixture_is_shaped_like_run_evals_report(made):
    report, samples = made
    assert list(report) == ["format", "kind", "created", "settings", "model", "adapters", "choices",
                            "choice_adapters", "dataset", "detectors", "headline", "columns", "table", "counts",
                            "encoder", "encoder_why_none", "timings"]
    assert report["headline"]["detector"] == "classifier"
    assert _row(report, f"{SFT}+{DPO}")["detectors"]["classifier"]["gap_closed"] == pytest.approx(75 / 70)
    assert BH.row_roles(report) == {"source": "source", "base": "base", "sft": SFT, "sft+dpo": f"{SFT}+{DPO}",
                                    "human": "human"}


def test_markdown_table_has_every_row_and_column(made):
    report, _ = made
    text = BH.markdown_table(report)
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["row", "P(AI) classifier", "gap closed", "AUROC", "TPR@1%FPR", "P(AI) fast-detectgpt",
                      "gap closed", "AUROC", "TPR@1%FPR", "slop/1K", "cos→draft", "cos→human", "length", "degenerate"]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    assert list(cells) == ["source", "base", f"sft ({SFT})", f"sft+dpo ({SFT}+{DPO})", "human"]
    assert cells["source"][1] == "0.900" and cells["source"][2] == "—"  # no gap for the source row
    assert cells[f"sft+dpo ({SFT}+{DPO})"][2] == "+107%"
    assert cells["human"][3] == "—" and cells["human"][10] == "—"  # no AUROC vs itself, no cos for references
    sd = _row(report, f"{SFT}+{DPO}")
    assert cells[f"sft+dpo ({SFT}+{DPO})"][10:13] == [f"{sd['cos_draft']:.3f}", f"{sd['cos_human']:.3f}",
                                                      f"{sd['length_ratio']:.2f}"]
    assert cells[f"sft+dpo ({SFT}+{DPO})"][13] == "0.0%"


def test_an_uncalibrated_detector_shows_its_score_and_no_gap():
    report, _ = make_report(calibrated=False)
    text = BH.markdown_table(report)
    assert "score classifier" in text and "P(AI)" not in text
    goals = BH.goal_checks(report)
    gap = _status(goals, ">= 100%")
    assert gap["status"] == "N/A" and "uncalibrated" in gap["detail"]
    assert BH.ci_table(report, {}) is not None  # the cosine intervals remain
    assert BH.gap_closed_cis(report, make_report(calibrated=False)[1]) == {}


def test_goal_checks_pass_and_miss_with_their_figures(made):
    report, samples = made
    cis = BH.gap_closed_cis(report, samples, n_boot=500)
    goals = BH.goal_checks(report, cis)
    assert [g["status"] for g in goals][:2] == ["PASS", "PASS"]
    gap = _status(goals, ">= 100%")
    assert gap["figure"] == "+107.1%" and "classifier" in gap["goal"] and "paired 95% CI" in gap["detail"]
    assert "P(AI) drafts 0.900 -> human 0.200" in gap["detail"]
    assert _status(goals, "more of the gap")["figure"] == "+107.1% vs +57.1%"
    sd = _row(report, f"{SFT}+{DPO}")
    assert _status(goals, "cos→draft")["status"] == ("PASS" if sd["cos_draft"] >= 0.8 else "MISS")
    assert _status(goals, "slop")["status"] == "PASS"
    text = BH.format_goals(goals)
    assert text.splitlines()[-1].startswith(f"{sum(g['status'] == 'PASS' for g in goals)} of {len(goals)} goals met")

    bad = copy.deepcopy(report)
    r = _row(bad, f"{SFT}+{DPO}")
    r.update(cos_draft=0.75, length_ratio=1.3, degenerate_share=0.02, slop_per_1k=_row(bad, "human")["slop_per_1k"] + 1)
    r["detectors"]["classifier"]["gap_closed"] = 0.5  # below 100% and below sft's 57%
    goals = BH.goal_checks(bad)
    assert [g["status"] for g in goals] == ["MISS"] * 6
    assert _status(goals, "degenerate")["figure"] == "2.0%"  # 2% is not below 2%
    assert BH.format_goals(goals).splitlines()[-1] == "0 of 6 goals met, 6 missed"

    r["cos_draft"], r["missing"]["cos_draft"] = None, "no sentence encoder at hand"
    g = _status(BH.goal_checks(bad), "cos→draft")
    assert g["status"] == "N/A" and g["figure"] == "—" and g["detail"] == "no sentence encoder at hand"
    assert "1 not measurable" in BH.format_goals(BH.goal_checks(bad))


def test_the_gap_goal_is_never_judged_on_a_detector_that_made_the_data():
    report, _ = make_report(helped=True)
    assert report["headline"]["detector"] == "fast-detectgpt"  # the eval's pick skips the classifier
    gap = _status(BH.goal_checks(report), ">= 100%")
    assert "fast-detectgpt" in gap["goal"]
    report["headline"] = {"detector": "classifier", "reason": "forced"}  # a report that picked it anyway
    gap = _status(BH.goal_checks(report), ">= 100%")
    assert gap["status"] == "N/A" and "helped make the training data" in gap["detail"]
    report["headline"] = {"detector": None, "reason": "every detector at hand helped make the training data"}
    assert _status(BH.goal_checks(report), ">= 100%")["status"] == "N/A"
    assert any("HELPED MAKE THE TRAINING DATA" in line for line in BH.detector_notes(report))


def test_gap_closed_intervals_are_paired_over_samples(made):
    report, samples = made
    cis = BH.gap_closed_cis(report, samples, n_boot=400, seed=1)
    for det in ("classifier", "fast-detectgpt"):
        for label in (SFT, f"{SFT}+{DPO}"):
            lo, hi = cis[det][label]
            point = _row(report, label)["detectors"][det]["gap_closed"]
            assert lo <= point <= hi
        lo, hi = cis[det]["sft+dpo - sft"]
        assert lo > 0  # sft+dpo is 0.35 of P(AI) below sft on every sample
    assert BH.gap_closed_cis(report, samples, n_boot=400, seed=1) == cis
    text = BH.ci_table(report, cis)
    assert "gap closed classifier" in text and "[0.8" in text  # the report's P(AI) interval of the source row
    assert BH.gap_closed_cis(report, []) == {}


def test_a_report_without_the_three_choices_is_refused(made):
    report = copy.deepcopy(made[0])
    report["choice_adapters"] = {"base": []}
    with pytest.raises(BH.BenchError, match="no sft, sft\\+dpo row"):
        BH.markdown_table(report)


# --- sizes and refusals -----------------------------------------------------------------------------------


def test_too_few_drafts_are_refused_unless_allowed():
    with pytest.raises(BH.BenchError, match="nothing to measure"):
        BH.check_size(0, 100, allow_small=True)
    with pytest.raises(BH.BenchError, match="only 40 usable held-out drafts.*at least 100"):
        BH.check_size(40, 100, allow_small=False)
    with pytest.raises(BH.BenchError, match="--samples 30 asks for"):
        BH.check_size(500, 30, allow_small=False)
    assert BH.check_size(40, 100, allow_small=True) == 40
    assert BH.check_size(150, 0, allow_small=False) == 150 and BH.check_size(150, 100, allow_small=False) == 100


def _dataset(home: Path, name: str, rows: list) -> Path:
    folder = home / "datasets" / name
    folder.mkdir(parents=True)
    (folder / "heldout.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                                          encoding="utf-8")
    return folder


def test_heldout_reading_and_locating(tmp_path):
    home = tmp_path / "home"
    rows = [{"draft": _draft(h), "human": h} for h in HUMANS[:3]] + [{"draft": "x", "human": " "}, "not json", "[1]"]
    folder = _dataset(home, "small", rows)
    held = BH.heldout_path(home, "small")
    assert held == folder / "heldout.jsonl" and BH.heldout_path(home, str(folder)) == held
    pairs = BH.read_heldout_pairs(held)
    assert pairs["human"] == HUMANS[:3] and len(pairs["draft"]) == 3 and pairs["bad"] == 3
    with pytest.raises(BH.BenchError, match="no dataset 'nope'"):
        BH.heldout_path(home, "nope")
    with pytest.raises(BH.BenchError, match="is a file"):
        BH.heldout_path(home, str(held))
    (home / "datasets" / "prefs").mkdir()
    with pytest.raises(BH.BenchError, match="no held-out split"):
        BH.heldout_path(home, "prefs")


def test_the_bench_refuses_a_small_dataset_before_running_anything(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    _dataset(home, "small", [{"draft": _draft(h), "human": h} for h in HUMANS])
    monkeypatch.setattr(BH, "run_cli", lambda *a, **k: pytest.fail("no CLI step may run"))
    code = BH.main(["--workspace", str(home), "--data", "small", "--sft", "s", "--dpo", "d"])
    assert code == 2
    err = capsys.readouterr().err
    assert "only 10 usable held-out drafts" in err and "--allow-small" in err
    _dataset(home, "bad", [{"draft": _draft(h), "human": h} for h in HUMANS * 12] + [{"draft": "x"}])
    assert BH.main(["--workspace", str(home), "--data", "bad", "--sft", "s", "--dpo", "d"]) == 2
    assert "1 rows are not JSON objects with a non-empty 'draft' and 'human'" in capsys.readouterr().err


# --- picking the detectors at hand -----------------------------------------------------------------------------


LISTING = {
    "profiles": [
        {"file": "fast-detectgpt-smollm2-135m.json", "path": "/w/detectors/fast-detectgpt-smollm2-135m.json",
         "detector": "fast-detectgpt", "models": {"scorer": "smollm2-135m", "sampler": "smollm2-135m"},
         "settings": {"criterion": "analytic", "sampler_is_scorer": True}, "calibrated_on": {"dataset": "other"},
         "created": "2026-12-01T00:00:00Z"},
        {"file": "bbc-fast-detectgpt.json", "path": "/w/detectors/bbc-fast-detectgpt.json",
         "detector": "fast-detectgpt", "models": {"scorer": "smollm2-135m", "sampler": "smollm2-135m"},
         "settings": {"criterion": "analytic", "sampler_is_scorer": True}, "calibrated_on": {"dataset": "bbc"},
         "created": "2026-12-02T00:00:00Z"},
        {"file": "broken.json", "path": "/w/detectors/broken.json", "error": "not a profile"},
    ],
    "classifiers": [
        {"name": "bbc-classifier", "trained_on": {"dataset": "bbc"}, "created": "2026-12-01T00:00:00Z"},
        {"name": "bbc-clf2", "trained_on": {"dataset": "bbc"}, "created": "2026-12-03T00:00:00Z"},
        {"name": "wiki-clf", "trained_on": {"dataset": "wiki"}, "created": "2026-12-04T00:00:00Z"},
    ],
}


def test_picking_profiles_and_classifiers():
    assert BH.pick_profile(LISTING, "smollm2-135m", "bbc")["file"] == "bbc-fast-detectgpt.json"
    assert BH.pick_profile(LISTING, "smollm2-360m", "bbc") is None
    assert BH.pick_profile(LISTING, "smollm2-135m", "news") is None
    assert BH.pick_classifier(LISTING, "bbc")["name"] == "bbc-clf2" and BH.pick_classifier(LISTING, "x") is None
    taken = BH.taken_names(LISTING)
    assert BH.free_name(taken, "bbc-classifier") == "bbc-classifier-2" and BH.free_name(taken, "news-x") == "news-x"
    assert BH.model_label("smollm2-135m") == "smollm2-135m" and BH.model_label("/m/tiny/") == "tiny"


class FakeCli:
    """Stands in for bench_humanizer.run_cli: records each argv and answers as the CLI would."""

    def __init__(self, listing: dict, report_dir: Path, report: dict, samples: list[dict]):
        self.calls, self.listing, self.dir, self.report, self.samples = [], listing, report_dir, report, samples

    def __call__(self, home, argv, log_path, echo=print, **k):
        self.calls.append(list(map(str, argv)))
        events = []
        if argv[:2] == ["detect", "list"]:
            log_path.write_text(json.dumps(self.listing, indent=2))
        elif argv[:2] == ["detect", "calibrate"]:
            name = argv[argv.index("--profile") + 1]
            events.append({"type": "profile", "path": f"/w/detectors/{name}.json", "auroc": 0.81})
        elif argv[:2] == ["detect", "train"]:
            events.append({"type": "classifier", "path": "/w/c.json", "auroc": 0.9})
        elif argv[0] == "eval":
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "report.json").write_text(json.dumps(self.report))
            (self.dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in self.samples))
            events.append({"type": "report", "path": str(self.dir / "report.json")})
        if not log_path.is_file():
            log_path.write_text("")
        return BH.CliResult(list(map(str, argv)), 0, 0.01, events, log_path)


def test_the_bench_makes_missing_detectors_then_runs_the_eval(tmp_path, monkeypatch, capsys):
    report, samples = make_report(n=100)
    home = tmp_path / "home"
    _dataset(home, "bbc", [{"draft": _draft(HUMANS[i % 10]), "human": HUMANS[i % 10]} for i in range(120)])
    fake = FakeCli({"profiles": [], "classifiers": LISTING["classifiers"][2:]}, tmp_path / "run", report, samples)
    monkeypatch.setattr(BH, "run_cli", fake)
    out_json = tmp_path / "out.json"
    code = BH.main(["--workspace", str(home), "--data", "bbc", "--sft", SFT, "--dpo", f"/w/adapters/{DPO}",
                    "--seed", "3", "--json", str(out_json)])
    assert code == 0, capsys.readouterr().err
    kinds = [c[:2] if c[0] == "detect" else c[:1] for c in fake.calls]
    assert kinds == [["detect", "list"], ["detect", "calibrate"], ["detect", "train"], ["eval"]]
    cal, train, ev = fake.calls[1], fake.calls[2], fake.calls[3]
    assert cal[cal.index("--dataset") + 1] == "bbc" and cal[cal.index("--profile") + 1] == "bbc-fast-detectgpt"
    assert cal[cal.index("--scorer") + 1] == "smollm2-135m"
    assert train[train.index("--name") + 1] == "bbc-classifier"
    assert ev[ev.index("--choices") + 1] == f"base,{SFT},{SFT}+{DPO}"
    assert ev[ev.index("--samples") + 1] == "100" and ev[ev.index("--seed") + 1] == "3"
    assert ev[ev.index("--profile") + 1] == "/w/detectors/bbc-fast-detectgpt.json"
    assert ev[ev.index("--classifier") + 1] == "bbc-classifier" and "--json" in ev
    out = capsys.readouterr().out
    assert "| sft+dpo (bbc-sft+bbc-dpo)" in out and "### Goals" in out and "PASS  sft+dpo closes >= 100%" in out
    assert "Wall time per stage:" in out and "calibrate  ran" in out
    saved = json.loads(out_json.read_text())
    assert saved["bench"] == "humanizer" and saved["samples"] == 100 and len(saved["goals"]) == 6
    assert saved["report"]["table"] == report["table"] and saved["detectors_used"]["classifier"] == "bbc-classifier"

    # a second run reuses what exists
    fake2 = FakeCli(LISTING, tmp_path / "run2", report, samples)
    monkeypatch.setattr(BH, "run_cli", fake2)
    assert BH.main(["--workspace", str(home), "--data", "bbc", "--sft", SFT, "--dpo", DPO]) == 0
    assert [c[:2] for c in fake2.calls][:1] == [["detect", "list"]] and fake2.calls[1][0] == "eval"
    ev = fake2.calls[1]
    assert ev[ev.index("--profile") + 1] == "/w/detectors/bbc-fast-detectgpt.json"
    assert ev[ev.index("--classifier") + 1] == "bbc-clf2"
    assert "reused" in capsys.readouterr().out


def test_an_eval_with_too_few_samples_is_refused_after_the_fact(tmp_path, monkeypatch, capsys):
    report, samples = make_report(n=10)
    home = tmp_path / "home"
    _dataset(home, "bbc", [{"draft": _draft(HUMANS[i % 10]), "human": HUMANS[i % 10]} for i in range(120)])
    monkeypatch.setattr(BH, "run_cli", FakeCli(LISTING, tmp_path / "run", report, samples))
    assert BH.main(["--workspace", str(home), "--data", "bbc", "--sft", SFT, "--dpo", DPO]) == 2
    assert "the eval rewrote only 10 drafts" in capsys.readouterr().err


# --- detector validity ------------------------------------------------------------------------------------------


def test_empty_and_one_class_sets_are_refused():
    with pytest.raises(BH.BenchError, match="no texts at all"):
        BD.check_classes(0, 0, allow_small=True)
    with pytest.raises(BH.BenchError, match="only one class \\(120 human, 0 AI"):
        BD.check_classes(120, 0, allow_small=True)
    with pytest.raises(BH.BenchError, match="only one class"):
        BD.check_classes(0, 120, allow_small=True)
    with pytest.raises(BH.BenchError, match="fewer than 100 of a class"):
        BD.check_classes(120, 99, allow_small=False)
    BD.check_classes(5, 5, allow_small=True)
    with pytest.raises(BH.BenchError, match="nothing to compare: 0 human"):
        BD.validity([math.nan, None], [1.0, 2.0])


def test_labelled_heldout_dedupes_and_limits():
    pairs = {"human": HUMANS + HUMANS[:2], "draft": [_draft(h) for h in HUMANS] + ["d", "d"]}
    t = BD.labelled_heldout(pairs)
    assert t["human"] == HUMANS and len(t["ai"]) == 11 and t["duplicates"] == {"human": 2, "ai": 1}
    t4 = BD.labelled_heldout(pairs, limit=4, seed=1)
    assert len(t4["human"]) == len(t4["ai"]) == 4 and t4 == BD.labelled_heldout(pairs, limit=4, seed=1)


def test_validity_figures_and_intervals():
    rng = np.random.default_rng(0)
    h, a = rng.normal(0, 1, 200), rng.normal(1.5, 1, 150)
    v = BD.validity(list(h) + [math.nan], a, human_p=[0.2] * 201, ai_p=[0.7] * 150, n_boot=300)
    assert v["auroc"] == metrics.auroc(h, a) and v["tpr_at_1pct_fpr"] == metrics.tpr_at_fpr(h, a, 0.01)
    assert v["auroc_ci"][0] <= v["auroc"] <= v["auroc_ci"][1] and v["tpr_ci"][0] <= v["tpr_at_1pct_fpr"] <= v["tpr_ci"][1]
    assert v["skipped"] == {"human": 1, "ai": 0} and v["n_human"] == 200
    assert v["realised_fpr"] <= 0.01 and v["human_texts_flaggable"] == 2
    assert v["p_ai_human"] == pytest.approx(0.2) and v["p_ai_ai_ci"] == pytest.approx([0.7, 0.7])
    assert BD.validity(h, a, n_boot=300)["p_ai_human"] is None
    assert BD.speed(10, 500, 2.0) == {"texts": 10, "tokens": 500, "score_s": 2.0, "texts_per_s": 5.0,
                                      "tokens_per_s": 250.0}


def _child_result(name: str, h, a, calibrated=True) -> dict:
    s = list(h) + list(a)
    return {"detector": name, "score": s, "p_ai": [1 / (1 + math.exp(-x)) for x in s] if calibrated else None,
            "n_tokens_total": 40 * len(s), "truncated": 0, "skipped": 0, "max_tokens": 8192, "batch_size": 4,
            "describe": {}, "made_on": {"calibrated_on": {"dataset": "bbc", "split": "train"}, "auroc": 0.8},
            "load_s": 1.0, "warmup_s": 0.5, "score_s": 4.0, "other_cpus": 0.0, "memory": {}, "blas": {"name": "x"}}


def test_results_table_and_the_reference_comparison():
    rng = np.random.default_rng(1)
    h, a = rng.normal(0, 1, 120), rng.normal(0.3, 1, 120)
    fd = BD.summarize_child(_child_result("fast-detectgpt", h, a), 120, n_boot=300)
    clf = BD.summarize_child(_child_result("classifier", h, a + 3, calibrated=False), 120, n_boot=300)
    assert fd["speed"]["texts_per_s"] == 60.0 and fd["speed"]["tokens_per_s"] == 2400.0 and clf["p_ai_ai"] is None
    lines = BD.results_table([fd, clf]).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")][:3] == ["detector", "AUROC", "95% CI"]
    assert lines[2].startswith("| fast-detectgpt") and f"{fd['auroc']:.3f}" in lines[2]
    assert lines[-1].startswith("| reference: fast-detectgpt") and "0.76" in lines[-1] and "15%" in lines[-1]
    comp = BD.reference_comparison([fd, clf], "smollm2-135m", "smollm2-135m")
    assert "0.76" in comp[0] and comp[1].startswith(f"ours: AUROC {fd['auroc']:.3f}")
    assert any("drafted by the scorer model itself" in line for line in comp)
    assert "no comparison" in BD.reference_comparison([clf], None, "smollm2-135m")[0]


def test_planning_the_detectors(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    args = argparse.Namespace(
        detectors="", batch_size=0, max_tokens=0, scorer="smollm2-135m", profile="", classifier="", radar="",
        binoculars_performer="")
    plan, skipped = BD.plan_detectors(args, LISTING, "bbc")
    assert [p["name"] for p in plan] == ["fast-detectgpt", "classifier"]
    assert plan[0]["settings"]["profile"] == "/w/detectors/bbc-fast-detectgpt.json"
    assert plan[1]["settings"]["name"] == "bbc-clf2"
    assert set(skipped) == {"binoculars", "radar"} and "Hugging Face cache" in skipped["radar"]
    plan, skipped = BD.plan_detectors(args, LISTING, "news")  # no profile on news: the newest for the scorer
    assert plan[0]["settings"]["profile"] == "/w/detectors/bbc-fast-detectgpt.json" and "classifier" in skipped
    (tmp_path / "hub" / "models--TrustSafeAI--RADAR-Vicuna-7B" / "snapshots").mkdir(parents=True)
    args.detectors, args.binoculars_performer = "radar,binoculars", "smollm2-360m"
    plan, skipped = BD.plan_detectors(args, LISTING, "bbc")
    assert [p["name"] for p in plan] == ["binoculars", "radar"] and plan[1]["offline"] and not skipped
    args.detectors = "gptzero"
    with pytest.raises(BH.BenchError, match="unknown gptzero"):
        BD.plan_detectors(args, LISTING, "bbc")


# --- a smoke run on tiny models (the real CLI) ---------------------------------------------------------------


@pytest.mark.slow
def test_smoke_both_benches_on_tiny_models(tmp_path, monkeypatch):
    """The benches end to end on a tiny llama, its adapters, a tiny BERT and a dataset built from
    the Wikipedia fixture (--allow-small: its figures mean nothing)."""
    import subprocess

    pytest.importorskip("transformers")
    from engine.data import build as B
    from engine.data import writers
    from engine.workspace import Workspace
    from tests.test_data_build import ScriptedWriter
    from tests.test_data_build import settings as build_settings
    from tests.test_eval_models import make_tiny_bert
    from tests.test_generate import make_adapters, make_lively_llama

    base = make_lively_llama(tmp_path / "models" / "tiny", seed=3)
    sft, dpo = make_adapters(base, tmp_path / "adapters")
    make_tiny_bert(tmp_path / "bert", max_seq_length=12, seed=1)
    home = Workspace.open(tmp_path / "home")
    with monkeypatch.context() as m:
        m.setattr(writers, "open_writer", lambda *a, **k: ScriptedWriter())
        B.build(build_settings(output="wiki", valid_share=0.0, heldout=3, min_words=20, max_words=60), home)
    run = lambda script, *argv: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "bench" / script), "--workspace", str(home.home), "--data", "wiki",
         "--allow-small", *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = tmp_path / "h.json"
    p = run("bench_humanizer.py", "--model", base, "--sft", sft, "--dpo", dpo, "--encoder", tmp_path / "bert",
            "--samples", 0, "--json", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert len(saved["goals"]) == 6 and saved["report"]["counts"]["samples"] >= 2
    assert [s["stage"] for s in saved["stages"]] == ["list", "calibrate", "classifier", "eval"]
    out = tmp_path / "d.json"
    p = run("bench_detectors.py", "--scorer", base, "--json", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert [r["detector"] for r in saved["results"]] == ["fast-detectgpt", "classifier"]
    leak = saved["leak_check"]
    assert leak["checked"] and leak["human"] == leak["ai"] == 0 and leak["train_texts"] > 0
