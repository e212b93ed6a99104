"""Shared fixtures. Tiny models and tokenizers are built in tests/tiny.py."""

import pytest

from engine.workspace import Workspace


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace, also exported as HUMANIZER_HOME for child processes."""
    home = tmp_path / "home"
    monkeypatch.setenv("HUMANIZER_HOME", str(home))
    return Workspace.open(home)
