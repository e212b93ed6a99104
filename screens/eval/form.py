"""The Eval screen's form, made from engine.eval.settings.EvalSettings (the dataclass the
`humanizer eval` flags are made from): the model (a workspace model), the adapters to mount,
the dataset (a workspace dataset with a held-out split) and one widget per flag: a Select for a
field with choices, a check box for a switch, an Input for the rest, the focused field's help
under it. The rewrite settings after the first few and the detector settings sit behind "all
settings". EvalSettings.problems() validates, every problem naming its flag.

Also the detector jobs of the palette: `humanizer detect calibrate` (fast-detectgpt's P(AI)
profile for a model) and `humanizer detect train` (the classifier) on a dataset."""

from __future__ import annotations

from dataclasses import asdict

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from engine.eval.settings import NAME_RE, EvalSettings
from screens.common.forms import default_placeholder, field_id, settings_rows
from screens.common.run_form import FormHost, FormSubmitted, form_head
from screens.common.progress import start_humanizer_job
from screens.common.widgets import mode_ref

FIELDS = [f for f in EvalSettings.flag_fields() if f.metadata["form"]]
BASIC = ("data", "choices", "samples", "seed", "detector")  # the rest: behind "all settings"
LABELS = {"top_p": "top p", "max_tokens": "max tokens", "perplexity_of": "perplexity", "batch_size": "batch",
          "score_max_tokens": "score tokens", "detector": "detectors"}
PLACEHOLDERS = {"detector": "every one at hand", "scorer": "MODEL", "sampler": "none: the scorer samples",
                "profile": "detectors/ in the workspace", "classifier": "newest trained on the dataset",
                "max_tokens": "0: from the draft", "batch_size": "0: each detector's default",
                "score_max_tokens": "0: the detector's context"}


def split_list(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.replace(",", " ").split() if p)


