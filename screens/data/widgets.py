"""The Data screen's pieces that need no screen: a build (or corpus pull) job's history read
from its events, the tables with their bindings, and pure renderers (Rich) for rows per
split, the picker's lines and texts side by side (human | AI draft | model rewrite), so
they are tested without Textual."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text
from textual.binding import Binding

from engine.jobs import JobInfo
from screens.common.history import JobHistory
from screens.common.runs import RunsTable
from screens.common.widgets import LiveTable, one_line

MAX_SAMPLES = 6  # sample pairs kept per build (the view shows the newest few)
PART_SHORT = {"sft/train": "sft", "dpo/train": "dpo", "heldout": "held", "train": "train"}
SIDE_TITLES = {"draft": "AI draft", "human": "human", "rewrite": "model rewrite"}


def is_data_job(job: JobInfo) -> bool:
    return job.kind.startswith("data build") or job.kind == "data corpus pull"


class DataHistory(JobHistory):
    """One build's events: the latest progress, the newest sample pairs, the dataset it
    wrote (artifact), its rate metrics and the error or done event."""

    def __init__(self, job: JobInfo) -> None:
        super().__init__(job)
        self.pull = job.kind == "data corpus pull"
        if self.pull:
            self.name = f"pull {self.args.get('name', '?')}"
        self.samples: list[dict] = []
        self.artifact: str | None = None
        self.metrics: dict[str, float] = {}

    def feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "sample":
            self.samples = (self.samples + [ev])[-MAX_SAMPLES:]
        elif kind == "artifact":
            self.artifact = str(ev.get("path") or "") or None
        elif kind == "metric":
            self.metrics.update({k: v for k, v in (ev.get("values") or {}).items() if isinstance(v, (int, float))})
        else:
            super().feed(ev)

    @property
    def template(self) -> str:
        return "corpus pull" if self.pull else str(self.args.get("template", "?"))


# tables ---------------------------------------------------------------------------------------
class DatasetTable(LiveTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Rows", id="data_open", tooltip="Browse this dataset's rows"),
        Binding("t", "screen.train_on", "Train", id="data_train",
                tooltip="Open Train with this dataset (and the method its rows feed)"),
    ]


class RowTable(LiveTable):
    BINDINGS = [
        Binding("p", "screen.next_part", "Next part", id="data_part",
                tooltip="Show the next part: sft/train, sft/valid, dpo/train, dpo/valid, heldout"),
    ]


class BuildTable(RunsTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="data_build_open", tooltip="Show this build")]


# renderers ------------------------------------------------------------------------------------
def parts_text(counts: dict[str, int]) -> str:
    """Rows per split in a few cells: 'sft 40/4 · dpo 40/4 · held 10', 'train 20/4'."""
    out = []
    for part, short in PART_SHORT.items():
        if part not in counts:
            continue
        valid = part.replace("train", "valid")
        out.append(f"{short} {counts[part]}" + (f"/{counts[valid]}" if part != valid and valid in counts else ""))
    return " · ".join(out) or "empty"


def methods_text(methods) -> str:
    return "+".join(m.upper() for m in methods) or "—"


def dataset_line(info, width: int = 18) -> Text:
    """One dataset in a picker: name, kind, rows per split, the methods it feeds."""
    name = info.name if info.kind != "example" else f"examples/{info.name}"
    line = Text(one_line(name, width).ljust(width), style="bold")
    line.append(f" {info.kind:<11}", style="dim")
    line.append(f" {one_line(parts_text(info.counts), 26):<26}")
    line.append(f" {methods_text(info.methods)}", style="bold")
    return line


def corpus_line(c: dict, width: int = 18) -> Text:
    line = Text(one_line(str(c["name"]), width).ljust(width), style="bold")
    line.append(" corpus     ", style="dim")
    line.append(f" {c.get('register', '?')}")
    if c.get("documents"):
        line.append(f" · {c['documents']:,} docs")
    line.append(" · ✓ pulled" if c.get("pulled") else " · not pulled: pick to pull",
                style="green" if c.get("pulled") else "italic")
    return line


def folder_line(name: str, files: int, width: int = 18) -> Text:
    line = Text(one_line(name, width).ljust(width), style="bold")
    line.append(" folder     ", style="dim")
    line.append(f" {files} .txt/.md file{'s' * (files != 1)}")
    return line


def clip(text: str, limit: int) -> str:
    text = str(text or "").strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def sides_table(rows: list[dict[str, str]], keys: list[str], limit: int = 1200, title: str | None = None) -> Table:
    """Texts side by side, one column per key (human, draft, rewrite); a row per dict."""
    table = Table(box=box.MINIMAL, expand=True, show_lines=len(rows) > 1, padding=(0, 1), show_edge=False,
                  title=title, title_justify="left", title_style="bold")
    for key in keys:
        table.add_column(SIDE_TITLES.get(key, key), ratio=1, overflow="fold", header_style="bold")
    for row in rows:
        table.add_row(*[Text(clip(row.get(k) or "", limit)) if row.get(k) else Text("—", style="dim")
                        for k in keys])
    return table


def samples_view(samples: list[dict], limit: int = 3, chars: int = 320) -> Table | Text:
    """The newest sample pairs of a build, newest first: human | AI draft (| model rewrite)."""
    if not samples:
        return Text("No sample pairs yet: the build shows one every few seconds while it writes.", style="dim")
    newest = list(reversed(samples))[:limit]
    keys = ["human", "draft"] + (["rewrite"] if any(s.get("rewrite") for s in newest) else [])
    return sides_table(newest, keys, limit=chars, title="Latest pairs, newest first")


def source_label(spec: str) -> str:
    p = Path(spec)
    return p.name if "/" in spec else spec
