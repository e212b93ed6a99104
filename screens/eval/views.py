"""The Eval screen's three views drawn from a run's history (a mixin of EvalScreen: its widgets
are the screen's own): the results (title with live progress, the table, the detectors, the
charts), the sample browser and two runs compared. Called from the screen's redraw timer."""

from __future__ import annotations

from typing import Protocol

from rich.text import Text
from textual.widgets import DataTable, Static

from screens.eval.charts import BarChart, Distributions, sample_view
from screens.eval.widgets import (
    CompareTable, EvalHistory, MetricTable, SampleTable, compare_columns, compare_rows, detector_names,
    detectors_text, fmt, row_detail, run_summary, settings_diff, shown_detector, table_columns, table_rows,
)
from screens.common.history import append_outcome, append_timing, bar
from screens.common.widgets import cursor_key, one_line, status_text, sync_table


class EvalViews:
    """Drawing the results, samples and compare views (a mixin: the screen has what Needs lists;
    tests/test_screen_mixins.py checks it)."""

    class Needs(Protocol):
        shown: str | None  # the run shown (RunsScreen's)

        def shown_history(self) -> EvalHistory | None: ...
        def _load_results(self, h: EvalHistory) -> None: ...  # reads report.json and samples in a thread

    detector: str | None
    choice: str | None
    marked: str | None
    view: str
    histories: dict
    _drawn: dict[str, tuple]

    def _rebuild(self, table: DataTable, key: tuple, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
        """Show `rows` in `table`; columns and rows are rebuilt only when `key` changes."""
        if self._drawn.get(table.id) != key:
            self._drawn[table.id] = key
            cursor = table.cursor_row
            table.clear(columns=True)
            for k, label in columns:
                table.add_column(label, key=k)
            for k, cells in rows:
                table.add_row(*cells, key=k)
            if rows:
                table.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)
        else:
            sync_table(table, rows)

    def _draw_report(self, h: EvalHistory | None) -> None:
        title = self.query_one("#ev-title", Static)
        report = h.report if h else None
        for wid in ("#ev-table", "#ev-row", "#ev-detectors", "#ev-bars", "#ev-dists"):
            self.query_one(wid).display = report is not None
        if h is None:
            title.update(Text.assemble(("No evals yet. ", "bold"), "Fill in the form (n), then start with ctrl+s. "
                                       "Evals started with `humanizer eval` show up here too.")
                         if self.shown is None else Text(f"loading {self.shown}…", style="dim"))
            return
        title.update(self._title(h))
        if report is None:
            return
        det = shown_detector(report, self.detector)
        self._rebuild(self.query_one(MetricTable), (h.job.id, det, "table"), table_columns(report, det),
                      table_rows(report, det))
        self._show_row_detail()
        self.query_one("#ev-detectors", Static).update(detectors_text(report, det))
        self.query_one(BarChart).set_data(report, det)
        self.query_one(Distributions).set_data(report, det, h.samples)

    def _title(self, h: EvalHistory) -> Text:
        job, report = h.job, h.report
        line = Text.assemble(status_text(job.status), "  ")
        if report:
            head, rest = run_summary(report)
            line.append(head, style="bold")
            line.append(f" · {rest}", style="dim")
        else:
            model = str(h.args.get("model") or "?").rstrip("/").rsplit("/", 1)[-1]
            line.append(f"{model} on {h.name}", style="bold")
            line.append(f" · choices {', '.join(h.choices)}", style="dim")
        line.append(f"\n{job.id}", style="dim")
        p = h.progress or {}
        if job.status in ("running", "starting"):
            step, total = p.get("step") or 0, p.get("total") or 0
            line.append("  ")
            line.append_text(bar(step / total if total else 0, 16))
            line.append(f" {step}/{total}" if total else " starting…", style="bold")
            if p.get("message"):
                line.append(f" · {one_line(p['message'], 50)}")
        append_timing(line, h, self.app.clock())
        if job.status in ("running", "starting"):
            s = h.sample
            if s:
                line.append(f"\nnewest rewrite ({s.get('choice')}, {s.get('key')}):", style="bold")
                line.append(f"\n  draft   {one_line(s.get('draft'), 200)}\n  rewrite {one_line(s.get('rewrite'), 200)}")
            line.append("\nthe table appears when the eval finishes", style="dim italic")
        if job.status == "done" and h.results_error:
            line.append(f"\n✗ {h.results_error}", style="bold red")
        append_outcome(line, h, "the rewrites written so far are cached; continue with --resume")
        return line

    def _show_row_detail(self) -> None:
        h = self.shown_history()
        if h is None or h.report is None:
            return
        label = cursor_key(self.query_one(MetricTable))
        self.query_one("#ev-row", Static).update(row_detail(h.report, label, shown_detector(h.report, self.detector))
                                                 if label else "")

    def _draw_samples(self, h: EvalHistory | None) -> None:
        title, table = self.query_one("#sm-title", Static), self.query_one(SampleTable)
        report = h.report if h else None
        table.display = bool(report and h.samples)
        if not report:
            title.update(Text("No results to browse: open a finished eval (r, then enter on one).", style="dim"))
            self.query_one("#sm-sides", Static).update("")
            return
        choices = h.choices
        if self.choice not in choices:
            self.choice = choices[-1] if choices else None
        det = shown_detector(report, self.detector)
        cols = [("n", "#"), ("key", "sample"), ("draft", "draft"), ("rewrite", str(self.choice)), ("human", "human"),
                ("slop", "slop")]
        rows = []
        for i, s in enumerate(h.samples):
            scores = (s.get("scores") or {}).get(det or "") or {}
            p = [fmt((scores.get(r) or {}).get("p_ai"), "{:.2f}") for r in ("source", self.choice, "human")]
            rows.append((str(i), (Text(str(i + 1), style="dim"), one_line(s.get("key"), 18),
                                  *(Text(v, justify="right") for v in p),
                                  Text(str(len((s.get("slop") or {}).get(self.choice) or [])), justify="right"))))
        self._rebuild(table, (h.job.id, det, self.choice, "samples"), cols, rows)
        self._show_sample()

    def _show_sample(self) -> None:
        h = self.shown_history()
        if h is None or not h.report or self.view != "samples":
            return
        table = self.query_one(SampleTable)
        det = shown_detector(h.report, self.detector)
        i = table.cursor_row if h.samples else -1
        line = Text.assemble((h.name, "bold"), f"  sample {i + 1} of {len(h.samples)}" if i >= 0 else "  no samples",
                             "  ·  choice ", (str(self.choice), "bold"), "  ·  P(AI) on ", (str(det), "bold"))
        line.append("\no: next choice · d: next detector · esc: back · slop phrases highlighted", style="dim")
        self.query_one("#sm-title", Static).update(line)
        box = self.query_one("#sm-sides", Static)
        if 0 <= i < len(h.samples):
            box.update(sample_view(h.samples[i], str(self.choice), detector_names(h.report), det))
        else:
            box.update(Text(h.results_error or "samples.jsonl has no rows", style="dim"))

    def _draw_compare(self, h: EvalHistory | None) -> None:
        title, table, notes = (self.query_one("#cmp-title", Static), self.query_one(CompareTable),
                               self.query_one("#cmp-notes", Static))
        a = self.histories.get(self.marked) if self.marked else None
        if a is not None and a.job.status == "done" and not a.results_loaded:
            self._load_results(a)
        ready = a is not None and h is not None and a is not h and a.report and h.report
        table.display = bool(ready)
        if not ready:
            why = ("mark an eval with m in the list, then open another with enter" if a is None else
                   "open another eval than the marked one (enter)" if a is h else
                   "both evals need a report: they must have finished")
            title.update(Text(f"Compare: {why}.", style="dim"))
            notes.update("")
            return
        det = shown_detector(h.report, self.detector)
        if det not in detector_names(a.report):
            det = next((d for d in detector_names(h.report) if d in detector_names(a.report)), det)
        line = Text.assemble(("A ◆ ", "bold"), (a.name, "bold"), f" {a.job.id}  ", ("B ● ", "bold"), (h.name, "bold"),
                             f" {h.job.id}")
        line.append(f"\nP(AI) on {det} · Δ = B − A, green where B is better", style="dim")
        title.update(line)
        self._rebuild(table, (a.job.id, h.job.id, det, "compare"), compare_columns(), compare_rows(a.report, h.report,
                                                                                                   det))
        diff = settings_diff(a.report, h.report)
        text = Text("B differs from A in: " + ("; ".join(diff) if diff else "nothing recorded"))
        if det not in detector_names(a.report):
            text.append(f"\nA was not scored by {det}: its columns are empty", style="bold")
        notes.update(text)
