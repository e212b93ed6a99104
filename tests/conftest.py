"""Shared fixtures. Tiny models and tokenizers are built in tests/tiny.py."""

import json
import os
import time

import pytest

# Tests never reach the real Hugging Face Hub: any Hub call goes to a closed loopback port.
# Set before huggingface_hub/datasets are imported, since they read it at import time.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"

from engine.workspace import Workspace


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace, also exported as HUMANIZER_HOME for child processes."""
    home = tmp_path / "home"
    monkeypatch.setenv("HUMANIZER_HOME", str(home))
    return Workspace.open(home)

@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC (snapshots show clock times)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(autouse=True)
def events_follow_their_schemas(monkeypatch):
    """Every event written in this process is checked against engine.events.EVENT_SCHEMAS:
    so every test that makes the engine write events checks them too."""
    from engine import events

    emit = events.Run.emit

    def checked(self, type, **fields):
        ev = emit(self, type, **fields)
        problems = events.event_problems(json.loads(json.dumps(ev, default=str)))
        assert not problems, f"event {type!r} breaks its schema: {'; '.join(problems)}"
        return ev

    monkeypatch.setattr(events.Run, "emit", checked)
