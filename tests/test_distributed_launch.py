"""Starting, watching and stopping a run on several ranks: --nproc / --hosts, the supervisor that
runs mlx.launch (engine.distributed.launch), the ranks in job.json, a dead rank, a cancel."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.distributed.launch import launch_argv, launcher, strip_rank_flags
from engine.distributed.settings import Ranks, processes_flags, read_hostfile
from engine.errors import HumanizerError

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tui.cli"]
HOST = socket.gethostname()
# Without a rank-aware trainer every rank would take OUTPUT's lock and the second would stop.
rank_aware = pytest.mark.skipif(importlib.util.find_spec("engine.train.parallel") is None,
                                reason="the trainer in this tree is not rank-aware (engine.train.parallel)")


def _hostfile(tmp_path, data, name="hosts.json") -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


# the settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("data, field", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ({"backend": "ring"}, "field 'hosts' is missing"),
    ({"hosts": []}, "field 'hosts' must be a non-empty list"),
    ({"hosts": [{"ips": ["10.0.0.1"]}]}, "hosts[0].ssh is missing"),
    ({"hosts": [{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b"}]}, "hosts[1].ips is missing"),
    ([{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["mac2.local"]}], "hosts[1].ips[0]: 'mac2.local' is not an IP"),
    ({"backend": "mpi", "hosts": [{"ssh": "a", "ips": ["10.0.0.1"]}]}, "field 'backend' is 'mpi'"),
    ({"envs": "X=1", "hosts": [{"ssh": "a", "ips": ["10.0.0.1"]}]}, "field 'envs'"),
])
def test_a_bad_hostfile_is_named_with_its_field(tmp_path, data, field):
    path = str(tmp_path / "missing.json") if data is None else _hostfile(tmp_path, data)
    with pytest.raises(HumanizerError) as e:
        Ranks(hosts=path).check()
    assert e.value.message.startswith(f"--hosts: {path}") and field in e.value.message
    assert '"hosts"' in e.value.hint  # what a hostfile looks like


def test_nproc_and_hosts_are_checked():
    with pytest.raises(HumanizerError, match="--nproc: 0 must be a whole number, at least 1"):
        Ranks(nproc=0).check()
    with pytest.raises(HumanizerError, match="--nproc and --hosts: give one of them"):
        Ranks(nproc=2, hosts="h.json").check()
    assert not Ranks().spread and Ranks(nproc=2).spread and Ranks.of({"nproc": 1, "hosts": ""}) == Ranks()
    assert Ranks.of({"data": "x"}) is None  # a verb without the fields


def test_a_good_hostfile_and_the_forms_field(tmp_path):
    path = _hostfile(tmp_path, {"hosts": [{"ssh": "mac1.local", "ips": ["192.168.2.1"]},
                                          {"ssh": "mac2.local", "ips": ["192.168.2.2"], "rdma": []}]})
    hosts = read_hostfile(path)
    assert [(h.rank, h.ssh, h.ips) for h in hosts] == [(0, "mac1.local", ("192.168.2.1",)),
                                                       (1, "mac2.local", ("192.168.2.2",))]
    assert [h.ssh for h in Ranks(nproc=3).plan("here")] == ["here"] * 3
    assert processes_flags("") == ([], None) and processes_flags("1") == ([], None)
    assert processes_flags(" 2 ") == (["--nproc", "2"], None)
    assert processes_flags(path) == (["--hosts", path], None)
    flags, problem = processes_flags(str(tmp_path / "nope.json"))
    assert flags == [] and "nope.json: no such file" in problem


def test_the_verbs_take_nproc_and_hosts_and_their_engines_do_not():
    from engine.data.settings import BuildSettings
    from engine.eval.settings import EvalSettings
    from engine.train.settings import TrainSettings
    from tui.cli import build_parser
    from tui.cli.common import for_engine

    parser = build_parser()
    for argv in (["lora", "train", "m", "--data", "d", "--output", "o"],
                 ["data", "build", "--template", "paired", "--source", "s", "--output", "o"],
                 ["eval", "m", "--data", "d"]):
        args = parser.parse_args([*argv, "--nproc", "2"])
        assert (args.nproc, args.hosts) == (2, ""), argv
    assert "nproc" not in TrainSettings(data="d", output="o", nproc=2).train_kwargs()
    built = for_engine(BuildSettings(template="paired", source="s", output="o", nproc=2, hosts="h"))
    assert (built.nproc, built.hosts, built.output) == (1, "", "o")
    assert for_engine(EvalSettings(model="m", data="d", nproc=3)).nproc == 1


# the record --------------------------------------------------------------------------------------
def test_rank_0_records_into_the_supervisors_run_and_keeps_its_process(ws, monkeypatch):
    from engine.events import Run, event_problems
    from engine.jobs import job_info

    monkeypatch.delenv("MLX_RANK", raising=False)
    sup = Run.create(ws.runs_dir, "lora train sft", ["humanizer", "lora", "train", "--nproc", "2"],
                     settings={"nproc": 2}).start()
    sup._update(ranks=[{"rank": 0, "host": HOST, "pid": None, "status": "starting"},
                       {"rank": 1, "host": HOST, "pid": None, "status": "starting"}])
    monkeypatch.setenv("MLX_RANK", "0")
    rank0 = Run(sup.dir, "lora train sft", ["humanizer", "lora", "train"], settings={"nproc": 1}).start()
    ev = rank0.record_ranks([{"rank": 0, "host": HOST, "pid": 11}, {"rank": 1, "host": HOST, "pid": 12}])
    assert event_problems(ev) == []
    info = json.loads((sup.dir / "job.json").read_text())
    assert info["pid"] == os.getpid() and info["settings"] == {"nproc": 2} and info["argv"][-2:] == ["--nproc", "2"]
    assert [(r["pid"], r["status"]) for r in info["ranks"]] == [(11, "running"), (12, "running")]
    rank0.finish("done")
    assert [r["status"] for r in job_info(sup.dir).ranks] == ["done", "done"]  # ended with the run


def test_the_jobs_screen_shows_each_rank(tmp_path):
    from engine.jobs import JobInfo
    from screens.jobs.screen import ranks_text

    job = JobInfo("r", tmp_path, "lora train sft", [], 1, "failed", 0.0, 1.0,
                  ranks=[{"rank": 0, "host": "mac1", "pid": 11, "status": "stopped", "exit_code": 130},
                         {"rank": 1, "host": "mac2", "pid": 12, "status": "failed", "exit_code": -9}])
    text = ranks_text(job).plain
    assert "rank 0  mac1  pid 11" in text and "rank 1  mac2  pid 12  ✗ failed  exit code -9" in text
    assert ranks_text(JobInfo("r", tmp_path, "eval", [], 1, "done", 0.0, 1.0)).plain == ""


def test_the_run_fails_with_the_error_that_says_why(ws):
    """Which error a failed run shows: a rank that died names its host; when the ranks stopped on one
    error (exit code 2 each), rank 0's message, whichever rank exited first."""
    from engine.distributed.launch import Supervisor
    from engine.events import Run

    run = Run.create(ws.runs_dir, "data build", ["humanizer"]).start()
    sup = Supervisor(run, Ranks(nproc=2), ["true"])
    sup.exits = {1: (-9, False), 0: (-15, False)}
    assert sup._outcome()[0:2] == ("failed", f"rank 1 on host {HOST} was killed by signal 9; the other ranks "
                                             "were stopped")
    run._update(status="failed", error="no rows survived the filters")
    sup.exits = {1: (2, False), 0: (2, False)}
    assert sup._outcome() == ("failed", "no rows survived the filters", None, False)  # rank 0's, said already
    sup.exits = {1: (1, False), 0: (1, False)}  # a crash on rank 1, rank 0 lost its peer
    assert sup._outcome()[1].startswith(f"rank 1 on host {HOST} exited with code 1")
    assert [r["status"] for r in sup._final_ranks("failed")] == ["stopped", "failed"]


