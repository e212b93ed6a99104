"""The Data screen's build form, made from engine.data.settings.BuildSettings (the fields
the `humanizer data build` flags are made from): a Select for a field with choices, an
Input for the rest, the focused field's help under it. The template's own fields show
only for it (dpo-pairs: adapter, samples, rejected; generation settings only for the
templates that generate); filters and sampling sit behind "all settings".

The source has a picker (ctrl+o): the corpora (an unpulled one is pulled as a job, after
a confirm), the workspace datasets, folders of .txt/.md here, and the bundled examples.
BuildSettings.check() validates; its error names the flag and lands in the error box."""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, asdict
from functools import partial
from pathlib import Path
from typing import Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Button, Checkbox, Input, Select, Static

from engine.data.settings import NAME_RE, TEMPLATES, BuildSettings, setting_fields
from screens.data.widgets import corpus_line, dataset_line, folder_line
from screens.common.forms import PickDialog, default_placeholder, field_id, settings_rows
from screens.common.run_form import FormHost, FormSubmitted
from screens.common.dialogs import ConfirmDialog
from screens.common.progress import start_humanizer_job
from screens.common.widgets import display_path

FIELDS = setting_fields(form_only=True)
BASIC = ("template", "source", "output", "model", "adapter", "endpoint", "samples", "rejected", "limit",
         "heldout", "valid_share", "per_document")  # the rest: behind "all settings"
GENERATES = ("style-transfer", "dpo-pairs")  # the templates that write text with a model
LABELS = {"per_document": "per doc", "near_duplicate": "near dup", "min_locks_kept": "locks kept",
          "valid_share": "valid share", "text_column": "text column", "model": "drafter"}
SUFFIX = {"style-transfer": "st", "dpo-pairs": "dpo", "paired": "paired", "judgements": "picks"}
TEXT_EXTS = (".txt", ".md")
MAX_FOLDERS = 30
SKIP_FOLDERS = {"node_modules", "site-packages", "venv", "build", "dist"}


def only_for(f) -> str | None:
    """The template a field belongs to, when its help starts with one ('dpo-pairs: ...')."""
    head = f.metadata["help"].split(":", 1)[0]
    return head if head in TEMPLATES else None


def relevant(f, template: str) -> bool:
    if only_for(f):
        return only_for(f) == template
    if f.metadata["group"] == "generation" or f.name == "model":
        return template in GENERATES
    return True


def placeholder_of(f) -> str:
    """What an empty field means: the Data form's own words for a few, else default_placeholder."""
    given = {"source": "ctrl+o: pick, or type a path", "output": "dataset name (datasets/NAME)",
             "endpoint": "none: generate here", "adapter": "an SFT adapter (name or folder)"}
    return given.get(f.name) or default_placeholder(f)


def check_all(values: dict) -> list[tuple[str, str]]:
    """Every problem BuildSettings finds, as (flag, message with its hint)."""
    return [(flag, message + (f" ({hint})" if hint else ""))
            for flag, message, hint in BuildSettings(**values).problems()]


def text_folders(base: Path) -> list[tuple[Path, int]]:
    """Folders right under `base` holding .txt/.md files (a source the builder reads), with how many."""
    found = []
    try:
        entries = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                         and not p.name.endswith(".egg-info") and p.name not in SKIP_FOLDERS)
    except OSError:
        return []
    for d in entries[:200]:
        try:
            n = sum(1 for p in d.iterdir() if p.suffix.lower() in TEXT_EXTS and p.is_file())
        except OSError:
            continue
        if n:
            found.append((d, n))
        if len(found) >= MAX_FOLDERS:
            break
    return found


