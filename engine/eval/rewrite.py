"""The eval's rewrites: every (held-out sample, model choice) pair generated in one batched run on
our engine (engine/generate/), each generation with its own adapter selection ("base", "sft",
"sft+dpo") and its own seed, so one decode step serves every choice at once.

- Prompt: the sample's "prompt" (the rewrite instruction with the draft, exactly what the model
  was trained on) as one user chat message, through the model's chat template.
- Seed: `rewrite_seed(seed, key, choice)`, one per (sample, choice), the same whatever batch
  the generation lands in; a generation draws its own random numbers (engine/generate/), so
  a rewrite equals the same prompt generated alone with that adapter and seed.
- Length: `max_tokens` when given, else 1.6x the draft's tokens + 24, never past the context.
  A prompt that does not fit the model's context is not generated: it gets an empty rewrite
  with finish "error" and the reason (counted by the caller, scored nowhere).
- Cache: each finished chunk of `rows * CHUNK_BATCHES` generations is appended to
  `rewrites.jsonl` in the run folder before the next starts, so a cancelled eval continues
  (`--resume`) with only the missing rewrites.
- Ranks: under `mlx.launch` each rank rewrites its shard of every round of chunks
  (engine/distributed/spread.py); the writer alone keeps the cache file and reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.data.build import seed_of
from engine.errors import HumanizerError
from engine.events import ChunkProgress, NullRun, Run

if TYPE_CHECKING:
    from engine.distributed.world import World

CACHE = "rewrites.jsonl"
CHUNK_BATCHES = 4
SAMPLE_EVERY = 8.0  # seconds between two sample events
TOO_LONG = "prompt longer than the model's context"


@dataclass
class Job:
    key: str  # the held-out sample's key
    choice: str  # the choice's label ("base", "sft", "sft+dpo")
    adapter: str  # the engine's adapter spec for it
    prompt: str
    draft: str
    human: str
    seed: int

    @property
    def id(self) -> tuple[str, str]:
        return (self.key, self.choice)


def rewrite_seed(seed: int, key: str, choice: str) -> int:
    return seed_of(seed, f"{key}|{choice}")


def max_tokens_for(draft_tokens: int) -> int:
    """Room for a rewrite a bit longer than its draft, not for a loop."""
    return int(1.6 * draft_tokens) + 24


class RewriteCache:
    """Rewrites done so far, by (key, choice), in `folder/rewrites.jsonl` (appended chunk by chunk;
    a torn last line is dropped and that rewrite is written again); in memory only when `folder`
    is None (a rank that is not the writer)."""

    def __init__(self, folder: Path | None):
        self.path = Path(folder) / CACHE if folder is not None else None
        self.done: dict[tuple[str, str], dict] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.done[(rec["key"], rec["choice"])] = rec
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, records: list[dict]) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                f.flush()
        for r in records:
            self.done[(r["key"], r["choice"])] = r


def _submit(engine, job: Job, max_tokens: int, temperature: float, top_p: float):
    """(Generation or None, record so far). None when the prompt does not fit the context."""
    from engine.generate import SamplingParams

    tokens = engine.encode_chat([{"role": "user", "content": job.prompt}])
    limit = max_tokens or max_tokens_for(len(engine.encode(job.draft)))
    rec = {"key": job.key, "choice": job.choice, "adapter": job.adapter, "seed": job.seed,
           "prompt_tokens": len(tokens), "max_tokens": limit}
    ctx = engine.context_length
    if ctx and len(tokens) >= ctx:
        rec.update(text="", finish="error", tokens=0, error=f"{TOO_LONG} ({len(tokens)} tokens of {ctx})")
        return None, rec
    if ctx:
        limit = rec["max_tokens"] = min(limit, ctx - len(tokens))
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=limit, seed=job.seed)
    return engine.submit(tokens, job.adapter, params), rec


def rewrite_all(engine, jobs: list[Job], cache: RewriteCache, run: Run = NullRun(), *, temperature: float,
                top_p: float, max_tokens: int = 0, rows: int = 8,
                w: World | None = None) -> dict[tuple[str, str], dict]:
    """Generate every job not in `cache` on `engine` (started, adapters mounted), chunk by chunk,
    caching each chunk. Returns (key, choice) -> record {text, finish, tokens, seed, ...} for
    every job. A generation that fails in the engine stops the run (the cache keeps what was done).
    With several ranks (w) each rank generates its shard of each round; every rank gets them all."""
    from engine.distributed.spread import in_rounds
    from engine.distributed.world import ONE

    todo = [j for j in jobs if j.id not in cache.done]
    total = len(jobs)
    run.progress(total - len(todo), total, f"rewrites: {total - len(todo)} of {total} from the cache"
                 if len(todo) < total else "rewriting")
    progress = ChunkProgress(run, total, total - len(todo), "rewrites", SAMPLE_EVERY)

    def rewrite(chunk: list[Job]) -> list[dict]:
        pending = []
        try:
            for job in chunk:
                pending.append(_submit(engine, job, max_tokens, temperature, top_p))
            records = []
            for gen, rec in pending:
                if gen is not None:
                    gen.result()
                    if gen.finish_reason in ("error", "cancelled"):
                        raise HumanizerError(
                            f"the model failed while rewriting {rec['key']} ({rec['choice']}): "
                            f"{gen.error or gen.finish_reason}",
                            f"fix the cause and run the same command with --resume: the {len(cache.done)} "
                            "rewrites written so far are kept")
                    rec.update(text=gen.text, finish=gen.finish_reason or "stop", tokens=gen.completion_tokens)
                records.append(rec)
        except BaseException:
            for gen, _ in pending:
                if gen is not None:
                    gen.cancel()
            raise
        return records

    def cached(chunk: list[Job], records: list[dict]) -> None:
        cache.add(records)
        job, rec = chunk[-1], records[-1]
        progress.advance(len(chunk), lambda: {"key": job.key, "choice": job.choice, "draft": job.draft,
                                              "human": job.human, "rewrite": rec["text"]})

    in_rounds(todo, max(1, rows) * CHUNK_BATCHES, rewrite, w or ONE, cached)
    if todo:
        run.metric(total, rewrites_per_s=round(progress.rate, 3))
    return {j.id: cache.done[j.id] for j in jobs}
