"""Helpers for the tests: waiting for a condition (one polling core, a sync and an async face)
and reading the app's screens under Pilot."""

import time

POLL_S = 0.05


def _polling(condition, timeout: float):
    """Yields while `condition()` does not hold yet; returns True once it holds, False when
    `timeout` seconds pass first. The caller sleeps between yields, its own way."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        yield
    return True


def wait_for(condition, timeout: float = 20.0) -> bool:
    """Sleep until `condition()` holds (True) or `timeout` passes (False): for tests without an app."""
    polls = _polling(condition, timeout)
    while True:
        try:
            next(polls)
        except StopIteration as done:
            return done.value
        time.sleep(POLL_S)


async def until(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds (bounded; never a bare sleep)."""
    polls = _polling(condition, timeout)
    while True:
        try:
            next(polls)
        except StopIteration as done:
            if not done.value:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
            return
        await pilot.pause(POLL_S)


def notifications(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


def screen_text(app) -> list[str]:
    """The screen as plain text lines, as the terminal shows them."""
    return ["".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()]


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


def steady_cursors(screen) -> None:
    """Stop the text cursors blinking: a snapshot would catch a blinking one on or off."""
    for widget in screen.query("Input, TextArea"):
        widget.cursor_blink = False


def cli_settings(argv: list[str]) -> dict:
    """The settings job.json records for a `humanizer ...` or `python -m tui.cli ...` command
    line: for fixtures that write a run by hand, as the CLI's child would."""
    from tui.cli import build_parser
    from tui.cli.common import verb_settings

    args = [str(a) for a in argv]
    args = args[args.index("tui.cli") + 1:] if "tui.cli" in args else args[1:]
    return verb_settings(build_parser().parse_args(args))
