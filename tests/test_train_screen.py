"""The Train screen (mode 3) and its line chart: a real tiny SFT run started from the form,
live metrics, the run surviving the app, reattaching with its whole history, cancelling it
from the UI; past runs and a second run overlaid; the dataset preview's row errors; the
form's validation; snapshots at 80x24 and 120x40 of a finished SFT run and a DPO run."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest
from rich.text import Text

from engine.events import Run
from engine.jobs import find_job, list_jobs
from engine.workspace import Workspace
from screens.common.charts import STYLES, LineChart, Series, fmt_num, render_chart
from screens.train.screen import RunHistory, TrainScreen, parse_extra
from screens.common.dialogs import ConfirmDialog
from tests.pilot import cli_settings, steady_cursors, text_of, until
from tests.tiny import make_tiny_llama
from tui.app import HumanizerApp

FACTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris.",
    "Low-rank adapters are trained, stacked, fused and served on one machine.",
    "Numbers 0123456789 and punctuation: commas, dots; colons!",
]
FAST_FLAGS = ("--rank 2 --num-layers 1 --batch-size 2 --steps-per-report 2 --steps-per-eval 4 --val-batches 1 "
              "--max-seq-length 256")


def loss_points(screen) -> int:
    chart = screen.query_one("#chart-loss", LineChart)
    return len(chart.series[0].points) if chart.series else 0


def write_sft_data(path, n: int = 16) -> None:
    rows = [{"prompt": f"Tell me fact {i}", "completion": FACTS[i % len(FACTS)]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def finished_run(ws: Workspace, name: str, method: str, metrics: list[tuple[int, dict]], iters: int) -> str:
    """A finished `lora train` run written by the real run writer."""
    argv = ["humanizer", "lora", "train", "tiny", "--data", "/data/x", "--method", method, "--iters", str(iters),
            "--output", str(ws.adapters_dir / name)]
    run = Run.create(ws.runs_dir, f"lora train {method}", argv, cli_settings(argv))
    with run:
        run.progress(0, iters, f"step 0/{iters}")
        for step, values in metrics:
            run.metric(step, **values)
            run.progress(step, iters, f"step {step}/{iters}", eta=0.0)
        run.done(adapter=str(ws.adapters_dir / name))
    return run.id


def sft_metrics(iters: int, scale: float = 1.0) -> list[tuple[int, dict]]:
    out = []
    for s in range(0, iters + 1, 5):
        if s:
            out.append((s, {"loss": scale * (3 * math.exp(-s / 20) + 0.5), "learning_rate": 1e-4,
                            "tokens_per_second": 90.0, "peak_memory_gb": 0.5, "trained_tokens": 10 * s}))
        if s % 10 == 0:
            out.append((s, {"val_loss": scale * (3.2 * math.exp(-s / 25) + 0.6), "val_kl": 0.001 * s}))
    return out


# the chart ---------------------------------------------------------------------------------
def test_chart_draws_braille_with_labels_and_legend():
    train = [(s, 3 * math.exp(-s / 50) + 0.3) for s in range(0, 201, 10)]
    val = [(s, 3.2 * math.exp(-s / 60) + 0.4) for s in range(0, 151, 50)]
    text = render_chart([Series("train", train, 0), Series("val", val, 1)], 40, 10, title="Loss")
    lines = text.plain.split("\n")
    assert len(lines) == 10 and all(len(line) <= 40 for line in lines)
    assert lines[0].startswith("Loss") and "● train 0.3549" in lines[0] and "◆ val 0.6627" in lines[0]
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in text.plain)  # braille
    assert lines[1].lstrip().startswith(fmt_num(val[0][1], 3))  # y max label on the top row
    assert lines[-2].lstrip().startswith(fmt_num(train[-1][1], 3))  # y min label on the bottom plot row
    assert lines[-1].strip().startswith("└0") and lines[-1].endswith("200") and "step" in lines[-1]
    assert text.plain.count("◆") == 1 + len(val)  # the sparse series: every point marked (and the legend)
    assert text.plain.count("●") == 2  # the dense one: its last point (and the legend)


def test_chart_series_differ_without_colour():
    """Every style has its own marker glyph, and overlaid styles a dash pattern of their own."""
    assert len({s.marker for s in STYLES}) == len(STYLES)
    assert STYLES[2].dash != STYLES[0].dash
    pts = [(s, float(s)) for s in range(100)]
    solid = render_chart([Series("a", pts, 0)], 30, 6).plain
    dotted = render_chart([Series("a", pts, 2)], 30, 6).plain
    dots = lambda t: sum(bin(ord(c) - 0x2800).count("1") for c in t if 0x2800 < ord(c) <= 0x28FF)  # noqa: E731
    assert dots(dotted) < dots(solid)


@pytest.mark.parametrize("width", [0, 1, 3, 8, 12, 20])
@pytest.mark.parametrize("height", [0, 1, 2, 3, 4, 6])
def test_chart_never_breaks_in_small_sizes(width, height):
    series = [Series("train loss", [(s, math.sin(s)) for s in range(50)], 0),
              Series("val", [(0, 1.0), (10, float("nan")), (20, float("inf")), (30, 0.5)], 1)]
    text = render_chart(series, width, height, title="Loss")
    lines = text.plain.split("\n") if text.plain else []
    assert len(lines) <= height and all(Text(line).cell_len <= width for line in lines)


def test_chart_empty_flat_and_fixed_range():
    assert "no data yet" in render_chart([Series("a", [])], 30, 5, title="KL").plain
    flat = render_chart([Series("a", [(0, 2.0), (10, 2.0)])], 30, 6).plain
    assert "2.1" in flat and "1.9" in flat  # a flat line gets a little room
    acc = render_chart([Series("acc", [(0, 0.5), (10, 0.75)])], 30, 6, y_min=0.0, y_max=1.0).plain.split("\n")
    assert acc[1].lstrip().startswith("1┤") and acc[-2].lstrip().startswith("0┤")
    assert fmt_num(1.03e-05) == "1.03e-5" and fmt_num(20.0) == "20" and fmt_num(0.69314) == "0.6931"


# helpers ----------------------------------------------------------------------------------
def test_extra_flags():
    assert parse_extra("--rank 4 --learning-rate=2e-4 --skip-bad-rows") == (
        ["--rank", "4", "--learning-rate=2e-4", "--skip-bad-rows"], None)
    assert "set by the form" in parse_extra("--iters 5")[1]
    assert "unknown flag --bogus" in parse_extra("--bogus 1")[1]
    assert "not an integer" in parse_extra("--rank four")[1]
    assert "needs a value" in parse_extra("--rank")[1]


# a real run from the form -----------------------------------------------------------------------
async def test_train_from_the_form_reattach_and_cancel(ws, tmp_path):
    make_tiny_llama(ws.models_dir / "tiny")
    data = tmp_path / "sft.jsonl"
    write_sft_data(data)
    job_id = None
    try:
        app = HumanizerApp(ws)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("3")
            screen = app.screen
            assert isinstance(screen, TrainScreen) and app.current_mode == "train"
            await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
            assert screen.query_one("#f-output").value == "tiny-sft"  # suggested from model and method
            await pilot.press("n", "tab")  # the form: model, then dataset
            assert screen.focused.id == "f-data"
            await pilot.press(*str(data))
            await until(pilot, lambda: "16 rows" in text_of(screen, "#preview-summary"), 10, "the preview")
            assert "no row errors" in text_of(screen, "#preview-summary")
            assert screen.query_one("#preview-table").row_count == 16
            screen.query_one("#f-iters").focus()
            await pilot.press(*"100000")
            screen.query_one("#f-extra").value = FAST_FLAGS  # small and quick (typing it costs seconds)
            await pilot.pause()
            await pilot.press("ctrl+s")
            await until(pilot, lambda: screen.shown is not None, 5, "the run to start")
            job_id = screen.shown
            job = find_job(ws, job_id)
            assert job.kind == "lora train sft"
            args = job.settings  # what the form gave, then what the child resolved
            assert args["data"] == str(data) and args["iters"] == 100000 and args["rank"] == 2
            assert args["output"] == str(ws.adapters_dir / "tiny-sft")
            await until(pilot, lambda: loss_points(screen) >= 2 or find_job(ws, job_id).status == "failed", 60,
                        "train loss points on the chart")
            assert loss_points(screen) >= 2, text_of(screen, "#run-title")
            numbers = text_of(screen, "#run-numbers")
            assert "loss " in numbers and "tok/s" in numbers and "lr " in numbers and "peak" in numbers
            title = text_of(screen, "#run-title")
            assert "● running" in title and "tiny-sft" in title and "/100000" in title and "ETA" in title
            assert screen.query_one("#f-output").value == "tiny-sft-2"  # the next suggestion
            seen = loss_points(screen)
        assert find_job(ws, job_id).status == "running"  # closing the app leaves the run going

        app = HumanizerApp(ws, mode="train")  # a new app: the run and its history come from runs/
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await until(pilot, lambda: screen.shown == job_id and loss_points(screen) > seen, 30,
                        "the live run with its whole history")
            history = RunHistory(find_job(ws, job_id))
            history.update()
            assert len(history.metrics["loss"]) >= loss_points(screen) - 2  # read from the first event
            assert screen.query_one("#chart-loss", LineChart).series[0].points[0][0] == 2  # the first report
            kl = screen.query_one("#chart-kl", LineChart)
            assert kl.series and kl.series[0].points[0][0] == 0  # the eval at step 0
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the confirm dialog")
            await pilot.press("y")
            await until(pilot, lambda: "cancelled" in text_of(screen, "#run-title"), 20, "the run cancelled")
        job = find_job(ws, job_id)
        assert job.status == "cancelled"
        assert (ws.adapters_dir / "tiny-sft" / "checkpoints").is_dir()  # a checkpoint to resume from
    finally:
        if job_id and find_job(ws, job_id).running:
            os.killpg(find_job(ws, job_id).pid, signal.SIGKILL)


# past runs and overlay ---------------------------------------------------------------------------
async def test_past_runs_open_and_overlay(ws):
    old = finished_run(ws, "first-sft", "sft", sft_metrics(40, scale=1.3), 40)
    time.sleep(0.01)
    new = finished_run(ws, "second-sft", "sft", sft_metrics(60), 60)
    app = HumanizerApp(ws, mode="train")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen.shown == new and new in screen.histories and loss_points(screen), 10,
                    "the newest run's curves")
        chart = screen.query_one("#chart-loss", LineChart)
        assert [s.name for s in chart.series] == ["train", "val"]
        assert len(chart.series[0].points) == 12 and len(chart.series[1].points) == 7
        assert "✓ done" in text_of(screen, "#run-title") and "step 60/60" in text_of(screen, "#run-title")
        table = screen.query_one("#runs-table")
        await until(pilot, lambda: table.row_count == 2, 5, "both runs in the table")
        assert screen.focused is table

        await pilot.press("down", "v")  # overlay the older run
        assert screen.overlay == old
        assert [s.name for s in chart.series] == ["A:train", "A:val", "B:train", "B:val"]
        assert len(chart.series[2].points) == 8 and chart.series[2].style == 2
        assert "B = first-sft" in text_of(screen, "#run-title")
        assert "B" in str(table.get_row(old)[0])

        await pilot.press("v")  # again: removed
        assert screen.overlay is None and len(chart.series) == 2
        await pilot.press("enter")  # open the older run
        assert screen.shown == old
        assert len(chart.series[0].points) == 8
        await pilot.pause(0.5)
        assert screen.shown == old  # it stays

        third = finished_run(ws, "from-the-cli", "sft", sft_metrics(20), 20)  # a run that appears meanwhile
        await until(pilot, lambda: screen.shown == third and len(chart.series[0].points) == 4, 10,
                    "the new run shown")
        assert table.row_count == 3

        names = [c[0] for c in app.palette_commands(app.screen)]
        assert "Open run: second-sft" in names and "Compare with run: second-sft" in names
        assert "Train a LoRA adapter…" in names and "Mode: Models" in names and "Mode: Train" not in names


# the dataset preview and validation ---------------------------------------------------------------
async def test_dataset_preview_shows_row_errors(ws, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"prompt": "a"}\n'
                   '{"prompt": 3, "completion": "b"}\n')
    app = HumanizerApp(ws, mode="train")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        screen.query_one("#f-data").value = str(bad)
        await until(pilot, lambda: "row error" in text_of(screen, "#preview-summary"), 10, "the preview")
        assert "4 rows" in text_of(screen, "#preview-summary") and "3 row errors" in text_of(screen,
                                                                                                "#preview-summary")
        issues = text_of(screen, "#preview-issues")
        assert "bad.jsonl:2: not valid JSON" in issues
        assert "bad.jsonl:3: field 'completion': missing" in issues
        assert "bad.jsonl:4: field 'prompt'" in issues and "--skip-bad-rows" in issues
        await pilot.press("ctrl+s")
        errors = text_of(screen, "#f-errors")
        assert "3 row errors" in errors and "model: required" in errors
        assert not list_jobs(ws)


async def test_validation_errors(ws, tmp_path):
    make_tiny_llama(ws.models_dir / "tiny")
    (ws.adapters_dir / "used" / "checkpoints" / "step-000010").mkdir(parents=True)  # a run was here
    app = HumanizerApp(ws, mode="train")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
        screen.query_one("#f-data").value = str(tmp_path / "missing" / "train.jsonl")
        screen.query_one("#f-output").value = "used"
        screen.query_one("#f-extra").value = "--rank four"
        screen.query_one("#f-ranks").value = str(tmp_path / "hosts.json")  # --hosts: no such hostfile
        await pilot.pause()
        await pilot.press("ctrl+s")
        errors = text_of(screen, "#f-errors")
        assert "dataset: no such file or folder" in errors
        assert "output: adapters/used already holds a training run" in errors
        assert "flags: --rank four: not an integer" in errors
        assert f"ranks: --hosts: {tmp_path / 'hosts.json'}: no such file" in errors
        assert screen.focused.id == "f-data"  # the first problem gets the focus
        await until(pilot, lambda: "dataset not found" in text_of(screen, "#preview-summary"), 10,
                    "the preview's error")
        screen.query_one("#f-data").value = ""
        screen.query_one("#f-resume").value = True  # resume makes the used output fine
        screen.query_one("#f-extra").value = ""
        screen.query_one("#f-ranks").value = "2"
        await pilot.pause()
        await pilot.press("ctrl+s")
        errors = text_of(screen, "#f-errors")
        assert "dataset: required" in errors and "output" not in errors and "flags" not in errors
        assert "ranks" not in errors
        assert not list_jobs(ws)


# snapshots ------------------------------------------------------------------------------------------
T0 = 1735808400.0  # 2025-01-02 09:00:00 UTC
NOW = T0 + 3 * 3600


def _run_dir(ws: Workspace, run_id: str, kind: str, argv: list[str], events: list[dict], status: str,
             started: float, ended: float | None) -> None:
    d = ws.runs_dir / run_id
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"id": run_id, "kind": kind, "argv": argv, "pid": 999999,
                                            "settings": cli_settings(argv),
                                            "status": status, "started": started, "ended": ended}))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _sft_events(t0: float, iters: int = 200) -> list[dict]:
    ev = []
    for s in range(0, iters + 1):
        if s and s % 10 == 0:
            lr = 1e-4 * min(1.0, (s + 1) / 10) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / iters)))
            ev.append({"t": t0 + s, "type": "metric", "step": s, "values": {
                "loss": round(2.5 * math.exp(-s / 60) + 0.6 + 0.05 * math.sin(s / 7), 4), "learning_rate": lr,
                "tokens_per_second": round(95 + 3 * math.sin(s / 13), 2), "peak_memory_gb": 1.234,
                "trained_tokens": 40 * s}})
        if s % 50 == 0:
            ev.append({"t": t0 + s, "type": "metric", "step": s, "values": {
                "val_loss": round(2.7 * math.exp(-s / 70) + 0.7, 4), "val_kl": 0.0 if s == 0 else 0.0001 * s + 0.003,
                "eval_seconds": 1.2}})
        if s:
            ev.append({"t": t0 + s, "type": "progress", "step": s, "total": iters, "eta": iters - s,
                       "message": f"step {s}/{iters}"})
    ev.append({"t": t0 + iters + 1, "type": "done", "adapter": "adapters/humanizer-sft"})
    return ev


def _dpo_events(t0: float, iters: int = 100, upto: int = 60) -> list[dict]:
    """A DPO run still going: reference log-probs computed, then steps up to `upto`."""
    ev = [{"t": t0, "type": "progress", "step": 40, "total": 40, "message": "reference log-probs",
           "phase": "reference"}]
    for s in range(0, upto + 1):
        f = s / iters
        if s and s % 5 == 0:
            m = round(0.8 * f + 0.05 * math.sin(s), 4)
            ev.append({"t": t0 + s, "type": "metric", "step": s, "values": {
                "loss": round(0.693 - 0.4 * f, 4), "chosen_reward": round(0.1 + m / 2, 4),
                "rejected_reward": round(0.1 - m / 2, 4), "margin": m, "accuracy": min(1.0, 0.5 + 0.5 * f),
                "chosen_logp": round(-40 + 2 * f, 3), "rejected_logp": round(-42 - 8 * f, 3),
                "learning_rate": 1e-5, "tokens_per_second": 60.0, "peak_memory_gb": 1.5, "trained_tokens": 80 * s}})
        if s % 25 == 0:
            ev.append({"t": t0 + s, "type": "metric", "step": s, "values": {
                "val_loss": round(0.693 - 0.3 * f, 4), "val_kl": round(0.01 * f, 5),
                "val_accuracy": round(min(1.0, 0.5 + 0.4 * f), 3), "val_margin": round(0.6 * f, 4)}})
        if s:
            ev.append({"t": t0 + s, "type": "progress", "step": s, "total": iters, "eta": iters - s,
                       "message": f"step {s}/{iters}"})
    return ev


@pytest.fixture
def studio(tmp_path, monkeypatch, utc) -> Workspace:
    """Fixed runs: a finished SFT run, an older SFT run, and (when asked) a DPO run on top."""
    monkeypatch.setenv("HOME", str(tmp_path))
    ws = Workspace.open(tmp_path / ".humanizer")
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    (ws.models_dir / "tiny").mkdir()
    (ws.models_dir / "tiny" / "config.json").write_text('{"model_type": "llama"}')
    base = ["humanizer", "lora", "train", str(ws.models_dir / "tiny"), "--preset", "small"]
    _run_dir(ws, "20250102-090000-lora-train-sft-3f9a", "lora train sft",
             base + ["--data", "/data/sft", "--method", "sft", "--iters", "200", "--output",
                     str(ws.adapters_dir / "humanizer-sft")], _sft_events(T0), "done", T0, T0 + 400)
    old = [e for e in _sft_events(T0 - 3600, 150)]
    for e in old:
        if e["type"] == "metric":
            e["values"] = {k: (v * 1.25 if "loss" in k else v) for k, v in e["values"].items()}
    _run_dir(ws, "20250102-080000-lora-train-sft-77aa", "lora train sft",
             base + ["--data", "/data/sft", "--method", "sft", "--iters", "150", "--output",
                     str(ws.adapters_dir / "humanizer-sft-r8")], old, "done", T0 - 3600, T0 - 3300)
    return ws


def _with_dpo(ws: Workspace) -> Workspace:
    t = T0 + 3600
    _run_dir(ws, "20250102-100000-lora-train-dpo-c0de", "lora train dpo",
             ["humanizer", "lora", "train", str(ws.models_dir / "tiny"), "--data", "/data/dpo", "--method", "dpo",
              "--preset", "small", "--iters", "100", "--output", str(ws.adapters_dir / "humanizer-dpo"),
              "--mount-adapter", str(ws.adapters_dir / "humanizer-sft")], _dpo_events(t), "running", t, None)
    info = json.loads((ws.runs_dir / "20250102-100000-lora-train-dpo-c0de" / "job.json").read_text())
    from engine.events import process_start_time

    info.update(pid=os.getpid(), pid_start=process_start_time(os.getpid()))  # alive: this process
    (ws.runs_dir / "20250102-100000-lora-train-dpo-c0de" / "job.json").write_text(json.dumps(info))
    return ws


def _app(ws: Workspace) -> HumanizerApp:
    return HumanizerApp(ws, clock=lambda: NOW, mode="train")


def _settled(*keys: str):
    async def run_before(pilot) -> None:
        screen = pilot.app.screen
        await until(pilot, lambda: screen.shown in screen.histories and screen._value("f-model")
                    and all(j.id in screen.histories for j in screen.run_jobs()), 10, "the runs")
        await pilot.press(*keys)
        steady_cursors(pilot.app.screen)
        await pilot.pause(0.5)  # at least one redraw tick
        await pilot.wait_for_scheduled_animations()
    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_train_screen_sft(snap_compare, studio, size):
    assert snap_compare(_app(studio), terminal_size=size, run_before=_settled())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_train_screen_dpo_live(snap_compare, studio, size):
    assert snap_compare(_app(_with_dpo(studio)), terminal_size=size, run_before=_settled())


def test_train_screen_compare(snap_compare, studio):
    """The newest SFT run with the older one overlaid (B)."""
    assert snap_compare(_app(studio), terminal_size=(120, 40), run_before=_settled("down", "v"))


def test_train_screen_narrow_charts_back_from_the_form(snap_compare, studio):
    """80x24: n shows the form (alone), ctrl+g brings the charts back with the runs table."""
    assert snap_compare(_app(studio), terminal_size=(80, 24), run_before=_settled("n", "ctrl+g"))
