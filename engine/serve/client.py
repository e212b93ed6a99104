"""The async client for this server's OpenAI-compatible API, as the screens use it: JSON
calls (health, adapters, mount) and the SSE stream of a chat completion. aiohttp, no
Textual: the engine owns talking to its own server; a refusal is a ServerError carrying the
server's OpenAI error message and HTTP status."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from engine.errors import ServerError

HTTP_TIMEOUT_S = 5.0
STREAM_READ_TIMEOUT_S = 300.0  # between two chunks of a stream: a slow CPU prefill of a long prompt


def _error_message(data, status: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message") or f"HTTP {status}")
    return f"HTTP {status}"


class ServerClient:
    """Async calls to the server (one aiohttp session per call: cheap on loopback, and
    nothing to close when a screen goes away)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = HTTP_TIMEOUT_S):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def request(self, method: str, path: str, body: dict | None = None) -> dict:
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
                async with session.request(method, self.url + path, json=body, headers=self._headers()) as r:
                    try:
                        data = await r.json(content_type=None)
                    except ValueError:
                        data = None
                    if r.status >= 400:
                        raise ServerError(_error_message(data, r.status), r.status)
                    return data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ServerError(f"cannot reach {self.url}: {type(e).__name__} {e}".strip()) from None

    async def get(self, path: str) -> dict:
        return await self.request("GET", path)

    async def stream_chat(self, body: dict) -> AsyncIterator[dict]:
        """POST /v1/chat/completions with stream: yields each chunk object until [DONE].
        Cancelling the consumer closes the connection, which stops the generation."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=STREAM_READ_TIMEOUT_S)
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(self.url + "/v1/chat/completions", json=body,
                                        headers=self._headers()) as r:
                    if r.status >= 400:
                        try:
                            data = await r.json(content_type=None)
                        except ValueError:
                            data = None
                        raise ServerError(_error_message(data, r.status), r.status)
                    try:
                        async for raw in r.content:
                            line = raw.decode("utf-8", "replace").strip()
                            if not line.startswith("data:"):
                                continue
                            data = line[5:].strip()
                            if data == "[DONE]":
                                return
                            try:
                                obj = json.loads(data)
                            except ValueError:
                                continue
                            if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
                                raise ServerError(_error_message(obj, 500))
                            yield obj
                    finally:
                        r.close()  # unread: drop the connection so the server frees the slot now
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ServerError(f"lost the server at {self.url}: {type(e).__name__} {e}".strip()) from None
