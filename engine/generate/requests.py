"""Requests: sampling parameters, the chunks a request receives, and `Generation`, the handle
on one submitted request (its text so far, with stop strings held back until they can't match)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.generate.engine import Engine

log = logging.getLogger("humanizer.generate")

BASE = "base"


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: Sequence[str] = ()
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or ()) if s]
        if not (0.0 <= float(self.temperature) <= 100.0):
            raise EngineError("temperature must be between 0 and 100", param="temperature")
        if not (0.0 < float(self.top_p) <= 1.0):
            raise EngineError("top_p must be in (0, 1]", param="top_p")
        if int(self.max_tokens) < 1:
            raise EngineError("max_tokens must be at least 1", param="max_tokens")


@dataclass
class Chunk:
    """What a request receives as it goes: new text (may be empty), the new token ids,
    and on the last chunk the finish reason ("stop", "length", "cancelled", "error")."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    error: str | None = None


class Generation:
    """A handle on one submitted request. Iterate it for `Chunk`s (when no `on_chunk`
    callback was given), or call `result()` to wait for the end. `cancel()` frees its row."""

    def __init__(self, engine: "Engine", prompt: list[int], adapters: tuple[str, ...], params: SamplingParams,
                 on_chunk: Callable[[Chunk], None] | None, request_id: str | None):
        self.id = request_id or f"gen-{secrets.token_hex(6)}"
        self.engine = engine
        self.prompt = list(prompt)
        self.adapters = adapters
        self.params = params
        self.token_ids: list[int] = []
        self.text = ""  # the text delivered so far (after stop handling)
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.submitted_at = time.time()
        self.started_at: float | None = None  # admitted to a row
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._queue = None
        if on_chunk is None:
            import queue

            self._queue = queue.Queue()
            on_chunk = self._queue.put
        self._on_chunk = on_chunk
        self._cancel = False
        self._done = threading.Event()
        # worker-side state
        self._cache = None
        self._prefilled = 0
        self._next_input: int | None = None
        self._detok = None
        self._raw = ""  # all decoded text, before stop handling
        self._rng = None

    @property
    def adapter(self) -> str:
        return combination_id(self.adapters)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens in its KV cache so far (the last prompt token is fed by the first decode step)."""
        return self._prefilled

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating; the row is freed before the next step. No-op when finished."""
        if not self._done.is_set():
            self._cancel = True
            self.engine._wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> "Generation":
        """Wait for the end (draining the chunk queue when there is one) and return self."""
        if self._queue is not None:
            for _ in self.chunks(timeout=timeout):
                pass
        elif not self._done.wait(timeout):
            raise TimeoutError(f"{self.id} did not finish in {timeout} s")
        return self

    def chunks(self, timeout: float | None = None) -> Iterator[Chunk]:
        if self._queue is None:
            raise RuntimeError("this generation delivers its chunks to a callback")
        import queue

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                chunk = self._queue.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"{self.id} did not finish in {timeout} s") from None
            yield chunk
            if chunk.finish_reason is not None:
                return

    __iter__ = chunks

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def timing(self) -> dict:
        end = self.finished_at or time.time()
        latency = end - self.submitted_at
        decode = end - self.first_token_at if self.first_token_at else 0.0
        return {
            "latency_s": latency,
            "ttft_s": (self.first_token_at - self.submitted_at) if self.first_token_at else None,
            "tokens_per_second": self.completion_tokens / latency if latency > 0 else 0.0,
            "decode_tokens_per_second": (self.completion_tokens - 1) / decode if decode > 0 else None,
        }

    def _feed(self, tok: int, eos_ids: set) -> bool:
        """Worker side: one sampled token into the text; emit; True when the request is finished."""
        reason = None
        if tok in eos_ids:
            reason = "stop"
        else:
            self._detok.add_token(tok)
            self._raw += self._detok.last_segment
            if self.completion_tokens >= self.params.max_tokens:
                reason = "length"
        if reason is not None:
            self._detok.finalize()
            self._raw += self._detok.last_segment
        stops = self.params.stop
        new_ids = [tok]
        if stops:
            hits = [(self._raw.find(s, len(self.text)), s) for s in stops]
            hits = [h for h in hits if h[0] >= 0]
            if hits:
                cut = min(h[0] for h in hits)
                self._emit(self._raw[len(self.text):cut], new_ids)
                self._finish("stop")
                return True
        held = 0 if reason is not None or not stops else _stop_holdback(self._raw, stops)
        end = len(self._raw) - held
        text = self._raw[len(self.text):end]
        if reason is not None:
            self._emit(text, new_ids, final=reason)
            return True
        if text or new_ids:
            self._emit(text, new_ids)
        self._next_input = tok
        return False

    def _emit(self, text: str, ids: list[int], final: str | None = None) -> None:
        self.text += text
        if final is not None:
            self._finish(final, text=text, ids=ids)
            return
        self._deliver(Chunk(text, ids))

    def _finish(self, reason: str, *, text: str = "", ids: list[int] | None = None,
                error: str | None = None) -> None:
        if self.done:
            return
        self.finish_reason = reason
        self.error = error
        self.finished_at = time.time()
        self._cache = None  # frees the row's KV cache
        self._detok = None
        self._deliver(Chunk(text, ids or [], reason, error))
        self._done.set()

    def _deliver(self, chunk: Chunk) -> None:
        try:
            self._on_chunk(chunk)
        except Exception:  # a receiver that is gone (closed event loop): stop its request
            log.debug("delivering to %s failed", self.id, exc_info=True)
            self._cancel = True

    def __repr__(self) -> str:
        return f"<Generation {self.id} adapter={self.adapter} tokens={self.completion_tokens} finish={self.finish_reason}>"


def combination_id(adapters: Iterable[str]) -> str:
    names = list(adapters)
    return "+".join(names) if names else BASE



def _stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
