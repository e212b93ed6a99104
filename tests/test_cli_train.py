"""`humanizer lora train` end to end on a tiny model, as a user runs it (in a child process)."""

import json
import os
import subprocess
import sys

from tests.tiny import make_tiny_llama

CLI = [sys.executable, "-m", "tui.cli"]


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _cli(ws, *args):
    env = {**os.environ, "HUMANIZER_HOME": str(ws.home)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def test_sft_then_dpo_from_the_cli(ws, tmp_path):
    model = make_tiny_llama(tmp_path / "tiny")
    _write(tmp_path / "sft" / "train.jsonl", [{"prompt": f"say {w}", "completion": f"{w} {w}."} for w in
                                              ("one", "two", "three", "four", "five", "six")])
    _write(tmp_path / "dpo" / "train.jsonl", [{"prompt": f"say {w}", "chosen": f"{w}.", "rejected": f"a testament to {w}"}
                                              for w in ("one", "two", "three", "four")])
    sft = _cli(ws, "lora", "train", str(model), "--data", str(tmp_path / "sft"), "--iters", "4", "--batch-size", "2",
               "--steps-per-eval", "2", "--output", str(ws.adapters_dir / "t-sft"), "--json")
    assert sft.returncode == 0, sft.stderr + sft.stdout
    events = [json.loads(line) for line in sft.stdout.splitlines()]
    assert {"loss", "tokens_per_second"} <= set().union(*(e["values"] for e in events if e["type"] == "metric"))
    assert events[-1] == {**events[-1], "type": "done", "result": str(ws.adapters_dir / "t-sft")}
    assert [e["type"] for e in events].count("done") == 1  # the trainer's summary is the run's one end
    dpo = _cli(ws, "lora", "train", str(model), "--data", str(tmp_path / "dpo"), "--method", "dpo", "--iters", "3",
               "--batch-size", "2", "--mount-adapter", str(ws.adapters_dir / "t-sft"),
               "--output", str(ws.adapters_dir / "t-dpo"))
    assert dpo.returncode == 0, dpo.stderr
    meta = json.loads((ws.adapters_dir / "t-dpo" / "adapter_config.json").read_text())["humanizer"]
    assert meta["method"] == "dpo" and meta["parent"]["name"] == "t-sft"
    runs = json.loads(_cli(ws, "jobs", "list", "--json").stdout)
    assert sorted(r["kind"] for r in runs) == ["lora train dpo", "lora train sft"]
    assert all(r["status"] == "done" for r in runs)


def test_bad_rows_stop_before_training_with_file_and_line(ws, tmp_path):
    model = make_tiny_llama(tmp_path / "tiny")
    _write(tmp_path / "bad" / "train.jsonl", [{"prompt": "a", "completion": "b"}, "{not json", {"prompt": "c"}])
    out = _cli(ws, "lora", "train", str(model), "--data", str(tmp_path / "bad"), "--iters", "2",
               "--output", str(ws.adapters_dir / "bad"))
    assert out.returncode == 2
    assert "train.jsonl:2" in out.stderr and "train.jsonl:3" in out.stderr and "completion" in out.stderr
    assert "--skip-bad-rows" in out.stderr
    assert not (ws.adapters_dir / "bad" / "adapters.safetensors").exists()


def test_train_settings_are_the_cli_flags_and_the_form_flags():
    """engine.train.settings.TrainSettings is the one list of `lora train`'s settings: the CLI
    has one flag per field (its default, choices, requiredness and help), train() one keyword
    per field, and the Train form's own fields plus its free "flags" field cover the rest."""
    import argparse
    import inspect

    from engine.train import train
    from engine.train.settings import flag, setting_fields, value_type
    from screens.train.fields import EXTRA_FLAGS, FORM_FLAGS
    from tests.settings_flags import assert_flags_are_fields
    from tui.cli.train import register

    parser = argparse.ArgumentParser(prog="humanizer")
    register(parser.add_subparsers(dest="action"))
    assert_flags_are_fields(parser._subparsers._group_actions[0].choices["train"], setting_fields())
    fields = {f.name: f for f in setting_fields()}
    keywords = set(inspect.signature(train).parameters) - {"model_spec", "data_spec", "run", "ws"}
    assert keywords == set(fields) - {"data", "nproc", "hosts"}  # where it runs is the CLI's (--nproc/--hosts)
    assert {*FORM_FLAGS, *EXTRA_FLAGS} == {flag(f) for f in fields.values()} | {"--json"}
    assert all(EXTRA_FLAGS[flag(f)] is value_type(f) for f in fields.values() if flag(f) in EXTRA_FLAGS)


def test_lora_train_help_loads_no_mlx():
    """`lora train --help` (and every command's parser) reads the settings, not the trainer."""
    code = ("import sys; from tui.cli import build_parser; build_parser(); "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')); "
            "sys.exit(f'loaded: {loaded}' if loaded else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    help_text = subprocess.run([*CLI, "lora", "train", "--help"], capture_output=True, text=True, cwd=root).stdout
    for f in ("--data", "--preset", "--mount-adapter", "--dpo-loss", "--skip-bad-rows", "Presets"):
        assert f in help_text, f
