"""What a request asks for: its JSON body read within the limits, checked field by field
(sampling, stream flags, chat messages, a completion prompt, the adapters it picks), every
refusal an ApiError naming the field. Also the keys the handlers share on the app."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from engine.errors import HumanizerError
from engine.generate import Engine, EngineError, SamplingParams, combination_id
from engine.serve.http import ApiError, Limits, one_line

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4

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
