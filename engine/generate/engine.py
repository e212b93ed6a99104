"""The engine: one model in memory, one worker thread that owns it, every request decoded together.

Requests arrive from any thread (`Engine.submit`) and are decoded together by the worker thread
(continuous batching): a request is admitted when a row is free, its prompt is prefilled on its
own (in chunks of `prefill_chunk` tokens, interleaved with the decode steps of the running rows),
then it joins the running batch (engine/generate/slots.py); a finished or cancelled request
leaves the batch at once and frees its row.

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

A decode step runs the model once on the (rows, 1) token batch: embeddings and every linear
layer (projections, MLP, LoRA terms, lm_head) are batched matmuls, attention is per row
(engine/generate/attention.py), and each row uses its own adapters (engine/generate/plan.py).
A model the row attention does not fit decodes in "serial" mode (each row its own forward per
step). A request alone (one row) takes exactly mlx-lm's single-row decode path.

Adapters can be mounted and unmounted while serving; the worker applies the change
between two steps. A DPO delta mounts only with its parent; an adapter for another base
is refused. Unmounting an adapter that a queued or running request uses is REFUSED
(AdapterInUse, naming how many requests use it): retry when they are done, or cancel them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

import mlx.core as mx
import numpy as np

from engine import adapters as A
from engine.adapters import layers as lora
from engine.errors import AdapterInUse, EngineClosed, EngineError, HumanizerError, UnknownAdapter
from engine.fastops import cpu_fast_ops
from engine.generate.attention import (ROW_BATCHED_MODULES, check_row_batching, install_row_attention,
                                       remove_row_attention)
from engine.generate.plan import AdapterPlan, install_plan
from engine.generate.requests import BASE, Chunk, Generation, SamplingParams, combination_id
from engine.generate.sampling import sample_token
from engine.generate.slots import SlotBatch
from engine.generate.threads import run_in_worker_thread

log = logging.getLogger("humanizer.generate")

PREFILL_POLICIES = ("fair", "fcfs")
MAX_LISTED_COMBINATIONS = 256


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
        if batched is not False and install_row_attention(model):
            spec = check_row_batching(model, self._prefill_model)
            if spec is not None:
                self.mode = "batched"
                self._slots = SlotBatch(self.n_layers, self.max_rows, spec)
            else:
                remove_row_attention(model)
                log.warning("row-batched attention does not match this model's forward; decoding rows serially")
        elif batched:
            raise HumanizerError(f"batched decoding does not support this model ({type(model).__module__})")
        self._plan = AdapterPlan()
        install_plan(model, self._plan)
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

    def start(self) -> "Engine":
        with self._cv:
            if self._stopped is None:
                self._stopped = run_in_worker_thread(self._worker, "humanizer-generate")
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
        install_plan(self.model, self._plan)
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
                        r._finish("error", error=f"{type(e).__name__}: {e}")
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
                r._finish("cancelled")
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
                r._finish("cancelled")

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
            if r._feed(tok, self.eos_ids):
                finished.append(r)
        self._leave(finished)
