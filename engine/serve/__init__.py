"""An OpenAI-compatible HTTP server (aiohttp) over the batched multi-adapter engine
(engine/generate.py), and the client the screens talk to it with.

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
errors, the port check) is engine/serve/http.py.

Each finished request is reported to `emit("request", id, adapter, prompt_tokens,
completion_tokens, latency_s, tokens_per_second, status, ...)` (the serve command
records these as run events for the Server screen).

One job per module:

    settings.py     defaults (host, port, limits) and the loopback rule; no aiohttp, no MLX
    http.py         the connection layer: timeouts, connection cap, ApiError, check_port
    request.py      reading and checking a request body: sampling, messages, prompt, adapter
    completions.py  the two completion endpoints: JSON or SSE, disconnects, request events
    app.py          create_app: routes, API-key and error middleware, adapters/models/health
    server.py       serve(): load, bind, run until a signal, shut down gracefully
    client.py       ServerClient, the async client the screens use (no Textual)

The names below are importable from `engine.serve` itself, loaded on first use, so that
`engine.serve.settings` stays light (the CLI's --help and the forms read it)."""

from __future__ import annotations

import importlib

_WHERE = {
    "ApiError": "http", "check_port": "http", "default_max_connections": "http",
    "create_app": "app", "safe_adapter_path": "app",
    "check_bind": "server", "serve": "server", "shutdown": "server", "start_site": "server",
    "ENGINE": "request", "LIMITS": "request", "STATE": "request",
    "ServerClient": "client", "ServerError": "client",
    "DEFAULT_HOST": "settings", "DEFAULT_PORT": "settings", "DEFAULT_MAX_TOKENS_LIMIT": "settings",
    "is_loopback": "settings",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'engine.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.serve.{_WHERE[name]}"), name)


__all__ = sorted(_WHERE)
