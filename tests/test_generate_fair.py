"""Fair chunked prefill (engine/generate/engine.py) and the server's prompt-length limit.

A short request that arrives while a long prompt is prefilling must not wait for the whole
long prefill: the prefilling requests take turns, one chunk each. Counted in engine steps
(prefill forwards), never in seconds: a wrapper around the engine's prefill forward records
which request each chunk belonged to, and can hold the worker inside the first chunk so a
request is submitted at a known point of the long prefill."""

from __future__ import annotations

import threading

import pytest

from engine.errors import HumanizerError
from engine.generate import Engine, SamplingParams
from tests import test_generate
from tests.test_generate import DPO, PROMPTS, SFT
from tests.test_server import CHAT, ServerThread, assert_error, call

CHUNK = 8
LONG = [5 + (7 * i + 3) % 300 for i in range(300)]  # 300 tokens: 38 chunks of 8 (the last token is decoded)
MEDIUM = [5 + (11 * i + 1) % 300 for i in range(90)]
SHORT = [40, 7, 99, 12, 250, 31]  # one chunk of prefill


tiny = test_generate.tiny  # the same fixture (a lively tiny llama, SFT and DPO adapters), this module's own copy


class PrefillTrace:
    """Wraps the engine's prefill forward: `calls` lists, in order, the request id of every
    prefill chunk run; the worker waits inside the first chunk until `release` is set."""

    def __init__(self, eng: Engine):
        self.calls: list[str] = []
        self.sizes: list[int] = []  # tokens of each chunk
        self.first = threading.Event()
        self.release = threading.Event()
        forward = eng._prefill_model

        def traced(x, cache):
            out = forward(x, cache=cache)
            # runs on the worker thread, between the engine's own steps: its lists are stable here
            owner = next(r for r in eng._prefilling if r._cache is cache)
            self.calls.append(owner.id)
            self.sizes.append(x.shape[1])
            if not self.first.is_set():
                self.first.set()
                assert self.release.wait(60)
            return out

        eng._prefill_model = traced

    def hold_first(self) -> None:
        assert self.first.wait(60)


def greedy_params(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n)


