"""Batched multi-adapter generation: one worker thread owns the model and decodes every request
together, each row with its own adapter selection ("base", "a", "a+b", ...).

    engine.py     Engine: the queue, fair chunked prefill, the decode step, mount/unmount
    requests.py   SamplingParams, Chunk, Generation (a request's handle and its text, stop strings)
    slots.py      SlotBatch: the per-row KV caches of the rows decoded together
    attention.py  row attention over the slot batch (llama-style models), checked at start
    plan.py       AdapterPlan: every row's own adapters in one forward
    sampling.py   sample_token: temperature and top_p with the request's own generator
    threads.py    the long-lived worker threads (MLX aborts when one exits at process end)

Greedy output under mixed load equals the output served alone: each row's attention is its own,
and batched matmuls differ from single-row ones at most in the last bits (BLAS kernels block rows
differently), far below the gaps between competing tokens (tested on a tiny model and on
SmolLM2-135M). Sampling is per request (temperature, top_p, seed, max_tokens, stop strings) with
the request's own random generator, so a seeded request draws the same numbers whatever else runs
beside it. The error types live in engine/errors.py."""

from engine.errors import AdapterInUse, EngineClosed, EngineError, UnknownAdapter
from engine.generate.engine import MAX_LISTED_COMBINATIONS, PREFILL_POLICIES, Engine
from engine.generate.requests import BASE, Chunk, Generation, SamplingParams, combination_id
from engine.generate.sampling import sample_token
from engine.generate.slots import SlotBatch

__all__ = ["AdapterInUse", "BASE", "Chunk", "Engine", "EngineClosed", "EngineError", "Generation",
           "MAX_LISTED_COMBINATIONS", "PREFILL_POLICIES", "SlotBatch", "SamplingParams", "UnknownAdapter",
           "combination_id", "sample_token"]
