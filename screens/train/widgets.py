"""The Train screen's pieces: a training run's history read from its events, the charts
it draws, and the runs table."""

from __future__ import annotations

from textual.binding import Binding

from engine.jobs import JobInfo
from screens.common.history import JobHistory
from screens.common.runs import RunsTable

# (id, title, [(metric, label)], methods, y_min, y_max)
CHARTS = [
    ("loss", "Loss", [("loss", "train"), ("val_loss", "val")], ("sft", "dpo"), None, None),
    ("kl", "KL", [("val_kl", "val")], ("sft", "dpo"), None, None),
    ("lr", "Learning rate", [("learning_rate", "lr")], ("sft",), None, None),
    ("tps", "Tokens/s", [("tokens_per_second", "tok/s")], ("sft",), None, None),
    ("rewards", "Rewards", [("chosen_reward", "chosen"), ("rejected_reward", "rejected")], ("dpo",), None, None),
    ("margin", "Margin", [("margin", "train"), ("val_margin", "val")], ("dpo",), None, None),
    ("accuracy", "Accuracy", [("accuracy", "train"), ("val_accuracy", "val")], ("dpo",), 0.0, 1.0),
    ("logps", "Log-probs", [("chosen_logp", "chosen"), ("rejected_logp", "rejected")], ("dpo",), None, None),
]
KL_TITLE = {"sft": "KL(policy‖base)", "dpo": "KL(policy‖ref)"}


def is_train_job(job: JobInfo) -> bool:
    return job.kind.startswith("lora train")


class RunHistory(JobHistory):
    """One training run's events: every metric as a (step, value) series, the latest
    values, the latest progress, and the error or done event."""

    def __init__(self, job: JobInfo) -> None:
        super().__init__(job)
        kind = job.kind.split()
        self.method = kind[2] if len(kind) > 2 and kind[2] in ("sft", "dpo") else self.args.get("method", "sft")
        self.metrics: dict[str, list[tuple[float, float]]] = {}
        self.latest: dict[str, float] = {}
        self.phase: dict | None = None  # the latest progress of a phase before training (DPO reference)

    def feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "metric":
            step = ev.get("step")
            if not isinstance(step, (int, float)):
                return
            for key, value in (ev.get("values") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.metrics.setdefault(key, []).append((step, float(value)))
                    self.latest[key] = float(value)
        elif kind == "progress":
            if ev.get("phase"):
                self.phase = ev
            else:
                self.progress, self.phase = ev, None  # the latest training-step progress
        else:
            super().feed(ev)

    @property
    def step(self) -> tuple[int | None, int | None]:
        p = self.progress or {}
        total = p.get("total") or self.args.get("iters")
        return p.get("step"), (int(total) if str(total).isdigit() else total)


class RunTable(RunsTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open", id="train_open", tooltip="Show this run's curves"),
        Binding("v", "overlay", "Compare", id="train_overlay",
                tooltip="Overlay this run's curves on the shown run (again: remove)"),
    ]

    def action_overlay(self) -> None:
        self.screen.action_overlay()
