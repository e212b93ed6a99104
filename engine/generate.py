"""Batched multi-adapter generation: one worker thread owns the model.

Requests arrive from any thread (`Engine.submit`) and are decoded together by one
worker thread (continuous batching): a request is admitted when a row is free, its
prompt is prefilled on its own (in chunks of `prefill_chunk` tokens, interleaved with
the decode steps of the running rows), then it joins the running batch; a finished or
cancelled request leaves the batch at once and frees its row.

Prefill is fair: each engine step runs ONE prefill chunk, and the prefilling requests take
turns (round robin), so a short prompt that arrives while a long one is prefilling gets its
first token after a few steps instead of after the whole long prefill, and the running rows
still decode one token per step however many prompts are prefilling. While rows are
decoding the chunk is `decode_prefill_chunk` tokens (default 32) instead of `prefill_chunk`
(128): a step costs a decode step plus that chunk, so the rows keep more of their pace, and
the prompt loses little (SmolLM2-135M float32 on a 2-core CPU: 32-token chunks prefill at
0.8x the rate of 128-token ones at position 0 and at the same rate from position ~1000 on,
where attention dominates). ("fcfs", the scheduler before: the oldest
prompt's `prefill_chunk` chunks to its end first, stays selectable for bench/bench_serve.py's
before/after row.)

Every row has its own adapter selection ("base", "a", "a+b", ...), so one forward computes

    y[row] = base(x[row]) + sum_{i in adapters(row)} scale_i * (x[row] @ A_i) @ B_i

for all rows at once (`AdapterPlan`): per layer, the adapters in use by any row are
concatenated along the rank and a per-row 0/1 mask over the rank columns selects each
row's own adapters: exactly nothing is added from an adapter a row did not pick. No
request can see another's choice; "a+b" is both residuals in the same forward, in two
matmuls per layer.

Design of the batch (per-row positions, no left padding):
- a request is prefilled alone with the model's own forward into its own mlx-lm KVCache
  (the mlx-lm single-stream code path);
- it then joins a `SlotBatch`: per layer one keys/values buffer with a slot per row; the
  row's cache is copied into the next free slot, and a leaving row's slot is filled by
  moving the last row into it, so the rows are always slots 0..B-1;
- a decode step runs the model once on the (rows, 1) token batch: embeddings and every
  linear layer (projections, MLP, LoRA terms, lm_head) are batched matmuls; in attention
  each row gets rope at its own position (an offset per row), its new key/value are
  written at its own position (one scatter per layer), and the softmax runs over its own
  keys only (a mask when rows have different lengths). This goes through a subclass of
  the model's attention module whose `__call__` recognises a `SlotLayer` cache (for
  llama-style attention: llama, mistral, qwen2, qwen3). The batched path is checked
  against the plain per-row forward when the engine starts; a model it does not fit
  falls back to "serial" mode (each row its own forward per step): slower, same output.
- a request alone (one row) takes exactly mlx-lm's single-row decode path.

Greedy output under mixed load equals the output served alone: each row's attention is
its own, and batched matmuls differ from single-row ones at most in the last bits (BLAS
kernels block rows differently), far below the gaps between competing tokens (tested on
a tiny model and on SmolLM2-135M).

Sampling is per request (temperature, top_p, seed, max_tokens, stop strings) with the
request's own random generator, so a seeded request draws the same numbers whatever
else runs beside it.

Adapters can be mounted and unmounted while serving; the worker applies the change
between two steps. A DPO delta mounts only with its parent; an adapter for another base
is refused. Unmounting an adapter that a queued or running request uses is REFUSED
(AdapterInUse, naming how many requests use it): retry when they are done, or cancel them.

Worker threads are never ended (they park for reuse): MLX aborts the process when a
thread that ran MLX work exits just before the process does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import mlx.core as mx
import numpy as np

from engine import adapters as A
from engine.adapters import layers as lora
from engine.fastops import cpu_fast_ops
from engine.errors import HumanizerError

log = logging.getLogger("humanizer.generate")

BASE = "base"
PREFILL_POLICIES = ("fair", "fcfs")
MAX_LISTED_COMBINATIONS = 256
ROW_BATCHED_MODULES = ("mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3")


class EngineError(HumanizerError):
    """A refused request or command, with an HTTP-like status and a machine-readable code."""

    status = 400
    code: str | None = None

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None,
                 code: str | None = None, param: str | None = None):
        super().__init__(message, hint)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param


class UnknownAdapter(EngineError):
    status, code = 400, "adapter_not_found"


class AdapterInUse(EngineError):
    status, code = 409, "adapter_in_use"


class EngineClosed(EngineError):
    status, code = 503, "engine_closed"


# --- requests -------------------------------------------------------------------------


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

    def __repr__(self) -> str:
        return f"<Generation {self.id} adapter={self.adapter} tokens={self.completion_tokens} finish={self.finish_reason}>"


def combination_id(adapters: Iterable[str]) -> str:
    names = list(adapters)
    return "+".join(names) if names else BASE


# --- the batched forward ---------------------------------------------------------------


class SlotBatch:
    """The KV caches of the rows decoded together, one slot per row: per layer a keys and a
    values buffer of shape (slots, kv_heads, capacity, head_dim). Row i of the batch is slot i;
    its cache holds `lengths[i]` positions. A row joins by copying its prefill cache into the
    next slot, and leaves by moving the last row into its slot, so the active slots are always
    0..B-1 and a decode step writes every row's new key/value in one scatter per layer and
    runs one masked attention over the batch."""

    STEP = 256  # capacity grows in these steps, like mlx-lm's KVCache

    def __init__(self, n_layers: int, slots: int, spec: list[tuple]):
        self.n_layers = n_layers
        self.slots = slots
        self.spec = spec  # per layer: (kv_heads, key_dim, value_dim, dtype)
        self.keys: list[mx.array] = []
        self.values: list[mx.array] = []
        self.lengths: list[int] = []
        self.capacity = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def _ensure(self, needed: int) -> None:
        """Room for `needed` positions per slot."""
        if needed <= self.capacity and self.keys:
            return
        cap = ((needed + self.STEP - 1) // self.STEP) * self.STEP
        if not self.keys:
            for h, dk, dv, dtype in self.spec:
                self.keys.append(mx.zeros((self.slots, h, cap, dk), dtype))
                self.values.append(mx.zeros((self.slots, h, cap, dv), dtype))
        else:
            grow = cap - self.capacity
            for i in range(self.n_layers):
                k, v = self.keys[i], self.values[i]
                self.keys[i] = mx.concatenate([k, mx.zeros((k.shape[0], k.shape[1], grow, k.shape[3]), k.dtype)], 2)
                self.values[i] = mx.concatenate([v, mx.zeros((v.shape[0], v.shape[1], grow, v.shape[3]), v.dtype)], 2)
        self.capacity = cap

    def add(self, cache: list) -> None:
        """A row joins with its prefilled per-layer caches (batch 1)."""
        n = cache[0].offset
        self._ensure(n + 1)
        slot = len(self.lengths)
        if n:
            for i, c in enumerate(cache):
                self.keys[i][slot:slot + 1, :, :n] = c.keys[:, :, :n]
                self.values[i][slot:slot + 1, :, :n] = c.values[:, :, :n]
        self.lengths.append(n)

    def remove(self, slot: int) -> None:
        """The row in `slot` leaves; the last row moves into its slot."""
        last = len(self.lengths) - 1
        if slot != last:
            n = self.lengths[last]
            for i in range(self.n_layers):
                self.keys[i][slot:slot + 1, :, :n] = self.keys[i][last:last + 1, :, :n]
                self.values[i][slot:slot + 1, :, :n] = self.values[i][last:last + 1, :, :n]
            self.lengths[slot] = n
        self.lengths.pop()

    def clear(self) -> None:
        self.keys, self.values, self.lengths, self.capacity = [], [], [], 0

    def step_views(self) -> list["SlotLayer"]:
        """Per-layer views for one decode step (one new token per row)."""
        B = len(self.lengths)
        top = max(self.lengths) + 1
        if top > self.capacity:
            self._ensure(top)
        if B == 1:  # exactly mlx-lm's single-row path: int offset, no mask
            pos = self.lengths[0]
            ctx = (pos, None, None, None)
        else:
            posarr = mx.array(self.lengths)
            same = len(set(self.lengths)) == 1
            mask = None if same else (mx.arange(top)[None, :] <= posarr[:, None])[:, None, None, :]
            ctx = (posarr, mask, mx.arange(B)[:, None], posarr[:, None])
        return [SlotLayer(self, i, B, top, *ctx) for i in range(self.n_layers)]

    def advance(self) -> None:
        self.lengths = [n + 1 for n in self.lengths]


class SlotLayer:
    """One layer's view of the SlotBatch for a decode step, passed to the model in place of
    that layer's cache; the patched attention recognises it."""

    __slots__ = ("batch", "layer", "B", "top", "offset", "mask", "rows", "pos")

    def __init__(self, batch, layer, B, top, offset, mask, rows, pos):
        self.batch, self.layer, self.B, self.top = batch, layer, B, top
        self.offset, self.mask, self.rows, self.pos = offset, mask, rows, pos

    def make_mask(self, *args, **kwargs):
        return None  # the attention uses self.mask (rows of different lengths)

    def __bool__(self) -> bool:
        return True

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        b, i = self.batch, self.layer
        if self.B == 1:
            p = self.offset
            b.keys[i][0:1, :, p:p + 1] = k
            b.values[i][0:1, :, p:p + 1] = v
        else:
            heads = mx.arange(k.shape[1])[None, :]
            b.keys[i][self.rows, heads, self.pos] = k[:, :, 0, :]
            b.values[i][self.rows, heads, self.pos] = v[:, :, 0, :]
        return b.keys[i][:self.B, :, :self.top], b.values[i][:self.B, :, :self.top]


