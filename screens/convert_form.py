"""The Convert screen's new-run form: a workspace model, the target bits per weight with
what it means in MB for this model (engine.convert.model_plan, read in a worker thread a
moment after the last change), the candidate bits, the group size and the output name."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from engine.convert.settings import (DEFAULT_GROUP_SIZE, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, GROUP_SIZES,
                                     check_settings, parse_bits)
from engine.errors import HumanizerError
from screens.convert_widgets import fmt_size
from screens.runs import form_head
from screens.forms import TickBox
from screens.widgets import display_path, mode_ref

PLAN_DELAY = 0.3  # seconds after the last change of model, bits or group size


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
    so the ids, the focus order and the CSS are the screen's)."""

    plans: dict[tuple, dict | str]  # (model path, group, bits) -> model_plan() or an error
    _plan_timer: Timer | None

    def compose_form(self) -> ComposeResult:
        yield from form_head("New convert", self.app)
        with Horizontal(classes="form-row"):
            yield Label("target")
            yield Input("5.0", placeholder="bits per weight, e.g. 5.0", compact=True, id="f-target")
        yield Static("", id="f-plan", classes="hint")
        with Horizontal(classes="form-row"):
            yield Label("bits")
            yield Input("4,8", placeholder="candidates from 2,3,4,5,6,8", compact=True, id="f-bits")
        with Horizontal(classes="form-row"):
            yield Label("group")
            yield Select([(str(g), g) for g in GROUP_SIZES], value=DEFAULT_GROUP_SIZE, allow_blank=False,
                         compact=True, id="f-group")
        with Horizontal(classes="form-row"):
            yield Label("output")
            yield Input(placeholder="model name (in models/) or a path", compact=True, id="f-output")
        with Horizontal(classes="form-row"):
            yield Label("samples")
            yield Input(placeholder=f"{DEFAULT_SAMPLES} calibration sequences", type="integer",
                        compact=True, id="f-samples")
        with Horizontal(classes="form-row"):
            yield Label("seq len")
            yield Input(placeholder=f"{DEFAULT_SEQ_LEN} tokens each", type="integer", compact=True,
                        id="f-seqlen")
        yield TickBox("resume an interrupted convert", compact=True, id="f-resume")
        yield Button("Start  ctrl+s", id="f-start", compact=True, variant="primary")

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
        return (model, self._value("f-group") or DEFAULT_GROUP_SIZE, bits) if model else None

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
    def validate_form(self) -> tuple[dict, list[tuple[str, str]]]:
        errors: list[tuple[str, str]] = []
        ws = self.app.ws
        model = self._value("f-model")
        if not model:
            errors.append(("f-model", f"model: required; pull or import one in {mode_ref(self.app, 'models')}"))
        ints = {}
        for fid, name, default in (("f-samples", "samples", DEFAULT_SAMPLES), ("f-seqlen", "seq len", DEFAULT_SEQ_LEN)):
            text = self._text(fid)
            try:
                ints[fid] = int(text) if text else default
            except ValueError:
                ints[fid] = default
                errors.append((fid, f"{name}: a whole number"))
        group = self._value("f-group") or DEFAULT_GROUP_SIZE
        target_text, bits_text = self._text("f-target"), self._text("f-bits")
        target = bits = None
        try:
            target, bits, group = check_settings(target_text, bits_text, group, ints["f-samples"], ints["f-seqlen"])
        except HumanizerError as e:
            msg = e.message
            fid = ("f-target" if "target" in msg else "f-group" if "group size" in msg else "f-samples"
                   if "--samples" in msg else "f-seqlen" if "--seq-len" in msg else "f-bits")
            errors.append((fid, f"{fid[2:]}: {msg}" + (f" ({e.hint})" if e.hint else "")))
        key = self._plan_key()
        plan = self.plans.get(key) if key else None
        if target is not None and isinstance(plan, dict) and target < plan["min_bpw"] - 1e-9:
            errors.append(("f-target", f"target: this model needs at least {plan['target_min']:.3f} bits per "
                                       f"weight with every layer at {bits[0]} bits (norms stay in float16)"))
        name = self._text("f-output")
        out = None
        resume = self.query_one("#f-resume", Checkbox).value
        if not name:
            errors.append(("f-output", "output: required: a model name or a folder"))
        else:
            out = (Path(name).expanduser().resolve() if "/" in name or name.startswith("~")
                   else ws.models_dir / name)
            if out.exists() and (not out.is_dir() or any(out.iterdir())) and not resume:
                errors.append(("f-output", f"output: {display_path(out, ws.home)} already exists; choose another "
                                           "name"))
            busy = next((j for j in self.run_jobs() if j.status in ("running", "starting")
                         and self.histories.get(j.id) and self.histories[j.id].args.get("output") == str(out)), None)
            if busy is not None:
                errors.append(("f-output", f"output: convert {busy.id} is writing it"))
        return {"model": model, "target": target, "bits": bits, "group": group, "output": out,
                "samples": ints["f-samples"], "seq_len": ints["f-seqlen"], "resume": resume}, errors

    def action_start(self) -> None:
        s, errors = self.validate_form()
        if self._show_errors(errors):
            return
        args = ["convert", s["model"], "--target-bpw", f"{s['target']:g}", "--candidate-bits",
                ",".join(map(str, s["bits"])), "--group-size", str(s["group"]), "--output", str(s["output"])]
        if s["samples"] != DEFAULT_SAMPLES:
            args += ["--samples", str(s["samples"])]
        if s["seq_len"] != DEFAULT_SEQ_LEN:
            args += ["--seq-len", str(s["seq_len"])]
        if s["resume"]:
            args.append("--resume")
        settings = {"model": s["model"], "target_bpw": s["target"], "candidate_bits": ",".join(map(str, s["bits"])),
                    "group_size": s["group"], "output": str(s["output"]), "samples": s["samples"],
                    "seq_len": s["seq_len"], "resume": s["resume"]}
        self._start_job("convert", args, settings)