def test_short_request_is_not_held_behind_a_long_prefill(tiny):
    base, _, _ = tiny
    with Engine.load(base, max_rows=4, prefill_chunk=CHUNK) as eng:
        trace = PrefillTrace(eng)
        long = eng.submit(LONG, None, greedy_params(2), request_id="long")
        trace.hold_first()  # the worker is inside the long prompt's first chunk
        at_first_token: list[int] = []

        def on_chunk(chunk):
            if not at_first_token:
                at_first_token.append(len(trace.calls))

        short = eng.submit(SHORT, None, greedy_params(4), on_chunk=on_chunk, request_id="short")
        trace.release.set()
        assert short.wait(60) and long.wait(60)
        long_chunks = trace.calls.count("long")
        assert long_chunks == -(-(len(LONG) - 1) // CHUNK)
        # its first token after the chunk in flight, one more turn of the long prompt and its
        # own chunk; first come first served would have run all 38 long chunks before it
        assert at_first_token[0] <= 3, trace.calls
        assert trace.calls.index("short") < long_chunks - 1
        assert short.finish_reason == "length" and short.completion_tokens == 4


def test_prefills_take_turns_and_decode_rows_keep_their_pace(tiny):
    """Two long prompts prefill in turns (round robin), and a running row still gets one
    token per engine step: at most one prefill chunk runs between two of its tokens."""
    base, _, _ = tiny
    with Engine.load(base, max_rows=4, prefill_chunk=CHUNK) as eng:
        trace = PrefillTrace(eng)
        marks: list[int] = []
        runner = eng.submit(SHORT, None, greedy_params(40),
                            on_chunk=lambda c: marks.append(len(trace.calls)), request_id="runner")
        trace.hold_first()
        a = eng.submit(LONG, None, greedy_params(1), request_id="a")
        b = eng.submit(LONG[::-1], None, greedy_params(1), request_id="b")
        trace.release.set()
        assert runner.wait(60) and a.wait(60) and b.wait(60)
        longs = [c for c in trace.calls if c in ("a", "b")]
        assert longs[:6] == ["a", "b"] * 3, trace.calls
        assert len(marks) == runner.completion_tokens >= 20  # one chunk per token
        steps = [y - x for x, y in zip(marks, marks[1:])]
        assert max(steps) <= 1, steps
        assert sum(steps[:15]) == 15  # the long prefills ran beside it, one chunk per step


def test_interleaved_chunks_give_each_request_its_solo_output(tiny):
    """Chunks of four prompts (three lengths, three adapter choices) interleaved in the
    KV caches: every greedy output equals the same request served alone."""
    base, sft, dpo = tiny
    with Engine.load(base, adapters=[sft, dpo], max_rows=4, prefill_chunk=CHUNK, decode_prefill_chunk=3) as eng:
        jobs = [("long", LONG, f"{SFT}+{DPO}"), ("medium", MEDIUM, SFT), ("short", eng.encode(PROMPTS[2]), "base"),
                ("short2", eng.encode(PROMPTS[3]), SFT)]
        alone = {rid: eng.submit(p, a, greedy_params(16)).result(60).token_ids for rid, p, a in jobs}
        trace = PrefillTrace(eng)
        first = eng.submit(LONG[:9], None, greedy_params(1), request_id="gate")
        trace.hold_first()  # every job is queued before the worker goes on: they prefill together
        gens = {rid: eng.submit(p, a, greedy_params(16), request_id=rid) for rid, p, a in jobs}
        trace.release.set()
        got = {rid: g.result(60).token_ids for rid, g in gens.items()}
        first.result(60)
        assert got == alone
        order = [c for c in trace.calls if c in ("long", "medium")]
        assert order[:4] == ["long", "medium", "long", "medium"], trace.calls  # really interleaved
        assert {3, CHUNK} <= set(trace.sizes)  # chunked otherwise than alone (8 only) too


def test_smaller_chunks_while_rows_decode(tiny):
    """While a row is decoding, a prompt is prefilled in decode_prefill_chunk-token chunks
    (the row's steps stay short); with no row decoding, in prefill_chunk-token chunks."""
    base, _, _ = tiny
    with Engine.load(base, max_rows=4, prefill_chunk=CHUNK, decode_prefill_chunk=3) as eng:
        assert eng.decode_prefill_chunk == 3
        trace = PrefillTrace(eng)
        marks: list[int] = []
        runner = eng.submit(SHORT, None, greedy_params(10), request_id="runner",
                            on_chunk=lambda c: marks.append(len(trace.calls)))
        trace.hold_first()
        long = eng.submit(LONG, None, greedy_params(1), request_id="long")
        trace.release.set()
        assert runner.wait(60) and long.wait(60)
        sizes = [n for c, n in zip(trace.calls, trace.sizes) if c == "long"]
        beside = marks[-1] - 1  # the long prompt's chunks run while the runner decoded
        assert sizes[:beside] == [3] * beside and beside >= 8
        assert set(sizes[beside:-1]) == {CHUNK} and sum(sizes) == len(LONG) - 1
    unstarted = Engine.load(base, prefill_chunk=16, decode_prefill_chunk=64)
    assert unstarted.decode_prefill_chunk == 16  # never above prefill_chunk
    unstarted.close()


def test_fcfs_policy_is_the_old_order(tiny):
    """prefill_policy="fcfs" (kept for bench/bench_serve.py's before/after row) runs the
    oldest prompt's chunks to the end first."""
    base, _, _ = tiny
    with Engine.load(base, max_rows=4, prefill_chunk=CHUNK, prefill_policy="fcfs") as eng:
        trace = PrefillTrace(eng)
        long = eng.submit(LONG, None, greedy_params(1), request_id="long")
        trace.hold_first()
        short = eng.submit(SHORT, None, greedy_params(1), request_id="short")
        trace.release.set()
        assert long.wait(60) and short.wait(60)
        assert trace.calls == ["long"] * 38 + ["short"]
    with pytest.raises(HumanizerError, match="prefill policy"):
        Engine.load(base, prefill_policy="lifo")


# --- the server's max prompt tokens --------------------------------------------------------------


def test_server_refuses_a_prompt_over_max_prompt_tokens(tiny):
    base, sft, dpo = tiny
    engine = Engine.load(base, adapters=[sft], max_rows=2).start()
    limit = len(engine.encode_chat(CHAT))
    srv = ServerThread(engine, max_prompt_tokens=limit)
    try:
        status, body = call(srv, "POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2})
        assert status == 200, body  # exactly at the limit
        long_chat = CHAT[:-1] + [{"role": "user", "content": CHAT[-1]["content"] + " jumps"}]
        n = len(engine.encode_chat(long_chat))
        err = assert_error(call(srv, "POST", "/v1/chat/completions", {"messages": long_chat}), 400,
                           "max_prompt_tokens_exceeded", "messages")
        assert f"{n} tokens" in err["message"] and f"limit of {limit}" in err["message"]
        assert "--max-prompt-tokens" in err["message"] and "shorten" in err["message"]
        err = assert_error(call(srv, "POST", "/v1/completions", {"prompt": LONG[:limit + 5]}), 400,
                           "max_prompt_tokens_exceeded", "prompt")
        assert f"{limit + 5} tokens" in err["message"]
        status, _ = call(srv, "POST", "/v1/completions", {"prompt": LONG[:limit], "max_tokens": 1})
        assert status == 200
        refused = [e for e in srv.events if e["type"] == "request" and e.get("http_status") == 400]
        assert len(refused) == 2  # reported like every other refused request
    finally:
        srv.stop()
        engine.close()


def test_max_prompt_tokens_flag(tmp_path, capsys):
    from tui.cli import build_parser, main

    assert build_parser().parse_args(["serve"]).max_prompt_tokens == 4096
    assert build_parser().parse_args(["serve", "--max-prompt-tokens", "300"]).max_prompt_tokens == 300
    # refused before anything loads
    assert main(["--home", str(tmp_path / "h"), "serve", "--max-prompt-tokens", "0", "--port", "0"]) == 2
    out = capsys.readouterr()
    assert "--max-prompt-tokens must be at least 1" in out.out + out.err
