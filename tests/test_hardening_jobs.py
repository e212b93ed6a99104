"""Hardening of jobs and runs: cancel reaches a run whatever started it, and says so when it cannot."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import HumanizerError
from engine.events import process_start_time, read_events, read_json, write_json
from engine.jobs import cancel_job, find_job, list_jobs
from tests.pilot import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run started straight from a command (no job runner): it records into runs/ itself.
SHELL_RUN = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from engine.events import open_run, Cancelled
    if sys.argv[2] == 'deaf':
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run = open_run(Path(sys.argv[1]), 'test shell', sys.argv)
    with run:
        if sys.argv[2] == 'deaf':
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Run.__enter__ put its handler back
        try:
            for i in range(2000):
                run.progress(i + 1, 2000, message='working')
                time.sleep(0.05)
        except Cancelled:
            run.artifact('checkpoint.safetensors', step=i)
            raise
""")


def _from_shell_script(ws, mode="polite"):
    """`bash script.sh` whose python child is not a process-group leader (the script leads it)."""
    script = ws.home / "run.sh"
    script.write_text(f"{sys.executable} -c {shlex.quote(SHELL_RUN)} {ws.runs_dir} {mode}\necho after\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    shell = subprocess.Popen(["bash", str(script)], start_new_session=True, env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: any(j.running and j.pid and read_events(j.dir / "events.jsonl")[0]
                                for j in list_jobs(ws)), timeout=60)
    job = list_jobs(ws)[0]
    assert job.pid != shell.pid and os.getpgid(job.pid) == shell.pid  # not a group leader
    return shell, job


def test_cancel_reaches_a_run_started_from_a_shell_script(ws):
    shell, job = _from_shell_script(ws)
    try:
        job = cancel_job(ws, job.id)
        assert job.status == "cancelled"
        events, _ = read_events(job.dir / "events.jsonl")
        assert any(e["type"] == "artifact" and e["path"] == "checkpoint.safetensors" for e in events)
        assert shell.wait(timeout=30) == 0  # only the run was signalled: the script went on
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)


def test_cancel_kills_a_run_that_ignores_sigterm_after_the_grace(ws):
    shell, job = _from_shell_script(ws, "deaf")
    try:
        job = cancel_job(ws, job.id, timeout=1.0)
        assert job.status == "cancelled" and "did not stop" in job.error
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=30)


