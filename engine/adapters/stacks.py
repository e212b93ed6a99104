"""Stacks: a delta on its own parent, no weights applied twice; the order to mount adapters in."""

from __future__ import annotations

import itertools
from typing import Mapping

from engine.adapters.checks import copies_note, find_parent, is_recorded_parent
from engine.adapters.folder import AdapterInfo, info_of
from engine.errors import HumanizerError, NeedsParent

# --- stacks: a delta on its own parent, no weights twice ------------------------------


def weight_fingerprints(info: AdapterInfo) -> set[str]:
    """The fingerprints of all the weights an adapter holds: its own, and for a combined adapter
    those of the adapters it was combined from."""
    fps = {info.fingerprint} if info.fingerprint else set()
    for src in (info.config.get("humanizer") or {}).get("combined_from") or []:
        if isinstance(src, dict) and src.get("fingerprint"):
            fps.add(src["fingerprint"])
    return fps


def repeated_weights(a: str, ia: AdapterInfo, b: str, ib: AdapterInfo) -> str | None:
    """Why stacking adapters `a` and `b` would apply the same weights twice, or None."""
    if ia.fingerprint and ia.fingerprint == ib.fingerprint:
        return f"'{a}' and '{b}' have the same weights (fingerprint {ia.fingerprint})"
    if ib.fingerprint in weight_fingerprints(ia):
        return f"'{a}' already holds the weights of '{b}' (it was combined from them)"
    if ia.fingerprint in weight_fingerprints(ib):
        return f"'{b}' already holds the weights of '{a}' (it was combined from them)"
    if weight_fingerprints(ia) & weight_fingerprints(ib):
        return f"'{a}' and '{b}' were combined from the same adapter"
    return None


def stack_of(name: str, mounted: Mapping[str, AdapterInfo | None]) -> tuple[str, ...]:
    """The real stack that ends in `name`: its chain of parents (each delta on the adapter it is
    stacked on), root first. Stops where a parent is missing (then the chain is incomplete)."""
    chain = [name]
    cur = mounted.get(name)
    while cur is not None and cur.parent:
        parent = cur.stacked_on or find_parent(cur, mounted)
        if parent is None or parent in chain:
            break
        chain.insert(0, parent)
        cur = mounted.get(parent)
    return tuple(chain)


def real_stacks(mounted: Mapping[str, AdapterInfo | None]) -> list[tuple[str, ...]]:
    """The stacks worth offering, smallest first, then in mount order: base (), and for each mounted
    adapter the chain that ends in it, when complete (no delta without its parent) and applying
    no weights twice. Unrelated adapters summed are not "real" stacks (a request may still ask)."""
    out: list[tuple[str, ...]] = [()]
    for name in mounted:
        chain = stack_of(name, mounted)
        root = mounted.get(chain[0])
        if root is None or root.parent:
            continue
        if any(repeated_weights(a, mounted[a], b, mounted[b]) for a, b in itertools.combinations(chain, 2)):
            continue
        if chain not in out:
            out.append(chain)
    return sorted(out, key=len)


def deepest_stack(stacks) -> str:
    """The deepest stack among `stacks` (model ids such as "sft+dpo", or tuples of names), the
    first listed on a tie; "base" when there is none. With /v1/models ids (which are the real
    stacks) this is what a chat should default to."""
    best: tuple[str, ...] = ()
    for s in stacks:
        parts = tuple(p for p in (s.split("+") if isinstance(s, str) else s) if p and p != "base")
        if len(parts) > len(best):
            best = parts
    return "+".join(best) or "base"



def stack_order(adapters) -> list[AdapterInfo]:
    """The adapters with every parent before its deltas (a delta's parent must be among
    them); the same adapter given twice is refused."""
    infos = [info_of(a) for a in adapters]
    seen: dict[str, AdapterInfo] = {}
    for i in infos:
        if i.fingerprint in seen:
            raise HumanizerError(f"adapter '{i.name}' ({i.path}) is given twice (same weights as {seen[i.fingerprint].path})")
        seen[i.fingerprint] = i
    order: list[AdapterInfo] = []
    pending = list(infos)
    while pending:
        progress = False
        for i in list(pending):
            if not i.is_delta or any(is_recorded_parent(i, o, o.name) for o in order):
                order.append(i)
                pending.remove(i)
                progress = True
        if not progress:
            i = pending[0]
            p = i.parent or {}
            raise NeedsParent(
                f"adapter '{i.name}' ({i.path}) is a delta trained on top of adapter '{p.get('name')}' "
                f"(fingerprint {p.get('fingerprint')}), which is not among the adapters given; alone it means nothing"
                + copies_note(i, {o.name: o for o in infos if o is not i}, rename=False),
                f"add its parent '{p.get('name')}' too (--adapter {p.get('path') or p.get('name')}), before it",
            )
    return order


def mountable_together(adapters) -> list[AdapterInfo]:
    """Of `adapters` (e.g. a workspace's that fit a model), the ones one server can mount, in
    stack_order: one adapter per set of weights (the one a delta records as its parent, else the
    first), and each delta only with its recorded parent among them."""
    infos = [info_of(a) for a in adapters]
    keep: dict[str, AdapterInfo] = {}
    for i in infos:
        cur = keep.get(i.fingerprint)
        if cur is None or (not any(is_recorded_parent(d, cur, cur.name) for d in infos)
                           and any(is_recorded_parent(d, i, i.name) for d in infos)):
            keep[i.fingerprint] = i
    kept = list(keep.values())
    while True:  # drop deltas whose parent is gone (chains: until nothing changes)
        left = [i for i in kept if not i.is_delta or any(is_recorded_parent(i, o, o.name) for o in kept)]
        if len(left) == len(kept):
            return stack_order(left)
        kept = left

