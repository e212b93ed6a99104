"""Two panes for a narrow terminal: a RunsScreen (Train, Convert) shows its run (title,
charts or grid, the runs table) beside its new-run form when wide; narrower than
runs.NARROW columns it shows one of the two at a time, each filling the screen, so the
charts never scroll out of reach behind the form or the table (80x24 over SSH).

The pane follows the focus (a form field shows the form, the runs table the run); a
binding to action_toggle_pane (ctrl+g in Train and Convert) switches, and n / r still go
to the form / the runs table."""

from __future__ import annotations

from typing import Protocol

from textual import events


class NarrowPanes:
    """A mixin for a RunsScreen whose run is #{main_id} and form #{form_id}. CSS: the
    screen has -pane-run or -pane-form (with -narrow) and hides the other pane. What it
    uses of the RunsScreen: Needs (tests/test_screen_mixins.py checks it)."""

    class Needs(Protocol):
        _narrow: bool | None  # below runs.NARROW columns

        def action_new_run(self) -> None: ...

    DEFAULT_CLASSES = "-pane-run"
    main_id = "runs-main"
    form_id = "runs-form"
    pane = "run"

    def focus_run_pane(self) -> None:
        """What ctrl+g focuses in the run pane: the runs table (Train's charts are beside it)."""
        table = self.query_one(f"#{self.main_id} RunsTable")
        if table.display:
            table.focus()
        else:  # no runs yet: nothing to focus there
            self.set_focus(None)

    def show_pane(self, pane: str) -> None:
        self.pane = pane
        self.set_class(pane == "form", "-pane-form")
        self.set_class(pane != "form", "-pane-run")

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # wide too (the pane classes do nothing there): a terminal that narrows shows the focus
        form = self.query_one(f"#{self.form_id}")
        self.show_pane("form" if form in event.widget.ancestors_with_self else "run")

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "toggle_pane":
            return bool(self._narrow)  # wide, both are on screen: the key is not offered
        return True

    def action_toggle_pane(self) -> None:
        if self.pane != "form":
            self.show_pane("form")
            self.action_new_run()
            return
        self.show_pane("run")
        self.focus_run_pane()