# the command line ------------------------------------------------------------------------------
def test_the_supervisor_runs_the_same_verb_on_every_rank_without_the_rank_flags(tmp_path):
    argv = ["--home", "/h", "lora", "train", "m", "--data", "d", "--nproc", "2", "--output", "o", "--hosts=x",
            "--json"]
    rest = strip_rank_flags(argv)
    assert rest == ["--home", "/h", "lora", "train", "m", "--data", "d", "--output", "o", "--json"]
    command = [sys.executable, "-m", "tui.cli", *rest]
    env = {"HUMANIZER_RUN_DIR": "/h/runs/r1", "HUMANIZER_HOME": "/h"}
    assert launch_argv(Ranks(nproc=2), command, 40000, env) == [
        launcher(), "--backend", "ring", "-n", "2", "--starting-port", "40000",
        "--env", "HUMANIZER_RUN_DIR=/h/runs/r1", "--env", "HUMANIZER_HOME=/h", "--", *command]
    hosts = _hostfile(tmp_path, [{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}])
    assert launch_argv(Ranks(hosts=hosts), command, 40000)[:8] == [
        launcher(), "--backend", "ring", "--hostfile", hosts, "--starting-port", "40000", "--"]
    assert Path(launcher()).name == "mlx.launch"


def test_a_bad_hostfile_stops_the_cli_before_any_run(ws, tmp_path):
    bad = _hostfile(tmp_path, {"hosts": [{"ssh": "a"}]})
    out = subprocess.run([*CLI, "lora", "train", "m", "--data", "d", "--output", "o", "--hosts", bad],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "HUMANIZER_HOME": str(ws.home), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and f"--hosts: {bad}: hosts[0].ips is missing" in out.stderr
    assert not list(ws.runs_dir.iterdir())


# real ranks --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("ranks")
    data = root / "sft" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"prompt": f"say {w}", "completion": f"{w} {w}."}) + "\n"
                            for w in ("one", "two", "three", "four", "five", "six")))
    return {"model": make_tiny_llama(root / "tiny"), "data": data.parent}


