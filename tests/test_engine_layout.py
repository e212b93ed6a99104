"""The engine's layout: one module holds the error types (engine/errors.py), still importable
from their domains, and no module of a domain package is a grab bag of jobs (a line budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.errors as errors

ROOT = Path(__file__).resolve().parent.parent / "engine"
MAX_LINES = 600  # issue 12: no engine file over ~600 lines without a stated reason
SPLIT_PACKAGES = ("generate", "data", "eval", "adapters", "train", "serve", "convert")


@pytest.mark.parametrize("module, names", [
    ("engine.generate", ("EngineError", "UnknownAdapter", "AdapterInUse", "EngineClosed")),
    ("engine.data", ("DataError",)),
    ("engine.adapters", ("AdapterConfigError", "NeedsParent")),
    ("engine.serve.client", ("ServerError",)),
    ("tui.config", ("ConfigError",)),
])
def test_error_types_live_in_engine_errors_and_stay_importable_from_their_domain(module, names):
    import importlib

    mod = importlib.import_module(module)
    for name in names:
        cls = getattr(errors, name)
        assert getattr(mod, name) is cls
        assert cls.__module__ == "engine.errors"
        assert issubclass(cls, errors.HumanizerError)


def test_error_types_format_the_hint_one_way():
    from engine.data import RowIssue

    e = errors.EngineError("no adapter named 'x' is mounted", "mount it first", status=404, param="adapter")
    assert str(e) == "no adapter named 'x' is mounted\n  hint: mount it first"
    assert (e.status, e.param) == (404, "adapter")
    d = errors.DataError([RowIssue("train.jsonl", 3, "text", "is empty")])
    assert str(d).endswith("\n  hint: fix these rows, or pass --skip-bad-rows to leave the 1 bad row(s) out")


@pytest.mark.parametrize("package", SPLIT_PACKAGES)
def test_split_packages_have_no_module_over_the_line_budget(package):
    folder = ROOT / package
    assert folder.is_dir(), f"engine/{package} is a package"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.py")}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_no_engine_module_is_over_the_line_budget():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