class DataForm:
    """The form's half of DataScreen (a mixin: its fields are the screen's own widgets). A
    start posts Submitted; the screen starts the job."""

    class Needs(FormHost, Protocol):
        def set_view(self, view: str) -> None: ...

    class Submitted(FormSubmitted):
        """values: the BuildSettings checked."""

    datasets: list  # DatasetInfo, from the last scan
    corpora: list[dict]
    folders: list[tuple[Path, int]]

    def compose_form(self) -> ComposeResult:
        yield Static("New dataset", classes="heading")
        yield Static("", id="f-errors")
        yield from settings_rows(FIELDS, LABELS, self._field_widget,
                                 {"template": "f-template-info", "source": "f-source-info"}, "per_document")
        yield Button("Build  ctrl+s", id="f-start", compact=True, variant="primary")

    def _field_widget(self, f):
        fid = field_id(f.name)
        choices = f.metadata.get("choices")
        if f.name == "model":
            return Select([], prompt=f"{f.default} (default)", compact=True, id=fid)
        if choices:
            value = f.default if f.default is not MISSING else choices[0]
            return Select([(c, c) for c in choices], value=value, allow_blank=False, compact=True, id=fid)
        kind = {"int": "integer", "float": "number"}.get(str(f.type), "text")
        return Input(placeholder=placeholder_of(f), type=kind, compact=True, id=fid)

    def setup_form(self) -> None:
        self._fit_form()
        self._show_source_info()

    # which fields show ------------------------------------------------------------------------
    def _template(self) -> str:
        return self._value("f-template") or "style-transfer"

    def _fit_form(self) -> None:
        template, everything = self._template(), self.query_one("#f-all", Checkbox).value
        for f in FIELDS:
            self.query_one(f"#row-{f.name}").display = relevant(f, template) and (everything or f.name in BASIC)
        self.query_one("#f-template-info", Static).update(Text(TEMPLATES.get(template, ""), style="dim"))

    def on_descendant_focus(self, event) -> None:
        fid = getattr(event.widget, "id", None) or ""
        for f in FIELDS:
            self.query_one(f"#help-{f.name}").display = fid == field_id(f.name)

    # the workspace's lists ------------------------------------------------------------------
    def scan_more(self):
        """In the scan's worker thread: datasets, corpora and folders of text here."""
        from engine.data.catalog import list_datasets
        from engine.data.corpus import list_corpora

        ws = self.app.ws
        try:
            datasets = list_datasets(ws)
        except Exception:  # a broken folder must not take the screen down
            datasets = []
        try:
            corpora = list_corpora(ws)
        except Exception:
            corpora = []
        return datasets, corpora, text_folders(Path(os.getcwd()))

    def form_scanned(self, more) -> None:
        self.datasets, self.corpora, self.folders = more
        self._suggest_output()
        self._show_source_info()
        self.datasets_scanned()

    def datasets_scanned(self) -> None:
        """The screen's hook: the datasets list changed."""

    def output_taken(self, name: str) -> bool:
        d = self.app.ws.datasets_dir
        return (d / name).exists() or (d / f".{name}.build").exists() or self._output_busy(name) is not None

    def _output_busy(self, name: str):
        for job in self.run_jobs():
            if job.status in ("running", "starting") and job.settings.get("output") == name:
                return job
        return None

    def _text(self, input_id: str) -> str:
        return self.query_one(f"#{input_id}", Input).value.strip()

    def _suggest_output(self) -> None:
        """A name from the source and the template, not taken yet, until the user types one."""
        out = self.query_one("#f-output", Input)
        if out.value and out.value != self._auto_output:
            return
        source = self._text("f-source").rstrip("/")
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).name if source else "").strip("-._")[:60]
        if not base:
            out.value = self._auto_output = ""
            return
        base = f"{base}-{SUFFIX.get(self._template(), 'data')}"
        name, n = base, 2
        while self.output_taken(name):
            name, n = f"{base}-{n}", n + 1
        self._auto_output = out.value = name

    def _show_source_info(self) -> None:
        box = self.query_one("#f-source-info", Static)
        source = self._text("f-source")
        corpus = next((c for c in self.corpora if c["name"] == source), None)
        dataset = next((d for d in self.datasets if d.spec == source), None)
        if corpus is not None:
            line = Text(f"corpus · {corpus.get('licence', '?')}", style="dim")
            if not corpus.get("pulled"):
                line = Text.assemble(("not pulled yet: ctrl+o and pick it to pull it (a job)", "italic"))
        elif dataset is not None and dataset.kind == "example":
            line = Text(f"bundled example: {dataset.source}; not human text", style="dim")
        elif dataset is not None:
            line = Text(f"{dataset.kind} dataset · {dataset.template} · licence {dataset.licence}", style="dim")
        elif source:
            line = Text("a folder of .txt/.md, a .jsonl/.csv/.parquet file or a Hugging Face dataset id",
                        style="dim")
        else:
            line = Text("ctrl+o: a corpus, a workspace dataset, a folder or an example", style="dim")
        box.update(line)

    # reacting to edits ------------------------------------------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "f-template":
            self._fit_form()
            self._suggest_output()
        self._clear_errors()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "f-all":
            self._fit_form()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-source":
            self._suggest_output()
            self._show_source_info()
        self._clear_errors()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    # the source picker ------------------------------------------------------------------------
    def action_pick_source(self) -> None:
        options: list[tuple[Text, tuple]] = [(corpus_line(c), ("corpus", c)) for c in self.corpora]
        for d in self.datasets:
            if d.kind != "example":
                options.append((dataset_line(d), ("dataset", d.spec)))
        for path, n in self.folders:
            options.append((folder_line(display_path(path, Path(os.getcwd())), n), ("folder", str(path))))
        for d in self.datasets:
            if d.kind == "example":
                options.append((dataset_line(d), ("example", d.spec)))
        self.app.push_screen(PickDialog("Source: where the human text comes from", options,
                                        help="enter: choose · escape: cancel · or type a path in the form"),
                             self._source_picked)

    def _source_picked(self, picked) -> None:
        if picked is None:
            return
        kind, value = picked
        field = self.query_one("#f-source", Input)
        if kind != "corpus":
            field.value = value
            field.focus()
            return
        field.value = value["name"]
        field.focus()
        if not value.get("pulled"):
            question = (f"Pull corpus [b]{value['name']}[/b] into the workspace?\n\n{value.get('description', '')}"
                        f"\n\nLicence: {value.get('licence', '?')}")
            self.app.push_screen(ConfirmDialog(question, yes="Pull", no="Not now"),
                                 partial(self._pull_answered, value["name"]))

    def _pull_answered(self, name: str, ok: bool | None) -> None:
        if ok:
            self.pull_corpus(name)

    def pull_corpus(self, name: str) -> None:
        job = start_humanizer_job(self, "data corpus pull", "data", "corpus", "pull", name, settings={"name": name})
        if job is not None:
            self.app.poll_jobs()
            self.notify(f"pulling {name} ({job.id})", timeout=3)
            self.show(job.id)
            self.set_view("build")

    # start ---------------------------------------------------------------------------------------
    def validate_form(self) -> tuple[BuildSettings | None, list[tuple[str, str]]]:
        template = self._template()
        values: dict = {"template": template}
        errors: list[tuple[str, str]] = []
        for f in FIELDS:
            if f.name == "template" or not relevant(f, template):
                continue
            if f.name == "model":
                model = self._value("f-model")
                if model:
                    values["model"] = model
                continue
            if f.metadata.get("choices"):
                values[f.name] = self._value(field_id(f.name)) or f.default
                continue
            text = self._text(field_id(f.name))
            if not text and f.default is not MISSING:
                continue
            try:
                values[f.name] = {"int": int, "float": float}.get(str(f.type), str)(text)
            except ValueError:
                errors.append((field_id(f.name), f"--{f.name.replace('_', '-')}: {text!r} is not a "
                                                 f"{'whole number' if str(f.type) == 'int' else 'number'}"))
        shown = {field_id(f.name) for f in FIELDS}
        for flag, message in check_all(values):
            fid = field_id(flag.replace("-", "_"))
            errors.append((fid if fid in shown else "f-source", message))
        name, source = values.get("output", ""), values.get("source", "")
        if NAME_RE.match(name or "") and self.output_taken(name):
            busy = self._output_busy(name)
            errors.append(("f-output", f"--output: {name!r} " + (f"is being built by {busy.id}" if busy else
                                                                "already exists in datasets/; choose another name")))
        corpus = next((c for c in self.corpora if c["name"] == source), None)
        if corpus is not None and not corpus.get("pulled"):
            errors.append(("f-source", f"--source: corpus {source!r} is not pulled yet (ctrl+o and pick it to pull "
                                       f"it, or `humanizer data corpus pull {source}`)"))
        if errors:
            return None, errors
        p = Path(source).expanduser()
        if corpus is None and not (self.app.ws.datasets_dir / source).is_dir() and p.exists():
            values["source"] = str(p.resolve())  # the job may run from another folder
        return BuildSettings(**values), []

    def action_start(self) -> None:
        settings, errors = self.validate_form()
        if errors and not self.query_one(f"#{errors[0][0]}").parent.parent.display:
            self.query_one("#f-all", Checkbox).value = True  # the problem is behind "all settings"
            self._fit_form()
        if self._show_errors(errors):
            return
        self.post_message(self.Submitted(settings, "data build", ["data", "build", *settings.argv()],
                                         asdict(settings)))
