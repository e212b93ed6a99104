"""The server's connection layer: what keeps hostile or broken clients from taking the
server down, and what makes every error it sends an OpenAI error object (ApiError).

- A request's headers must arrive within `header_timeout` of its first byte (of the
  connection's opening for the first request); a late one is answered 408 and closed.
  (The body's deadline, `body_timeout`, is kept by engine/serve/request.py's read_json.)
- A keep-alive connection idle for `keepalive_timeout` is closed.
- At most `max_connections` connections are open; one beyond them is answered 503 at
  once and closed, and running out of file handles anyway (EMFILE on accept) is one
  log line per burst, not a traceback per accept.
- aiohttp's own parser errors (bad method, header too long, bad Content-Length, ...)
  are answered as OpenAI error objects, not text/plain.
- `check_port` tells a bad or busy --port before anything loads."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import time
from http import HTTPStatus
from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from engine.errors import HumanizerError
from engine.serve.settings import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT

log = logging.getLogger("humanizer.server")

MAX_CONNECTIONS_CEILING = 512
LINGER_S = 10.0  # reading the rest of an unread body so the client gets its answer (aiohttp's default)
REFUSED_LINGER_S = 1.0  # a refused connection is read (and dropped) this long before it is closed
REPORT_EVERY_S = 60.0  # one log line per burst of refused connections or failed accepts
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class ApiError(Exception):
    """An error answered as an OpenAI error object {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def raw_response(err: ApiError) -> bytes:
    """`err` as a whole HTTP/1.1 response that closes the connection, for the places that
    answer outside aiohttp's request cycle (a header timeout, a refused connection)."""
    body = json.dumps(err.body()).encode()
    retry = "Retry-After: 1\r\n" if err.status == 503 else ""
    head = (f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}\r\n"
            f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            f"{retry}Connection: close\r\n\r\n")
    return head.encode() + body


def one_line(text: str, limit: int = 300) -> str:
    """aiohttp's multi-line parser messages (the bad line, a caret under it) on one line."""
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip() not in ("", "^"))
    return text if len(text) <= limit else text[:limit] + "..."


def file_limit() -> int | None:
    """The soft limit on open files (ulimit -n); None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else soft


def default_max_connections(soft_limit: int | None = None) -> int:
    """Half the open-file limit, at most 512: the other half stays for the model, the
    run's files and the connections being refused. (Importing mlx_lm sets the limit to
    2048, so a server gets 512.)"""
    soft = file_limit() if soft_limit is None else soft_limit
    if soft is None:
        return MAX_CONNECTIONS_CEILING
    return max(1, min(MAX_CONNECTIONS_CEILING, soft // 2))


class BurstReport:
    """Reports the first of a run of like events at once, then at most one line per
    REPORT_EVERY_S with how many came since."""

    def __init__(self, sink: Callable[[str], None], every: float = REPORT_EVERY_S):
        self.sink = sink
        self.every = every
        self._last: float | None = None
        self._missed = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            self._missed += 1
            return
        more = f" ({self._missed} more since the last report)" if self._missed else ""
        self._last, self._missed = now, 0
        try:
            self.sink(message + more)
        except Exception:  # noqa: BLE001 - a report must never break serving
            log.warning("%s", message + more)


class Limits:
    """The connection limits of one server, and its count of open connections."""

    def __init__(self, *, header_timeout: float, body_timeout: float, keepalive_timeout: float,
                 max_connections: int | None, notify: Callable[[str], None]):
        for flag, value, default in (("--header-timeout", header_timeout, DEFAULT_HEADER_TIMEOUT),
                                     ("--body-timeout", body_timeout, DEFAULT_BODY_TIMEOUT),
                                     ("--keepalive-timeout", keepalive_timeout, DEFAULT_KEEPALIVE_TIMEOUT)):
            if not value > 0:
                raise HumanizerError(f"{flag} must be more than 0 seconds (got {value})",
                                     f"leave it out for the default, {default:g} s")
        if max_connections is not None and max_connections < 1:
            raise HumanizerError(f"--max-connections must be at least 1 (got {max_connections})",
                                 "leave it out for the default: half the open-file limit, at most 512")
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.keepalive_timeout = float(keepalive_timeout)
        self.max_connections = max_connections or default_max_connections()
        self.open = 0
        self.refused = BurstReport(notify)
        self.out_of_files = BurstReport(notify)

    def protocol_factory(self, server: web.Server, loop: asyncio.AbstractEventLoop):
        kwargs = {"keepalive_timeout": self.keepalive_timeout, "lingering_time": min(LINGER_S, self.body_timeout),
                  "access_log": None}

        def factory() -> asyncio.Protocol:
            # counted here, not in connection_made: one loop turn may accept many before any is made
            if self.open >= self.max_connections:
                return Refusal(self)
            self.open += 1
            return GuardedConnection(server, limits=self, loop=loop, **kwargs)

        return factory

    def on_loop_error(self, previous):
        """A loop exception handler: a failed accept for want of file handles is one line
        per burst (asyncio retries the accept a second later by itself); the rest goes on."""

        def handler(loop, context):
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in OUT_OF_FILES and "accept" in context.get("message", ""):
                limit = file_limit()
                self.out_of_files(
                    f"cannot accept connections: {exc.strerror or 'too many open files'} (open files limit "
                    f"{limit or 'unknown'}, {self.open} connections open); they wait until some close. "
                    f"Lower --max-connections (now {self.max_connections}) to about half that limit")
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        return handler


class GuardedConnection(web.RequestHandler):
    """aiohttp's protocol for one connection, plus a deadline on each request's headers and
    OpenAI error objects for aiohttp's own errors. It uses a few of RequestHandler's private
    parts (_waiter, _request_count, _current_request, _process_keepalive): the tests in
    tests/test_server_hostile.py catch an aiohttp that changes them."""

    def __init__(self, manager: web.Server, *, limits: Limits, **kwargs):
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._counted = True  # by the factory that made it
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0  # requests parsed when the head timer was set
        self._head_started = False  # some bytes of the awaited request have arrived

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        if self._counted:
            self._counted = False
            self._limits.open -= 1
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        waiting = before == 0 or (self._waiter is not None and not self._waiter.done())
        super().data_received(data)
        if self._request_count != before:  # a request's headers are all in
            self._cancel_head_timer()
            self._head_started = False
        elif data and waiting:  # the first bytes of the next request: its headers have a deadline
            self._head_started = True
            if self._head_timer is None:
                self._arm_head_timer()

    async def finish_response(self, request, resp, start_time):
        out = await super().finish_response(request, resp, start_time)
        self._cancel_head_timer()  # idle now, under aiohttp's keep-alive timer
        self._head_started = False
        return out

    def log_exception(self, *args, **kw) -> None:
        """A client's broken body or connection, met while aiohttp drains an unread body, is
        one log line; anything else keeps its traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, (web.RequestPayloadError, HttpProcessingError, ConnectionError)):
            log.info("dropped a connection: %s", one_line(str(exc)))
            return
        super().log_exception(*args, **kw)

    def _process_keepalive(self) -> None:
        if self._head_started and self._head_timer is not None:  # a request has begun: its header deadline rules
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _arm_head_timer(self) -> None:
        self._head_count = self._request_count
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._request_count != self._head_count or self._current_request is not None:
            return
        if self._head_started:  # a request had begun: say why it ends (a silent connection is just closed)
            self.transport.write(raw_response(ApiError(
                408, f"the request headers did not arrive within {self._limits.header_timeout:g} s "
                "(the server's --header-timeout); send the whole request at once", code="request_timeout")))
        self.force_close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's errors (a malformed request, a failure outside the app's middleware)
        as OpenAI error objects; one log line for a client's error, a traceback for ours."""
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, the connection is broken
            raise ConnectionError("response is sent already, cannot send another response with the error message")
        if status >= 500 and not isinstance(exc, HttpProcessingError):
            log.error("error handling %s %s", request.method, request.path, exc_info=exc)
            err = ApiError(status, f"internal error: {HTTPStatus(status).phrase}",
                           code="timeout" if status == 504 else "internal_error")
        else:
            detail = one_line(getattr(exc, "message", None) or message or HTTPStatus(status).phrase)
            log.info("malformed request from %s: %s", request.remote, detail)
            err = ApiError(status, f"malformed HTTP request: {detail}", code="bad_request")
        resp = web.Response(status=err.status, body=json.dumps(err.body()), content_type="application/json")
        resp.force_close()
        return resp


