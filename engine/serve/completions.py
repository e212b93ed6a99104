"""POST /v1/chat/completions and /v1/completions: a checked request is submitted to the
engine and its chunks come back through a queue, answered as one JSON object or as SSE
chunks; a client that leaves cancels its generation. Each finished request is one "request"
event (see engine.serve)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from aiohttp import web

from engine.generate import EngineError, combination_id
from engine.serve.http import ApiError
from engine.serve.request import (
    ENGINE, LOGGED, STATE, ClientGone, adapter_choice, chat_messages, completion_prompt, engine_error, read_json,
    sampling_from, stream_flags,
)

DISCONNECT_POLL_S = 0.25


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await run_completion(request, await read_json(request), chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await run_completion(request, await read_json(request), chat=False)