def _slot_attention(attn, x: mx.array, sl: SlotLayer) -> mx.array:
    """llama-style attention for a (rows, 1, dim) batch over the SlotBatch: the model's own
    computation per row (rope at the row's position, its keys only), batched."""
    from mlx_lm.models.base import scaled_dot_product_attention as base_sdpa

    # the model module's own name for it, which engine.fastops swaps for the fast-exp version on CPU
    sdpa = getattr(sys.modules.get(type(attn).__module__), "scaled_dot_product_attention", base_sdpa)
    B, L, _ = x.shape
    q = attn.q_proj(x).reshape(B, L, attn.n_heads, -1)
    k = attn.k_proj(x).reshape(B, L, attn.n_kv_heads, -1)
    v = attn.v_proj(x).reshape(B, L, attn.n_kv_heads, -1)
    if "q_norm" in attn:
        q = attn.q_norm(q)
        k = attn.k_norm(k)
    q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    q = attn.rope(q, offset=sl.offset)
    k = attn.rope(k, offset=sl.offset)
    keys, values = sl.update_and_fetch(k, v)
    out = sdpa(q, keys, values, cache=None, scale=attn.scale, mask=sl.mask)
    return attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


_ROW_CLASSES: dict[type, type] = {}


def _row_class(cls: type) -> type:
    if cls not in _ROW_CLASSES:
        def __call__(self, x, mask=None, cache=None):
            if isinstance(cache, SlotLayer):
                return _slot_attention(self, x, cache)
            return cls.__call__(self, x, mask, cache)

        _ROW_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                         "_humanizer_row_batched": True})
    return _ROW_CLASSES[cls]


