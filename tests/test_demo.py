"""`humanizer demo`: the stage plan (names, flags, sizes), the runner (stages as jobs, a done
stage kept, a failed one stopping the demo with its log and a rerun continuing), bad settings
naming their flag, and (slow, in CI) the real --quick demo on the embedded model with its
artifacts asserted, not its figures."""

from __future__ import annotations

import json

import pytest

from engine.demo import run as demo_run
from engine.demo.run import Stage, names, plan, run_demo, state_path
from engine.demo.settings import SIZES, DemoSettings
from engine.errors import HumanizerError
from engine.events import NullRun
from engine.jobs import list_jobs
from screens.common.launch import humanizer_argv


def _argv(stages, key):
    return next(s.argv for s in stages if s.key == key)


def test_plan_names_sizes_and_flags(ws):
    quick = plan(DemoSettings(quick=True), ws)
    assert [s.key for s in quick] == ["model", "corpus", "data", "sft", "pairs", "dpo", "calibrate", "classifier",
                                      "eval"]
    n = names(DemoSettings(quick=True))
    assert n["data"] == "demo-quick-st" and n["sft"] == "demo-quick-sft" and n["dpo"] == "demo-quick-dpo"
    data = _argv(quick, "data")
    assert data[:4] == ["data", "build", "--template", "style-transfer"]
    assert data[data.index("--limit") + 1] == str(SIZES["quick"].passages)
    pairs = _argv(quick, "pairs")
    assert pairs[pairs.index("--template") + 1] == "dpo-pairs" and pairs[pairs.index("--source") + 1] == "demo-quick-st"
    assert pairs[pairs.index("--adapter") + 1] == str(ws.adapters_dir / "demo-quick-sft")  # on-policy: the SFT model
    dpo = _argv(quick, "dpo")
    assert dpo[dpo.index("--mount-adapter") + 1] == str(ws.adapters_dir / "demo-quick-sft")  # stacked on SFT
    ev = _argv(quick, "eval")
    assert ev[ev.index("--choices") + 1] == "base,demo-quick-sft,demo-quick-sft+demo-quick-dpo"
    assert ev[ev.index("--profile") + 1] == "demo-quick-fast-detectgpt"
    # the default size writes under its own names, bigger
    default = plan(DemoSettings(), ws)
    d = _argv(default, "data")
    assert d[d.index("--output") + 1] == "demo-st" and int(d[d.index("--limit") + 1]) > SIZES["quick"].passages
    # a model that is not embedded has no pull stage; --name renames everything
    other = plan(DemoSettings(model="/models/x", name="mine"), ws)
    assert other[0].key == "corpus" and _argv(other, "sft")[_argv(other, "sft").index("--output") + 1].endswith("mine-sft")
    # nothing is done in a fresh workspace
    assert not any(s.done() for s in quick)


@pytest.mark.parametrize("values,flag", [({"name": "bad name"}, "--name"), ({"rows": 0}, "--rows"),
                                         ({"model": " "}, "--model")])
def test_bad_settings_name_their_flag(values, flag):
    with pytest.raises(HumanizerError) as e:
        DemoSettings(**values).check()
    assert flag in e.value.message


def _pairs_rows() -> list[dict]:
    """Paired rows: human paragraphs from the Wikipedia fixture (CC BY-SA, see its README) and
    AI-styled versions written for this test (text we write is AI text)."""
    from pathlib import Path

    rows = []
    path = Path(__file__).parent / "fixtures" / "human" / "wikipedia.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        rows.append({"text": doc["text"], "text_type": "human_written", "source_id": doc["id"]})
        rows.append({"text": f"In summary, {doc['title']} is a multifaceted topic that underscores the importance "
                     "of careful consideration.", "text_type": "ai_generated", "source_id": doc["id"]})
    return rows


