"""A job's settings live in job.json: given when it starts, recorded resolved by the CLI's
child; the screens read them there (no command line is parsed back)."""

import json
from pathlib import Path

from engine.jobs import job_info, start_job
from screens.common.serving import serve_argv, serve_settings
from screens.train.fields import read_extra
from tests.pilot import wait_for
from tests.test_demo import _pairs_rows
from tests.test_jobs import slow_argv
from tui.cli import build_parser, main
from tui.cli.common import verb_settings


def parsed(args: list[str]) -> dict:
    return verb_settings(build_parser().parse_args(args))


def test_start_job_writes_settings_and_old_runs_load_without(ws):
    job = start_job(ws, "test slow", slow_argv(1), settings={"output": Path("/a/out"), "adapters": ("x", "y")})
    assert job.settings == {"output": "/a/out", "adapters": ["x", "y"]}  # at once: before the child runs
    assert wait_for(lambda: job_info(job.dir).status == "done")
    assert job_info(job.dir).settings == job.settings  # a child that records none keeps them
    old = ws.runs_dir / "20250101-000000-convert-abcd"
    old.mkdir()
    (old / "job.json").write_text(json.dumps({"id": old.name, "kind": "convert", "argv": ["humanizer", "convert"],
                                              "pid": None, "status": "done", "started": 1.0, "ended": 2.0}))
    assert job_info(old).settings == {} and job_info(old).status == "done"


def test_the_cli_records_its_resolved_settings(ws, tmp_path, monkeypatch):
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _pairs_rows()))
    monkeypatch.setenv("HUMANIZER_HOME", str(ws.home))
    assert main(["data", "build", "--template", "paired", "--source", str(source), "--output", "pairs", "--json"]) == 0
    (run,) = [d for d in ws.runs_dir.iterdir() if (d / "job.json").exists()]
    settings = job_info(run).settings
    assert settings["template"] == "paired" and settings["source"] == str(source) and settings["output"] == "pairs"
    assert settings == parsed(["data", "build", "--template", "paired", "--source", str(source), "--output", "pairs"])
    assert "seed" in settings  # defaults filled in
    assert not {"handler", "json", "home", "command", "action"} & set(settings)


def test_secrets_are_recorded_only_as_set():
    settings = parsed(["serve", "--api-key", "s3cret", "--port", "0"])
    assert settings["api_key_set"] is True and "api_key" not in settings
    assert "s3cret" not in json.dumps(settings)


def test_the_screens_settings_are_the_clis():
    """What a screen records when it starts a job is what the child records: the same keys and values."""
    adapters = ["/w/adapters/sft", "/w/adapters/dpo"]
    mine = serve_settings("/w/models/tiny", adapters, "127.0.0.1", 0, api_key="k", max_concurrent=2)
    cli = parsed(serve_argv("/w/models/tiny", adapters, "127.0.0.1", 0, 2) + ["--api-key", "k"])
    assert {k: cli[k] for k in mine} == mine
    tokens, extra, error = read_extra("--rank 4 --learning-rate=2e-4 --skip-bad-rows --keys q_proj,v_proj")
    assert error is None and extra == {"rank": 4, "learning_rate": 2e-4, "skip_bad_rows": True,
                                       "keys": "q_proj,v_proj"}
    cli = parsed(["lora", "train", "m", "--data", "d", "--output", "o", *tokens])
    assert {k: cli[k] for k in extra} == extra