def _attention_modules(model) -> list | None:
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            return None
        cls = type(attn)
        base_cls = cls.__mro__[1] if getattr(cls, "_humanizer_row_batched", False) else cls
        if base_cls.__module__ not in ROW_BATCHED_MODULES:
            return None
        if not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "rope", "scale",
                                              "n_heads", "n_kv_heads")):
            return None
        out.append((attn, base_cls))
    return out


def _install_row_attention(model) -> bool:
    mods = _attention_modules(model)
    if mods is None:
        return False
    for attn, base_cls in mods:
        attn.__class__ = _row_class(base_cls)
    return True


def _remove_row_attention(model) -> None:
    for attn, base_cls in _attention_modules(model) or []:
        attn.__class__ = base_cls


class AdapterPlan:
    """Which adapters each row of the current forward uses, and the serving form of the LoRA
    terms: per layer, the adapters in use are concatenated along the rank,

        A = [A_1 | A_2 | ...]  (in, R),   B = [s_1 B_1 ; s_2 B_2 ; ...]  (R, out),

    so y = base(x) + ((x @ A) * G) @ B, where G (rows, 1, R) is 1.0 on the rank columns of
    the adapters a row picked and 0.0 elsewhere (no G when every row uses them all). That is
    sum_i s_i (x A_i) B_i over the row's adapters, exactly nothing from the others, in two
    matmuls whatever the number of adapters (the per-adapter form costs ~5 small ops per
    adapter per layer, which dominates decoding on the CPU)."""

    def __init__(self):
        self.rows: list[frozenset] = []
        self.used: tuple[str, ...] = ()
        self._weights: dict = {}  # (layer id, names) -> (A, B)
        self._gates: dict = {}  # (names, ranks) -> G for the current rows

    def begin(self, selections: list[tuple[str, ...]], order: Iterable[str]) -> None:
        self.rows = [frozenset(s) for s in selections]
        chosen = set().union(*self.rows) if self.rows else set()
        self.used = tuple(n for n in order if n in chosen)
        self._gates = {}

    def invalidate(self) -> None:
        self._weights = {}
        self._gates = {}

    def terms(self, layer):
        names = tuple(n for n in self.used if n in layer.adapters)
        if not names:
            return None
        key = (id(layer), names)
        w = self._weights.get(key)
        if w is None:
            ads = [layer.adapters[n] for n in names]
            a = mx.concatenate([ad["lora_a"] for ad in ads], axis=1) if len(ads) > 1 else ads[0]["lora_a"]
            b = mx.concatenate([layer.scales[n] * ad["lora_b"] for n, ad in zip(names, ads)], axis=0)
            mx.eval(a, b)
            w = self._weights[key] = (a, b, tuple(ad["lora_a"].shape[1] for ad in ads))
        a, b, ranks = w
        gkey = (names, ranks)
        if gkey not in self._gates:
            if all(set(names) <= r for r in self.rows):
                self._gates[gkey] = None
            else:
                cols = [[1.0 if n in r else 0.0 for n, k in zip(names, ranks) for _ in range(k)] for r in self.rows]
                self._gates[gkey] = mx.array(cols, dtype=a.dtype)[:, None, :]
        return a, b, self._gates[gkey]


_SERVE_CLASSES: dict[type, type] = {}


def _serve_class(cls: type) -> type:
    if cls not in _SERVE_CLASSES:
        def __call__(self, x):
            plan = self.__dict__.get("_serve_plan")
            if plan is None or "lora_a" in self:  # not steered by an engine, or training
                return cls.__call__(self, x)
            y = self.linear(x)
            terms = plan.terms(self)
            if terms is None:
                return y
            a, b, g = terms
            h = x @ a
            if g is not None:
                h = h * g.reshape((-1,) + (1,) * (h.ndim - 2) + (h.shape[-1],))
            z = h @ b
            return y + (z if z.dtype == y.dtype else z.astype(y.dtype))

        _SERVE_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                           "_humanizer_serve": True})
    return _SERVE_CLASSES[cls]