def test_cancel_never_signals_a_reused_pid(ws, monkeypatch):
    """job.json names a live process that is not the run (same pid, other start time)."""
    d = ws.runs_dir / "20260101-000000-test-reuse-abcd"
    d.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_json(d / "job.json", {"id": d.name, "kind": "test", "argv": [], "pid": sleeper.pid,
                                    "pid_start": "1", "status": "running", "started": 1.0})
        with pytest.raises(HumanizerError, match="not running"):
            cancel_job(ws, d.name)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_cancel_says_when_it_cannot_signal(ws, monkeypatch):
    d = ws.runs_dir / "20260101-000000-test-perm-abcd"
    d.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_json(d / "job.json", {"id": d.name, "kind": "test", "argv": [], "pid": sleeper.pid,
                                    "pid_start": process_start_time(sleeper.pid), "status": "running",
                                    "started": 1.0})

        def refuse(pid, sig):
            if sig:
                raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "kill", refuse)
        monkeypatch.setattr(os, "killpg", refuse)
        with pytest.raises(HumanizerError, match="cannot signal") as e:
            cancel_job(ws, d.name)
        monkeypatch.undo()
        assert "another user" in e.value.hint
        assert read_json(d / "job.json")["status"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_cli_cancel_exit_status(ws):
    shell, job = _from_shell_script(ws)
    env = {**os.environ, "HUMANIZER_HOME": str(ws.home), "PYTHONPATH": ROOT}
    cli = [sys.executable, "-m", "tui.cli", "jobs", "cancel"]
    try:
        out = subprocess.run([*cli, job.id], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == f"{job.id}: cancelled", out.stderr
        again = subprocess.run([*cli, job.id], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert again.returncode != 0 and "not running" in again.stderr
        assert find_job(ws, job.id).status == "cancelled"
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=30)


# --- training: data checked before the model load, nothing left by a failed run ---------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("hard") / "tiny")


def _sft_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD_ROWS = [{"prompt": f"Say fact {i}", "completion": "The capital of France is Paris."} for i in range(4)]


def test_bad_data_stops_the_run_before_the_model_loads_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    from engine.adapters import layers as lora
    from engine import train as T
    from engine.data import DataError

    data = _sft_rows(tmp_path / "train.jsonl", [*GOOD_ROWS, {"prompt": "x"}])
    loaded = []
    monkeypatch.setattr(lora, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("model loaded"))
    out = tmp_path / "adapters" / "new"
    with pytest.raises(DataError, match="train.jsonl:5"):
        T.train(tiny, str(data), "sft", out, iters=2)
    assert not loaded and not out.exists() and out.parent.is_dir()
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder the user made stays, without a stray lock
    with pytest.raises(DataError):
        T.train(tiny, str(data), "sft", out, iters=2)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    (out / ".train.lock").touch()  # what a failed run of an older version left
    with pytest.raises(DataError):
        T.train(tiny, str(data), "sft", out, iters=2)
    assert not out.exists()


def test_a_run_failing_on_its_model_leaves_no_folder(tiny, tmp_path, monkeypatch):
    from engine.adapters import layers as lora
    from engine import train as T

    def broken(*a, **k):
        raise HumanizerError("the model is broken")

    monkeypatch.setattr(lora, "load_model", broken)
    data = _sft_rows(tmp_path / "train.jsonl", GOOD_ROWS)
    with pytest.raises(HumanizerError, match="broken"):
        T.train(tiny, str(data), "sft", tmp_path / "out", iters=2)
    assert not (tmp_path / "out").exists()


# --- a UTF-8 byte-order mark at the start of a row file is accepted by every reader -----------------------

BOM = b"\xef\xbb\xbf"


def _bom_jsonl(path, rows):
    path.write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    return path


def test_bom_training_data(tiny, tmp_path):
    from mlx_lm.utils import load_tokenizer

    from engine.data import load_data, preview

    data = _bom_jsonl(tmp_path / "train.jsonl", GOOD_ROWS)
    ds = load_data(str(data), "sft", load_tokenizer(tiny), 256, valid_fraction=0)
    assert len(ds.train) == 4 and not ds.issues
    assert preview(str(data), "sft")[2] == []


def test_bom_data_build_sources_detect_and_heldout(tmp_path):
    from engine.data.catalog import infer_method, read_part
    from engine.data.prefs import _read_rows
    from engine.data.sources import read_table
    from engine.eval.run import read_heldout
    from tui.cli.detect import read_inputs

    # human text from the test corpus (Wikipedia, CC BY-SA 3.0: tests/fixtures/human/README.md), never ours
    person = json.loads((Path(__file__).parent / "fixtures" / "human" / "wikipedia.jsonl")
                        .read_text(encoding="utf-8").splitlines()[0])["text"]
    rows = [{"text": person, "draft": "An AI wrote this.", "human": person}]
    table = _bom_jsonl(tmp_path / "src.jsonl", rows)
    assert [r for _, r in read_table(table)] == rows
    csv_path = tmp_path / "src.csv"
    with open(csv_path, "w", encoding="utf-8-sig", newline="") as f:  # utf-8-sig: the BOM first
        csv.writer(f).writerows([["text", "source"], [person, "x"]])
    assert csv_path.read_bytes().startswith(BOM)
    assert [r for _, r in read_table(csv_path)] == [{"text": person, "source": "x"}]
    items, _ = read_inputs([str(table)], "text")
    assert [i.text for i in items] == [person]
    txt = tmp_path / "one.txt"
    txt.write_bytes(BOM + person.encode("utf-8"))
    assert [i.text for i in read_inputs([str(txt)], "text")[0]] == [person]
    assert [s.draft for s in read_heldout(table)] == ["An AI wrote this."]
    _bom_jsonl(tmp_path / "heldout.jsonl", rows)
    assert read_part(tmp_path, "heldout") == (rows, [])
    _bom_jsonl(tmp_path / "train.jsonl", GOOD_ROWS)
    assert infer_method(tmp_path) == "sft"
    assert _read_rows(tmp_path / "train.jsonl") == GOOD_ROWS


# --- a full disk while training: a clear error, the last checkpoint intact, nothing half-written ----------

SMALL = dict(rank=2, num_layers=1, keys="q_proj", batch_size=2, steps_per_report=1, val_batches=1)


def _disk_full_at(monkeypatch, marker):
    """mx.save_safetensors fails as MLX does on a full disk for files whose path has `marker`."""
    import mlx.core as mx

    real = mx.save_safetensors

    def save(path, *a, **k):
        if marker in str(path):
            raise RuntimeError("[write] Unable to write 1048576 bytes to file.")
        return real(path, *a, **k)

    monkeypatch.setattr(mx, "save_safetensors", save)


def test_disk_full_at_a_checkpoint(tiny, tmp_path, monkeypatch):
    from engine import train as T
    from engine.train import checkpoints

    data = _sft_rows(tmp_path / "train.jsonl", GOOD_ROWS)
    out = tmp_path / "out"
    kw = dict(iters=4, steps_per_save=2, steps_per_eval=2, **SMALL)
    _disk_full_at(monkeypatch, "step-000004")
    monkeypatch.setattr(checkpoints, "KEEP_CHECKPOINTS", 1)
    with pytest.raises(HumanizerError) as e:
        T.train(tiny, str(data), "sft", out, **{**kw, "iters": 6})
    msg = e.value.message
    assert str(out / "checkpoints" / "step-000004") in msg and "disk is full" in msg
    assert "needed" in msg and "free" in msg and "--resume" in e.value.hint
    assert [d.name for d in T.list_checkpoints(out / "checkpoints")] == ["step-000002"]  # intact
    T.load_checkpoint(out / "checkpoints" / "step-000002")
    assert not [p for p in out.rglob(".*") if p.name != ".train.lock"]  # no temp leftovers
    assert not (out / "adapter_config.json").exists()
    monkeypatch.undo()
    T.train(tiny, str(data), "sft", out, resume=True, **{**kw, "iters": 6})  # space again: it continues
    assert (out / "adapter_config.json").is_file()


def test_disk_full_at_the_final_adapter(tiny, tmp_path, monkeypatch):
    from engine import adapters as A
    from engine import train as T

    data = _sft_rows(tmp_path / "train.jsonl", GOOD_ROWS)
    out = tmp_path / "out"
    _disk_full_at(monkeypatch, ".final-")
    with pytest.raises(HumanizerError, match=r"can't write .*adapters.safetensors: the disk is full"):
        T.train(tiny, str(data), "sft", out, iters=2, steps_per_save=1, **SMALL)
    assert not (out / A.CONFIG_FILE).exists() and not (out / A.ADAPTER_FILE).exists()
    assert not [p for p in out.rglob(".*") if p.name != ".train.lock"]


def test_atomic_write_text_on_a_full_disk(tmp_path, monkeypatch):
    import errno

    from engine.workspace import atomic_write_text

    target = tmp_path / "config.toml"
    target.write_text("old = 1\n")

    def full(fd, *a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(HumanizerError, match=r"can't write .*config.toml: the disk is full \(about 8 B needed"):
        atomic_write_text(target, "new = 2\n")
    assert target.read_text() == "old = 1\n" and [p.name for p in tmp_path.iterdir()] == ["config.toml"]


# --- every run ends with a validation point; DPO accuracy counts ties as ties ---------------------------------

def _metric_steps(events, key):
    return [e["step"] for e in events if e["type"] == "metric" and key in e["values"]]


def test_a_cancelled_run_and_its_resume_end_with_an_eval(tiny, tmp_path):
    from engine import train as T
    from engine.events import Cancelled, NullRun

    data = _sft_rows(tmp_path / "train.jsonl", GOOD_ROWS)
    out = tmp_path / "out"
    ev = []

    def term_at_3(e):
        ev.append(e)
        if e["type"] == "progress" and e.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    kw = dict(iters=6, steps_per_eval=50, steps_per_save=50, **SMALL)
    with pytest.raises(Cancelled):
        T.train(tiny, str(data), "sft", out, run=NullRun([term_at_3]), **kw)
    assert _metric_steps(ev, "val_loss") == [0, 3] and _metric_steps(ev, "val_kl") == [0, 3]
    ev2 = []
    T.train(tiny, str(data), "sft", out, resume=True, run=NullRun([ev2.append]), **kw)
    assert _metric_steps(ev2, "val_loss") == [6]  # once, though 6 is also the last step


def test_dpo_accuracy_counts_ties_as_half(tiny, tmp_path):
    """At step 0 the policy is the reference: every pair ties, so accuracy is 0.5 and ties 1.0."""
    import mlx.core as mx

    from engine import train as T
    from engine.events import NullRun

    rows = [{"prompt": f"Say fact {i}", "chosen": "The capital of France is Paris.",
             "rejected": "It is a truth universally acknowledged."} for i in range(4)]
    data = _sft_rows(tmp_path / "train.jsonl", rows)
    ev = []
    T.train(tiny, str(data), "dpo", tmp_path / "out", iters=1, run=NullRun([ev.append]), **SMALL)
    first = next(e["values"] for e in ev if e["type"] == "metric" and e["step"] == 0)
    assert first["val_accuracy"] == 0.5 and first["val_ties"] == 1.0
    assert T.pair_accuracy(mx.array([1.0, -2.0, 0.0, 0.0])).tolist() == [1.0, 0.0, 0.5, 0.5]


# --- the Train form after ctrl+s: a fresh output name, never the one just used ------------------------------

async def test_train_form_proposes_a_fresh_name_after_a_start(ws, tmp_path):
    from screens.train.screen import TrainScreen
    from tests.pilot import until
    from tests.test_train_screen import FAST_FLAGS, write_sft_data
    from tests.tiny import make_tiny_llama
    from tui.app import HumanizerApp

    make_tiny_llama(ws.models_dir / "tiny")
    (ws.adapters_dir / "my-run-2" / "checkpoints" / "step-000002").mkdir(parents=True)  # taken too
    data = tmp_path / "sft.jsonl"
    write_sft_data(data)
    job_id = None
    try:
        app = HumanizerApp(ws, mode="train")
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, TrainScreen)
            await until(pilot, lambda: screen._value("f-model") is not None, 10, "the models in the form")
            screen.query_one("#f-data").value = str(data)
            screen.query_one("#f-iters").value = "100000"
            screen.query_one("#f-extra").value = FAST_FLAGS
            screen.query_one("#f-output").value = "my-run"
            await pilot.pause()
            await pilot.press("ctrl+s")
            await until(pilot, lambda: screen.shown is not None, 5, "the run to start")
            job_id = screen.shown
            assert find_job(ws, job_id).settings["output"] == str(ws.adapters_dir / "my-run")
            assert screen.query_one("#f-output").value == "my-run-3"  # the name used, made new
            assert screen.query_one("#f-data").value == str(data)  # the rest stays for a variant
    finally:
        if job_id and find_job(ws, job_id).running:
            cancel_job(ws, job_id, timeout=5)


def test_cancel_spares_the_pipe_reader_of_a_run_leading_a_pipeline(ws):
    """`run | cat` as a shell with job control makes it: the run leads the pipeline's process
    group and cat is in it. Cancel stops the run; cat, which the run writes to, lives on."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = subprocess.Popen([sys.executable, "-c", SHELL_RUN, str(ws.runs_dir), "polite"], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, process_group=0)
    cat = subprocess.Popen(["cat"], stdin=run.stdout, stdout=subprocess.DEVNULL, process_group=run.pid)
    run.stdout.close()
    try:
        assert wait_for(lambda: any(j.running and read_events(j.dir / "events.jsonl")[0] for j in list_jobs(ws)),
                        timeout=60)
        job = list_jobs(ws)[0]
        assert job.pid == run.pid == os.getpgid(cat.pid)
        assert cancel_job(ws, job.id).status == "cancelled"
        assert cat.wait(timeout=10) == 0  # read to the end of the pipe, not killed
    finally:
        for p in (run, cat):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_cli_disk_full_message(tiny, tmp_path, ws, monkeypatch, capsys):
    from tui.cli import main

    data = _sft_rows(tmp_path / "train.jsonl", GOOD_ROWS)
    _disk_full_at(monkeypatch, ".final-")
    code = main(["lora", "train", str(tiny), "--data", str(data), "--output", str(tmp_path / "out"), "--iters", "2",
                 "--rank", "2", "--num-layers", "1", "--keys", "q_proj", "--batch-size", "2", "--json"])
    assert code == 2
    error = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"error"' in line][-1]
    assert "disk is full" in error["message"] and "free" in error["message"] and "--resume" in error["hint"]
