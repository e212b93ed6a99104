"""Job runner: detached children, status truth, cancel, torn event lines, CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from engine.events import Run, read_events
from engine.jobs import cancel_job, find_job, follow, job_info, list_jobs, start_job
from tests.pilot import wait_for

# A real job body: records into the runner's folder with the real Run writer.
SLOW_JOB = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from engine.events import open_run, Cancelled
    steps = int(sys.argv[1])
    run = open_run(Path('.'), 'test slow', sys.argv)
    with run:
        try:
            for i in range(steps):
                run.progress(i + 1, steps, message='working')
                time.sleep(0.1)
        except Cancelled:
            run.artifact('checkpoint.safetensors', step=i)
            raise
        run.done(steps=steps)
""")


def slow_argv(steps: int) -> list[str]:
    return [sys.executable, "-c", SLOW_JOB, str(steps)]


def test_job_runs_to_done_and_records_events(ws):
    job = start_job(ws, "test slow", slow_argv(3))
    assert job.status in ("starting", "running")
    assert wait_for(lambda: job_info(job.dir).status == "done")
    events, _ = read_events(job.dir / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert events[-1]["type"] == "done"
    info = json.loads((job.dir / "job.json").read_text())
    assert info["ended"] >= info["started"]
    assert (job.dir / "log.txt").exists()


def test_job_survives_parent_exit(ws):
    parent = textwrap.dedent(f"""
        import sys
        from engine.workspace import Workspace
        from engine.jobs import start_job
        job = start_job(Workspace.open({str(ws.home)!r}), 'test slow', {slow_argv(30)!r})
        print(job.id)
    """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True, timeout=30)
    job = find_job(ws, out.stdout.strip())  # the parent has exited
    assert wait_for(lambda: job_info(job.dir).running and job_info(job.dir).pid is not None)
    try:
        time.sleep(0.3)
        assert job_info(job.dir).running
        assert wait_for(lambda: job_info(job.dir).status == "done", timeout=30)
    finally:
        if job_info(job.dir).running:
            os.killpg(job_info(job.dir).pid, signal.SIGKILL)


def test_cancel_lets_the_job_clean_up(ws):
    job = start_job(ws, "test slow", slow_argv(200))
    assert wait_for(lambda: read_events(job.dir / "events.jsonl")[0])
    job = cancel_job(ws, job.id)
    assert job.status == "cancelled"
    events, _ = read_events(job.dir / "events.jsonl")
    assert any(e["type"] == "artifact" and e["path"] == "checkpoint.safetensors" for e in events)


def test_killed_job_shows_failed_not_running(ws):
    job = start_job(ws, "test slow", slow_argv(200))
    assert wait_for(lambda: read_events(job.dir / "events.jsonl")[0])
    os.kill(job_info(job.dir).pid, signal.SIGKILL)
    assert wait_for(lambda: job_info(job.dir).status == "failed")
    assert "ended without finishing" in job_info(job.dir).error
    assert json.loads((job.dir / "job.json").read_text())["status"] == "running"  # only the reader knows


def test_torn_last_line_is_tolerated(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"t": 1, "type": "log", "message": "a"}\nnot json\n{"t": 2, "type": "prog')
    events, offset = read_events(path)
    assert [e["message"] for e in events] == ["a"]
    with open(path, "a") as f:
        f.write('ress", "step": 1, "total": 2}\n')
    more, offset2 = read_events(path, offset)
    assert [e["type"] for e in more] == ["progress"] and offset2 == path.stat().st_size


def test_run_in_process_records_failure_with_hint(ws):
    from engine.errors import HumanizerError

    run = Run.create(ws.runs_dir, "test fail", ["x"])
    try:
        with run:
            raise HumanizerError("bad thing", "do the other thing")
    except HumanizerError:
        pass
    job = job_info(run.dir)
    assert job.status == "failed" and job.error == "bad thing"
    events, _ = read_events(run.dir / "events.jsonl")
    assert events[-1] == {**events[-1], "type": "error", "message": "bad thing", "hint": "do the other thing"}


def test_follow_and_list(ws):
    job = start_job(ws, "test slow", slow_argv(3))
    types = [e["type"] for e in follow(ws, job.id, poll=0.05)]
    assert types.count("progress") == 3 and types[-1] == "done"
    assert [j.id for j in list_jobs(ws)] == [job.id]


def test_cli_jobs_list_show_attach(ws):
    job = start_job(ws, "test slow", slow_argv(2))
    env = {**os.environ, "HUMANIZER_HOME": str(ws.home)}
    cli = [sys.executable, "-m", "tui.cli"]
    attach = subprocess.run([*cli, "jobs", "attach", job.id[:12], "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert attach.returncode == 0, attach.stderr
    assert [json.loads(line)["type"] for line in attach.stdout.splitlines()][-1] == "done"
    listed = json.loads(subprocess.run([*cli, "jobs", "list", "--json"], capture_output=True, text=True, env=env, check=True).stdout)
    assert listed[0]["id"] == job.id and listed[0]["status"] == "done"
    missing = subprocess.run([*cli, "jobs", "show", "nope"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr and "humanizer jobs list" in missing.stderr