def _install_plan(model, plan: AdapterPlan) -> None:
    """Steer every stacked LoRA layer of `model` by `plan` (layers added by a mount included)."""
    for _, layer in lora.lora_layers(model):
        cls = type(layer)
        if not getattr(cls, "_humanizer_serve", False):
            layer.__class__ = _serve_class(cls)
        object.__setattr__(layer, "_serve_plan", plan)


# --- sampling --------------------------------------------------------------------------


NUCLEUS_GUESS = 256  # candidates sorted first; the full vocabulary only when they don't reach top_p


def _nucleus_order(p: np.ndarray, top_p: float) -> np.ndarray:
    """Indices by descending probability, ties by index (a stable sort of -p), at least as
    far as the top_p nucleus reaches. Sorting a whole 50k vocabulary per row per step cost
    more than the decode step itself; the head holds the nucleus almost always, and every
    index tied with the head's last value is in it, so the prefix is the full sort's."""
    if len(p) > NUCLEUS_GUESS:
        cut = np.partition(p, len(p) - NUCLEUS_GUESS)[len(p) - NUCLEUS_GUESS]
        head = np.flatnonzero(p >= cut)
        order = head[np.lexsort((head, -p[head]))]
        if p[order].sum() >= top_p or len(order) == len(p):
            return order
    return np.argsort(-p, kind="stable")


