"""An OpenAI-compatible HTTP server (aiohttp) over the batched multi-adapter engine.

Endpoints:
    POST   /v1/chat/completions   messages -> reply; "stream": true for SSE chunks
    POST   /v1/completions        prompt -> text; "stream": true for SSE chunks
    GET    /v1/models             "base" and the real stacks: each adapter on its chain of parents ("sft",
                                  "sft+dpo"), never the same weights twice
    GET    /health                liveness and load (no API key needed)
    GET    /v1/adapters           the mounted adapters, the model ids and "default" (the deepest stack)
    POST   /v1/adapters           {"path": "<folder under the workspace's adapters/>", "name": optional}
                                  (refused: links out of adapters/, a config that does not match its weights)
    DELETE /v1/adapters/{name}    unmount (refused while a request uses it)

A request picks its adapters with the body field "adapter" ("sft", "sft+dpo", "base"),
or with "model" set to one of the /v1/models ids (for clients that cannot add fields);
"adapter" wins when both are given. Sampling: temperature (default 1.0), top_p,
max_tokens (or max_completion_tokens), stop, seed. Streams end with "data: [DONE]";
"stream_options": {"include_usage": true} adds a last chunk with the usage. A prompt of more
than `max_prompt_tokens` tokens (serve --max-prompt-tokens, default 4096) is refused with a
400 (code "max_prompt_tokens_exceeded", param "messages" or "prompt").

Errors are OpenAI error objects {"error": {"message", "type", "param", "code"}} with a
4xx status (5xx only for a failure of ours); the server keeps serving after every one.
With an API key, every endpoint but /health needs "Authorization: Bearer <key>". A
non-loopback bind address without a key is refused at start. The connection layer (header,
body and keep-alive timeouts, a cap on open connections, malformed HTTP answered as OpenAI
errors, the port check) is engine/server_http.py.

Each finished request is reported to `emit("request", id, adapter, prompt_tokens,
completion_tokens, latency_s, tokens_per_second, status, ...)` (the serve command
records these as run events for the Server screen)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import signal
import time
from pathlib import Path, PurePath
from typing import Any, Callable

from aiohttp import web

from engine import adapters as A
from engine.errors import HumanizerError
from engine.generate import BASE, Engine, EngineError, SamplingParams, combination_id
from engine.server_http import ApiError, GuardedSite, Limits, check_port, default_max_connections, one_line
from engine.server_settings import (  # noqa: F401 (re-exported: engine.server.DEFAULT_PORT etc.)
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_HOST, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_BODY,
    DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS_LIMIT, DEFAULT_PORT, is_loopback,
)

log = logging.getLogger("humanizer.server")

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4
DISCONNECT_POLL_S = 0.25

ENGINE = web.AppKey("engine", Engine)
STATE = web.AppKey("state", dict)
LIMITS = web.AppKey("limits", Limits)
LOGGED = web.RequestKey("humanizer_logged", bool) if hasattr(web, "RequestKey") else "humanizer_logged"


class ClientGone(Exception):
    """The client closed the connection while its request was being served."""


def error_response(err: ApiError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    resp = web.json_response(err.body(), status=err.status, headers=headers)
    if err.status == 408:  # the rest of a late body is not waited for
        resp.force_close()
    return resp


def engine_error(e: HumanizerError) -> ApiError:
    msg = e.message + (f" ({e.hint})" if e.hint else "")
    if isinstance(e, EngineError):
        return ApiError(e.status, msg, param=e.param, code=e.code)
    return ApiError(400, msg)


# --- request parsing ---------------------------------------------------------------------


async def read_json(request: web.Request) -> dict:
    limit = request.app[STATE]["max_body"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body of {request.content_length} bytes is over the limit of {limit} bytes",
                       code="request_too_large")
    timeout = request.app[LIMITS].body_timeout
    try:
        raw = await asyncio.wait_for(request.read(), timeout)
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large") from None
    except asyncio.TimeoutError:  # a stalled client must not hold its connection forever
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s (the server's --body-timeout); "
                       "send the whole request at once", code="request_timeout") from None
    except web.RequestPayloadError as e:  # a broken chunked or compressed body
        raise ApiError(400, f"could not read the request body: {one_line(e)}", code="invalid_body") from None
    except ConnectionError:
        raise ClientGone() from None
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"could not parse the JSON body: {e}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply to parse", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object", code="invalid_json")
    return body


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v):
        raise ApiError(400, f"'{name}' must be a number, not {type(v).__name__}", param=name, code="invalid_type")
    if not (lo <= v <= hi):
        raise ApiError(400, f"'{name}' must be between {lo} and {hi} (got {v})", param=name, code="invalid_value")
    return float(v)


def sampling_from(body: dict, limit: int, default_max_tokens: int) -> SamplingParams:
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:  # only the most likely token: greedy
        temperature = 0.0
        top_p = 1.0
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = min(default_max_tokens, limit)
    elif not _is_int(max_tokens):
        raise ApiError(400, f"'{name}' must be an integer, not {type(max_tokens).__name__}", param=name,
                       code="invalid_type")
    elif max_tokens < 1:
        raise ApiError(400, f"'{name}' must be at least 1 (got {max_tokens})", param=name, code="invalid_value")
    elif max_tokens > limit:
        raise ApiError(400, f"'{name}' is {max_tokens}, over this server's limit of {limit}", param=name,
                       code="max_tokens_exceeded")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP:
            raise ApiError(400, f"'stop' takes at most {MAX_STOP} strings (got {len(stop)})", param="stop",
                           code="invalid_value")
    else:
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop", code="invalid_type")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, f"'seed' must be an integer, not {type(seed).__name__}", param="seed", code="invalid_type")
    if seed is not None and seed < 0:
        seed = seed % (1 << 64)
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, "only 'n': 1 is supported", param="n", code="invalid_value")
    for flag in ("logprobs", "top_logprobs", "echo", "tools", "functions", "suffix"):
        if body.get(flag):
            raise ApiError(400, f"'{flag}' is not supported by this server", param=flag,
                           code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "'best_of' is not supported by this server", param="best_of",
                       code="unsupported_parameter")
    return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=int(max_tokens), stop=stop, seed=seed)


def stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean, not {type(stream).__name__}", param="stream",
                       code="invalid_type")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' must be an object", param="stream_options", code="invalid_type")
        if not stream:
            raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options",
                           code="invalid_value")
        include_usage = opts.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise ApiError(400, "'stream_options.include_usage' must be a boolean",
                           param="stream_options.include_usage", code="invalid_type")
    return stream, include_usage


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise ApiError(400, f"'messages' must be an array, not {type(messages).__name__}", param="messages",
                       code="invalid_type")
    if not messages:
        raise ApiError(400, "'messages' must not be empty", param="messages", code="invalid_value")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object", param=where, code="invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"'{where}.role' is {role!r}; it must be one of {', '.join(ROLES)}",
                           param=f"{where}.role", code="invalid_value")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ApiError(400, f"'{where}.content[{j}]' must be a text part "
                                   "({\"type\": \"text\", \"text\": ...}); this model reads only text",
                                   param=f"{where}.content", code="invalid_value")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ApiError(400, f"'{where}.content' must be a string or an array of text parts",
                           param=f"{where}.content", code="invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def completion_prompt(body: dict, engine: Engine) -> list[int]:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = engine.encode(prompt) if prompt else []
    elif isinstance(prompt, list) and all(_is_int(t) for t in prompt):
        vocab = getattr(getattr(engine.model, "args", None), "vocab_size", None)
        if vocab and any(t < 0 or t >= vocab for t in prompt):
            raise ApiError(400, f"token ids must be in [0, {vocab})", param="prompt", code="invalid_value")
        tokens = list(prompt)
    elif isinstance(prompt, list):
        raise ApiError(400, "one prompt per request: a string or an array of token ids", param="prompt",
                       code="invalid_value")
    else:
        raise ApiError(400, f"'prompt' must be a string, not {type(prompt).__name__}", param="prompt",
                       code="invalid_type")
    if not tokens:
        raise ApiError(400, "'prompt' is empty", param="prompt", code="invalid_value")
    return tokens


def adapter_choice(body: dict, engine: Engine) -> tuple[str, ...]:
    """The adapters a request asks for: "adapter" if given, else a /v1/models id in "model"."""
    adapter = body.get("adapter")
    if adapter is not None:
        if not isinstance(adapter, str):
            raise ApiError(400, f"'adapter' must be a string such as \"base\", \"a\" or \"a+b\", not "
                           f"{type(adapter).__name__}", param="adapter", code="invalid_type")
        try:
            return engine.resolve(adapter)
        except EngineError as e:
            raise engine_error(e) from None
    model = body.get("model")
    if model is None or model in ("", engine.name, "default"):
        return ()
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, not {type(model).__name__}", param="model",
                       code="invalid_type")
    try:
        names = engine.resolve(model)
    except EngineError:
        names = None
    if names is None or combination_id(names) not in engine.model_ids():
        raise ApiError(404, f"the model '{model}' does not exist; models here: {', '.join(engine.model_ids())}",
                       param="model", code="model_not_found")
    return names


# --- generation over HTTP ------------------------------------------------------------------


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _next_chunk(queue: asyncio.Queue, request: web.Request):
    """The next chunk of a generation, watching the client: ClientGone once it has left
    (checked at every chunk, and every DISCONNECT_POLL_S while none comes)."""
    while True:
        if _client_gone(request):
            raise ClientGone()
        try:
            return await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            continue


async def run_completion(request: web.Request, body: dict, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE]
    state = request.app[STATE]
    if state["stopping"]:
        raise ApiError(503, "the server is shutting down", code="server_stopping")
    stream, include_usage = stream_flags(body)
    params = sampling_from(body, state["max_tokens_limit"], state["default_max_tokens"])
    if chat:
        messages = chat_messages(body)
    names = adapter_choice(body, engine)
    try:
        prompt = engine.encode_chat(messages) if chat else completion_prompt(body, engine)
    except EngineError as e:
        raise engine_error(e) from None
    except ApiError:
        raise
    except Exception as e:  # a template that cannot render these messages
        raise ApiError(400, f"could not apply the chat template: {e}", param="messages", code="invalid_value") from None
    if engine.context_length:
        room = engine.context_length - len(prompt)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(prompt)} tokens; this model's context is "
                           f"{engine.context_length}", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        params.max_tokens = min(params.max_tokens, room)
    limit = state["max_prompt_tokens"]
    if len(prompt) > limit:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens, over this server's limit of {limit} "
                       "(--max-prompt-tokens); shorten the prompt or split the text into several requests",
                       param="messages" if chat else "prompt", code="max_prompt_tokens_exceeded")
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    model_id = combination_id(names)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def on_chunk(chunk):
        loop.call_soon_threadsafe(queue.put_nowait, chunk)

    try:
        gen = engine.submit(prompt, list(names), params, on_chunk=on_chunk, request_id=rid)
    except EngineError as e:
        raise engine_error(e) from None
    created = int(time.time())
    status = "error"
    state["inflight"] += 1
    try:
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
            await resp.prepare(request)
            try:
                status = await _stream(request, resp, gen, queue, chat, rid, created, model_id, include_usage)
            except (ConnectionError, ClientGone):
                status = "disconnected"
            return resp
        final = None
        while final is None:
            chunk = await _next_chunk(queue, request)
            if chunk.finish_reason is not None:
                final = chunk
        status = final.finish_reason
        if status == "error":
            raise ApiError(500, f"generation failed: {final.error}", code="generation_failed")
        if status == "cancelled":
            raise ApiError(503, "the request was cancelled: the server is shutting down", code="server_stopping")
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": gen.text},
                      "finish_reason": status, "logprobs": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": gen.text, "finish_reason": status, "logprobs": None}
            obj = "text_completion"
        return web.json_response({"id": rid, "object": obj, "created": created, "model": model_id,
                                  "choices": [choice], "usage": gen.usage(), "adapter": model_id,
                                  "system_fingerprint": engine.fingerprint})
    except (ClientGone, asyncio.CancelledError):
        status = "disconnected"
        raise
    finally:
        state["inflight"] -= 1
        if not gen.done:
            gen.cancel()
        request[LOGGED] = True
        t = gen.timing()
        state["emit"]("request", id=rid, adapter=model_id, endpoint=request.path, stream=stream,
                      prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                      latency_s=round(t["latency_s"], 4), ttft_s=None if t["ttft_s"] is None else round(t["ttft_s"], 4),
                      tokens_per_second=round(t["tokens_per_second"], 2), status=status)


async def _stream(request, resp, gen, queue, chat, rid, created, model_id, include_usage) -> str:
    """Write the SSE chunks of `gen` to the prepared `resp`; returns the finish status."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk_obj(text: str | None, finish: str | None, first: bool = False) -> dict:
        if chat:
            delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice],
                "system_fingerprint": gen.engine.fingerprint}

    if chat:
        await resp.write(_sse(chunk_obj("", None, first=True)))
    while True:
        chunk = await _next_chunk(queue, request)
        if chunk.text:
            await resp.write(_sse(chunk_obj(chunk.text, None)))
        if chunk.finish_reason is None:
            continue
        status = chunk.finish_reason
        if status in ("stop", "length"):
            await resp.write(_sse(chunk_obj(None if chat else "", status)))
        else:
            err = ApiError(500 if status == "error" else 503,
                           f"generation failed: {chunk.error}" if status == "error"
                           else "the request was cancelled: the server is shutting down",
                           code="generation_failed" if status == "error" else "server_stopping")
            await resp.write(_sse(err.body()))
        if include_usage:
            await resp.write(_sse({"id": rid, "object": obj, "created": created, "model": model_id,
                                   "choices": [], "usage": gen.usage()}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return status


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await run_completion(request, await read_json(request), chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await run_completion(request, await read_json(request), chat=False)


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


# --- serving ----------------------------------------------------------------------------------


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


__all__ = ["ApiError", "DEFAULT_HOST", "DEFAULT_PORT", "check_bind", "check_port", "create_app",
           "default_max_connections", "is_loopback", "safe_adapter_path", "serve", "shutdown", "start_site"]
