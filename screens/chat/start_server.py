"""Chat mode's offer to start a server: a message sent while none runs asks first, then starts
one with the selected model and every workspace adapter that fits it (parents first); the
message waits in `pending` and goes once the server is up (ChatScreen.tick sends it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from textual.widgets import TextArea

from engine.errors import HumanizerError
from engine.serve.settings import DEFAULT_HOST, DEFAULT_PORT
from screens.common.dialogs import ConfirmDialog
from screens.common.serving import server_defaults, start_server
from screens.common.widgets import mode_ref

if TYPE_CHECKING:
    from screens.common.serving import ServerMonitor


class ChatServerStart:
    """A mixin of ChatScreen (tests/test_screen_mixins.py checks it has what Needs lists)."""

    class Needs(Protocol):
        monitor: ServerMonitor | None  # the server the chat talks to
        pending: str | None  # the message waiting for the server

        def _draw_info(self) -> None: ...

    def _offer_server(self, text: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.query_one("#chat-input", TextArea).text = ""
                self.pending = text
                self._draw_info()
                self.run_worker(self._start_server, thread=True, group="chat-start-server", exclusive=True)

        model = self.app.model or "the selected model"
        self.app.push_screen(ConfirmDialog(
            f"No server is running.\n\nStart one with [b]{model}[/b] and every workspace adapter that fits it? "
            "Your message is sent when it is up. (Server, 5, has all the options.)",
            yes="Start", no="Not now"), answered)

    def _start_server(self) -> None:
        """In a worker thread: the model, the adapters that fit it (parents first), then the job."""
        from engine import adapters as A
        from engine.models import list_models

        ws = self.app.ws
        try:
            models = list_models(ws)
            model = next((m for m in models if m.name == self.app.model), models[0] if models else None)
            if model is None:
                raise HumanizerError("no models yet", f"pull or import one in {mode_ref(self.app, 'models')}")
            # one copy per set of weights, each delta with its own recorded parent
            ordered = A.mountable_together([a for a in A.list_adapters(ws, model.path) if a.fits])
            defaults = server_defaults(ws)
            job = start_server(ws, str(model.path), [str(a.path) for a in ordered],
                               defaults.get("host", DEFAULT_HOST), defaults.get("port", DEFAULT_PORT),
                               max_concurrent=defaults.get("max_concurrent"))
        except (HumanizerError, OSError) as e:
            msg = getattr(e, "message", str(e))
            self.app.call_from_thread(self._start_failed, msg)
            return
        self.app.call_from_thread(self._started, job, [a.name for a in ordered])

    def _started(self, job, names: list[str]) -> None:
        self.monitor.remember_key(job, None)
        self.app.poll_jobs()
        self.monitor.refresh_now()
        self.notify(f"starting a server with {', '.join(names) or 'no adapters'} ({job.id})", timeout=4)

    def _start_failed(self, message: str) -> None:
        self.notify(f"could not start a server: {message}", severity="error", timeout=8)
        if self.pending is not None:
            self.query_one("#chat-input", TextArea).text = self.pending
            self.pending = None
        self._draw_info()
