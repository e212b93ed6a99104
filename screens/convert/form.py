"""The Convert screen's new-run form, made from engine.convert.settings.ConvertSettings (the
fields the `humanizer convert` flags are made from): a workspace model, then one row per form
field of the settings, with its default, the values it offers and its flag's help (shown
while it has focus). Under the target bits per weight, what that means in MB for this model
(engine.convert.model_plan, read in a worker thread a moment after the last change).
ConvertSettings.check() validates; the job's command line is ConvertSettings.argv()."""

from __future__ import annotations

from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from engine.convert.settings import ConvertSettings, parse_bits, setting_fields
from engine.errors import HumanizerError
from screens.convert.widgets import fmt_size
from screens.common.forms import TickBox, field_help
from screens.common.run_form import FormHost, FormSubmitted, form_head
from screens.common.widgets import display_path, mode_ref

PLAN_DELAY = 0.3  # seconds after the last change of model, bits or group size
FIELDS = setting_fields(form_only=True)
DEFAULTS = {f.name: f.default for f in FIELDS}  # MISSING for the required ones
# the form's own words and short ids (the keys and tests know f-target, f-bits, ...)
IDS = {"target_bpw": "f-target", "candidate_bits": "f-bits", "group_size": "f-group", "seq_len": "f-seqlen"}
LABELS = {"target_bpw": "target", "candidate_bits": "bits", "group_size": "group", "seq_len": "seq len",
          "resume": "resume an interrupted convert"}
PLACEHOLDERS = {"target_bpw": "bits per weight, e.g. 5.0", "candidate_bits": "candidates from {options}",
                "output": "model name (in models/) or a path", "seq_len": "{default} tokens each"}
START = {"target_bpw": "5.0"}  # a target to start from (the setting has no default: the CLI requires it)


def field_id(name: str) -> str:
    return IDS.get(name, "f-" + name.replace("_", "-"))


def placeholder_of(f) -> str:
    """What an empty field means: the default and the help ("32 calibration sequences") unless
    the form words it shorter."""
    options = ",".join(map(str, f.metadata.get("options") or ()))
    return PLACEHOLDERS.get(f.name, "{default} {help}").format(default=f.default, help=f.metadata["help"],
                                                               options=options)


def plan_hint(plan: dict, target: float | None) -> Text:
    """What the target means for this model: its size, and the range the candidates allow."""
    per = plan["bytes_per_bpw"]
    lo, hi = plan["target_min"], plan["target_max"]  # rounded inward: the numbers shown are accepted
    line = Text()
    if target is not None:
        line.append(f"{target:g} bpw ≈ {fmt_size(target * per)}", style="bold")
        line.append(" · ")
    line.append(f"{lo:.3f}–{hi:.3f} bpw here = {fmt_size(lo * per)}–{fmt_size(hi * per)}; "
                f"float16 {fmt_size(16 * per)}; {plan['params']:,} params, {len(plan['layers'])} layers",
                style="dim")
    return line


