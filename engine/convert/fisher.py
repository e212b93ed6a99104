"""The calibration pass: the Fisher diagonal from squared gradients of labels sampled from
the float model, one forward+backward per calibration window, with provisional layer
estimates while it runs."""

from __future__ import annotations

import contextlib
import os
import time

from engine.convert.allocation import plan_allocation
from engine.convert.layers import QLayer
from engine.convert.measure import _keyed, measure_layer


ESTIMATE_EVERY, ESTIMATE_SHARE = 30.0, 0.05  # layer estimates during the calibration pass: how often, what cost


@contextlib.contextmanager
def _mlx_cache(model):
    """Let MLX keep freed buffers for reuse during the calibration pass. Its CPU default (32 MB)
    returns every gradient-sized buffer to the OS after each step, and taking them back
    page-faults: about a fifth of the pass's wall time on SmolLM2-135M."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * weights
    want = min(6 * weights, ram // 4)
    old = mx.set_cache_limit(want)
    if old > want:  # never lower it (Metal's default is already large)
        mx.set_cache_limit(old)
    try:
        yield
    finally:
        mx.set_cache_limit(old)
        mx.clear_cache()


def _two_role_embedding(weight):
    import mlx.nn as nn

    class TwoRoleEmbedding(nn.Module):
        """A tied embedding split in two parameters with the same values: `weight` for the
        lookup and `head_weight` for the output head, so each role gets its own gradient."""

        def __init__(self, w):
            super().__init__()
            self.weight = w
            self.head_weight = w

        def __call__(self, x):
            return self.weight[x]

        def as_linear(self, x):
            return x @ self.head_weight.T

    return TwoRoleEmbedding(weight)


def _fisher_keys(layers: list[QLayer]) -> list[str]:
    keys = []
    for layer in layers:
        if not layer.quantized:
            continue
        keys.append(layer.path)
        if len(layer.roles) > 1:
            keys += [f"{layer.path}#{r}" for r in layer.roles]
    return keys


def _calibration_pass(model, layers, samples, seed, fisher, start, run, checkpoint, checkpoint_every, t0,
                      on_sample=None):
    """Accumulate the Fisher diagonal (squared gradients, labels sampled from the model) over
    samples[start:], adding to `fisher` (_fisher_keys -> sums over samples[:start]); returns
    the sums over all samples. `checkpoint(done, sums)` is called now and then and when the
    pass stops early; `on_sample(done, sums)` after every sample."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    modules = dict(model.named_modules())
    tied = next((layer for layer in layers if len(layer.roles) > 1 and layer.quantized), None)
    original = None
    if tied is not None:
        original = modules[tied.path]
        model.update_modules(tree_unflatten([(tied.path, _two_role_embedding(original.weight))]))
        modules = dict(model.named_modules())
    model.eval()
    model.freeze()
    for layer in layers:
        if layer.quantized:
            keys = ["weight", "head_weight"] if layer is tied else ["weight"]
            modules[layer.path].unfreeze(keys=keys, recurse=False)

    def loss_fn(m, x, key):
        logits = m(x).astype(mx.float32)
        labels = mx.random.categorical(mx.stop_gradient(logits), key=key)
        return nn.losses.cross_entropy(logits, labels, reduction="sum")

    value_and_grad = nn.value_and_grad(model, loss_fn)
    keys = mx.random.split(mx.random.key(seed), max(len(samples), 1))
    acc = (start, dict(fisher))  # (samples done, their sums): replaced in one assignment, so a signal
    last_save = time.perf_counter()  # between two statements never pairs sums with the wrong count
    t_pass = time.perf_counter()
    try:
        for i in range(start, len(samples)):
            x = mx.array([samples[i]])
            _, grads = value_and_grad(model, x, keys[i])
            flat = dict(tree_flatten(grads))
            sums = dict(acc[1])
            for layer in layers:
                if not layer.quantized:
                    continue
                g = flat[f"{layer.path}.weight"]
                if layer is tied:
                    gh = flat[f"{layer.path}.head_weight"]
                    sums[f"{layer.path}#embedding"] = sums[f"{layer.path}#embedding"] + g * g
                    sums[f"{layer.path}#head"] = sums[f"{layer.path}#head"] + gh * gh
                    g = g + gh
                sums[layer.path] = sums[layer.path] + g * g
            mx.eval(sums)
            del grads, flat
            acc = (i + 1, sums)
            done = i + 1
            per = (time.perf_counter() - t_pass) / (done - start)
            run.progress(done, len(samples), f"calibration pass: sample {done}/{len(samples)}",
                         eta=round(per * (len(samples) - done), 1), phase="statistics",
                         tokens_per_second=round(len(samples[i]) / per, 1) if per else None,
                         elapsed=round(time.perf_counter() - t0, 1))
            if on_sample is not None:
                on_sample(*acc)
            if checkpoint_every is not None and time.perf_counter() - last_save > checkpoint_every \
                    and done < len(samples):
                checkpoint(*acc)
                last_save = time.perf_counter()
    except BaseException:
        if acc[0] > start:
            with contextlib.suppress(Exception):  # never hide why the pass stopped
                checkpoint(*acc)
        raise
    finally:
        if tied is not None:
            model.update_modules(tree_unflatten([(tied.path, original)]))
        model.unfreeze()
    return acc[1]


class _Estimates:
    """Layer estimates while the calibration pass runs (it is most of a convert's time, and no
    layer is measured before it ends): every layer's sensitivity from the Fisher sums so far
    (plain min/max rounding, the quick kind) and the bits an allocation of those would give,
    emitted as `layer` events with phase "estimate". After the first sample, then as often
    as keeps their cost to ESTIMATE_SHARE of the pass (at least ESTIMATE_EVERY s apart); never
    after the last sample, which the real measuring follows."""

    def __init__(self, layers, params, bits, calib, budget, target, dtype, run):
        self.layers, self.params, self.bits, self.calib = layers, params, bits, calib
        self.budget, self.target, self.dtype, self.run = budget, target, dtype, run
        self.next_at = 0.0

    def __call__(self, done: int, sums: dict) -> None:
        if done >= len(self.calib) or time.perf_counter() < self.next_at:
            return
        t = time.perf_counter()
        tokens = sum(len(s) for s in self.calib[:done])
        q = [layer for layer in self.layers if layer.quantized]
        sens = {layer.path: measure_layer(layer, self.params[f"{layer.path}.weight"], sums, self.bits, tokens,
                                          self.dtype)["sensitivity"] for layer in q}
        chosen = plan_allocation(self.layers, sens, self.bits, self.budget, self.target)
        for idx, layer in enumerate(self.layers):
            if layer.quantized:
                self.run.emit("layer", **layer.describe(), phase="estimate", index=idx, total=len(self.layers),
                              samples=done, of=len(self.calib), sensitivity=_keyed(sens[layer.path]),
                              chosen_bits=chosen[layer.path])
        cost = time.perf_counter() - t
        self.next_at = time.perf_counter() + max(ESTIMATE_EVERY, cost / ESTIMATE_SHARE)
