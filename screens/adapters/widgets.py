"""The Adapters screen's pieces: its table, an adapter's cells and details text, and the
checks on a new output name (combine, fuse, export)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.binding import Binding

from engine.workspace import human_bytes
from screens.common.widgets import LiveTable, display_path


def engine_adapters():
    from engine import adapters as A  # imported late: the app starts fast

    return A


def safe_name(text: str) -> str | None:
    """Why `text` cannot be a new folder name in the workspace, or None."""
    if not text:
        return "required"
    if "+" in text:
        return "no '+' in a name: the server joins stacked adapters with '+'"
    if text.startswith(".") or any(c in text for c in "\\\0"):
        return "not a valid folder name"
    return None


def output_path(base: Path, text: str) -> Path:
    """A plain name is a folder in `base`; a path (with / or ~) is used as it is."""
    if "/" in text or text.startswith("~"):
        return Path(text).expanduser().resolve()
    return base / text


def output_errors(text: str, base: Path, home: Path, bundle: bool = False) -> list[tuple[str, str]]:
    """The output field's problem: not a valid name, or a folder that exists (`bundle`: one
    that exists and holds something other than a bundle, which is written again)."""
    problem = safe_name(text)
    if problem:
        return [("output", f"output: {problem}")]
    out = output_path(base, text)
    if not bundle and out.exists():
        return [("output", f"output: {display_path(out, home)} exists; choose another name")]
    if bundle and out.exists() and not (out / "humanizer_bundle.json").exists() and any(out.iterdir()):
        return [("output", f"output: {display_path(out, home)} exists and is not a bundle")]
    return []


def adapter_args(adapters: list) -> list[str]:
    """`--adapter PATH` for each of `adapters`, in order."""
    return [arg for a in adapters for arg in ("--adapter", str(a.path))]


def short_layers(info) -> str:
    """E.g. '2 blocks × 4' (blocks × keys per block); the details say which."""
    blocks, keys = engine_adapters().layer_blocks(info)
    if not blocks:
        return f"{len(info.layers)} layers"
    return f"{len(blocks)} block{'s' * (len(blocks) != 1)} × {len(keys)}"


def fits_cell(info) -> Text:
    if info.fits is None:
        return Text("—", style="dim")
    if not info.fits:
        return Text("✗ no", style="bold red")
    return Text("✓ with parent" if info.is_delta else "✓ yes", style="green")


def adapter_cells(a, mounted: bool) -> dict:
    """The table's cells for adapter `a`, by column key."""
    A = engine_adapters()
    return {
        "mark": Text("●" if mounted else "", style="bold"),
        "name": Text(a.name, style="bold"),
        "method": A.describe_method(a),
        "base": (a.base or {}).get("name", "?"),
        "parent": (a.parent or {}).get("name", "") or "—",
        "rank": Text(str(a.rank), justify="right"),
        "layers": short_layers(a),
        "metrics": A.metrics_summary(a.metrics, ("val_loss", "val_kl")) or "—",
        "fits": fits_cell(a),
    }


def adapter_details(info, home: Path, model_dir: Path | None, parent_here: bool, server: str) -> Text:
    """Everything about one adapter; `server` says whether it is mounted."""
    A = engine_adapters()
    t = Text()

    def row(label: str, value, style: str = "") -> None:
        t.append(f"{label:<11}", style="dim")
        t.append(f"{value}\n", style=style)

    t.append(f"{info.name}\n", style="bold")
    row("path", display_path(info.path, home))
    row("method", A.describe_method(info))
    base = info.base or {}
    row("base", f"{base.get('name', 'unknown')}")
    if info.is_delta:
        p = info.parent
        row("parent", f"{p.get('name')} (a delta: mounts only with it"
                      + (")" if parent_here else "; not in this workspace)"))
    for s in (info.config.get("humanizer") or {}).get("combined_from") or []:
        row("from", f"{s.get('name')} ({s.get('method')}, rank {s.get('rank')}, scale {s.get('scale')})")
    row("lora", f"rank {info.rank} · scale {info.scale:g} · dropout {info.dropout:g}")
    row("layers", f"{len(info.layers)}: {A.layer_summary(info)}")
    if info.metrics:
        row("metrics", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in info.metrics.items()))
    training = {k: v for k, v in (info.training or {}).items() if not isinstance(v, (dict, list))}
    if training:
        row("training", ", ".join(f"{k} {v}" for k, v in training.items()))
    if info.fits is not None:
        model = Path(model_dir).name if model_dir else "?"
        row(f"fits {model}"[:10], ("yes" if info.fits else "no") + (f": {info.fit_reason}" if info.fit_reason
                                                                     else ""),
            "" if info.fits else "red")
    row("server", server)
    row("size", human_bytes(info.size_bytes))
    row("print", info.fingerprint, "dim")
    return t


def dry_run_listing(result) -> Text:
    """What a push dry run would upload."""
    t = Text(f"dry run: {len(result.files)} files ({human_bytes(result.total_bytes)}) to {result.url} "
             f"({'private' if result.private else 'public'}); nothing was sent\n", style="bold")
    for path, size in result.files:
        t.append(f"  {path}  ", style="")
        t.append(f"{human_bytes(size)}\n", style="dim")
    if not result.token_found:
        t.append("no Hugging Face token found: `hf auth login` or HF_TOKEN before pushing\n", style="italic")
    return t


class AdapterTable(LiveTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Inspect", id="adapters_inspect",
                tooltip="Into its details, to scroll them (esc: back to the list)"),
    ]
