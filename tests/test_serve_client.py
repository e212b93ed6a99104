"""engine/serve/client.py: the client the screens use, against the real server on a
127.0.0.1 socket (the tiny model of tests/test_server.py, behind an API key)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from engine.generate import Engine
from engine.serve.client import ServerClient, ServerError
from tests.test_server import CHAT, DPO, SFT, ServerThread, alone, setup  # noqa: F401 - setup is a fixture

KEY = "s3cret"


@pytest.fixture(scope="module")
def server(setup):  # noqa: F811 - the fixture above
    ws, base, sft, dpo = setup
    engine = Engine.load(base, adapters=[sft, dpo], max_rows=2).start()
    srv = ServerThread(engine, api_key=KEY, adapters_root=ws.adapters_dir, max_tokens_limit=64)
    yield srv
    srv.stop()
    engine.close()


def test_json_calls_and_the_chat_stream(server):
    client = ServerClient(server.url, api_key=KEY)

    async def talk():
        health = await client.get("/health")
        adapters = await client.get("/v1/adapters")
        body = {"messages": CHAT, "adapter": SFT, "max_tokens": 6, "temperature": 0}
        return health, adapters, [c async for c in client.stream_chat(body)]

    health, adapters, chunks = asyncio.run(talk())
    assert health["status"] == "ok" and health["adapters"] == [SFT, DPO]
    assert adapters["default"] == f"{SFT}+{DPO}" and [a["name"] for a in adapters["data"]] == [SFT, DPO]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == alone(server, CHAT, SFT, max_tokens=6)  # the same reply as the engine alone
    assert chunks[-1]["choices"] == [] and 1 <= chunks[-1]["usage"]["completion_tokens"] <= 6  # include_usage


def test_refusals_carry_the_servers_message_and_status(server):
    async def refused(client: ServerClient, call):
        with pytest.raises(ServerError) as e:
            await call(client)
        return e.value

    async def stream(client: ServerClient, body: dict):
        return [c async for c in client.stream_chat(body)]

    wrong_key = asyncio.run(refused(ServerClient(server.url, api_key="wrong"), lambda c: c.get("/v1/models")))
    assert (wrong_key.status, wrong_key.message) == (401, "incorrect API key")
    too_long = asyncio.run(refused(ServerClient(server.url, api_key=KEY),
                                   lambda c: stream(c, {"messages": CHAT, "max_tokens": 65})))
    assert too_long.status == 400 and "'max_tokens' is 65, over this server's limit of 64" in too_long.message
    unmount = asyncio.run(refused(ServerClient(server.url, api_key=KEY),
                                  lambda c: c.request("DELETE", "/v1/adapters/nope")))
    assert unmount.status == 404 and "nope" in unmount.message


def test_a_server_that_is_not_there():
    with socket.socket() as s:  # a port nothing listens on (bound, never listened, closed)
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ServerError) as e:
        asyncio.run(ServerClient(url).get("/health"))
    assert e.value.status is None and e.value.message.startswith(f"cannot reach {url}: ")
