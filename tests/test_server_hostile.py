"""The server (engine/serve/) against hostile or broken clients, over real sockets: stalled and idle
connections, a flood of them, malformed HTTP, deep JSON, odd header bytes, bad ports."""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import HumanizerError
from engine.generate import Engine
from engine.serve import check_port, default_max_connections
from tests.test_server import CHAT, ServerThread, setup  # noqa: F401 - setup is a fixture

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def engine(setup):  # noqa: F811
    ws, base, sft, dpo = setup
    eng = Engine.load(base, max_rows=2).start()
    yield eng
    eng.close()


@pytest.fixture
def quick(engine):
    """A server whose header, body and idle timeouts are short, so stalls end in a test's time."""
    srv = ServerThread(engine, header_timeout=2, body_timeout=2, keepalive_timeout=1)
    yield srv
    srv.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers (lower-case names), body) of the next response on `sock`."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def exchange(port: int, data: bytes) -> tuple[int, dict, bytes]:
    with connect(port) as s:
        s.sendall(data)
        return response(s)


def closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (reads what it still sends; the 30 s timeout is a safety net)."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def openai_error(status_headers_body, status: int, code: str | None = None) -> dict:
    status_got, headers, body = status_headers_body
    assert status_got == status, body
    assert headers["content-type"].startswith("application/json"), (headers, body)
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert err["code"] == code, err
    return err


def healthy(srv) -> bool:
    status, _, body = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return status == 200 and json.loads(body)["status"] == "ok"


# --- 1. stalled and idle connections are closed ------------------------------------------------------


def test_stalled_connections_are_closed(quick):
    silent = connect(quick.port)  # says nothing at all
    in_headers = connect(quick.port)
    in_headers.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    in_body = connect(quick.port)
    in_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    idle = connect(quick.port)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response(idle)[0] == 200  # a keep-alive connection, then nothing more
    for s in (silent, idle):
        assert closed(s)
        s.close()
    with in_headers:  # a request had begun: it is told why, as an OpenAI error, then closed
        err = openai_error(response(in_headers), 408, "request_timeout")
        assert "headers" in err["message"]
        assert closed(in_headers)
    with in_body:
        err = openai_error(response(in_body), 408, "request_timeout")
        assert "body" in err["message"]
        assert closed(in_body)
    assert healthy(quick)


def test_a_body_sent_slowly_in_time_is_served(engine):
    srv = ServerThread(engine, body_timeout=30)
    try:
        body = json.dumps({"messages": CHAT, "max_tokens": 2, "adapter": "base"}).encode()
        with connect(srv.port) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 16):
                s.sendall(body[i:i + 16])
            status, _, out = response(s)
        assert status == 200 and json.loads(out)["usage"]["completion_tokens"] == 2
    finally:
        srv.stop()


def test_connections_over_the_cap_get_a_503(engine):
    srv = ServerThread(engine, max_connections=3, header_timeout=60)
    try:
        held = [connect(srv.port) for _ in range(3)]
        # connections are accepted in order: these three hold the slots, the next is refused
        err = openai_error(exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"), 503, "server_busy")
        assert "3" in err["message"]
        with connect(srv.port) as s:  # a refused connection is closed after its answer
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response(s)[0] == 503 and closed(s)
        held.pop().close()
        for _ in range(200):  # the server notices the close at its next loop turn
            if healthy(srv):
                break
            time.sleep(0.05)
        else:
            pytest.fail("a slot never came free")
        logs = [e["message"] for e in srv.events if e["type"] == "log" and "connections" in e["message"]]
        assert len(logs) == 1, logs  # one line for the burst, not one per refusal
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_default_connection_cap_fits_the_file_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = default_max_connections()
    assert 1 <= cap <= 512 and cap < soft
    assert default_max_connections(256) < 256 and default_max_connections(1 << 20) == 512


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="lowers a running process's file limit (Linux)")
def test_a_flood_of_stalled_connections_does_not_take_the_server_down(setup, tmp_path):  # noqa: F811
    """The report's case, scaled to a low file limit: more stalled bodies than file handles
    (a cap set too high for the limit). The server logs one line, not a traceback per
    accept; every stalled request ends at its body deadline; then it serves again."""
    ws, base, sft, dpo = setup
    env = {**os.environ, "HUMANIZER_HOME": str(ws.home), "HUMANIZER_NO_FAST_BLAS": "1"}
    limit = 160
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--model", str(base), "--port", "0", "--json",
         "--max-connections", "1000", "--body-timeout", "2", "--header-timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stalled: list[socket.socket] = []
    out: list[str] = []
    try:
        url = None
        while url is None and (line := proc.stdout.readline()):
            out.append(line)
            url = json.loads(line).get("url")
        assert url, proc.stderr.read()
        # the server writes an event per request: read them as they come, or its stdout would block it
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        port = int(url.rsplit(":", 1)[1])
        # lowered now: mlx_lm sets its own limit (2048) when it is imported
        hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (limit, hard))
        for _ in range(limit + 40):
            s = connect(port)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            stalled.append(s)
        for s in stalled:  # each is answered 408 when its body is late, and closed
            assert closed(s)
            s.close()
        stalled.clear()
        with connect(port) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert response(s)[0] == 200
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(30)
        err = proc.stderr.read()
    finally:
        for s in stalled:
            s.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err[:4000]
    logged = [json.loads(x).get("message", "") for x in out if x.strip()]
    files = [m for m in logged if "open files" in m]
    assert len(files) == 1, files


