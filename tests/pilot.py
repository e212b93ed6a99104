"""Helpers for Pilot tests of the app's screens."""

import time


async def until(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds (bounded; never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


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
    """The settings job.json records for `humanizer ARGV` (argv[0] the command): for fixtures
    that write a run by hand, as the CLI's child would."""
    from tui.cli import build_parser
    from tui.cli.common import verb_settings

    return verb_settings(build_parser().parse_args([str(a) for a in argv[1:]]))
