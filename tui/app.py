"""The Humanizer Studio app: one mode per screen, switched with number keys or the
command palette (ctrl+p); a status bar on every screen; settings from config.toml.

Long work never runs here: screens start detached jobs (engine.jobs) and tail their
events.jsonl on a timer, so a restarted app reattaches to whatever is still running."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.reactive import reactive, var
from textual.screen import ModalScreen
from textual.widgets import Button

from engine.jobs import JobInfo, list_jobs
from engine.workspace import Workspace
from screens.adapters.screen import AdaptersScreen
from screens.chat.screen import ChatScreen
from screens.convert.screen import ConvertScreen
from screens.data.screen import DataScreen
from screens.eval.screen import EvalScreen
from screens.jobs.screen import JobsScreen
from screens.models.screen import EMBEDDED, ModelsScreen
from screens.server.screen import ServerScreen
from screens.common.serving import ServerMonitor, running_server
from screens.train.screen import TrainScreen
from screens.common.dialogs import ConfirmDialog
from screens.common.progress import start_humanizer_job
from screens.common.widgets import key_of, mode_ref
from tui.config import ConfigError, keymap_line, load_config, set_value
from tui.help import HelpScreen, help_rows
from tui.keymap import APP_BINDINGS, MODES, check_keymap

SCREENS_BY_MODE = {"models": ModelsScreen, "jobs": JobsScreen, "train": TrainScreen, "adapters": AdaptersScreen,
                   "server": ServerScreen, "chat": ChatScreen, "convert": ConvertScreen, "data": DataScreen,
                   "eval": EvalScreen}
POLL_HZ = 2
DEMO_KEY = "demo_offered"  # config.toml: the first-start demo offer was answered (yes or no)
DEMO_QUESTION = ("[b]Run the demo?[/b]\n\nThis workspace has no adapters yet. `humanizer demo` runs the whole loop "
                 "on the embedded SmolLM2-135M, one stage a job: a dataset from a human-written corpus, an SFT "
                 "adapter, a DPO adapter stacked on it, the detectors and the eval table (up to about half an hour "
                 "on a 2-core CPU). {jobs} shows its progress; closing the app does not stop it.\n\n"
                 "Asked once: the answer is kept in config.toml.")
THEMES = ("textual-dark", "textual-light")

Command = tuple[str, str, Callable]


class StudioCommands(Provider):
    """Commands for the palette, from the app and the current screen, so they change
    with context (the highlighted job, the models present, the current mode)."""

    def _commands(self) -> list[Command]:
        return list(self.app.palette_commands(self.screen))

    async def discover(self) -> Hits:
        for name, help_, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_)


class QuitDialog(ConfirmDialog):
    """Quit anyway? y or enter quits, n or escape stays (Quit has the focus, so enter is yes)."""

    def on_mount(self, event) -> None:
        event.prevent_default()  # not ConfirmDialog's: it focuses No
        self.query_one("#yes", Button).focus()


class HumanizerApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "Humanizer Studio"
    BINDINGS = APP_BINDINGS
    COMMANDS = App.COMMANDS | {StudioCommands}

    model: reactive[str | None] = reactive(None)
    jobs: var[list[JobInfo]] = var(list)
    running_jobs: reactive[int] = reactive(0)
    server_state: reactive[str] = reactive("off")

    def __init__(self, ws: Workspace, model: str | None = None, clock: Callable[[], float] = time.time,
                 mode: str = "models", offer_demo: bool = False) -> None:
        """`offer_demo`: on a workspace with no adapters, offer `humanizer demo` once (the real
        app does; tests leave it off unless they test it)."""
        super().__init__()
        self.ws, self.clock, self.start_mode = ws, clock, mode
        self.offer_demo = offer_demo
        self._model_given = model is not None
        self.set_reactive(HumanizerApp.model, model)
        for name, screen in SCREENS_BY_MODE.items():
            self.add_mode(name, screen)
        config, self.config_problems = load_config(ws.config_path)
        self.demo_answered = DEMO_KEY in config.data
        keymap, problems = check_keymap(config.keymap, lambda b: keymap_line(ws.config_path, b))
        self.config_problems += problems
        self.keymap_overrides = keymap
        self.set_keymap(keymap)
        if config.theme in self.available_themes:
            self.theme = config.theme
        elif config.theme is not None:
            self.config_problems.append(f"config.toml: unknown theme {config.theme!r}; use one of "
                                        f"{', '.join(THEMES)}")
        self.poll_jobs()

    def on_mount(self) -> None:
        self.switch_mode(self.start_mode)
        self.set_interval(1 / POLL_HZ, self.poll_jobs)
        ServerMonitor.of(self)  # follows the running serve job: server_state in the status bar
        for problem in self.config_problems:
            self.notify(problem, title="config.toml", severity="error", timeout=12, markup=False)
        if self.should_offer_demo():
            question = DEMO_QUESTION.format(jobs=mode_ref(self, "jobs"))
            self.push_screen(ConfirmDialog(question, yes="Run the demo", no="Not now", destructive=False),
                             self._demo_answered)

    # the first-start demo offer ---------------------------------------------------------------
    def should_offer_demo(self) -> bool:
        """Offer the demo when asked to, never answered before, with no adapters and no demo job."""
        from engine.adapters import list_adapters

        if not self.offer_demo or self.demo_answered or any(j.kind.startswith("demo") for j in self.jobs):
            return False
        try:
            return not list_adapters(self.ws)
        except OSError:
            return False

    def _demo_answered(self, yes: bool | None) -> None:
        self.demo_answered = True
        try:
            set_value(self.ws.config_path, DEMO_KEY, bool(yes))
        except (ConfigError, OSError) as e:
            self.notify(f"answer not saved: {e}", severity="warning")
        if not yes:
            self.notify(f"No demo. The command palette ({key_of(self, 'command_palette', 'ctrl+p')}) and "
                        "`humanizer demo` still run it.", timeout=5)
            return
        self.start_demo()

    def start_demo(self) -> None:
        """`humanizer demo` as a job, then the Jobs screen to watch it."""
        job = start_humanizer_job(self.screen, "demo", "demo")
        if job is not None:
            self.poll_jobs()
            self.switch_mode("jobs")

    # shared state -------------------------------------------------------------
    def poll_jobs(self) -> None:
        """Re-read runs/ (job.json files only; screens tail the events they show)."""
        self.jobs = list_jobs(self.ws)
        self.running_jobs = sum(1 for j in self.jobs if j.status in ("running", "starting"))

    def models_changed(self, names: list[str]) -> None:
        """The Models screen read the models folder: pick a default if none is chosen."""
        if self.model is None or (not self._model_given and self.model not in names):
            self.model = EMBEDDED if EMBEDDED in names else (names[0] if names else None)

    def select_model(self, name: str) -> None:
        self.model = name
        self._model_given = True

    def mode_tabs(self) -> list[tuple[str, str, str]]:
        """(mode, title, key) for the header, with the keys as the keymap has them."""
        tabs = []
        for mode, title, key in MODES:
            key = self.keymap_overrides.get(f"mode_{mode}", key).split(",")[0].strip()
            tabs.append((mode, title, self.get_key_display(Binding(key, ""))))
        return tabs

    # actions ------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("mode", "quit", "toggle_keys") and isinstance(self.screen, ModalScreen):
            return False  # a dialog is open: plain keys belong to it (ctrl+q still quits)
        return True

    def quit_concerns(self) -> list[str]:
        """What quitting now would lose or leave behind: a running server, and what any open
        mode's screen reports (Chat: an unsent message). Other jobs simply keep running."""
        concerns = []
        server = running_server(self.jobs)
        if server is not None:
            concerns.append(f"The server ({server.id}) keeps running after the app closes: stop it in Server "
                            "(5) first if it should not.")
        for stack in getattr(self, "_screen_stacks", {}).values():  # every mode opened so far
            for screen in stack:
                concerns += getattr(screen, "quit_concerns", lambda: [])()
        return concerns

    async def action_quit(self) -> None:
        """Quit, after a confirm when something would be lost or left running."""
        concerns = self.quit_concerns()
        if not concerns:
            self.exit()
            return
        self.push_screen(QuitDialog("[b]Quit Humanizer Studio?[/b]\n\n" + "\n".join(f"• {c}" for c in concerns),
                                    yes="Quit", no="Stay"), lambda yes: self.exit() if yes else None)

    def action_mode(self, mode: str) -> None:
        self.switch_mode(mode)

    def remember(self, table: str | None, values: dict) -> None:
        """Keep settings in config.toml (for screens, which never import tui): the Server
        form's host, port and max concurrent go in [server]."""
        try:
            for key, value in values.items():
                set_value(self.ws.config_path, key, value, table)
        except (ConfigError, OSError) as e:
            self.notify(f"not saved in config.toml: {e}", severity="warning", markup=False)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"
        try:
            set_value(self.ws.config_path, "theme", self.theme)
        except (ConfigError, OSError) as e:
            self.notify(f"theme not saved: {e}", severity="warning")

    def action_toggle_keys(self) -> None:
        """Our help dialog, not Textual's key panel (it squeezed the screen at 80x24)."""
        title = self.screen.sub_title or self.current_mode
        self.push_screen(HelpScreen(title, help_rows(self.screen)))

    async def _in_mode(self, mode: str, action: str) -> None:
        await self.switch_mode(mode)
        await self.screen.run_action(action)

    def palette_commands(self, screen) -> Iterable[Command]:
        keys = {mode: key for mode, _, key in self.mode_tabs()}  # as the user has them
        for mode, title, _ in MODES:
            if mode != self.current_mode:
                yield (f"Mode: {title}", f"switch to {title} (key {keys[mode]})", lambda m=mode: self.switch_mode(m))
        yield (f"Pull embedded model {EMBEDDED}",
               f"SmolLM2-135M-Instruct, as a job (key {key_of(self, 'models_pull', 'p')} in Models)",
               lambda: self._in_mode("models", "pull"))
        yield ("Import GGUF model…",
               f"convert a llama-family .gguf into models/ (key {key_of(self, 'models_import', 'i')} in Models)",
               lambda: self._in_mode("models", "import_gguf"))
        yield ("Train a LoRA adapter…", f"SFT or DPO, as a job, with live curves (Train mode, key {keys['train']})",
               lambda: self._in_mode("train", "new_run"))
        yield ("Start a server…", f"humanizer serve as a background job (Server mode, key {keys['server']})",
               lambda: self._in_mode("server", "start"))
        yield ("New chat", f"a new conversation with the running server (Chat mode, key {keys['chat']})",
               lambda: self._in_mode("chat", "new_chat"))
        yield ("Convert a model…", "mixed-precision quantization within a bpw budget, as a job "
               f"(Convert mode, key {keys['convert']})", lambda: self._in_mode("convert", "new_run"))
        yield ("Build a dataset…", "human text in, SFT / DPO / held-out rows out, as a job "
               f"(Data mode, key {keys['data']})", lambda: self._in_mode("data", "new_run"))
        yield ("Evaluate…", "rewrite held-out drafts with every choice and score them, as a job "
               f"(Eval mode, key {keys['eval']})", lambda: self._in_mode("eval", "new_run"))
        yield ("Run the demo", "humanizer demo: data, SFT, DPO, detectors and the eval on the embedded model, "
               "as a job", self.start_demo)
        yield ("Toggle dark/light theme", f"remembered in config.toml ({key_of(self, 'toggle_theme', 'ctrl+t')})",
               self.action_toggle_theme)
        if hasattr(screen, "palette_commands"):
            yield from screen.palette_commands()


def run_app(ws: Workspace, model: str | None = None) -> None:
    HumanizerApp(ws, model=model, offer_demo=True).run()