# --- 3. deep JSON, odd header bytes ----------------------------------------------------------------


def test_deeply_nested_json_is_a_400(quick):
    body = b"[" * 100_000
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    err = openai_error(exchange(quick.port, head + b"Content-Length: %d\r\n\r\n" % len(body) + body),
                       400, "invalid_json")
    assert "nested" in err["message"]
    assert healthy(quick)


def test_non_utf8_authorization_is_a_401(engine):
    srv = ServerThread(engine, api_key="s3cret")
    try:
        for value in (b"Bearer \xff\xfe\xfd", b"\xc3\x28", b"Bearer s3cret\xff"):
            err = openai_error(exchange(srv.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                        + value + b"\r\n\r\n"), 401, "invalid_api_key")
            assert "incorrect" in err["message"]
        status, _, _ = exchange(srv.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Authorization: Bearer s3cret\r\n\r\n")
        assert status == 200
    finally:
        srv.stop()


def test_a_broken_body_or_a_client_leaving_mid_body_is_no_server_error(quick, caplog):
    from engine.serve import LIMITS

    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\n"
    err = openai_error(exchange(quick.port, head + b"abcde"), 400, "invalid_body")
    assert "gzip" in err["message"]
    with connect(quick.port) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    for _ in range(200):  # until the server has seen it go
        if quick.app[LIMITS].open == 0:
            break
        time.sleep(0.02)
    assert quick.app[LIMITS].open == 0
    assert not [e for e in quick.events if e.get("http_status", 0) >= 500], quick.events
    assert not [r for r in caplog.records if r.levelno >= 30], caplog.text
    assert healthy(quick)


# --- 4. aiohttp's own parser errors are OpenAI errors too ---------------------------------------------

MALFORMED = {
    "bad method": b"G\x01T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 KB": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "negative Content-Length": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "Content-Length with Transfer-Encoding": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "over-long adapter name": b"DELETE /v1/adapters/" + b"n" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_http_gets_an_openai_error(quick, name):
    err = openai_error(exchange(quick.port, MALFORMED[name]), 400, "bad_request")
    assert "HTTP" in err["message"] or "header" in err["message"].lower(), err
    assert healthy(quick)


# --- 8. the port is checked before the model loads ---------------------------------------------------


def test_port_out_of_range_or_in_use_is_refused():
    for port in (70000, -1):
        with pytest.raises(HumanizerError, match="--port") as e:
            check_port("127.0.0.1", port)
        assert "65535" in e.value.hint
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HumanizerError, match=f"--port {port}.*in use") as e:
            check_port("127.0.0.1", port)
        assert "--port 0" in e.value.hint
    check_port("127.0.0.1", port)  # free again
    check_port("127.0.0.1", 0)
    with pytest.raises(HumanizerError, match="--host"):
        check_port("192.0.2.1", 8080)  # a documentation address, no interface here has it


@pytest.mark.parametrize("port", ["70000", "in use"])
def test_serve_command_checks_the_port_before_loading(tmp_path, monkeypatch, capsys, port):
    from tui.cli import main

    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if port == "in use":
            port = str(taken.getsockname()[1])
        # a model that does not exist: had it been loaded first, the error would be about it
        assert main(["--home", str(tmp_path / "h"), "serve", "--model", str(tmp_path / "no-model"),
                     "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}" in err and "hint:" in err and "Traceback" not in err and "no-model" not in err
