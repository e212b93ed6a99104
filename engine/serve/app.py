"""The aiohttp application: its routes, the API-key and error middleware, and the adapter,
model and health endpoints (the completions are engine/serve/completions.py)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path, PurePath
from typing import Any, Callable

from aiohttp import web

from engine import adapters as A
from engine.errors import HumanizerError
from engine.generate import BASE, Engine
from engine.serve.completions import chat_completions, completions
from engine.serve.http import ApiError, Limits
from engine.serve.request import ENGINE, LIMITS, LOGGED, STATE, ClientGone, engine_error, error_response, read_json
from engine.serve.settings import (
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_BODY,
    DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS_LIMIT,
)

log = logging.getLogger("humanizer.server")


# --- adapters over HTTP --------------------------------------------------------------------


def adapter_json(engine: Engine, name: str, info) -> dict:
    parent = (info.parent or {}).get("name") if info is not None else None
    return {
        "name": name,
        "object": "adapter",
        "path": str(info.path) if info is not None else None,
        "method": getattr(info, "method", None),
        "is_delta": bool(info is not None and info.is_delta),
        "parent": parent,
        "rank": getattr(info, "rank", None),
        "scale": getattr(info, "scale", None),
        "num_layers": getattr(info, "num_layers", None),
        "keys": getattr(info, "keys", None),
        "base": (getattr(info, "base", None) or {}).get("name"),
        "fingerprint": getattr(info, "fingerprint", None),
        "stacked_on": getattr(info, "stacked_on", None),  # the mounted adapter a delta is bound to
        # every set of weights it applies (a combined adapter's sources too): what a client must not mount twice
        "holds": sorted(A.weight_fingerprints(info)) if info is not None else [],
        "in_use": engine.in_use(name),
    }


def safe_adapter_path(root: Path | None, spec) -> Path:
    """The adapter folder `spec` names, which must lie inside `root` (the workspace's adapters/):
    relative to it (or absolute inside it), no '..', and no symlink leading out of it."""
    if root is None:
        raise ApiError(403, "mounting over HTTP is disabled on this server (it has no adapters folder)",
                       param="path", code="path_not_allowed")
    if not isinstance(spec, str) or not spec.strip():
        raise ApiError(400, "'path' must be the name of an adapter folder in the workspace's adapters/",
                       param="path", code="invalid_type" if not isinstance(spec, str) else "invalid_value")
    if "\x00" in spec or "\\" in spec or spec.startswith("~"):
        raise ApiError(403, f"adapter path '{spec}' is not allowed", param="path", code="path_not_allowed")
    p = PurePath(spec)
    if ".." in p.parts:
        raise ApiError(403, f"adapter path '{spec}' is not allowed: '..' is refused; name a folder inside {root}",
                       param="path", code="path_not_allowed")
    real_root = root.resolve()
    cand = Path(spec) if p.is_absolute() else root / spec
    real = cand.resolve()
    if real == real_root or not real.is_relative_to(real_root):
        raise ApiError(403, f"adapter path '{spec}' is outside the workspace's adapters folder {root} "
                       "(only folders inside it can be mounted over HTTP)", param="path", code="path_not_allowed")
    if not real.is_dir():
        raise ApiError(404, f"no adapter folder '{spec}' in {root}", param="path", code="adapter_not_found")
    for f in (A.ADAPTER_FILE, A.CONFIG_FILE):  # a file linked out of the folder tree is the same escape
        if (real / f).is_symlink() and not (real / f).resolve().is_relative_to(real_root):
            raise ApiError(403, f"adapter path '{spec}' is not allowed: its {f} is a link to a file outside the "
                           f"workspace's adapters folder {root} (copy the file in instead)", param="path",
                           code="path_not_allowed")
    return real


async def list_adapters(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    root = request.app[STATE]["adapters_root"]
    return web.json_response({
        "object": "list",
        "data": [adapter_json(engine, n, i) for n, i in engine.mounted().items()],
        "models": engine.model_ids(),
        "default": engine.deepest_stack(),  # the deepest real stack, e.g. for a chat's default choice
        "adapters_dir": str(root) if root else None,
    })


async def mount_adapter(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    state = request.app[STATE]
    body = await read_json(request)
    path = safe_adapter_path(state["adapters_root"], body.get("path"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "'name' must be a string", param="name", code="invalid_type")
    loop = asyncio.get_running_loop()
    try:
        info = await loop.run_in_executor(None, engine.mount, path, name or None)
    except HumanizerError as e:
        raise engine_error(e) from None
    state["emit"]("log", message=f"mounted adapter '{name or info.name}' from {path}")
    out = adapter_json(engine, name or info.name, info)
    out["models"] = engine.model_ids()
    return web.json_response(out, status=201)


async def unmount_adapter(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = request.match_info.get("name")
    if name is None:
        body = await read_json(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'name' (the mounted adapter to unmount) is required", param="name",
                           code="missing_required_parameter")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, engine.unmount, name)
    except HumanizerError as e:
        raise engine_error(e) from None
    request.app[STATE]["emit"]("log", message=f"unmounted adapter '{name}'")
    return web.json_response({"id": name, "object": "adapter", "deleted": True, "models": engine.model_ids()})


# --- the other endpoints -------------------------------------------------------------------


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    created = int(request.app[STATE]["started"])
    data = [{"id": c, "object": "model", "created": created, "owned_by": "humanizer", "root": engine.name,
             "adapters": [] if c == BASE else c.split("+")} for c in engine.model_ids()]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    state = request.app[STATE]
    return web.json_response({
        "status": "stopping" if state["stopping"] else "ok",
        "model": engine.name,
        "adapters": list(engine.mounted()),
        "uptime_s": round(time.time() - state["started"], 1),
        **engine.stats(),
    })


# --- the app ---------------------------------------------------------------------------------


def _auth_ok(request: web.Request, key: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # aiohttp keeps header bytes that are not UTF-8 as surrogates: compare them as the bytes sent
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                                              key.encode())


def _middleware(api_key: str | None):
    @web.middleware
    async def middleware(request: web.Request, handler):
        state = request.app[STATE]
        try:
            if api_key and request.path != "/health" and not _auth_ok(request, api_key):
                given = "Authorization" in request.headers
                raise ApiError(401, "incorrect API key" if given else
                               "missing API key: send the header 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
            return await handler(request)
        except ApiError as e:
            err = e
        except ClientGone:
            return web.Response(status=499)  # nobody reads it
        except web.HTTPException as e:
            if e.status < 400:
                raise
            msg = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"method {request.method} is not allowed on {request.path}",
                   413: "request body is over the size limit"}.get(e.status, e.reason)
            err = ApiError(e.status, msg, code={404: "not_found", 405: "method_not_allowed",
                                                413: "request_too_large"}.get(e.status))
        except HumanizerError as e:
            err = engine_error(e)
        except Exception as e:  # noqa: BLE001 - the server stays up
            log.exception("unhandled error on %s %s", request.method, request.path)
            err = ApiError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error")
        if request.path in ("/v1/chat/completions", "/v1/completions") and not request.get(LOGGED):
            state["emit"]("request", id=None, adapter=None, endpoint=request.path, status="error",
                          http_status=err.status, message=err.message, prompt_tokens=0, completion_tokens=0,
                          latency_s=0.0, tokens_per_second=0.0)
        return error_response(err)

    return middleware


def create_app(engine: Engine, *, api_key: str | None = None, adapters_root: Path | None = None,
               max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT, default_max_tokens: int = DEFAULT_MAX_TOKENS,
               max_body: int = DEFAULT_MAX_BODY, emit: Callable[..., Any] | None = None,
               header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
               max_connections: int | None = None,
               max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> web.Application:
    """The aiohttp application. `emit(type, **fields)` receives "request" and "log" events
    (e.g. Run.emit). `adapters_root`: the only folder POST /v1/adapters may mount from.
    The timeouts (seconds) and `max_connections` (None: half the open-file limit, at most 512)
    bound what a stalled or flooding client can hold; start_site applies them."""
    if max_tokens_limit < 1:
        raise HumanizerError("--max-tokens-limit must be at least 1")
    if max_prompt_tokens < 1:
        raise HumanizerError("--max-prompt-tokens must be at least 1")
    limits = Limits(header_timeout=header_timeout, body_timeout=body_timeout, keepalive_timeout=keepalive_timeout,
                    max_connections=max_connections,
                    notify=(lambda m: emit("log", message=m)) if emit else (lambda m: log.warning("%s", m)))
    app = web.Application(middlewares=[_middleware(api_key)], client_max_size=max_body)
    app[LIMITS] = limits
    app[ENGINE] = engine.start()
    app[STATE] = {
        "max_body": max_body,
        "max_tokens_limit": int(max_tokens_limit),
        "max_prompt_tokens": int(max_prompt_tokens),
        "default_max_tokens": int(default_max_tokens),
        "adapters_root": Path(adapters_root) if adapters_root else None,
        "emit": emit or (lambda *a, **k: None),
        "stopping": False,
        "started": time.time(),
        "inflight": 0,
    }
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/adapters", list_adapters)
    app.router.add_post("/v1/adapters", mount_adapter)
    app.router.add_delete("/v1/adapters", unmount_adapter)
    app.router.add_delete("/v1/adapters/{name}", unmount_adapter)
    return app