def test_runner_keeps_done_stages_stops_on_a_failure_and_continues(ws, monkeypatch, tmp_path):
    """Three real, quick CLI stages: one done already (no job), one that runs, one that fails
    until its input exists; the rerun runs only the failed one."""
    good, missing = tmp_path / "good.jsonl", tmp_path / "later.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in _pairs_rows()))

    def paired(source, output):
        return ["data", "build", "--template", "paired", "--source", str(source), "--output", output]

    stages = [
        Stage("first", "already there", paired(good, "never"), lambda: True),
        Stage("second", "a paired dataset", paired(good, "pairs-a"),
              lambda: (ws.datasets_dir / "pairs-a" / "manifest.json").is_file(), kind="data build paired"),
        Stage("third", "another paired dataset", paired(missing, "pairs-b"),
              lambda: (ws.datasets_dir / "pairs-b" / "manifest.json").is_file(), kind="data build paired"),
    ]
    monkeypatch.setattr(demo_run, "plan", lambda settings, w: stages)
    settings = DemoSettings(quick=True)
    with pytest.raises(HumanizerError) as e:
        run_demo(settings, ws, NullRun(), argv_of=humanizer_argv, poll=0.05)
    assert "stage 3/3" in e.value.message and "another paired dataset" in e.value.message
    assert str(missing) in e.value.message  # the stage's own error
    assert "log.txt" in e.value.hint and "humanizer demo" in e.value.hint
    jobs = sorted(list_jobs(ws), key=lambda j: j.started or 0)
    assert [j.status for j in jobs] == ["done", "failed"]  # the done stage started nothing
    state = json.loads(state_path(ws, settings).read_text())
    assert state["stages"]["first"]["status"] == "done" and state["stages"]["third"]["status"] == "failed"

    missing.write_text(good.read_text())  # the cause fixed
    monkeypatch.setattr(demo_run, "_eval_report", lambda w, s: good)  # this plan has no eval stage
    assert run_demo(settings, ws, NullRun(), argv_of=humanizer_argv, poll=0.05) == good
    jobs = sorted(list_jobs(ws), key=lambda j: j.started or 0)
    assert [j.status for j in jobs] == ["done", "failed", "done"]
    assert (ws.datasets_dir / "pairs-b" / "manifest.json").is_file()


def test_cancelled_demo_cancels_its_stage_job(ws, monkeypatch):
    """Ctrl-C (or the app's cancel) while a stage runs stops the stage's job too."""
    stage = Stage("slow", "a long stage", ["data", "corpus", "list"], lambda: False)
    monkeypatch.setattr(demo_run, "plan", lambda s, w: [stage])
    cancelled = []

    def wait(job, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_run, "_wait", wait)
    monkeypatch.setattr("engine.jobs.cancel_job", lambda w, job_id, timeout=10.0: cancelled.append(job_id))
    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoSettings(quick=True), ws, NullRun(), argv_of=humanizer_argv)
    assert len(cancelled) == 1
    state = json.loads(state_path(ws, DemoSettings(quick=True)).read_text())
    assert state["stages"]["slow"]["status"] == "cancelled" and state["stages"]["slow"]["job"] == cancelled[0]


# --- the real demo (slow: the embedded model and MiniLM from PyPI) -----------------------------------------


@pytest.mark.slow
def test_quick_demo_end_to_end(ws, monkeypatch, capsys):
    """`humanizer demo --quick` on the embedded model, offline apart from PyPI: every stage's
    artifact is there, the table has its rows; a second run keeps every stage. Figures are
    not asserted (the quick size is too small for them to mean anything)."""
    import tui.cli as C

    code = C.main(["--home", str(ws.home), "demo", "--quick", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    n = names(DemoSettings(quick=True))
    data = ws.datasets_dir / n["data"]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["template"] == "style-transfer" and manifest["source"]["name"] == "bbc-news"
    assert manifest["source"]["licence"]  # recorded with the human text
    heldout = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines() if line.strip()]
    assert heldout and all(r["draft"] and r["human"] for r in heldout)
    assert (ws.datasets_dir / n["pairs"] / "manifest.json").is_file()
    for name in ("sft", "dpo"):
        config = json.loads((ws.adapters_dir / n[name] / "adapter_config.json").read_text())
        assert config["humanizer"]["metrics"]["steps"] >= 1
    dpo_config = json.loads((ws.adapters_dir / n["dpo"] / "adapter_config.json").read_text())
    assert n["sft"] in json.dumps(dpo_config)  # a delta on the SFT adapter
    assert (ws.home / "detectors" / f"{n['profile']}.json").is_file()
    assert (ws.home / "detectors" / n["classifier"] / "classifier.json").is_file()
    report_line = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")][-1]
    assert report_line["type"] == "report"
    report = json.loads(open(report_line["path"]).read())
    rows = [r["row"] for r in report["table"]["rows"]]
    assert rows[0] == "source" and rows[-1] == "human"
    assert "base" in rows and n["sft"] in rows and f"{n['sft']}+{n['dpo']}" in rows
    samples = [json.loads(line) for line in open(report_line["path"].replace("report.json", "samples.jsonl"))]
    assert len(samples) == min(len(heldout), SIZES["quick"].eval_samples)
    state = json.loads(state_path(ws, DemoSettings(quick=True)).read_text())
    assert all(s["status"] == "done" for s in state["stages"].values())

    jobs_before = len(list_jobs(ws))
    assert C.main(["--home", str(ws.home), "demo", "--quick"]) == 0  # every stage kept
    printed = capsys.readouterr().out
    assert "source" in printed and "human" in printed
    assert len(list_jobs(ws)) == jobs_before + 1  # only the demo's own run
