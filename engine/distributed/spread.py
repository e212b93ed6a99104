"""Item-by-item work (a data build's generations, an eval's rewrites) spread over the ranks in
rounds, with the writer alone owning the files.

Every rank runs the same job code; the writer (rank 0) reads and writes the job's folder. What
only the writer's disk holds (a resume cache, a check that the output is free) reaches the other
ranks through `on_writer`. The work itself goes in rounds (`in_rounds`): each round is a slice of
the items in their global order, each rank computes its shard of it, and every rank gets the
round's results in that order, so the writer can cache and report after each round. Results
therefore depend only on each item (its own seed), never on how many ranks there are.

A HumanizerError on one rank is raised on every rank after the collective it would have missed,
so no rank waits for a peer that gave up (a rank that crashes is mlx.launch's to stop)."""

from __future__ import annotations

from typing import Callable

from engine.distributed.world import World, gather_objects, shard
from engine.errors import HumanizerError


def _raise_first(parts: list, mine: HumanizerError | None) -> None:
    """Raise this rank's own error, else the first rank's (in rank order), if any rank had one."""
    if mine is not None:
        raise mine
    first = next((p["error"] for p in parts if p.get("error")), None)
    if first:
        raise HumanizerError(*first)


def on_writer(fn: Callable[[], object], w: World):
    """fn() run by the writer alone; its JSON-able result on every rank. A HumanizerError it
    raises is raised on every rank."""
    if w.size == 1:
        return fn()
    out, err = None, None
    if w.writer:
        try:
            out = fn()
        except HumanizerError as e:
            err = e
    sent = {"out": out, "error": [err.message, err.hint] if err else None} if w.writer else {}
    got = gather_objects(sent, w)[0]
    _raise_first([got], err)
    return got["out"]


def in_rounds(items: list, per_rank: int, compute: Callable[[list], list], w: World,
              done: Callable[[list, list], None]) -> None:
    """compute(part) -> one JSON-able result per item, over rounds of `per_rank * w.size` items:
    each rank computes its shard of the round; done(round items, results in their order) is then
    called on every rank. A HumanizerError from compute on any rank is raised on every rank and
    the round's results are dropped (nothing of a failed round is cached, as with one process)."""
    step = max(1, per_rank) * w.size
    for i in range(0, len(items), step):
        chunk = items[i:i + step]
        if w.size == 1:
            done(chunk, compute(chunk))
            continue
        mine, err = shard(len(chunk), w), None
        try:
            part = {"rows": compute([chunk[j] for j in mine])}
        except HumanizerError as e:
            err, part = e, {"error": [e.message, e.hint]}
        parts = gather_objects(part, w)
        _raise_first(parts, err)
        done(chunk, [r for p in parts for r in p["rows"]])
