"""Every event type has a schema (engine.events.EVENT_SCHEMAS); the reader keeps only events;
a server says where it listens with a "ready" event, which the Server screen reads."""

import json

from engine.events import EVENT_SCHEMAS, Run, event_problems, read_events, server_url
from engine.jobs import job_info
from tests.pilot import text_of, until


def test_schemas_accept_real_events_and_name_what_is_wrong():
    ok = [{"t": 1.0, "type": "progress", "step": 1, "total": None, "eta": None, "message": None, "phase": "x"},
          {"t": 1, "type": "metric", "step": 3, "values": {"loss": 1.5}},
          {"t": 1.0, "type": "ready", "url": "http://127.0.0.1:8080", "message": "serving"},
          {"t": 1.0, "type": "error", "message": "bad", "hint": None},
          {"t": 1.0, "type": "done"}]
    for ev in ok:
        assert event_problems(ev) == [], ev
    assert set(EVENT_SCHEMAS) >= {"progress", "metric", "layer", "log", "artifact", "done", "error", "ready"}
    assert event_problems({"t": 1.0, "type": "ready"}) == ["ready.url: missing"]
    assert event_problems({"t": 1.0, "type": "metric", "step": "3", "values": {}}) == \
        ["metric.step: str, expected int or float"]
    assert event_problems({"type": "log", "message": "m"}) == ["t: a unix time is required"]
    assert "unknown event type 'nope'" in event_problems({"t": 1.0, "type": "nope"})[0]
    assert event_problems([1]) == ["not an object: list"]


def test_the_reader_keeps_only_events(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [{"t": 1.0, "type": "log", "message": "a"}, [1, 2], {"no": "type"}, "text",
             {"t": 2.0, "type": "log", "message": "b"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": 3.0, "ty')  # and a torn last line
    events, offset = read_events(path)
    assert [e["message"] for e in events] == ["a", "b"] and offset < path.stat().st_size


def test_server_url_from_ready_and_from_older_runs():
    assert server_url({"t": 1.0, "type": "ready", "url": "http://h:1"}) == "http://h:1"
    assert server_url({"t": 1.0, "type": "log", "message": "serving", "url": "http://h:2"}) == "http://h:2"
    assert server_url({"t": 1.0, "type": "log", "message": "mounted"}) is None


async def test_the_ready_event_reaches_the_server_screen(ws):
    """A serve run (this process stands in for the server) says "ready": the Server screen shows
    its URL (nothing listens there, so it shows the server down, at that URL)."""
    from tui.app import HumanizerApp

    url = "http://127.0.0.1:9"
    run = Run.create(ws.runs_dir, "serve", ["humanizer", "serve", "--port", "9"],
                     {"model": "tiny", "adapters": [], "host": "127.0.0.1", "port": 9}).start()
    try:
        run.emit("ready", message=f"serving on {url}/v1", url=url, model="tiny", adapters=[], models=["base"])
        assert job_info(run.dir).running
        app = HumanizerApp(ws, mode="server")
        async with app.run_test(size=(120, 40)) as pilot:
            from screens.common.serving import ServerMonitor

            monitor = ServerMonitor.of(app)
            await until(pilot, lambda: monitor.url == url, 10, "the URL from the ready event")
            await until(pilot, lambda: "127.0.0.1:9" in str(app.server_state), 10, "the status bar")
            await until(pilot, lambda: url in text_of(app.screen, "#srv-status"), 10, "the Server screen")
    finally:
        run.finish("done")
