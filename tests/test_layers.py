"""The dependency direction tui -> screens -> engine, and no Textual in engine."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_engine_source_never_names_ui_packages():
    # Also catches imports inside functions, which a lazy import could hide from a run-time check.
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("textual", "rich", "screens", "tui"), f"{path}: imports {name}"


def test_settings_modules_load_without_mlx():
    """The CLI's --help and the forms read the settings dataclasses: they must not pull in MLX."""
    code = ("import sys, engine.data.settings, engine.eval.settings, engine.demo.settings, engine.convert.settings, "
            "engine.serve.settings, engine.train.settings, engine.distributed.settings, engine.distributed.launch; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')); "
            "sys.exit(f'loaded: {loaded}' if loaded else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
