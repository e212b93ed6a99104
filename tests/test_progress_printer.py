"""The CLI's event printer when piped to a log: phase starts and ends, plus a heartbeat."""

from tui.progress import EventPrinter


def _lines(events: list[dict], capsys) -> list[str]:
    with EventPrinter(as_json=False) as printer:  # pytest's capture is not a terminal: no live bar
        for ev in events:
            printer(ev)
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _progress(t: float, step: int, total: int | None, message: str) -> dict:
    return {"t": t, "type": "progress", "step": step, "total": total, "message": message}


def test_a_phase_prints_its_start_its_end_and_a_heartbeat(capsys):
    events = [_progress(t, step, 100, f"drafting {step}") for t, step in
              [(0, 0), (1, 1), (2, 2), (31, 3), (32, 4), (40, 100)]]
    lines = _lines(events, capsys)
    assert [line.split(" ", 2)[2] for line in lines] == ["0/100 drafting 0", "3/100 drafting 3",
                                                         "100/100 drafting 100"]


def test_a_new_phase_or_total_prints_and_a_steady_step_does_not_flood(capsys):
    # the demo repeats a stage's inner progress at one outer step: one line, not one per event
    stage = [_progress(t / 10, 0, 9, f"stage 1/9 · {t}/694 converting") for t in range(50)]
    scoring = [_progress(6, 0, 40, "scoring"), _progress(7, 40, 40, "scoring")]
    lines = _lines(stage + scoring, capsys)
    assert len(lines) == 3
    assert "0/694" in lines[0] and "0/40 scoring" in lines[1] and "40/40 scoring" in lines[2]


def test_other_events_always_print(capsys):
    lines = _lines([{"t": 0, "type": "log", "message": "loading"}, _progress(0, 0, 2, "a"),
                    {"t": 0, "type": "log", "message": "half way"}, _progress(0, 1, 2, "a")], capsys)
    assert [line.split(" ", 1)[1] for line in lines] == ["loading", "progress 0/2 a", "half way"]
