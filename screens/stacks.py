"""Which adapter stacks make sense, from the adapters' metadata only (no weights read).

A stack must never hold the same weights twice: a copy of an adapter (same fingerprint)
or a combined adapter together with one of its sources (`humanizer lora combine sft dpo`
holds sft and dpo already) would apply them twice. The sensible default is the deepest
real stack: a delta (DPO) on its recorded parent ("humanizer.parent" in
adapter_config.json), that one on its own parent, and so on; a combined adapter only when
nothing else is there. The Server form ticks that stack, Chat picks it first.

The engine refuses repeated stacks itself; these pure functions let the screens offer only
the good ones and name the problem in a form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Layer:
    name: str
    fingerprint: str
    parent: str | None  # the parent's fingerprint, for a delta
    holds: frozenset  # fingerprints of the weights it carries: its own, and a combined adapter's sources'

    @property
    def combined(self) -> bool:
        return len(self.holds) > 1


def layer(name: str, fingerprint: str | None, humanizer: dict | None) -> Layer:
    """A Layer from an adapter's name, fingerprint and the "humanizer" table of its config."""
    hz = humanizer if isinstance(humanizer, dict) else {}
    fp = fingerprint or f"name:{name}"
    parent = hz.get("parent") if isinstance(hz.get("parent"), dict) else {}
    sources = {s.get("fingerprint") for s in hz.get("combined_from") or [] if isinstance(s, dict)}
    return Layer(name, fp, parent.get("fingerprint") or None, frozenset({fp} | (sources - {None})))


def from_info(info) -> Layer:
    """A Layer from an engine AdapterInfo."""
    return layer(info.name, info.fingerprint, (info.config or {}).get("humanizer"))


def from_mounted(mounted: list[dict]) -> list[Layer]:
    """Layers from the server's /v1/adapters entries (mount order), each with the "humanizer"
    table of its adapter_config.json when the monitor could read it; without it, the parent
    is the mounted adapter named as the recorded parent."""
    by_name = {str(d.get("name")): d.get("fingerprint") or f"name:{d.get('name')}" for d in mounted}
    out = []
    for d in mounted:
        hz = d.get("humanizer")
        if not isinstance(hz, dict):
            parent = d.get("parent")
            hz = {"parent": {"fingerprint": by_name.get(str(parent))}} if parent else {}
        out.append(layer(str(d.get("name")), d.get("fingerprint"), hz))
    return out


def repeats(layers: Iterable[Layer]) -> list[tuple[str, str]]:
    """(a, b) for each two layers that hold some of the same weights, in order."""
    layers = list(layers)
    return [(a.name, b.name) for i, a in enumerate(layers) for b in layers[i + 1:] if a.holds & b.holds]


def _chain(top: Layer, by_fp: dict[str, Layer]) -> list[Layer] | None:
    """`top` and its parents, parent first; None when a parent is missing (or a cycle)."""
    chain, seen = [top], {top.fingerprint}
    while chain[0].parent is not None:
        parent = by_fp.get(chain[0].parent)
        if parent is None or parent.fingerprint in seen:
            return None
        chain.insert(0, parent)
        seen.add(parent.fingerprint)
    return chain


def deepest_stack(layers: Iterable[Layer]) -> list[str]:
    """The names of the deepest real stack among `layers`, in their given order: the longest
    delta-on-parent chain of adapters that are not combined ones (a combined one only when
    there is nothing else; the first one on a tie). [] when there are none."""
    layers = list(layers)
    by_fp: dict[str, Layer] = {}
    for a in layers:
        by_fp.setdefault(a.fingerprint, a)
    tops = [a for a in layers if not a.combined] or layers
    best: list[Layer] = []
    for top in tops:
        chain = _chain(top, by_fp)
        if chain and len(chain) > len(best) and not repeats(chain):
            best = chain
    names = {a.name for a in best}
    return [a.name for a in layers if a.name in names]


def default_choice(choices: list[str], layers: list[Layer]) -> str | None:
    """The server model id to use first: the deepest real stack when the server offers it,
    else the first single adapter, else base (never the longest id: it may repeat weights)."""
    if not choices:
        return None
    best = "+".join(deepest_stack(layers))
    if best in choices:
        return best
    return next((c for c in choices if c != "base" and "+" not in c), choices[0])