def _train_argv(tiny, out: Path, iters: int) -> list[str]:
    return ["lora", "train", str(tiny["model"]), "--data", str(tiny["data"]), "--iters", str(iters),
            "--batch-size", "2", "--val-batches", "0", "--steps-per-save", "1000", "--output", str(out),
            "--nproc", "2", "--json"]


def _env(ws) -> dict:
    return {**os.environ, "HUMANIZER_HOME": str(ws.home), "PYTHONPATH": str(ROOT)}


def _wait(check, timeout: float = 180.0):
    """Poll until check() gives something (a safety limit, not a timed assertion)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("gave up waiting")


def _training(job):
    """The job's ranks once both are recorded and rank 0 has run a step."""
    from engine.jobs import job_events, job_info

    info = job_info(job.dir)
    stepped = any(e["type"] in ("metric", "progress") and (e.get("step") or 0) >= 1 for e in job_events(info)[0])
    pids = [r.get("pid") for r in info.ranks]
    return info.ranks if stepped and len(pids) == 2 and all(pids) else None


def _alive(pid: int) -> bool:
    from engine.events import process_alive

    return process_alive(pid, None)


def _clean(out: Path) -> None:
    """No final adapter and no half-written (hidden temp) entry in OUTPUT or its checkpoints."""
    assert not (out / "adapters.safetensors").exists()
    folders = [out, out / "checkpoints"] if out.is_dir() else []
    left = [p.name for d in folders if d.is_dir() for p in d.iterdir() if p.name.startswith(".")]
    assert set(left) <= {".train.lock"}, left


