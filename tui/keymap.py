"""Key bindings: the app's own, and the registry of every binding id the user can
rebind in config.toml's [keymap] table (`binding_id = "key"`, several keys comma-separated).

Every binding has an id and a tooltip. Number keys switch modes (1 Models, 2 Jobs,
3 Train, 4 Adapters, 5 Server, 6 Chat, 7 Convert, 8 Data, 9 Eval); later modes take the next numbers."""

from __future__ import annotations

import difflib

from textual.binding import Binding

# (mode name, title, key): the order of the number keys.
MODES: list[tuple[str, str, str]] = [
    ("models", "Models", "1"),
    ("jobs", "Jobs", "2"),
    ("train", "Train", "3"),
    ("adapters", "Adapters", "4"),
    ("server", "Server", "5"),
    ("chat", "Chat", "6"),
    ("convert", "Convert", "7"),
    ("data", "Data", "8"),
    ("eval", "Eval", "9"),
]

APP_BINDINGS: list[Binding] = [
    *(Binding(key, f"mode('{mode}')", title, id=f"mode_{mode}", show=False,
              tooltip=f"Switch to {title}")
      for mode, title, key in MODES),
    Binding("ctrl+t", "toggle_theme", "Dark/light", id="toggle_theme", show=False,  # 80 columns: in the help
            tooltip="Dark or light theme, remembered in config.toml"),
    Binding("question_mark,f1", "toggle_keys", "Help", id="show_keys",
            tooltip="This screen's keys, with their ids for config.toml's [keymap]"),
    Binding("q", "quit", "Quit", id="quit", tooltip="Jobs keep running"),
]


def _binding_owners():
    from screens.adapters.screen import AdaptersScreen, AdapterTable
    from screens.chat.screen import ChatScreen
    from screens.convert.screen import ConvertScreen, ConvertTable
    from screens.data.screen import DataScreen
    from screens.data.widgets import BuildTable, DatasetTable, RowTable
    from screens.eval.screen import EvalScreen
    from screens.eval.widgets import EvalRunTable
    from screens.common.forms import FormDialog, PickDialog
    from screens.jobs.screen import JobsScreen, JobTable
    from screens.models.screen import ModelsScreen, ModelTable
    from screens.server.screen import ServerScreen
    from screens.train.screen import RunTable, TrainScreen
    from screens.common.dialogs import ConfirmDialog, InputDialog
    from tui.help import HelpScreen

    return [HelpScreen, ModelsScreen, ModelTable, JobsScreen, JobTable, TrainScreen, RunTable, InputDialog, ConfirmDialog,
            AdaptersScreen, AdapterTable, ServerScreen, ChatScreen, FormDialog, PickDialog, ConvertScreen,
            ConvertTable, DataScreen, DatasetTable, RowTable, BuildTable, EvalScreen, EvalRunTable]


def known_bindings() -> dict[str, Binding]:
    """Every binding id that a [keymap] entry can name."""
    found = {b.id: b for b in APP_BINDINGS if b.id}
    for owner in _binding_owners():
        for b in getattr(owner, "BINDINGS", []):
            if isinstance(b, Binding) and b.id:
                found.setdefault(b.id, b)
    return found


def check_keymap(overrides: dict[str, str], where=lambda binding_id: "config.toml") -> tuple[dict[str, str], list[str]]:
    """The overrides that name a known binding, and a message for each that does not."""
    known = known_bindings()
    good, problems = {}, []
    for binding_id, keys in overrides.items():
        if binding_id in known:
            good[binding_id] = keys
            continue
        # the bad id first and briefly: a toast cut after a list of 60 ids hid it
        close = difflib.get_close_matches(binding_id, known, n=2, cutoff=0.6)
        guess = f"; did you mean {' or '.join(close)}?" if close else ""
        problems.append(f"[keymap] {binding_id} = {keys!r}: no such binding id ({where(binding_id)}){guess} "
                        f"? shows each screen's keys with their ids")
    return good, problems