class ConvertForm:
    """The form's half of ConvertScreen (a mixin: its fields are the screen's own widgets,
    so the ids, the focus order and the CSS are the screen's). A start posts Submitted; the
    screen starts the job."""

    class Needs(FormHost, Protocol):
        def _suggest_output(self) -> None: ...  # RunsScreen's

    class Submitted(FormSubmitted):
        """values: the checked ConvertSettings (validate_form's)."""

    plans: dict[tuple, dict | str]  # (model path, group, bits) -> model_plan() or an error
    _plan_timer: Timer | None

    def compose_form(self) -> ComposeResult:
        yield from form_head("New convert", self.app)
        for f in FIELDS:
            if f.type in (bool, "bool"):
                yield TickBox(LABELS[f.name], f.default, compact=True, id=field_id(f.name))
            else:
                with Horizontal(classes="form-row"):
                    yield Label(LABELS.get(f.name, f.name.replace("_", " ")))
                    yield self._field_widget(f)
            help_line = Static(field_help(f), id=f"help-{f.name}", classes="hint field-help")
            help_line.display = False  # shown while its field has focus
            yield help_line
            if f.name == "target_bpw":
                yield Static("", id="f-plan", classes="hint")
        yield Button("Start  ctrl+s", id="f-start", compact=True, variant="primary")

    def _field_widget(self, f):
        """A Select of the values the settings offer (the group size), an Input for the rest."""
        fid, options = field_id(f.name), f.metadata.get("options")
        if options and f.type in (int, "int"):
            return Select([(str(v), v) for v in options], value=f.default, allow_blank=False, compact=True, id=fid)
        value = START.get(f.name, f.default if isinstance(f.default, str) else "")
        kind = "integer" if f.type in (int, "int") else "text"  # a bad target: the check words it
        return Input(value, placeholder=placeholder_of(f), type=kind, compact=True, id=fid)

    def on_descendant_focus(self, event) -> None:
        fid = getattr(event.widget, "id", None) or ""
        for f in FIELDS:
            self.query_one(f"#help-{f.name}").display = fid == field_id(f.name)

    # the workspace's models and the output name ----------------------------------------
    def form_scanned(self, more) -> None:
        self._suggest_output()
        self._schedule_plan()

    def output_base(self, model: str) -> str:
        return f"{Path(model).name}-{self._text('f-target') or 'x'}bpw"

    def output_taken(self, name: str) -> bool:
        return (self.app.ws.models_dir / name).exists()

    def _text(self, input_id: str) -> str:
        return self.query_one(f"#{input_id}", Input).value.strip()

    # reacting to edits ----------------------------------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id in ("f-model", "f-group"):
            self._schedule_plan()
        if event.select.id == "f-model":
            self._suggest_output()
        self._clear_errors()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-bits":
            self._schedule_plan()
        elif event.input.id == "f-target":
            self._show_plan()
            self._suggest_output()
        self._clear_errors()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    # what a target means: model_plan in a worker ----------------------------------------
    def _plan_key(self) -> tuple | None:
        model = self._value("f-model")
        try:
            bits = tuple(parse_bits(self._text("f-bits")))
        except HumanizerError:
            return None
        return (model, self._value("f-group") or DEFAULTS["group_size"], bits) if model else None

    def _schedule_plan(self) -> None:
        if self._plan_timer is not None:
            self._plan_timer.stop()
        self._plan_timer = self.set_timer(PLAN_DELAY, self._start_plan)

    def _start_plan(self) -> None:
        key = self._plan_key()
        if key is not None and key not in self.plans:
            self.query_one("#f-plan", Static).update(Text("reading the model's layers…", style="dim"))
            self.run_worker(partial(self._plan, key), thread=True, group="convert-plan")
        else:
            self._show_plan()

    def _plan(self, key: tuple) -> None:
        from engine.convert import model_plan

        model, group, bits = key
        try:
            plan: dict | str = model_plan(model, group, list(bits), ws=self.app.ws)
        except HumanizerError as e:
            plan = e.message
        except Exception as e:  # an unreadable model must not take the screen down
            plan = f"{type(e).__name__}: {e}"
        self.app.call_from_thread(self._planned, key, plan)

    def _planned(self, key: tuple, plan) -> None:
        self.plans[key] = plan
        self._show_plan()

    def _show_plan(self) -> None:
        box = self.query_one("#f-plan", Static)
        key = self._plan_key()
        plan = self.plans.get(key) if key else None
        try:
            target = float(self._text("f-target"))
        except ValueError:
            target = None
        if isinstance(plan, dict):
            box.update(plan_hint(plan, target))
        elif isinstance(plan, str):
            box.update(Text(f"✗ {plan}", style="bold red"))
        else:
            box.update(Text("bits per weight over the whole model, scales and biases included", style="dim"))

    # start ------------------------------------------------------------------------------
    def validate_form(self) -> tuple[ConvertSettings | None, list[tuple[str, str]]]:
        """The form's ConvertSettings, checked, or None and every problem as (field id, message)."""
        errors: list[tuple[str, str]] = []
        ws = self.app.ws
        if not self._value("f-model"):
            errors.append(("f-model", f"model: required; pull or import one in {mode_ref(self.app, 'models')}"))
        values: dict = {}
        for f in FIELDS:
            fid = field_id(f.name)
            if f.type in (bool, "bool"):
                values[f.name] = self.query_one(f"#{fid}", Checkbox).value
            elif f.metadata.get("options") and f.type in (int, "int"):
                values[f.name] = self._value(fid) or f.default
            elif f.type in (int, "int"):
                text = self._text(fid)
                try:
                    values[f.name] = int(text) if text else f.default
                except ValueError:
                    values[f.name] = f.default
                    errors.append((fid, f"{LABELS.get(f.name, f.name)}: a whole number"))
            else:
                values[f.name] = self._text(fid)  # the output name becomes a path below
        settings = None
        try:
            settings = ConvertSettings(**values).check()
        except HumanizerError as e:
            msg = e.message
            fid = field_id("target_bpw" if "target" in msg else "group_size" if "group size" in msg else "samples"
                           if "--samples" in msg else "seq_len" if "--seq-len" in msg else "candidate_bits")
            errors.append((fid, f"{fid[2:]}: {msg}" + (f" ({e.hint})" if e.hint else "")))
        key = self._plan_key()
        plan = self.plans.get(key) if key else None
        if settings is not None and isinstance(plan, dict) and settings.target_bpw < plan["min_bpw"] - 1e-9:
            errors.append(("f-target", f"target: this model needs at least {plan['target_min']:.3f} bits per "
                                       f"weight with every layer at {settings.candidate_bits[0]} bits (norms "
                                       "stay in float16)"))
        name = values["output"]
        out = None
        if not name:
            errors.append(("f-output", "output: required: a model name or a folder"))
        else:
            out = (Path(name).expanduser().resolve() if "/" in name or name.startswith("~")
                   else ws.models_dir / name)
            if out.exists() and (not out.is_dir() or any(out.iterdir())) and not values["resume"]:
                errors.append(("f-output", f"output: {display_path(out, ws.home)} already exists; choose another "
                                           "name"))
            busy = next((j for j in self.run_jobs() if j.status in ("running", "starting")
                         and self.histories.get(j.id) and self.histories[j.id].args.get("output") == str(out)), None)
            if busy is not None:
                errors.append(("f-output", f"output: convert {busy.id} is writing it"))
        if errors:
            return None, errors
        return replace(settings, output=str(out)), []

    def action_start(self) -> None:
        settings, errors = self.validate_form()
        if self._show_errors(errors):
            return
        settings_dict = {"model": self._value("f-model"), **asdict(settings)}
        self.post_message(self.Submitted(settings, "convert", ["convert", self._value("f-model"), *settings.argv()],
                                         settings_dict))
