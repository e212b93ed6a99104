"""Eval mode: the workspace's eval runs (`humanizer eval`, from this form or a shell) with a
running one's live progress, and the selected run's results, read from its run folder's
report.json and samples.jsonl:

- results (r): the reference's table (P(AI) of the source drafts, each choice and the human
  references; gap closed, AUROC, TPR at 1% FPR, slop per 1K words, meaning kept, length,
  degenerate share) on one detector (d switches; the headline one first, with why it is the
  headline and which detectors helped make the training data), a bar chart of mean P(AI) per
  row with the source and human levels marked, and P(AI) distributions;
- samples (s): every held-out sample, AI draft | a choice's rewrite (o cycles the choices) |
  human, with each text's scores and its slop phrases highlighted;
- compare (v): m marks a run, then opening another puts the two tables' headline metrics side
  by side with their differences.

Run histories are read in worker threads and tailed 3 times a second (screens/runs.py); the
views (screens/eval_views.py) are redrawn from what accumulated on that timer, never per event. Layout as Data: the
view on the left and the form on the right at 110 columns and more; narrower, one column."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.widgets import ContentSwitcher, DataTable, Static

from engine.jobs import JobInfo
from screens.eval.charts import BarChart, Distributions
from screens.eval.form import EvalForm
from screens.eval.views import EvalViews
from screens.eval.widgets import (
    CompareTable, EvalHistory, EvalRunTable, MetricTable, SampleTable, best_choice, detector_names, is_eval_job,
    shown_detector,
)
from screens.common.run_form import form_css
from screens.common.runs import RunsScreen, RunsTable
from screens.common.progress import start_humanizer_job
from screens.common.widgets import (
    FitFooter, ModeHeader, StatusBar, action_key, cursor_key, fmt_time, one_line, status_text,
)


class EvalScreen(EvalViews, EvalForm, RunsScreen):
    DEFAULT_CSS = """
    EvalScreen #eval-body { layout: horizontal; height: 1fr; }
    EvalScreen #eval-main { width: 1fr; height: auto; padding: 0 1; }
    EvalScreen #eval-main > ContentSwitcher, EvalScreen #eval-main > ContentSwitcher > Vertical { height: auto; }
    EvalScreen #eval-form {
        width: 40; height: 1fr; padding: 0 1; border-left: vkey $primary-background; scrollbar-size-vertical: 1;
    }
    EvalScreen .heading, EvalScreen #runs-heading { height: 1; text-style: bold; }
    EvalScreen #eval-runs { height: auto; max-height: 6; }
    EvalScreen #ev-table, EvalScreen #cmp-table { height: auto; max-height: 12; margin-top: 1; }
    EvalScreen #sm-table { height: auto; max-height: 8; }
    EvalScreen #ev-title, EvalScreen #ev-detectors, EvalScreen #ev-row, EvalScreen #sm-title,
    EvalScreen #sm-sides, EvalScreen #cmp-title, EvalScreen #cmp-notes { height: auto; }
    EvalScreen #ev-title, EvalScreen #cmp-title { margin-top: 1; }
    EvalScreen #ev-detectors, EvalScreen #ev-bars, EvalScreen #sm-sides { margin-top: 1; }
    EvalScreen #ev-row, EvalScreen #cmp-notes { color: $text-muted; }
    EvalScreen.-narrow #eval-body { layout: vertical; overflow-y: auto; scrollbar-size-vertical: 1; }
    EvalScreen.-narrow #eval-form {
        width: 1fr; height: auto; border-left: none; border-top: hkey $primary-background; margin-top: 1;
    }
    """ + form_css("EvalScreen")

    BINDINGS = [
        Binding("ctrl+s", "start", "Evaluate", id="eval_start", tooltip="Start `humanizer eval` with the form's settings"),
        Binding("r", "view('report')", "Results", id="eval_results", tooltip="The shown eval's table and charts"),
        Binding("s", "view('samples')", "Samples", id="eval_samples",
                tooltip="Browse the held-out samples: draft | rewrite | human, with scores and slop"),
        Binding("v", "view('compare')", "Compare", id="eval_compare",
                tooltip="The marked eval (m) and the shown one side by side"),
        Binding("d", "next_detector", "Detector", id="eval_detector", tooltip="Show the next detector's numbers"),
        Binding("o", "next_choice", "Choice", id="eval_choice", tooltip="Show the next choice's rewrites"),
        Binding("n", "new_run", "New", id="eval_new", tooltip="Go to the eval form"),
        Binding("c", "cancel_run", "Cancel", id="eval_cancel", show=False, tooltip="Stop the shown eval"),
        Binding("escape", "back", "Back", id="eval_escape", show=False, tooltip="Back to the results"),
    ]

    history_class = EvalHistory
    noun = "eval"
    group = "eval"
    body_id = "eval-body"
    heading = ("Evals", "enter: open · m: mark to compare")
    palette_names = ("Evaluate", "New eval", "Cancel eval")
    cancel_texts = ("Cancel the eval on [b]{name}[/b] ({id})?\n\nThe rewrites written so far are cached: the same "
                    "eval with --resume continues from them.", "Cancel eval", "Keep going")
    started_verb = "evaluating"

    def __init__(self) -> None:
        super().__init__("Eval")
        self.view = "report"
        self.detector: str | None = None  # as chosen with d; each run falls back to its headline
        self.choice: str | None = None
        self.marked: str | None = None
        self._reading: set[str] = set()
        self._drawn: dict[str, tuple] = {}  # what each table shows now (rebuilt when it changes)

    # layout ------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield ModeHeader("eval")
        yield StatusBar()
        with ScrollableContainer(id="eval-body", can_focus=False):
            with Vertical(id="eval-main"):
                yield Static("", id="runs-heading")
                yield EvalRunTable(id="eval-runs", cursor_type="row", zebra_stripes=True)
                with ContentSwitcher(initial="view-report"):
                    with Vertical(id="view-report"):
                        yield Static("", id="ev-title")
                        yield MetricTable(id="ev-table", cursor_type="row", zebra_stripes=True)
                        yield Static("", id="ev-row")
                        yield Static("", id="ev-detectors")
                        yield BarChart(id="ev-bars")
                        yield Distributions(id="ev-dists")
                    with Vertical(id="view-samples"):
                        yield Static("", id="sm-title")
                        yield SampleTable(id="sm-table", cursor_type="row", zebra_stripes=True)
                        yield Static("", id="sm-sides")
                    with Vertical(id="view-compare"):
                        yield Static("", id="cmp-title")
                        yield CompareTable(id="cmp-table", cursor_type="row", zebra_stripes=True)
                        yield Static("", id="cmp-notes")
            with Vertical(id="eval-form"):
                yield from self.compose_form()
        yield FitFooter()

    def is_job(self, job: JobInfo) -> bool:
        return is_eval_job(job)

    def runs_columns(self, narrow: bool) -> list[tuple[str, str]]:
        cols = [("dataset", "dataset"), ("choices", "choices"), ("status", "status"), ("result", "best gap"),
                ("started", "started")]
        return [c for c in cols if c[0] != "choices"] if narrow else cols

    def set_view(self, view: str) -> None:
        self.view = view
        self.query_one(ContentSwitcher).current = f"view-{view}"
        table = {"report": EvalRunTable, "samples": SampleTable, "compare": EvalRunTable}[view]
        self.query_one(table).focus(scroll_visible=False)  # the view's top, not its table, belongs on screen
        self.query_one("#eval-body").scroll_home(animate=False)
        self._dirty = True
        self._sync_table(self.run_jobs())
        self._redraw()

    def action_view(self, view: str) -> None:
        self.set_view(view)

    def action_back(self) -> None:
        self.set_view("report")

    def action_new_run(self) -> None:
        self.query_one("#f-adapters").focus()

    def on_eval_form_submitted(self, message: EvalForm.Submitted) -> None:
        self._start_job(message.kind, message.args, message.settings)

    # the runs -------------------------------------------------------------------------------------
    def shown_history(self) -> EvalHistory | None:
        return self.histories.get(self.shown) if self.shown else None  # type: ignore[return-value]

    def run_row(self, job: JobInfo, h: EvalHistory) -> tuple:
        mark = ("◆" if job.id == self.marked else " ") + ("● " if job.id == self.shown else "  ")
        report = h.report
        if report:
            best = best_choice(report, shown_detector(report, self.detector))
            result = Text(f"{best[0]} {best[1]:+.2f}" if best else "none", style="" if best else "dim")
        elif job.status in ("running", "starting"):
            p = h.progress or {}
            result = Text(f"{p.get('step')}/{p.get('total')} rewritten" if p.get("total") else "starting…")
        elif job.status == "done":
            result = Text(h.results_error or "reading…", style="dim")
        else:
            result = Text("—", style="dim")
        choices = () if self._narrow else (Text(one_line(", ".join(h.choices), 18)),)
        return (Text(mark + h.name), *choices, status_text(job.status), result, fmt_time(job.started))

    def _sync_table(self, jobs: list[JobInfo]) -> None:
        super()._sync_table(jobs)
        self.query_one(EvalRunTable).display = bool(jobs) and self.view != "samples"
        self.query_one("#runs-heading").display = self.view != "samples"
        for job in jobs:  # a run that finished while watched: its report
            h = self.histories.get(job.id)
            if h is not None and h.final and h.job.status == "done" and not h.results_loaded:
                self._load_results(h)

    def _load_results(self, h: EvalHistory) -> None:
        if h.job.id in self._reading:
            return
        self._reading.add(h.job.id)
        self.run_worker(partial(self._read_results, h), thread=True, group="eval-results")

    def _read_results(self, h: EvalHistory) -> None:
        h.load_results()
        self.app.call_from_thread(self._results_read, h)

    def _results_read(self, h: EvalHistory) -> None:
        self._reading.discard(h.job.id)
        self._dirty = True
        self._sync_table(self.run_jobs())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if isinstance(event.data_table, RunsTable):
            event.stop()
            job_id = event.row_key.value
            self.show(job_id)
            self.set_view("compare" if self.marked and self.marked != job_id else "report")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if isinstance(event.data_table, MetricTable):
            self._show_row_detail()
        elif isinstance(event.data_table, SampleTable):
            self._show_sample()

    def action_mark(self) -> None:
        key = cursor_key(self.query_one(EvalRunTable))
        if key is None:
            return
        self.marked = None if self.marked == key else key
        h = self.histories.get(key)
        name = f"{h.name} ({key})" if h else key
        self.notify(f"marked {name}: open another eval to compare" if self.marked else f"unmarked {name}", timeout=3)
        self._sync_table(self.run_jobs())
        self._dirty = True

    def action_next_detector(self) -> None:
        h = self.shown_history()
        names = detector_names(h.report if h else None)
        if not names:
            self.notify("the shown eval has no detector to switch to", severity="warning")
            return
        current = shown_detector(h.report, self.detector)
        self.detector = names[(names.index(current) + 1) % len(names)] if current in names else names[0]
        self._dirty = True
        self._sync_table(self.run_jobs())
        self._redraw()

    def action_next_choice(self) -> None:
        h = self.shown_history()
        choices = h.choices if h and h.report else []
        if not choices:
            self.notify("the shown eval has no rewrites yet", severity="warning")
            return
        current = self.choice if self.choice in choices else choices[-1]  # the samples view starts on the last
        self.choice = choices[(choices.index(current) + 1) % len(choices)]
        if self.view != "samples":
            self.set_view("samples")
        else:
            self._dirty = True
            self._redraw()

    # drawing -----------------------------------------------------------------------------------------
    def _redraw(self) -> None:
        h = self.shown_history()
        if h is not None and h.job.status == "done" and not h.results_loaded:
            self._load_results(h)
        {"report": self._draw_report, "samples": self._draw_samples, "compare": self._draw_compare}[self.view](h)

    # the palette -----------------------------------------------------------------------------------
    def more_commands(self) -> list[tuple]:
        k = partial(action_key, self)
        cmds = [("Show results", f"the shown eval's table and charts ({k('view', 'report')})",
                 lambda: self.set_view("report")),
                ("Browse samples", f"draft | rewrite | human with scores and slop ({k('view', 'samples')})",
                 lambda: self.set_view("samples")),
                ("Compare evals", f"the marked eval and the shown one side by side ({k('view', 'compare')})",
                 lambda: self.set_view("compare"))]
        h = self.shown_history()
        dataset = model = None
        if h is not None:
            dataset = (h.report or {}).get("dataset", {}).get("name") or h.name
            model = str((h.report or {}).get("settings", {}).get("model") or h.args.get("model") or "") or None
        form_data = self._value("f-data")
        cmds += self.detector_commands(dataset or form_data, model or self._value("f-model"))
        if form_data and form_data != dataset:
            cmds += self.detector_commands(form_data, self._value("f-model"))
        return cmds

    def job_commands(self, job: JobInfo, name: str) -> list[tuple]:
        return [(f"Open eval: {name}", f"{job.status} · {job.id}", lambda i=job.id: self._open(i))]

    def _open(self, job_id: str) -> None:
        self.show(job_id)
        self.set_view("report")

    # starting ---------------------------------------------------------------------------------------
    def _start_job(self, kind: str, args: list[str], settings: dict | None = None) -> None:
        """Start `humanizer eval ...` as a job (the same helper as every CLI job) and show it."""
        job = start_humanizer_job(self, kind, *args, settings=settings)
        if job is None:
            return
        self._clear_errors()
        self.histories[job.id] = h = EvalHistory(job)
        self._known.add(job.id)
        self.app.poll_jobs()
        self.show(job.id)
        self.set_view("report")
        self.notify(f"{self.started_verb} {h.name} ({job.id})", timeout=3)
        self.query_one(EvalRunTable).focus()
