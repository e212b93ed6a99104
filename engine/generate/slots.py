"""The slot batch: the per-row KV caches of the rows decoded together (per-row positions, no
left padding).

A request is prefilled alone with the model's own forward into its own mlx-lm KVCache (the
mlx-lm single-stream code path); it then joins a `SlotBatch`: per layer one keys/values buffer
with a slot per row; the row's cache is copied into the next free slot, and a leaving row's
slot is filled by moving the last row into it, so the rows are always slots 0..B-1. A decode
step hands the model one `SlotLayer` per layer in place of its cache: each row's new key/value
is written at its own position (one scatter per layer) and the attention (engine/generate/
attention.py) runs over each row's own keys only (a mask when rows have different lengths)."""

from __future__ import annotations

import mlx.core as mx


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