def sample_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One draw from softmax(logits / temperature), restricted to the top_p nucleus."""
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = _nucleus_order(p, top_p)
        sp = p[order]
        keep = min(int(np.searchsorted(np.cumsum(sp), top_p)) + 1, len(sp))
        cand, probs = order[:keep], sp[:keep]
    else:
        cand, probs = None, p
    cum = np.cumsum(probs)
    j = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(probs) - 1)
    return int(cand[j]) if cand is not None else j


def _stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


# --- worker threads ----------------------------------------------------------------------

_park_lock = threading.Lock()
_parked: list = []  # queues of idle worker threads


def _run_in_worker_thread(fn: Callable[[], None], name: str) -> threading.Event:
    """Run `fn` on a long-lived daemon thread; returns an Event set when `fn` returns.

    MLX keeps per-thread state whose teardown aborts the process ("terminate called
    without an active exception") when a thread that ran MLX work exits just before the
    process does. So worker threads never exit: after a job they park, and the next
    engine reuses them."""
    import queue

    done = threading.Event()

    def job():
        try:
            fn()
        finally:
            done.set()

    with _park_lock:
        q = _parked.pop() if _parked else None
    if q is None:
        q = queue.Queue()

        def loop():
            while True:
                q.get()()
                threading.current_thread().name = "humanizer-parked"
                with _park_lock:
                    _parked.append(q)

        threading.Thread(target=loop, name=name, daemon=True).start()
    q.put(job)
    return done


# --- the engine ------------------------------------------------------------------------


class Engine:
    """One model in memory, adapters mounted on it, and a worker thread that decodes all
    requests together. Use `Engine.load(model_dir, adapters=[...])`, then `start()`
    (or `with Engine.load(...) as engine:`)."""

    def __init__(self, model, tokenizer, *, max_rows: int = 8, prefill_chunk: int = 128,
                 batched: bool | None = None, max_queue: int = 1024, name: str | None = None,
                 prefill_policy: str = "fair", decode_prefill_chunk: int = 32):
        if max_rows < 1:
            raise HumanizerError("max concurrent rows must be at least 1")
        if prefill_policy not in PREFILL_POLICIES:
            raise HumanizerError(f"unknown prefill policy '{prefill_policy}'",
                                 f"use one of: {', '.join(PREFILL_POLICIES)}")
        self.prefill_policy = prefill_policy
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = int(max_rows)
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.decode_prefill_chunk = min(self.prefill_chunk, max(1, int(decode_prefill_chunk)))
        self.max_queue = int(max_queue)
        ident = lora.base_identity(model)
        self.model_dir = Path(ident["path"]) if ident.get("path") else None
        self.name = name or ident.get("name") or "model"
        self.fingerprint = ident.get("fingerprint")
        args = getattr(model, "args", None)
        self.context_length = int(getattr(args, "max_position_embeddings", 0) or 0) or None
        self.eos_ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.n_layers = len(model.layers)
        # Prefill needs only the KV cache, not logits: the backbone alone skips the LM head (a fifth
        # of a small model's FLOPs and a chunk x vocab logits array). Only for the families whose
        # Model.model is the decoder stack (the row-batched ones).
        inner = getattr(model, "model", None)
        self._prefill_model = inner if type(model).__module__ in ROW_BATCHED_MODULES and callable(inner) \
            and getattr(inner, "layers", None) is not None else model
        model.eval()
        self.mode = "serial"
        self._slots: SlotBatch | None = None
        if batched is not False and _install_row_attention(model):
            spec = self._self_check()
            if spec is not None:
                self.mode = "batched"
                self._slots = SlotBatch(self.n_layers, self.max_rows, spec)
            else:
                _remove_row_attention(model)
                log.warning("row-batched attention does not match this model's forward; decoding rows serially")
        elif batched:
            raise HumanizerError(f"batched decoding does not support this model ({type(model).__module__})")
        self._plan = AdapterPlan()
        _install_plan(model, self._plan)
        self._mounted: dict = lora.mounted(model)  # snapshot for readers on other threads
        self._cv = threading.Condition()
        self._pending: collections.deque[Generation] = collections.deque()
        self._prefilling: list[Generation] = []
        self._rows: list[Generation] = []
        self._commands: list = []
        self._stopped: threading.Event | None = None  # set when the worker has finished
        self._worker_thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self.steps = 0
        self.tokens_generated = 0

    # construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir, *, adapters: Iterable = (), dequantize: bool | None = None, **kwargs) -> "Engine":
        """Load a model folder (dequantized to float32 on CPU unless dequantize=False) and mount
        `adapters` (folders, or (folder, name) pairs) in order: a DPO delta after its parent."""
        model, tokenizer = lora.load_model(model_dir, dequantize=dequantize)
        engine = cls(model, tokenizer, **kwargs)
        for a in adapters:
            path, name = (a if isinstance(a, tuple) else (a, None))
            engine.mount(path, name)
        return engine

    def _self_check(self) -> list | None:
        """The slot-batched decode equals the model's own per-row decode (float tolerance).
        Returns the per-layer cache spec (kv heads, key dim, value dim, dtype), or None when
        the batched path does not fit this model."""
        from mlx_lm.models.cache import KVCache, make_prompt_cache

        vocab = int(getattr(getattr(self.model, "args", None), "vocab_size", 0) or 100)
        prompts = [[(7 * i + 3) % vocab for i in range(5)], [(11 * i + 5) % vocab for i in range(3)]]
        saved = {n: dict(layer.active) for n, layer in lora.lora_layers(self.model)}
        try:
            lora.set_active(self.model, [])

            def prefilled():
                out = []
                for p in prompts:
                    c = make_prompt_cache(self.model)
                    if not all(type(x) is KVCache for x in c):
                        raise TypeError("not a plain KV cache")
                    self._prefill_model(mx.array([p[:-1]]), cache=c)
                    out.append(c)
                return out

            alone = [self.model(mx.array([[p[-1]]]), cache=c)[0, -1] for p, c in zip(prompts, prefilled())]
            caches = prefilled()
            spec = [(c.keys.shape[1], c.keys.shape[3], c.values.shape[3], c.keys.dtype) for c in caches[0]]
            batch = SlotBatch(self.n_layers, 2, spec)
            for c in caches:
                batch.add(c)
            both = self.model(mx.array([[p[-1]] for p in prompts]), cache=batch.step_views())[:, -1]
            mx.eval(alone, both)
            ref = mx.stack(alone)
            tol = 1e-3 * (1.0 + float(mx.abs(ref).max()))
            return spec if bool(mx.abs(both - ref).max() <= tol) else None
        except Exception:  # any incompatibility means: not for this model
            log.debug("batched self check failed", exc_info=True)
            return None
        finally:
            for n, layer in lora.lora_layers(self.model):
                layer.active.clear()
                layer.active.update(saved.get(n, {}))

    def start(self) -> "Engine":
        with self._cv:
            if self._stopped is None:
                self._stopped = _run_in_worker_thread(self._worker, "humanizer-generate")
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Cancel every request and stop the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._stopped is not None and threading.current_thread() is not self._worker_thread:
            self._stopped.wait(timeout)
        self._closed = True

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._stopped is not None and not self._stopped.is_set()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # adapters ---------------------------------------------------------------------------
    def mounted(self) -> dict:
        """name -> AdapterInfo of the mounted adapters, in mount order."""
        return dict(self._mounted)

    def resolve(self, spec) -> tuple[str, ...]:
        """Adapter names (mount order) for a spec: None/""/"base" -> (), "a", "a+b", or a list.
        Refused: unknown names, a delta without the adapter it is stacked on, and a stack that
        applies the same weights twice (a name twice, two copies, a combined adapter with a source)."""
        if spec is None:
            return ()
        if isinstance(spec, str):
            s = spec.strip()
            parts = [] if s in ("", BASE) else [p.strip() for p in s.split("+")]
        else:
            parts = [str(p).strip() for p in spec]
        mounted = self._mounted
        if any(not p for p in parts):
            raise UnknownAdapter(f"bad adapter selection '{spec}'", "write names joined by '+', e.g. 'sft+dpo'",
                                 param="adapter")
        unknown = [p for p in parts if p not in mounted]
        if unknown:
            raise UnknownAdapter(
                f"no adapter named '{unknown[0]}' is mounted",
                f"mounted: {', '.join(mounted) or 'none'}; use 'base' for the model alone",
                param="adapter",
            )
        twice = next((p for p in parts if parts.count(p) > 1), None)
        if twice:
            raise EngineError(f"adapter '{twice}' is given twice: the stack would apply its weights twice",
                              "name each adapter once", status=400, code="adapter_repeated", param="adapter")
        chosen = set(parts)
        names = tuple(n for n in mounted if n in chosen)
        for a, b in itertools.combinations(names, 2):
            why = A.repeated_weights(a, mounted[a], b, mounted[b]) if mounted[a] and mounted[b] else None
            if why:
                raise EngineError(f"{why}: the stack '{combination_id(names)}' would apply them twice",
                                  f"stacks here: {', '.join(self.model_ids())}", status=400, code="adapter_repeated",
                                  param="adapter")
        for n in names:
            info = mounted[n]
            if info is None or not info.parent or info.stacked_on in chosen:
                continue
            parent = info.stacked_on or info.parent.get("name")
            raise EngineError(f"adapter '{n}' is a delta on '{parent}' and cannot be used without it",
                              f"use '{combination_id(A.stack_of(n, mounted))}'",
                              status=400, code="adapter_needs_parent", param="adapter")
        return names

    def combinations(self, limit: int = MAX_LISTED_COMBINATIONS) -> list[tuple[str, ...]]:
        """The real stacks (engine.adapters.real_stacks), smallest first, base included: (), ("sft",),
        ("sft", "dpo"), ...: each mounted adapter on its chain of parents, never the same weights twice.
        A request may still ask for unrelated adapters summed ("a+b"); they are not listed."""
        return A.real_stacks(self._mounted)[:limit]

    def model_ids(self) -> list[str]:
        return [combination_id(c) for c in self.combinations()]

    def deepest_stack(self) -> str:
        """The id of the deepest real stack ("sft+dpo"; "base" with nothing mounted): a chat's default."""
        return A.deepest_stack(self.combinations())

    def in_use(self, name: str) -> int:
        """How many queued or running requests use the adapter `name`."""
        with self._cv:
            reqs = list(self._pending) + list(self._prefilling) + list(self._rows)
        return sum(1 for r in reqs if name in r.adapters and not r.done)

    def mount(self, path, name: str | None = None, timeout: float | None = None):
        """Mount an adapter folder under `name` (default: the folder name). Between two
        decode steps when serving. A delta needs its parent mounted; an adapter for another
        base is refused. Returns its AdapterInfo."""
        return self._command(lambda: self._do_mount(path, name), timeout)

    def unmount(self, name: str, timeout: float | None = None) -> None:
        """Unmount `name`. Refused (AdapterInUse) while a queued or running request uses it,
        and while a mounted delta is stacked on it."""
        return self._command(lambda: self._do_unmount(name), timeout)

    def _command(self, fn, timeout):
        if not self.running or threading.current_thread() is self._worker_thread:
            if self._closed:
                raise EngineClosed("the engine is closed")
            return fn()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise EngineClosed("the engine is shutting down")
            self._commands.append((fn, fut))
            self._cv.notify_all()
        return fut.result(timeout)

    def _do_mount(self, path, name):
        try:
            info = A.read_adapter(path)
        except A.AdapterConfigError as e:
            raise EngineError(e.message, e.hint, code="adapter_config_mismatch", param="path") from None
        name = name or info.name
        if name == BASE:
            raise EngineError("'base' is reserved for the model without adapters", "mount it under another name",
                              code="bad_adapter_name", param="name")
        if not lora.NAME_RE.match(name):
            raise EngineError(f"bad adapter name '{name}'", "use letters, digits, '-' and '_' (no '.', '+' or spaces)",
                              code="bad_adapter_name", param="name")
        if name in self._mounted:
            raise EngineError(f"an adapter named '{name}' is already mounted", "unmount it first, or pick another name",
                              status=409, code="adapter_exists", param="name")
        try:
            info = lora.mount_adapter(self.model, path, name, model_dir=self.model_dir, active=False)
        except EngineError:
            raise
        except A.NeedsParent as e:
            raise EngineError(e.message, e.hint, status=409, code="adapter_needs_parent") from None
        except A.AdapterConfigError as e:
            raise EngineError(e.message, e.hint, code="adapter_config_mismatch", param="path") from None
        except HumanizerError as e:
            raise EngineError(e.message, e.hint, code="adapter_incompatible") from None
        self._plan.invalidate()
        _install_plan(self.model, self._plan)
        self._mounted = lora.mounted(self.model)
        return info

    def _do_unmount(self, name):
        with self._cv:  # submit() resolves under this lock too: no request slips in meanwhile
            if name not in self._mounted:
                raise EngineError(f"no adapter named '{name}' is mounted",
                                  f"mounted: {', '.join(self._mounted) or 'none'}",
                                  status=404, code="adapter_not_found", param="name")
            n = self.in_use(name)
            if n:
                raise AdapterInUse(
                    f"adapter '{name}' is in use by {n} request{'s' if n != 1 else ''}",
                    "unmounting is refused while requests use it; try again when they are done",
                )
            try:
                lora.unmount_adapter(self.model, name)
            except HumanizerError as e:
                raise EngineError(e.message, e.hint, status=409, code="adapter_has_dependents") from None
            self._plan.invalidate()
            self._mounted = lora.mounted(self.model)

    # requests ---------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(f"model '{self.name}' has no chat template", "use /v1/completions with a plain prompt",
                              code="no_chat_template")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def submit(self, prompt, adapter=None, params: SamplingParams | None = None, *,
               on_chunk: Callable[[Chunk], None] | None = None, request_id: str | None = None) -> Generation:
        """Queue a request: `prompt` is token ids or text; `adapter` a spec ("base", "a",
        "a+b") or a tuple of names. `on_chunk` is called from the worker thread with each Chunk
        (keep it quick); without it, iterate the returned Generation."""
        params = params or SamplingParams()
        tokens = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not tokens:
            raise EngineError("the prompt is empty", code="empty_prompt", param="prompt")
        if self.context_length and len(tokens) >= self.context_length:
            raise EngineError(
                f"the prompt has {len(tokens)} tokens; this model's context is {self.context_length}",
                "shorten the prompt", code="context_length_exceeded", param="messages")
        names = self.resolve(adapter)
        gen = Generation(self, tokens, names, params, on_chunk, request_id)
        with self._cv:
            if self._stopping or self._closed:
                raise EngineClosed("the engine is shutting down")
            if len(self._pending) >= self.max_queue:
                raise EngineError("too many queued requests", "try again shortly", status=429, code="queue_full")
            # resolve again under the lock: a concurrent unmount cannot slip between check and queue
            gen.adapters = self.resolve(list(names) or None)
            self._pending.append(gen)
            self._cv.notify_all()
        if self._stopped is None:
            self.start()
        return gen

    def generate(self, prompt, adapter=None, timeout: float | None = None, **params) -> Generation:
        """Submit and wait: returns the finished Generation (text, token_ids, finish_reason)."""
        return self.submit(prompt, adapter, SamplingParams(**params)).result(timeout)

    def stats(self) -> dict:
        with self._cv:
            return {
                "mode": self.mode,
                "max_rows": self.max_rows,
                "queued": len(self._pending),
                "prefilling": len(self._prefilling),
                "running": len(self._rows),
                "active": len(self._prefilling) + len(self._rows),
                "steps": self.steps,
                "tokens_generated": self.tokens_generated,
            }

    # the worker -------------------------------------------------------------------------
    def _worker(self) -> None:
        self._worker_thread = threading.current_thread()
        try:
            while True:
                with self._cv:
                    while not (self._commands or self._pending or self._prefilling or self._rows or self._stopping):
                        self._cv.wait()
                    if self._stopping:
                        break
                    commands, self._commands = self._commands, []
                for fn, fut in commands:
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn())
                        except BaseException as e:  # noqa: BLE001 - handed to the caller
                            fut.set_exception(e)
                self._drop_cancelled()
                self._admit()
                try:
                    with cpu_fast_ops(self.model):  # CPU: softmax and SwiGLU on the fast exp
                        if self._prefilling:
                            self._prefill_step()
                        if self._rows:
                            self._decode_step()
                except Exception as e:  # a failed step fails the requests in it, not the server
                    log.error("generation step failed:\n%s", traceback.format_exc())
                    for r in self._prefilling + self._rows:
                        self._finish(r, "error", error=f"{type(e).__name__}: {e}")
                    self._prefilling, self._rows = [], []
                if not (self._prefilling or self._rows):
                    if self._slots is not None:
                        self._slots.clear()
                    mx.clear_cache()
        finally:
            with self._cv:
                self._stopping = True
                leftover = list(self._pending) + self._prefilling + self._rows
                self._pending.clear()
                commands, self._commands = self._commands, []
            self._prefilling, self._rows = [], []
            if self._slots is not None:
                self._slots.clear()
            for r in leftover:
                self._finish(r, "cancelled")
            for _, fut in commands:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(EngineClosed("the engine is shutting down"))

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [r for r in self._pending if r._cancel]
            for r in gone:
                self._pending.remove(r)
        gone += [r for r in self._prefilling + self._rows if r._cancel]
        if gone:
            self._prefilling = [r for r in self._prefilling if not r._cancel]
            self._leave([r for r in self._rows if r._cancel])
            for r in gone:
                self._finish(r, "cancelled")

    def _join(self, r: Generation) -> None:
        """A prefilled request joins the running batch."""
        if self._slots is not None:
            self._slots.add(r._cache)
            r._cache = None
        self._rows.append(r)

    def _leave(self, gone: list[Generation]) -> None:
        """Finished or cancelled requests leave the running batch (their slots are reused)."""
        if not gone:
            return
        if self._slots is None:
            self._rows = [r for r in self._rows if r not in gone]
            return
        for idx in sorted((i for i, r in enumerate(self._rows) if r in gone), reverse=True):
            self._slots.remove(idx)
            self._rows[idx] = self._rows[-1]
            self._rows.pop()

    def _admit(self) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        while True:
            with self._cv:
                if not self._pending or len(self._prefilling) + len(self._rows) >= self.max_rows:
                    return
                r = self._pending.popleft()
            r.started_at = time.time()
            r._cache = make_prompt_cache(self.model)
            r._detok = self.tokenizer.detokenizer
            r._rng = np.random.default_rng(r.params.seed)
            self._prefilling.append(r)

    def _prefill_step(self) -> None:
        """One chunk of one prefilling request's prompt (all but its last token): the first
        in line, which then goes to the back of the line ("fair": round robin; a smaller chunk
        while rows decode) or stays first until its prompt is done ("fcfs"). Newly admitted
        requests join at the back."""
        r = self._prefilling[0]  # stays listed while its forward runs: a failed step fails it too
        todo = r.prompt[:-1]
        fair = self.prefill_policy == "fair"
        size = self.decode_prefill_chunk if fair and self._rows else self.prefill_chunk
        chunk = todo[r._prefilled:r._prefilled + size]
        if chunk:
            self._plan.begin([r.adapters], self._mounted)
            self._prefill_model(mx.array([chunk]), cache=r._cache)
            mx.eval([c.state for c in r._cache])
            r._prefilled += len(chunk)
        if r._prefilled >= len(todo):
            self._prefilling.pop(0)
            r._next_input = r.prompt[-1]
            self._join(r)
        elif fair:
            self._prefilling.append(self._prefilling.pop(0))

    def _decode_step(self) -> None:
        rows = list(self._rows)
        inputs = mx.array([[r._next_input] for r in rows], dtype=mx.int32)
        if self._slots is not None:
            self._plan.begin([r.adapters for r in rows], self._mounted)
            logits = self.model(inputs, cache=self._slots.step_views())[:, -1, :]
        else:
            outs = []
            for i, r in enumerate(rows):
                self._plan.begin([r.adapters], self._mounted)
                outs.append(self.model(inputs[i:i + 1], cache=r._cache)[:, -1, :])
                mx.eval(outs[-1])
            logits = mx.concatenate(outs, axis=0)
        greedy = mx.argmax(logits, axis=-1)
        mx.eval(greedy, logits)
        if self._slots is not None:
            self._slots.advance()
        greedy = greedy.tolist()
        sampled = [i for i, r in enumerate(rows) if r.params.temperature > 0]
        host = np.array(logits[mx.array(sampled)].astype(mx.float32)) if sampled else None
        self.steps += 1
        now = time.time()
        finished = []
        for i, r in enumerate(rows):
            if i in sampled:
                tok = sample_token(host[sampled.index(i)], r.params.temperature, r.params.top_p, r._rng)
            else:
                tok = greedy[i]
            if r.first_token_at is None:
                r.first_token_at = now
            r.token_ids.append(tok)
            self.tokens_generated += 1
            if self._advance(r, tok):
                finished.append(r)
        self._leave(finished)

    def _advance(self, r: Generation, tok: int) -> bool:
        """Feed one sampled token to the request's text; emit; True when it is finished."""
        reason = None
        if tok in self.eos_ids:
            reason = "stop"
        else:
            r._detok.add_token(tok)
            r._raw += r._detok.last_segment
            if r.completion_tokens >= r.params.max_tokens:
                reason = "length"
        if reason is not None:
            r._detok.finalize()
            r._raw += r._detok.last_segment
        stops = r.params.stop
        new_ids = [tok]
        if stops:
            hits = [(r._raw.find(s, len(r.text)), s) for s in stops]
            hits = [h for h in hits if h[0] >= 0]
            if hits:
                cut = min(h[0] for h in hits)
                self._emit(r, r._raw[len(r.text):cut], new_ids)
                self._finish(r, "stop")
                return True
        end = len(r._raw) if reason is not None or not stops else len(r._raw) - _stop_holdback(r._raw, stops)
        text = r._raw[len(r.text):end]
        if reason is not None:
            self._emit(r, text, new_ids, final=reason)
            return True
        if text or new_ids:
            self._emit(r, text, new_ids)
        r._next_input = tok
        return False

    def _emit(self, r: Generation, text: str, ids: list[int], final: str | None = None) -> None:
        r.text += text
        if final is not None:
            self._finish(r, final, text=text, ids=ids)
            return
        self._deliver(r, Chunk(text, ids))

    def _finish(self, r: Generation, reason: str, *, text: str = "", ids: list[int] | None = None,
                error: str | None = None) -> None:
        if r.done:
            return
        r.finish_reason = reason
        r.error = error
        r.finished_at = time.time()
        r._cache = None  # frees the row's KV cache
        r._detok = None
        self._deliver(r, Chunk(text, ids or [], reason, error))
        r._done.set()

    def _deliver(self, r: Generation, chunk: Chunk) -> None:
        try:
            r._on_chunk(chunk)
        except Exception:  # a receiver that is gone (closed event loop): stop its request
            log.debug("delivering to %s failed", r.id, exc_info=True)
            r._cancel = True


__all__ = ["AdapterInUse", "BASE", "Chunk", "Engine", "EngineClosed", "EngineError", "Generation", "SlotBatch",
           "SamplingParams", "UnknownAdapter", "combination_id", "sample_token"]
