"""engine.data.prefs: A/B picks recorded into a preference set (a workspace dataset folder)
that `humanizer lora train --method dpo` reads as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlx_lm.utils import load_tokenizer

import engine.data.prefs as P
from engine.data import load_data
from engine.data.prefs import (
    DEFAULT_SET, list_preference_sets, pref_stats, read_pairs, read_ties, record_pick,
)
from engine.errors import HumanizerError
from tests.tiny import make_tiny_llama, train_tiny_tokenizer

SOURCE = "Rewrite: our policy is a testament to our unwavering commitment."
META = {"blind": True, "sampling": {"temperature": 0.7, "max_tokens": 64, "seed_a": 1, "seed_b": 2},
        "conversation": "20250102-104500-c0de"}


def pick(ws, which, name=DEFAULT_SET, a="We changed the policy.", b="This underscores our commitment.",
         a_adapter="sft+dpo", b_adapter="base", **kw):
    return record_pick(ws, name, prompt=kw.pop("prompt", SOURCE), a=a, b=b, a_adapter=a_adapter,
                       b_adapter=b_adapter, pick=which, **kw)


def test_each_kind_of_pick_and_the_files(ws):
    folder = ws.datasets_dir / DEFAULT_SET
    assert pref_stats(folder) == {"pairs": 0, "ties": 0, "skips": 0, "adapters": {}}  # not made yet
    stats = pick(ws, "a", system="Write like a person.", meta=META)
    assert stats["pairs"] == 1 and stats["adapters"]["sft+dpo"]["win_rate"] == 1.0
    pick(ws, "b", a="Plain words.", b="We dropped the old rule.")
    pick(ws, "tie")
    stats = pick(ws, "skip", a="", b="")  # a skip keeps nothing, so empty sides are fine

    pairs = read_pairs(folder)
    assert [p["chosen"] for p in pairs] == ["We changed the policy.", "We dropped the old rule."]
    assert [p["rejected"] for p in pairs] == ["This underscores our commitment.", "Plain words."]
    first = pairs[0]
    assert list(first) == ["prompt", "chosen", "rejected", "system", "meta"]
    assert first["prompt"] == SOURCE and first["system"] == "Write like a person."
    assert "system" not in pairs[1]  # only when the chat had a system prompt
    meta = first["meta"]
    assert {k: meta[k] for k in ("chosen_adapter", "rejected_adapter", "pick", "sides", "blind", "sampling",
                                 "conversation")} == {
        "chosen_adapter": "sft+dpo", "rejected_adapter": "base", "pick": "a", "sides": {"A": "sft+dpo", "B": "base"},
        **META}
    assert isinstance(meta["time"], float)
    assert pairs[1]["meta"]["chosen_adapter"] == "base" and pairs[1]["meta"]["pick"] == "b"
    assert pairs[1]["meta"]["blind"] is False and pairs[1]["meta"]["conversation"] is None

    ties = read_ties(folder)
    assert len(ties) == 1 and ties[0]["a"] == "We changed the policy." and ties[0]["meta"]["pick"] == "tie"
    assert ties[0]["meta"]["chosen_adapter"] is None and "chosen" not in ties[0]

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["template"] == "preferences" and manifest["name"] == DEFAULT_SET
    assert manifest["source"] == "A/B judgements in Chat" and manifest["licence"] == "the judge's own"
    assert manifest["counts"] == {"pairs": 2, "ties": 1, "skips": 1}
    assert manifest["created"] <= manifest["updated"]
    assert stats == pref_stats(folder) == {
        "pairs": 2, "ties": 1, "skips": 1,
        "adapters": {"sft+dpo": {"wins": 1, "losses": 1, "ties": 1, "win_rate": 0.5},
                     "base": {"wins": 1, "losses": 1, "ties": 1, "win_rate": 0.5}}}
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "ties.jsonl", "train.jsonl"]  # no temps


def test_win_rates(ws):
    for which in ("a", "a", "b"):
        stats = pick(ws, which)
    pick(ws, "a", a_adapter="sft", b_adapter="sft", a="One seed.", b="Another seed.")  # itself: a win and a loss
    stats = pick(ws, "tie", a_adapter="sft", b_adapter="sft")
    assert stats["adapters"]["sft+dpo"] == {"wins": 2, "losses": 1, "ties": 0, "win_rate": 2 / 3}
    assert stats["adapters"]["base"] == {"wins": 1, "losses": 2, "ties": 0, "win_rate": 1 / 3}
    assert stats["adapters"]["sft"] == {"wins": 1, "losses": 1, "ties": 1, "win_rate": 0.5}
    only_ties = pick(ws, "tie", name="ties-only", a_adapter="x", b_adapter="y")
    assert only_ties["adapters"]["x"] == {"wins": 0, "losses": 0, "ties": 1, "win_rate": None}


def test_bad_inputs(ws):
    cases = [
        (dict(which="maybe"), "unknown pick"),
        (dict(which="a", name=""), "no preference set name"),
        (dict(which="a", name="../out"), "not a usable preference set name"),
        (dict(which="a", name="a/b"), "not a usable preference set name"),
        (dict(which="a", name=".hidden"), "not a usable preference set name"),
        (dict(which="a", name="x" * 65), "not a usable preference set name"),
        (dict(which="a", a=""), "the a text is empty"),
        (dict(which="tie", b="  \n"), "the b text is empty"),
        (dict(which="b", prompt=" "), "the prompt text is empty"),
        (dict(which="skip", prompt=""), "the prompt text is empty"),
        (dict(which="a", a="Same.", b="Same. "), "both sides wrote the same text"),
    ]
    for kw, message in cases:
        with pytest.raises(HumanizerError, match=message) as e:
            pick(ws, kw.pop("which"), **kw)
        assert e.value.hint
    assert list(ws.datasets_dir.iterdir()) == []  # nothing written
    assert pick(ws, "tie", a="Same.", b="Same.")["ties"] == 1  # the same text is a tie at most


def test_refuses_a_dataset_that_is_not_a_preference_set(ws):
    other = ws.datasets_dir / "human-sft"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"template": "style-transfer", "name": "human-sft"}))
    (other / "train.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    with pytest.raises(HumanizerError, match="datasets/human-sft is not a preference set.*'style-transfer'"):
        pick(ws, "a", name="human-sft")
    plain = ws.datasets_dir / "mine"
    plain.mkdir()
    (plain / "train.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    with pytest.raises(HumanizerError, match="datasets/mine already holds other files"):
        pick(ws, "skip", name="mine")
    assert (other / "train.jsonl").read_text() == '{"prompt": "p", "completion": "c"}\n'
    assert sorted(p.name for p in plain.iterdir()) == ["train.jsonl"]
    (ws.datasets_dir / "empty").mkdir()
    pick(ws, "a", name="empty")  # an empty folder may become one
    pick(ws, "a")
    assert list_preference_sets(ws) == [DEFAULT_SET, "empty"]


def test_a_failure_mid_write_leaves_the_old_files(ws, monkeypatch):
    folder = ws.datasets_dir / DEFAULT_SET
    pick(ws, "a")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_replace = os.replace

    def crash_on_rename(src, dst):  # the temp file is fully written; the rename never happens
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash_on_rename)
    with pytest.raises(OSError, match="disk pulled out"):
        pick(ws, "b")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no torn file, no temp left

    def crash_on_manifest(src, dst):  # the rows land, the manifest does not: still readable
        if str(dst).endswith("manifest.json"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="power cut"):
        pick(ws, "b")
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(read_pairs(folder)) == 2 and json.loads((folder / "manifest.json").read_text())["counts"]["pairs"] == 1
    assert pick(ws, "skip")["pairs"] == 2  # the next pick counts the rows that are there
    assert json.loads((folder / "manifest.json").read_text())["counts"] == {"pairs": 2, "ties": 0, "skips": 1}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_an_unreadable_row_is_never_written_over(ws):
    folder = ws.datasets_dir / DEFAULT_SET
    pick(ws, "a")
    with open(folder / "train.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(HumanizerError, match=r"train.jsonl:2: not valid JSON"):
        pick(ws, "b")
    assert (folder / "train.jsonl").read_text().endswith("{not json\n")


def test_the_set_loads_as_dpo_data(ws, tmp_path):
    for i, which in enumerate("abab"):
        pick(ws, which, a=f"Side A, take {i}.", b=f"Side B, take {i}.", system="Write plainly." if i else None)
    pick(ws, "tie")
    tok = load_tokenizer(train_tiny_tokenizer(tmp_path / "tok"))
    ds = load_data(str(ws.datasets_dir / DEFAULT_SET), "dpo", tok, 512)
    assert len(ds.train) + len(ds.valid) == 4 and not ds.skipped and not ds.issues  # ties stay out
    by_name = load_data(DEFAULT_SET, "dpo", tok, 512, ws=ws)  # --data NAME: the workspace dataset
    assert len(by_name.train) + len(by_name.valid) == 4


def test_lora_train_dpo_on_the_set(ws, tmp_path):
    """`humanizer lora train MODEL --method dpo --data chat-picks`, in a child process."""
    for i in range(4):
        pick(ws, "ab"[i % 2], a=f"Plain words, take {i}.", b=f"A testament to words, take {i}.")
    model = make_tiny_llama(tmp_path / "tiny")
    env = {**os.environ, "HUMANIZER_HOME": str(ws.home)}
    out = subprocess.run([sys.executable, "-m", "tui.cli", "lora", "train", str(model), "--method", "dpo",
                          "--data", DEFAULT_SET, "--iters", "2", "--batch-size", "2",
                          "--output", str(ws.adapters_dir / "picks-dpo")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    meta = json.loads((ws.adapters_dir / "picks-dpo" / "adapter_config.json").read_text())["humanizer"]
    assert meta["method"] == "dpo"


def test_engine_module_imports_no_ui_or_mlx():
    code = ("import sys, engine.data.prefs; "
            "print(sorted(m for m in ('mlx', 'textual', 'rich', 'screens', 'tui') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
    assert P.DEFAULT_SET == "chat-picks"
