"""`humanizer serve`: load the model, bind (loopback unless an API key is given), serve until
SIGTERM / SIGINT, then shut down gracefully, letting running requests finish."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Callable

from aiohttp import web

from engine import adapters as A
from engine.errors import HumanizerError
from engine.generate import Engine
from engine.serve.app import create_app
from engine.serve.http import GuardedSite, Limits, check_port
from engine.serve.request import ENGINE, LIMITS, STATE
from engine.serve.settings import (
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_HOST, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_MAX_TOKENS_LIMIT, DEFAULT_PORT, is_loopback,
)


def check_bind(host: str, api_key: str | None) -> None:
    """A non-loopback address serves the network: refuse it without an API key."""
    if not is_loopback(host) and not api_key:
        raise HumanizerError(
            f"refusing to serve on {host} without an API key: anyone who can reach this machine could use it",
            "pass --api-key KEY (clients then send 'Authorization: Bearer KEY'), or bind 127.0.0.1",
        )


async def start_site(app: web.Application, host: str, port: int, shutdown_timeout: float = 5.0):
    """Start serving `app`; returns (runner, site, url) with the real port (port 0 = any free one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    limits = app[LIMITS]
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(limits.on_loop_error(loop.get_exception_handler()))
    site = GuardedSite(runner, host, port, limits)
    try:
        await site.start()
    except (OSError, OverflowError) as e:  # OverflowError: a port over 65535
        await runner.cleanup()
        raise HumanizerError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}",
                             "pick another --port, or stop what is using it") from None
    sock = site._server.sockets[0] if site._server and site._server.sockets else None  # noqa: SLF001
    real_port = sock.getsockname()[1] if sock else port
    shown = f"[{host}]" if ":" in host else host
    return runner, site, f"http://{shown}:{real_port}"


async def shutdown(app: web.Application, runner: web.AppRunner, site, grace: float) -> None:
    """Stop listening, let running requests finish for up to `grace` seconds, then cancel the
    rest and close."""
    engine = app[ENGINE]
    state = app[STATE]
    state["stopping"] = True
    await site.stop()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (engine.stats()["active"] or engine.stats()["queued"]):
        await asyncio.sleep(0.05)
    await asyncio.get_running_loop().run_in_executor(None, engine.close)
    deadline = time.monotonic() + 5.0  # the handlers write their last events (server_stopping)
    while state["inflight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await runner.cleanup()


def serve(model: str, adapters=(), *, ws, run, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          api_key: str | None = None, max_concurrent: int = 8, max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
          dequantize: bool | None = None, grace: float = 5.0, ready: Callable[[str], None] | None = None,
          header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
          keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT, max_connections: int | None = None,
          max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> str:
    """`humanizer serve`: load the model and adapters, serve until SIGTERM / SIGINT, then shut
    down gracefully. Events go to `run`: "ready" with the URL at start, one "request" event per
    request. Returns the URL it served on."""
    from engine.models import resolve_model

    check_bind(host, api_key)
    check_port(host, port)  # a bad or busy port is told now, not after the model has loaded
    if max_concurrent < 1:
        raise HumanizerError("--max-concurrent must be at least 1")
    if max_tokens_limit < 1:
        raise HumanizerError("--max-tokens-limit must be at least 1")
    if max_prompt_tokens < 1:
        raise HumanizerError("--max-prompt-tokens must be at least 1",
                             f"the default is {DEFAULT_MAX_PROMPT_TOKENS}; a prompt over it gets a 400")
    conn = {"header_timeout": header_timeout, "body_timeout": body_timeout, "keepalive_timeout": keepalive_timeout,
            "max_connections": max_connections}
    Limits(**conn, notify=run.log)  # checks the values before the model loads
    dirs = [A.resolve_adapter(spec, ws) for spec in adapters or []]  # a folder or a workspace name
    model_dir = resolve_model(model, ws, run)
    run.log(f"loading {model_dir}" + (f" with {len(dirs)} adapter(s)" if dirs else ""))
    engine = Engine.load(model_dir, adapters=dirs, dequantize=dequantize, max_rows=max_concurrent)
    import mlx.core as mx

    weights = "quantized" if dequantize is False else ("float32 (dequantized)" if (
        dequantize or (dequantize is None and mx.default_device() == mx.cpu)) else "as stored")
    run.log(f"model {engine.name}: weights {weights}, decoding '{engine.mode}', up to {max_concurrent} rows")
    try:
        return asyncio.run(_serve_async(engine, ws=ws, run=run, host=host, port=port, api_key=api_key,
                                        max_tokens_limit=max_tokens_limit, grace=grace, ready=ready, conn=conn,
                                        max_prompt_tokens=max_prompt_tokens))
    finally:
        engine.close()


async def _serve_async(engine: Engine, *, ws, run, host, port, api_key, max_tokens_limit, grace, ready,
                       conn, max_prompt_tokens=DEFAULT_MAX_PROMPT_TOKENS) -> str:
    app = create_app(engine, api_key=api_key, adapters_root=ws.adapters_dir if ws is not None else None,
                     max_tokens_limit=max_tokens_limit, emit=run.emit,
                     max_prompt_tokens=max_prompt_tokens, **conn)
    runner, site, url = await start_site(app, host, port)
    lim = app[LIMITS]
    run.log(f"connections: at most {lim.max_connections} open; a request's headers within {lim.header_timeout:g} s, "
            f"its body within {lim.body_timeout:g} s; idle keep-alive closed after {lim.keepalive_timeout:g} s")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    run.emit("ready", message=f"serving on {url}/v1 (models: {', '.join(engine.model_ids())})"
             + (" - API key required" if api_key else ""), url=url, model=engine.name,
             adapters=list(engine.mounted()), models=engine.model_ids())
    if ready:
        ready(url)
    try:
        await stop.wait()
    finally:
        run.log("stopping: no new requests; finishing the running ones")
        await shutdown(app, runner, site, grace)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        run.log("server stopped")
    return url
