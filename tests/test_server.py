"""engine/serve/: the OpenAI-compatible server, in-process on 127.0.0.1 (a free port),
driven by the official `openai` client and by raw HTTP for the error cases."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from engine.errors import HumanizerError
from engine.generate import Engine
from engine.serve import check_bind, create_app, is_loopback, start_site
from engine.workspace import Workspace
from tests.test_generate import DPO, SFT, make_adapters, make_lively_llama, smollm2_dir
from tests.tiny import make_tiny_llama

STACK = f"{SFT}+{DPO}"
CHAT = [{"role": "system", "content": "You rewrite drafts."}, {"role": "user", "content": "The quick brown fox"}]
MAX_BODY = 64 * 1024


class ServerThread:
    """The app on 127.0.0.1:<free port>, its event loop in a background thread."""

    def __init__(self, engine: Engine, **kw):
        self.events: list[dict] = []
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.app = create_app(engine, emit=lambda type, **f: self.events.append({"type": type, **f}), **kw)
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.runner, self.site, self.url = self.loop.run_until_complete(start_site(self.app, "127.0.0.1", 0))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(30)
        self.port = int(self.url.rsplit(":", 1)[1])

    def client(self, api_key: str = "unused", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def call(server, method: str, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON body) of one raw HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def assert_error(status_body, status: int, code: str | None = None, param: str | None = None):
    got, body = status_body
    assert got == status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    home = tmp_path_factory.mktemp("srv") / "home"
    ws = Workspace.open(home)
    base = make_lively_llama(home / "models" / "tiny")
    sft, dpo = make_adapters(base, ws.adapters_dir)
    return ws, base, sft, dpo


@pytest.fixture(scope="module")
def server(setup):
    ws, base, sft, dpo = setup
    engine = Engine.load(base, adapters=[sft, dpo], max_rows=4).start()
    srv = ServerThread(engine, adapters_root=ws.adapters_dir, max_tokens_limit=64, max_body=MAX_BODY)
    yield srv
    srv.stop()
    engine.close()


def alone(server, messages, adapter, max_tokens=16) -> str:
    """The reply to a chat request served alone by the same engine (no HTTP)."""
    eng = server.engine
    return eng.generate(eng.encode_chat(messages), adapter, temperature=0, max_tokens=max_tokens, timeout=60).text


# --- the openai client ------------------------------------------------------------------------


def test_models_and_health(server):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == ["base", SFT, STACK]  # the DPO delta appears only stacked on its parent
    status, body = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["adapters"] == [SFT, DPO]
    assert body["mode"] == "batched" and body["max_rows"] == 4


def test_chat_non_streaming(server):
    r = server.client().chat.completions.create(model="base", messages=CHAT, temperature=0, max_tokens=16)
    assert r.object == "chat.completion" and r.model == "base"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == alone(server, CHAT, "base")
    assert choice.finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == len(server.engine.encode_chat(CHAT))
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_adapter_by_extra_body_and_by_model_id(server):
    c = server.client()
    by_body = c.chat.completions.create(model="anything", messages=CHAT, temperature=0, max_tokens=16,
                                        extra_body={"adapter": f"{DPO}+{SFT}"})  # any order
    by_id = c.chat.completions.create(model=STACK, messages=CHAT, temperature=0, max_tokens=16)
    sft = c.chat.completions.create(model=SFT, messages=CHAT, temperature=0, max_tokens=16)
    base = c.chat.completions.create(model="base", messages=CHAT, temperature=0, max_tokens=16)
    assert by_body.model == by_id.model == STACK
    assert by_body.choices[0].message.content == by_id.choices[0].message.content == alone(server, CHAT, STACK)
    assert sft.choices[0].message.content == alone(server, CHAT, SFT)
    assert len({by_id.choices[0].message.content, sft.choices[0].message.content,
                base.choices[0].message.content}) == 3
    # the served model's own name and "base" in the body mean the model alone
    named = c.chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=16)
    plain = c.chat.completions.create(model=STACK, messages=CHAT, temperature=0, max_tokens=16,
                                      extra_body={"adapter": "base"})
    assert named.choices[0].message.content == plain.choices[0].message.content == base.choices[0].message.content


def test_chat_streaming_with_usage(server):
    c = server.client()
    chunks = list(c.chat.completions.create(model=SFT, messages=CHAT, temperature=0, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == alone(server, CHAT, SFT)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(ch.model == SFT and ch.object == "chat.completion.chunk" for ch in chunks)
    # without include_usage: no usage chunk; the raw stream ends with [DONE]
    chunks = list(c.chat.completions.create(model=SFT, messages=CHAT, temperature=0, max_tokens=4, stream=True))
    assert all(ch.choices for ch in chunks)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "max_tokens": 3, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    raw = resp.read().decode()
    assert raw.rstrip().endswith("data: [DONE]") and raw.count("data: ") >= 3
    conn.close()


def test_completions(server):
    c = server.client()
    r = c.completions.create(model=SFT, prompt="Low-rank adapters are", temperature=0, max_tokens=12)
    eng = server.engine
    want = eng.generate("Low-rank adapters are", SFT, temperature=0, max_tokens=12).text
    assert r.object == "text_completion" and r.choices[0].text == want and r.usage.completion_tokens == 12
    parts = list(c.completions.create(model="base", prompt="Low-rank adapters are", temperature=0, max_tokens=12,
                                      stream=True, stream_options={"include_usage": True},
                                      extra_body={"adapter": SFT}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == want
    assert parts[-1].usage.prompt_tokens == len(eng.encode("Low-rank adapters are"))
    ids = c.completions.create(model="base", prompt=eng.encode("Low-rank adapters are"), temperature=0,
                               max_tokens=12, extra_body={"adapter": SFT})
    assert ids.choices[0].text == want


def test_sampling_options(server):
    c = server.client()
    full = alone(server, CHAT, SFT, 24)
    stop = next(full[i:i + 2] for i in range(3, len(full) - 2) if full[i:i + 2].strip())
    r = c.chat.completions.create(model=SFT, messages=CHAT, temperature=0, max_tokens=24, stop=[stop, "zzzz"])
    assert r.choices[0].message.content == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = c.chat.completions.create(model=SFT, messages=CHAT, temperature=0, max_tokens=24, stop=stop, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == full[:full.index(stop)]
    seeded = [c.chat.completions.create(model=SFT, messages=CHAT, temperature=1.0, top_p=0.9, seed=11,
                                        max_tokens=16).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    top0 = c.chat.completions.create(model=SFT, messages=CHAT, temperature=1.0, top_p=0, max_tokens=16)
    assert top0.choices[0].message.content == alone(server, CHAT, SFT)


def test_concurrent_clients_isolated(server):
    """Nine clients at once (more than the 4 rows), mixed adapters, streaming and not:
    each reply equals the same request served alone."""
    prompts = ["The quick brown fox", "What is the capital of France?", "Low-rank adapters",
               "Humanizer Studio rewrites drafts", "café naïve résumé"]
    jobs = [([{"role": "user", "content": prompts[i % 5]}], ["base", SFT, STACK][i % 3], i % 2 == 0)
            for i in range(9)]
    want = [alone(server, m, a, 20) for m, a, _ in jobs]

    def one(job):
        messages, adapter, stream = job
        c = server.client()
        if stream:
            out = c.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=20,
                                            stream=True, extra_body={"adapter": adapter})
            return "".join(ch.choices[0].delta.content or "" for ch in out if ch.choices)
        return c.chat.completions.create(model=adapter, messages=messages, temperature=0,
                                         max_tokens=20).choices[0].message.content

    with ThreadPoolExecutor(9) as pool:
        got = list(pool.map(one, jobs))
    assert got == want


# --- errors --------------------------------------------------------------------------------


def _good(server):
    status, body = call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


BAD_REQUESTS = [
    # (path, body or raw bytes, status, code, param)
    ("/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/chat/completions", b"", 400, "invalid_json", None),
    ("/v1/chat/completions", [1, 2], 400, "invalid_json", None),
    ("/v1/chat/completions", {"model": "base"}, 400, "missing_required_parameter", "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "invalid_type", "messages"),
    ("/v1/chat/completions", {"messages": ["hello"]}, 400, "invalid_type", "messages[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value",
     "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "invalid_value", "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_type",
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "invalid_value", "messages[0].content"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, 400, "invalid_type", "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": 7}, 400, "invalid_value", "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "top_p": True}, 400, "invalid_type", "top_p"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": "5"}, 400, "invalid_type", "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 65}, 400, "max_tokens_exceeded", "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 1000}, 400, "max_tokens_exceeded",
     "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": 5}, 400, "invalid_type", "stop"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
    ("/v1/chat/completions", {"messages": CHAT, "seed": 1.5}, 400, "invalid_type", "seed"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, 400, "invalid_type", "stream"),
    ("/v1/chat/completions", {"messages": CHAT, "stream_options": {"include_usage": True}}, 400, "invalid_value",
     "stream_options"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 3}, 400, "invalid_value", "n"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}, 400, "unsupported_parameter", "logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "adapter": 5}, 400, "invalid_type", "adapter"),
    ("/v1/chat/completions", {"messages": CHAT, "adapter": "nope"}, 400, "adapter_not_found", "adapter"),
    ("/v1/chat/completions", {"messages": CHAT, "adapter": f"{SFT}+nope"}, 400, "adapter_not_found", "adapter"),
    ("/v1/chat/completions", {"messages": CHAT, "adapter": DPO}, 400, "adapter_needs_parent", "adapter"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4o"}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"messages": CHAT, "model": DPO}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"messages": CHAT, "model": 7}, 400, "invalid_type", "model"),
    ("/v1/completions", {"model": "base"}, 400, "missing_required_parameter", "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": ["one", "two"]}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": {"text": "hi"}}, 400, "invalid_type", "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 10 ** 9]}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": "hi " * 600}, 400, "context_length_exceeded", "prompt"),
]


@pytest.mark.parametrize("path,body,status,code,param", BAD_REQUESTS,
                         ids=[f"{i}-{c}-{p}" for i, (_, _, _, c, p) in enumerate(BAD_REQUESTS)])
def test_bad_request_is_an_openai_error(server, path, body, status, code, param):
    raw = body if isinstance(body, bytes) else None
    assert_error(call(server, "POST", path, None if raw is not None else body, raw=raw), status, code, param)
    _good(server)  # still serving


def test_other_http_errors(server):
    assert_error(call(server, "POST", "/v1/chat/completions", raw=b'{"messages": "' + b"x" * MAX_BODY + b'"}'),
                 413, "request_too_large")
    assert_error(call(server, "GET", "/v1/nowhere"), 404, "not_found")
    assert_error(call(server, "GET", "/v1/chat/completions"), 405, "method_not_allowed")
    _good(server)
    # the official client raises its typed errors on them
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="over this server's limit"):
        c.chat.completions.create(model="base", messages=CHAT, max_tokens=10_000)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-4o", messages=CHAT)
    with pytest.raises(openai.BadRequestError, match="role"):
        c.chat.completions.create(model="base", messages=[{"role": "robot", "content": "x"}])
    _good(server)


def test_request_events(server):
    before = len(server.events)
    server.client().chat.completions.create(model=STACK, messages=CHAT, temperature=0, max_tokens=5)
    call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "adapter": "nope"})
    evs = [e for e in server.events[before:] if e["type"] == "request"]
    ok, bad = evs
    assert ok["adapter"] == STACK and ok["status"] == "length" and ok["completion_tokens"] == 5
    assert ok["prompt_tokens"] > 0 and ok["latency_s"] > 0 and ok["tokens_per_second"] > 0 and ok["id"]
    assert bad["status"] == "error" and bad["http_status"] == 400 and "nope" in bad["message"]


# --- auth and binding ----------------------------------------------------------------------------


def test_api_key(server):
    srv = ServerThread(server.engine, api_key="s3cret", adapters_root=None)
    try:
        assert call(srv, "GET", "/health")[0] == 200  # health needs no key
        assert_error(call(srv, "GET", "/v1/models"), 401, "invalid_api_key")
        assert_error(call(srv, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_error(call(srv, "GET", "/v1/models", headers={"Authorization": "s3cret"}), 401)
        assert_error(call(srv, "POST", "/v1/adapters", {"path": SFT}), 401)
        assert_error(call(srv, "DELETE", f"/v1/adapters/{DPO}"), 401)
        assert_error(call(srv, "POST", "/v1/chat/completions", {"messages": CHAT}), 401)
        assert call(srv, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
        with pytest.raises(openai.AuthenticationError):
            srv.client("wrong").chat.completions.create(model="base", messages=CHAT, max_tokens=2)
        r = srv.client("s3cret").chat.completions.create(model="base", messages=CHAT, max_tokens=2)
        assert r.usage.completion_tokens == 2
        # this server has no adapters folder: nothing can be mounted over HTTP
        assert_error(call(srv, "POST", "/v1/adapters", {"path": SFT}, headers={"Authorization": "Bearer s3cret"}),
                     403, "path_not_allowed")
    finally:
        srv.stop()


def test_non_loopback_without_key_is_refused(tmp_path, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(HumanizerError, match="without an API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "key")
    check_bind("127.0.0.1", None)
    from tui.cli import main

    monkeypatch.setenv("HUMANIZER_NO_FAST_BLAS", "1")  # no re-exec of the test process
    t = time.time()
    assert main(["--home", str(tmp_path / "h"), "serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert time.time() - t < 10  # refused before loading anything


# --- adapters over HTTP -----------------------------------------------------------------------------


def test_mount_and_unmount_over_http(setup, tmp_path):
    ws, base, sft, dpo = setup
    engine = Engine.load(base, max_rows=2).start()
    srv = ServerThread(engine, adapters_root=ws.adapters_dir)
    try:
        # path escapes are refused
        outside = tmp_path / "outside"
        make_adapters(base, outside)
        link = ws.adapters_dir / "sneaky"
        if not link.exists():
            link.symlink_to(outside / SFT)
        for bad in ["../models/tiny", f"{SFT}/../../models", "/etc", str(outside / SFT), "sneaky", "~/x",
                    "..", ".", ws.adapters_dir.as_posix() + "/../adapters/" + SFT]:
            assert_error(call(srv, "POST", "/v1/adapters", {"path": bad}), 403, "path_not_allowed", "path")
        assert_error(call(srv, "POST", "/v1/adapters", {"path": 5}), 400, param="path")
        assert_error(call(srv, "POST", "/v1/adapters", {}), 400, param="path")
        assert_error(call(srv, "POST", "/v1/adapters", {"path": "missing"}), 404, "adapter_not_found")
        # a delta needs its parent; an adapter for another base is refused
        assert_error(call(srv, "POST", "/v1/adapters", {"path": DPO}), 409, "adapter_needs_parent")
        other = make_tiny_llama(tmp_path / "other", seed=9)
        make_adapters(other, ws.adapters_dir, "other-sft", "other-dpo")
        err = assert_error(call(srv, "POST", "/v1/adapters", {"path": "other-sft"}), 400, "adapter_incompatible")
        assert "different weights" in err["message"]
        # mount the pair (an absolute path inside adapters/ is fine)
        status, body = call(srv, "POST", "/v1/adapters", {"path": SFT})
        assert status == 201 and body["name"] == SFT and body["method"] == "sft" and body["models"] == ["base", SFT]
        status, body = call(srv, "POST", "/v1/adapters", {"path": str(ws.adapters_dir / DPO)})
        assert status == 201 and body["is_delta"] and body["parent"] == SFT
        assert_error(call(srv, "POST", "/v1/adapters", {"path": SFT}), 409, "adapter_exists")
        assert [m.id for m in srv.client().models.list().data] == ["base", SFT, STACK]
        status, listed = call(srv, "GET", "/v1/adapters")
        assert [a["name"] for a in listed["data"]] == [SFT, DPO] and listed["models"] == ["base", SFT, STACK]
        # unmount: not while a request uses it, not the parent of a mounted delta
        stream = srv.client().chat.completions.create(model=STACK, messages=CHAT, temperature=0, max_tokens=60,
                                                      stream=True)
        next(iter(stream))
        assert_error(call(srv, "DELETE", f"/v1/adapters/{DPO}"), 409, "adapter_in_use")
        assert call(srv, "GET", "/v1/adapters")[1]["data"][1]["in_use"] == 1
        text = "".join(ch.choices[0].delta.content or "" for ch in stream)
        assert text
        assert_error(call(srv, "DELETE", f"/v1/adapters/{SFT}"), 409, "adapter_has_dependents")
        status, body = call(srv, "DELETE", f"/v1/adapters/{DPO}")
        assert status == 200 and body["deleted"] and body["models"] == ["base", SFT]
        status, body = call(srv, "DELETE", "/v1/adapters", {"name": SFT})
        assert status == 200 and body["models"] == ["base"]
        assert_error(call(srv, "DELETE", f"/v1/adapters/{SFT}"), 404, "adapter_not_found")
        assert_error(call(srv, "POST", "/v1/chat/completions", {"messages": CHAT, "adapter": SFT}), 400,
                     "adapter_not_found")
        _good(srv)
    finally:
        srv.stop()
        engine.close()


# --- disconnects ------------------------------------------------------------------------------------


def test_client_disconnect_frees_its_row(setup):
    ws, base, sft, dpo = setup
    engine = Engine.load(base, adapters=[sft], max_rows=1).start()
    step = engine._decode_step

    def slow_step():  # a slow model: a long request surely still runs when its client leaves
        time.sleep(0.01)
        step()

    engine._decode_step = slow_step
    srv = ServerThread(engine)
    try:
        for stream in (True, False):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            conn.request("POST", "/v1/chat/completions",
                         json.dumps({"messages": CHAT, "max_tokens": 4000, "stream": stream, "adapter": SFT}),
                         {"Content-Type": "application/json"})
            if stream:
                resp = conn.getresponse()
                assert resp.status == 200
                resp.fp.readline()  # the first event arrived: the request holds the only row
            else:
                deadline = time.time() + 10
                while engine.stats()["running"] == 0 and time.time() < deadline:
                    time.sleep(0.01)
            time.sleep(0.05)
            assert engine.stats()["active"] == 1
            conn.sock.shutdown(2)
            conn.close()
            # the only row comes free: another request is served
            r = srv.client().chat.completions.create(model="base", messages=CHAT, max_tokens=3, temperature=0)
            assert r.usage.completion_tokens == 3
            deadline = time.time() + 10
            while engine.stats()["active"] and time.time() < deadline:
                time.sleep(0.01)
            assert engine.stats()["active"] == 0 and engine.stats()["queued"] == 0
            gone = [e for e in srv.events if e["type"] == "request" and e["status"] == "disconnected"]
            assert gone, srv.events
            assert gone[-1]["completion_tokens"] < 4000 and gone[-1]["stream"] == stream
            srv.events.clear()
    finally:
        srv.stop()
        engine.close()


# --- the serve command -------------------------------------------------------------------------------


def test_serve_command_runs_records_and_stops_on_sigterm(setup, tmp_path):
    ws, base, sft, dpo = setup
    env = {**os.environ, "HUMANIZER_HOME": str(ws.home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--model", str(base), "--adapter", SFT, "--adapter", str(dpo),
         "--port", "0", "--max-concurrent", "2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            ev = json.loads(line)
            url = ev.get("url")
        assert url, proc.stderr.read()
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["base", SFT, STACK]
        r = c.chat.completions.create(model=STACK, messages=CHAT, max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(x) for x in out.splitlines() if x.strip()]
    req = [e for e in events if e["type"] == "request"]
    assert req and req[0]["adapter"] == STACK and req[0]["completion_tokens"] == 4
    assert {"id", "adapter", "prompt_tokens", "completion_tokens", "latency_s", "tokens_per_second",
            "status"} <= set(req[0])
    assert events[-1]["type"] == "done"
    runs = [d for d in ws.runs_dir.iterdir() if "serve" in d.name]
    job = json.loads((runs[-1] / "job.json").read_text())
    assert job["status"] == "done" and job["kind"] == "serve"
    logged = (runs[-1] / "events.jsonl").read_text()
    assert url in logged and '"type": "request"' in logged


# --- the embedded model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_served(tmp_path_factory):
    model_dir = smollm2_dir(tmp_path_factory)
    adapters = tmp_path_factory.mktemp("smolad")
    sft, dpo = make_adapters(model_dir, adapters)
    engine = Engine.load(model_dir, adapters=[sft, dpo], max_rows=4).start()
    srv = ServerThread(engine)
    try:
        c = srv.client()
        q = [{"role": "user", "content": "What is the capital of France?"}]
        r = c.chat.completions.create(model="base", messages=q, temperature=0, max_tokens=20)
        assert "Paris" in r.choices[0].message.content
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="base", messages=q, temperature=0, max_tokens=20, stream=True))
        assert streamed == r.choices[0].message.content

        def one(adapter):
            return c.chat.completions.create(model=adapter, messages=q, temperature=0,
                                             max_tokens=20).choices[0].message.content

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(one, ["base", SFT, STACK]))
        assert got == [alone(srv, q, a, 20) for a in ["base", SFT, STACK]]
    finally:
        srv.stop()
        engine.close()


def test_graceful_shutdown_ends_running_streams(setup):
    """Shutdown stops listening, gives running requests `grace` seconds, then ends them with
    an error event and [DONE], and closes the engine."""
    from engine.serve import shutdown

    ws, base, sft, dpo = setup
    engine = Engine.load(base, max_rows=2).start()
    step = engine._decode_step

    def slow_step():
        time.sleep(0.01)
        step()

    engine._decode_step = slow_step
    srv = ServerThread(engine)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "The quick", "max_tokens": 400, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    asyncio.run_coroutine_threadsafe(shutdown(srv.app, srv.runner, srv.site, grace=0.2), srv.loop).result(30)
    rest = resp.read().decode()
    assert '"code": "server_stopping"' in rest and rest.rstrip().endswith("data: [DONE]")
    assert not engine.running
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5).request("GET", "/health")
    srv.loop.call_soon_threadsafe(srv.loop.stop)
    srv.thread.join(10)