def classifier_name(ws, dataset: str) -> str:
    """'DATASET-clf', numbered while detectors/ has one of that name."""
    base = f"{dataset}-clf"[:96]
    name, n = base, 2
    while (ws.home / "detectors" / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


class EvalForm:
    """The form's half of EvalScreen (a mixin: its fields are the screen's own widgets). A
    start posts Submitted; the screen starts the job."""

    Needs = FormHost

    class Submitted(FormSubmitted):
        """values: the EvalSettings checked."""

    datasets: list  # DatasetInfo with a held-out split, from the last scan
    adapters: list  # AdapterInfo

    def compose_form(self) -> ComposeResult:
        yield from form_head("New eval", self.app)
        with Vertical(id="row-adapters", classes="field"):
            with Horizontal(classes="form-row"):
                yield Label("adapters")
                yield Input(placeholder="none: base only", compact=True, id="f-adapters")
            yield Static("", id="f-adapters-info", classes="hint")
        yield from settings_rows(FIELDS, LABELS, self._field_widget, {"data": "f-data-info"}, "detector")
        yield Button("Evaluate  ctrl+s", id="f-start", compact=True, variant="primary")

    def _field_widget(self, f):
        fid = field_id(f.name)
        if f.name == "data":
            return Select([], prompt="no dataset with a held-out split", compact=True, id=fid)
        choices = f.metadata.get("choices")
        if choices:
            return Select([(c, c) for c in choices], value=f.default, allow_blank=False, compact=True, id=fid)
        kind = {"int": "integer", "float": "number"}.get(str(f.type), "text")
        return Input(placeholder=PLACEHOLDERS.get(f.name) or default_placeholder(f), type=kind, compact=True, id=fid)

    def setup_form(self) -> None:
        self.datasets, self.adapters = [], []
        self._fit_form()

    def _fit_form(self) -> None:
        everything = self.query_one("#f-all", Checkbox).value
        for f in FIELDS:
            self.query_one(f"#row-{f.name}").display = everything or f.name in BASIC

    def on_descendant_focus(self, event) -> None:
        fid = getattr(event.widget, "id", None) or ""
        for f in FIELDS:
            self.query_one(f"#help-{f.name}").display = fid == field_id(f.name)

    # the workspace's lists ---------------------------------------------------------------------
    def scan_more(self):
        """In the scan's worker thread: datasets with a held-out split, and the adapters."""
        from engine.adapters import list_adapters
        from engine.data.catalog import list_datasets

        try:
            datasets = [d for d in list_datasets(self.app.ws, examples=False) if d.counts.get("heldout")]
        except Exception:  # a broken folder must not take the screen down
            datasets = []
        try:
            adapters = list_adapters(self.app.ws)
        except Exception:
            adapters = []
        return datasets, adapters

    def form_scanned(self, more) -> None:
        self.datasets, self.adapters = more
        select = self.query_one("#f-data", Select)
        current = select.value
        select.set_options([(d.name, d.name) for d in self.datasets])
        names = [d.name for d in self.datasets]
        if current in names:
            select.value = current
        elif names:
            select.value = names[0]
        self._show_adapters_info()

    def _text(self, input_id: str) -> str:
        return self.query_one(f"#{input_id}", Input).value.strip()

    def _show_adapters_info(self) -> None:
        given = split_list(self._text("f-adapters"))
        line = Text()
        if self.adapters:
            line.append("in the workspace: " + ", ".join(
                a.name + (f" (on {a.parent.get('name')})" if a.parent else "") for a in self.adapters), style="dim")
        else:
            line.append(f"no adapters in the workspace: train one in {mode_ref(self.app, 'train')}", style="dim")
        choices = EvalSettings(adapters=given).choice_list()
        self.query_one("#f-choices", Input).placeholder = ", ".join(choices)
        self.query_one("#f-adapters-info", Static).update(line)
        d = next((d for d in self.datasets if d.name == self._value("f-data")), None)
        self.query_one("#f-data-info", Static).update(
            Text(f"{d.counts.get('heldout', 0)} held out · {d.template} · {d.source} · {d.licence}", style="dim")
            if d else
            Text(f"build one in {mode_ref(self.app, 'data')}: its held-out drafts are rewritten", style="dim"))

    # reacting to edits -------------------------------------------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "f-data":
            self._show_adapters_info()
        self._clear_errors()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "f-all":
            self._fit_form()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-adapters":
            self._show_adapters_info()
        self._clear_errors()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    # start -----------------------------------------------------------------------------------------
    def validate_form(self) -> tuple[EvalSettings | None, list[tuple[str, str]]]:
        values: dict = {"model": self._value("f-model") or "", "adapters": split_list(self._text("f-adapters"))}
        errors: list[tuple[str, str]] = []
        for f in FIELDS:
            fid = field_id(f.name)
            if f.type in (bool, "bool"):
                values[f.name] = self.query_one(f"#{fid}", Checkbox).value
            elif f.name == "data" or f.metadata.get("choices"):
                values[f.name] = self._value(fid) or ("" if f.name == "data" else f.default)
            elif text := self._text(fid):
                try:
                    values[f.name] = {"int": int, "float": float}.get(str(f.type), str)(text)
                except ValueError:
                    errors.append((fid, f"--{f.name.replace('_', '-')}: {text!r} is not a "
                                        f"{'whole number' if str(f.type) == 'int' else 'number'}"))
        given = {f.name for f in FIELDS}
        for flag, message, hint in EvalSettings(**values).problems():
            name = flag.replace("-", "_")
            fid = field_id(name) if name in given or name in ("model", "adapters") else "f-model"
            errors.append((fid, message + (f" ({hint})" if hint else "")))
        return (None, errors) if errors else (EvalSettings(**values), [])

    def action_start(self) -> None:
        settings, errors = self.validate_form()
        if errors:
            row = self.query_one(f"#{errors[0][0]}")
            while row.parent is not None and not row.has_class("field") and row.id != "eval-form":
                row = row.parent
            if not row.display:
                self.query_one("#f-all", Checkbox).value = True  # the problem is behind "all settings"
                self._fit_form()
        if self._show_errors(errors):
            return
        self.post_message(self.Submitted(settings, "eval", settings.argv(), asdict(settings)))

    # the detector jobs -------------------------------------------------------------------------------
    def detector_commands(self, dataset: str | None, model: str | None) -> list[tuple]:
        """Palette commands fitting a detector on `dataset`: fast-detectgpt's profile (for
        `model` when one is known) and the classifier."""
        if not dataset or not NAME_RE.match(dataset):
            return []
        scorer = f" for {model.rstrip('/').rsplit('/', 1)[-1]}" if model else ""
        args = ["detect", "calibrate", "--dataset", dataset] + (["--scorer", model] if model else [])
        return [(f"Calibrate fast-detectgpt on {dataset}", f"its P(AI) profile{scorer}, fitted on the training "
                 "split (humanizer detect calibrate), as a job", lambda: self.start_detect_job("detect calibrate", args)),
                (f"Train the classifier on {dataset}", "MiniLM embeddings + style features on the training split "
                 "(humanizer detect train), as a job",
                 lambda: self.start_detect_job("detect train", ["detect", "train", "--dataset", dataset, "--name",
                                                                 classifier_name(self.app.ws, dataset)]))]

    def start_detect_job(self, kind: str, args: list[str]):
        job = start_humanizer_job(self, kind, *args)
        if job is not None:
            self.app.poll_jobs()
            self.notify(f"{kind}: {job.id} (Jobs, key 2, shows its progress)", timeout=4)
        return job