@rank_aware
def test_two_processes_train_as_one_recorded_run(ws, tiny):
    out = ws.adapters_dir / "two"
    done = subprocess.run([*CLI, *_train_argv(tiny, out, 4)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=_env(ws))
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = list(ws.runs_dir.iterdir())  # one run for the two ranks
    info = json.loads((run / "job.json").read_text())
    assert info["status"] == "done" and info["argv"][-3:] == ["--nproc", "2", "--json"]
    assert info["settings"]["nproc"] == 2
    ranks = info["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["host"] == HOST for r in ranks)
    assert len({r["pid"] for r in ranks} | {info["pid"]}) == 3  # two ranks, and the supervisor
    assert all(r["status"] == "done" for r in ranks)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("ranks") == 1 and events[-1]["type"] == "done"
    shown = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["type"] for e in shown] == [e["type"] for e in events]  # the supervisor shows rank 0's events
    log = (run / "log.txt").read_text()
    assert "mlx.launch --backend ring -n 2" in log  # the launcher's command and output are the run's log
    assert (out / "adapters.safetensors").exists()


@rank_aware
def test_a_killed_rank_fails_the_run_naming_its_host(ws, tiny):
    from engine.jobs import job_info, start_job

    out = ws.adapters_dir / "killed"
    job = start_job(ws, "lora train sft", [*CLI, *_train_argv(tiny, out, 100000)], env={"PYTHONPATH": str(ROOT)})
    ranks = _wait(lambda: _training(job))
    os.kill(ranks[1]["pid"], signal.SIGKILL)
    ended = _wait(lambda: (j := job_info(job.dir)).status != "running" and j)
    assert ended.status == "failed", ended
    assert ended.error.startswith(f"rank 1 on host {HOST} was killed by signal 9")
    assert [r["status"] for r in ended.ranks] == ["stopped", "failed"]
    assert not any(_alive(r["pid"]) for r in ranks)
    events = [json.loads(line) for line in (job.dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "error" and f"on host {HOST}" in events[-1]["message"]
    _clean(out)


@rank_aware
def test_cancel_stops_every_rank(ws, tiny):
    from engine.jobs import cancel_job, start_job

    out = ws.adapters_dir / "cancelled"
    job = start_job(ws, "lora train sft", [*CLI, *_train_argv(tiny, out, 100000)], env={"PYTHONPATH": str(ROOT)})
    ranks = _wait(lambda: _training(job))
    ended = cancel_job(ws, job.id)
    assert ended.status == "cancelled", ended
    assert [r["status"] for r in ended.ranks] == ["cancelled", "cancelled"]
    assert not any(_alive(r["pid"]) for r in ranks)
    _clean(out)


# the supervisor over a probe job (tests/ranks_probe.py: all_sum steps, no trainer) ------------------
PROBE = [sys.executable, str(ROOT / "tests" / "ranks_probe.py"), "supervise", "2"]


def _probe_job(ws, steps: int):
    from engine.jobs import start_job

    job = start_job(ws, "probe", [*PROBE, str(steps)], env={"PYTHONPATH": str(ROOT)})
    return job, _wait(lambda: _training(job))


def test_the_supervisor_records_one_run_with_its_ranks_and_rank_0s_result(ws):
    from engine.events import event_problems

    done = subprocess.run([*PROBE, "3"], capture_output=True, text=True, timeout=180, cwd=ROOT, env=_env(ws))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "RESULT probe ran 3 steps"
    (run,) = list(ws.runs_dir.iterdir())
    info = json.loads((run / "job.json").read_text())
    assert info["status"] == "done" and info["argv"][:2] == ["probe", "supervise"] and info["settings"] == {"nproc": 2}
    assert [(r["rank"], r["host"], r["status"]) for r in info["ranks"]] == [(0, HOST, "done"), (1, HOST, "done")]
    assert len({r["pid"] for r in info["ranks"]} | {info["pid"]}) == 3
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert all(event_problems(e) == [] for e in events)
    assert [e["type"] for e in events] == ["ranks", "progress", "progress", "progress", "done"]
    assert [e["message"] for e in events if e["type"] == "progress"] == ["ranks 2"] * 3  # the sum over both
    shown = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert shown == events  # the supervisor shows rank 0's events live
    log = (run / "log.txt").read_text()
    assert "mlx.launch --backend ring -n 2" in log and log.count("RESULT") == 1  # rank 0's; rank 1 exits quietly


def test_rank_0s_own_error_is_the_runs(ws):
    out = subprocess.run([*PROBE, "-3"], capture_output=True, text=True, timeout=180, cwd=ROOT, env=_env(ws))
    assert out.returncode == 2 and "ERROR probe: rank 0 failed on purpose" in out.stdout
    (run,) = list(ws.runs_dir.iterdir())
    info = json.loads((run / "job.json").read_text())
    assert info["status"] == "failed" and info["error"] == "probe: rank 0 failed on purpose"
    errors = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if '"error"' in line]
    assert len(errors) == 1  # said once, by rank 0


def test_a_killed_rank_fails_the_supervised_run_naming_its_host(ws):
    from engine.jobs import job_info

    job, ranks = _probe_job(ws, 100000)
    os.kill(ranks[1]["pid"], signal.SIGKILL)
    ended = _wait(lambda: (j := job_info(job.dir)).status != "running" and j)
    assert ended.status == "failed" and ended.error.startswith(f"rank 1 on host {HOST} was killed by signal 9")
    assert [r["status"] for r in ended.ranks] == ["stopped", "failed"]
    assert not any(_alive(r["pid"]) for r in ranks)


def test_cancel_stops_every_rank_of_a_supervised_run(ws):
    from engine.jobs import cancel_job

    job, ranks = _probe_job(ws, 100000)
    ended = cancel_job(ws, job.id)
    assert ended.status == "cancelled" and [r["status"] for r in ended.ranks] == ["cancelled", "cancelled"]
    assert not any(_alive(r["pid"]) for r in ranks)


@pytest.mark.parametrize("rank0_exit, reasoned, blamed", [
    ((None, False), True, "rank 0"),  # rank 0's exit line not seen yet, its error recorded as reasoned
    ((None, True), True, "rank 0"),   # the launcher killed rank 0 on its way out
    ((2, False), False, "rank 0"),    # exit code 2 says it (a HumanizerError)
    ((None, True), False, "rank 1"),  # rank 0 crashed on the broken ring: rank 1's exit is the cause
])
def test_rank_0s_reasoned_error_beats_the_rank_it_brought_down(tmp_path, rank0_exit, reasoned, blamed):
    """The race behind a flaky CI run: rank 0 raises its HumanizerError and exits; rank 1, its ring
    broken, exits with 1 and the launcher reports rank 1 first."""
    from types import SimpleNamespace

    from engine.distributed.launch import Supervisor

    (tmp_path / "job.json").write_text(json.dumps({"status": "failed", "error": "bad row 3", "reasoned": reasoned}))
    exits = {1: (1, False)} | ({0: rank0_exit} if rank0_exit != (None, False) else {})
    sup = SimpleNamespace(exits=exits, cancelled=False, done_event=None, run=SimpleNamespace(dir=tmp_path),
                          _host=lambda r: "vm")
    status, error, _, ours = Supervisor._outcome(sup)
    assert status == "failed"
    if blamed == "rank 0":
        assert (error, ours) == ("bad row 3", False)
    else:
        assert error.startswith("rank 1 on host vm exited with code 1") and ours