class Refusal(asyncio.Protocol):
    """A connection beyond --max-connections: answered 503 at once, its request read and
    dropped for a moment (so the close sends no reset over the answer), then closed."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.transport = None
        self.timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        cap = self.limits.max_connections
        self.limits.refused(f"refusing connections: {cap} are open, the limit (--max-connections); "
                            "each one beyond it gets a 503")
        transport.write(raw_response(ApiError(
            503, f"the server is busy: it has {cap} connections open, its limit (--max-connections); "
            "try again shortly", code="server_busy")))
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done too: close

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections are GuardedConnection (or Refusal beyond the cap)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: Limits):
        super().__init__(runner, host, port)
        self.limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (TCPSite.start would too)
        loop = asyncio.get_running_loop()
        factory = self.limits.protocol_factory(self._runner.server, loop)
        self._server = await loop.create_server(factory, self._host, self._port, backlog=self._backlog)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def check_port(host: str, port) -> None:
    """Refuse a --port that is no TCP port, or that cannot be bound on `host` now (in use,
    privileged, not an address here): before the model loads, so the error comes at once."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise HumanizerError(f"--port {port} is not a TCP port",
                             "pick a port from 1 to 65535 (the default is 8080), or 0 for any free one")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise HumanizerError(f"--host {host} is not an address of this machine ({e.strerror})",
                             "bind 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    for family, type_, proto, _, addr in infos:
        try:
            s = socket.socket(family, type_, proto)
        except OSError:  # e.g. no IPv6 here: asyncio skips such an address too
            continue
        with s:
            if os.name == "posix":  # as asyncio's create_server: a port in TIME_WAIT is free
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise HumanizerError(f"--port {port} is in use on {host}",
                                         "stop what listens there (another `humanizer serve`?), or pick another "
                                         "--port (--port 0 takes any free one)") from None
                if e.errno == errno.EACCES:
                    raise HumanizerError(f"--port {port} on {host} needs administrator rights",
                                         "pick a port from 1024 up, e.g. the default 8080") from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise HumanizerError(f"--host {host} is not an address of this machine",
                                         "bind 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
                raise HumanizerError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                                     "pick another --port or --host") from None
