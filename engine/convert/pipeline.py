"""The convert as stages over one ConvertState: load the model and its layers, cut the
calibration tokens, open the work folder's state (resume / reused measurements), the
calibration pass, measure every layer, allocate, write (output.write_output). convert_with()
checks the settings and everything that needs no model before any work starts; model_plan()
is what a form shows before a convert."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from engine.convert.allocation import select_allocation
from engine.convert.calibration import (_token_fingerprint, default_heldout, load_calibration, make_samples,
                                        split_check, tokenize_docs)
from engine.convert.fisher import _calibration_pass, _Estimates, _fisher_keys, _mlx_cache
from engine.convert.layers import (EXAMPLE_FAMILIES, _total_params, bpw_range, budget_of, quantizable_layers,
                                   shown_ceiling, shown_floor)
from engine.convert.measure import _measure_all, _unkeyed
from engine.convert.output import (META_FILE, ROUNDING_FILE, ConvertResult, _output_dtype, _source_note,
                                   write_output)
from engine.convert.rounding import fisher_factors
from engine.convert.settings import (DEFAULT_CANDIDATE_BITS, DEFAULT_GROUP_SIZE, FLOAT_BITS, ConvertSettings,
                                     layer_bpw, parse_bits)
from engine.convert.state import ConvertState
from engine.convert.workdir import (FISHER_FILE, STATE_FILE, STATE_VERSION, _load_factors, _load_fisher, _locked,
                                    _meta_folder, _save_fisher, reused_measurements, work_dir_for)
from engine.errors import HumanizerError
from engine.events import NullRun, Run, read_json, write_json


def _architecture_check(model_dir: Path) -> dict:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HumanizerError(f"cannot read {model_dir / 'config.json'}: {e}") from None
    model_type = config.get("model_type")
    try:
        from mlx_lm.utils import _get_classes

        _get_classes(config)
    except (ValueError, ImportError, KeyError, AttributeError):
        import mlx_lm

        raise HumanizerError(
            f"unsupported architecture '{model_type}': mlx-lm {mlx_lm.__version__} has no model of that type",
            f"convert supports text models that mlx-lm loads whose quantizable layers are all nn.Linear and "
            f"nn.Embedding (e.g. {EXAMPLE_FAMILIES})",
        ) from None
    return config


def convert(model_spec, output, *, measurements=None, run: Run = NullRun(), ws=None,
            checkpoint_every: float | None = 300.0, **settings) -> ConvertResult:
    """convert_with() from keyword arguments: `settings` are ConvertSettings' fields (target_bpw
    is required; the rest default there), `measurements` its reuse_measurements."""
    return convert_with(model_spec, ConvertSettings(output=str(output), reuse_measurements=measurements, **settings),
                        run=run, ws=ws, checkpoint_every=checkpoint_every)


def convert_with(model_spec, settings: ConvertSettings, *, run: Run = NullRun(), ws=None,
                 checkpoint_every: float | None = 300.0) -> ConvertResult:
    """Measure, allocate and write a mixed-precision model into settings.output (see the
    package docstring).

    `settings.reuse_measurements`: the humanizer_quant.json of an earlier convert of the same
    source with the same calibration tokens, group size and seed (and these candidate bits
    among its own): its sensitivities are reused and nothing is measured again, e.g. to
    allocate the same model for another --target-bpw.

    `settings.rounding`: "clip" (the Fisher-weighted clip search, see the package docstring)
    or "minmax" (plain mx.quantize rounding, e.g. to see what the allocation alone gives)."""
    t_start = time.perf_counter()
    settings = settings.check()
    output = Path(settings.output).expanduser().resolve()
    work = work_dir_for(output)
    docs, calib_source = load_calibration(settings.calibration, ws)
    held_docs, held_source = ((default_heldout(), "the default held-out text (engine/calibration_heldout.txt)")
                              if settings.heldout is None else load_calibration(settings.heldout, ws))

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        meta = read_json(output / META_FILE) if output.is_dir() else None
        recorded = meta.get("settings", {}) if meta else {}
        if settings.resume and meta and all(recorded.get(k) == v for k, v in settings.recorded().items()):
            run.log(f"{output} already holds the finished conversion: nothing to resume")
            summary = meta.get("summary", {})
            run.done(result=str(output), **summary)
            return ConvertResult(output, summary)
        raise HumanizerError(
            f"{output} already exists" + (" and holds a conversion with other settings" if meta else ""),
            "choose another --output, or remove it first",
        )
    if (work / STATE_FILE).exists() and not settings.resume:
        raise HumanizerError(
            f"an earlier convert into {output} was interrupted; its measurements are in {work}",
            "pass --resume to continue it, or remove that folder to start over",
        )

    # the model -------------------------------------------------------------------------------
    from engine.models import resolve_model

    run.progress(0, None, "resolving the model", phase="load")
    model_dir = Path(resolve_model(model_spec, ws, run))
    config = _architecture_check(model_dir)

    job = ConvertState(settings=settings, model_spec=model_spec, model_dir=model_dir, config=config, output=output,
                       work=work, docs=docs, calib_source=calib_source, held_docs=held_docs, held_source=held_source,
                       run=run, t_start=t_start, checkpoint_every=checkpoint_every)
    with _locked(work):
        return _convert_locked(job)


def _convert_locked(job: ConvertState) -> ConvertResult:
    """The stages, in order, each filling in its part of `job` (see ConvertState)."""
    _load(job)
    _tokens(job)
    _open_state(job)
    _statistics(job)
    _measure(job)
    _allocate(job)
    return write_output(job)


def _load(job: ConvertState) -> None:
    """The float32 model, its quantizable layers and the budget; the target checked against them."""
    import mlx.core as mx

    from engine.adapters.layers import load_model

    run, bits, target = job.run, job.bits, job.target
    run.progress(0, None, f"loading {job.model_dir.name}", phase="load")
    job.source_note = _source_note(job.config, job.model_dir)
    model, job.tokenizer = load_model(job.model_dir, dequantize=True)  # float32, quantized layers dequantized
    model.set_dtype(mx.float32)
    job.model = model
    if job.source_note:
        run.log(job.source_note)
    job.out_dtype_name = _output_dtype(job.config)
    job.out_dtype = getattr(mx, job.out_dtype_name)

    layers = job.layers = quantizable_layers(model, job.settings.group_size)
    job.total_params = _total_params(model)
    job.budget = budget_of(layers, job.total_params)
    lo, hi = bpw_range(layers, job.budget, bits)
    if target < lo - 1e-9:
        raise HumanizerError(
            f"target {target:g} bits per weight is below what this model can reach: with every layer at "
            f"{bits[0]} bits it takes at least {shown_floor(lo):.3f} (norms and layers kept in float16 count too)",
            f"raise --target-bpw to at least {shown_floor(lo):.3f}",
        )
    for layer in layers:
        if layer.note:
            run.log(f"{layer.path}: {layer.note}")
    tied = job.tied = next((layer for layer in layers if len(layer.roles) > 1), None)
    run.log(f"{len(layers)} quantizable layers, {job.total_params:,} parameters; "
            + (f"{tied.path} is shared by the embedding and the output head (tied): one matrix in the budget, "
               "measured for both roles; " if tied else "")
            + f"achievable {lo:.3f} to {hi:.3f} bits per weight")


def _tokens(job: ConvertState) -> None:
    """Calibration windows (the Fisher pass's and the held-back check windows), the held-out
    chunks, and the key a resume or a reuse of measurements must match."""
    from engine import adapters as A

    s = job.settings
    calib = make_samples(tokenize_docs(job.docs, job.tokenizer), s.samples, s.seq_len)
    if not calib:
        raise HumanizerError(f"the calibration text ({job.calib_source}) has fewer than 2 tokens",
                             "pass a longer calibration text")
    if len(calib) < s.samples:
        job.run.log(f"the calibration text gives {len(calib)} samples of {len(calib[0])} tokens "
                    f"(asked for {s.samples})")
    job.calib_all = calib
    job.calib, job.check = split_check(job.calib_all)  # the Fisher pass never sees the check windows
    job.n_tokens = sum(len(x) for x in job.calib)
    held_stream = tokenize_docs(job.held_docs, job.tokenizer)[: max(s.heldout_tokens, 2)]
    held_len = min(s.seq_len, 512)
    held = [held_stream[i:i + held_len] for i in range(0, len(held_stream), held_len)]
    job.held = [c for c in held if len(c) >= max(2, min(held_len, len(held_stream)) // 2)]
    job.calib_fp = _token_fingerprint(job.calib_all)
    job.key = {"source_fingerprint": A.model_fingerprint(job.model_dir), "calibration": job.calib_fp,
               "samples": len(job.calib_all), "seq_len": s.seq_len, "seed": s.seed, "group_size": s.group_size,
               "candidate_bits": job.bits, "rounding": s.rounding, "version": STATE_VERSION}


def _open_state(job: ConvertState) -> None:
    """The work folder's state.json: the interrupted convert's (--resume, same key) or a new one,
    holding the layers an earlier convert measured when its measurements are reused."""
    s, run, work, key = job.settings, job.run, job.work, job.key
    saved = read_json(work / STATE_FILE) if s.resume else None
    if saved is not None:
        diffs = [f"{k}: {saved.get('key', {}).get(k)!r} then, {v!r} now" for k, v in key.items()
                 if saved.get("key", {}).get(k) != v]
        if diffs:
            raise HumanizerError(
                "cannot resume: the settings differ from the interrupted convert (" + "; ".join(diffs) + ")",
                f"resume with the same model, calibration and settings, or remove {work} to start over",
            )
        job.measured = {p: v for p, v in saved.get("layers", {}).items()}
        run.log(f"resuming: {len(job.measured)} of {len(job.layers)} layers already measured")
    else:
        if s.resume:
            run.log("nothing to resume; starting from the beginning")
        for f in (STATE_FILE, FISHER_FILE):
            with contextlib.suppress(FileNotFoundError):
                (work / f).unlink()
        measurements = s.reuse_measurements
        job.measured = reused_measurements(measurements, key, job.layers) if measurements else {}
        if measurements:
            run.log(f"reusing the sensitivities of {len(job.measured)} layers measured by {measurements}")
        saved = {"version": STATE_VERSION, "key": key, "layers": dict(job.measured), "output": str(job.output)}
        write_json(work / STATE_FILE, saved)
    job.saved = saved


def _statistics(job: ConvertState) -> None:
    """The calibration pass (the Fisher sums, from its checkpoint on a resume) when a layer is
    left to measure, then the rounding factors: from those sums, or saved by the measuring run."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    s, run, work, layers, calib = job.settings, job.run, job.work, job.layers, job.calib
    job.t_measure = time.perf_counter()
    job.params = dict(tree_flatten(job.model.parameters()))
    job.todo = [layer for layer in layers if layer.quantized and layer.path not in job.measured]
    fisher_keys = _fisher_keys(layers)
    if job.todo:
        fisher, done = _load_fisher(work, fisher_keys) if s.resume else (None, 0)
        if fisher is None:
            fisher, done = {}, 0
            for layer in layers:
                if layer.quantized:
                    fisher[layer.path] = mx.zeros(layer.shape, dtype=mx.float32)
                    if len(layer.roles) > 1:
                        for r in layer.roles:
                            fisher[f"{layer.path}#{r}"] = mx.zeros(layer.shape, dtype=mx.float32)
        elif done:
            run.log(f"resuming the calibration pass after sample {done} of {len(calib)}")
        if done < len(calib):
            t = time.perf_counter()
            run.log(f"calibration pass: {len(calib)} samples x {len(calib[0])} tokens from {job.calib_source}")

            def checkpoint(k, sums):
                _save_fisher(work, sums, k)

            estimate = _Estimates(layers, job.params, job.bits, calib, job.budget, job.target, job.out_dtype, run)
            with _mlx_cache(job.model):
                fisher = _calibration_pass(job.model, layers, calib, s.seed, fisher, done, run, checkpoint,
                                           job.checkpoint_every, job.t_measure, on_sample=estimate)
            job.stats_seconds = time.perf_counter() - t
        tied = job.tied
        if tied is not None and tied.quantized and float(fisher[f"{tied.path}#head"].sum().item()) == 0.0:
            run.log(f"warning: the model never used {tied.path} as its output head; measured as an embedding only")
        job.fisher = fisher
    if s.rounding == "clip":
        if job.todo:
            job.factors = fisher_factors(layers, job.fisher)
            mx.save_safetensors(str(work / ROUNDING_FILE), job.factors)
        else:  # everything measured before (resume) or by an earlier convert (measurements=)
            measurements = s.reuse_measurements
            job.factors = _load_factors(work / ROUNDING_FILE) if (work / ROUNDING_FILE).is_file() else \
                _load_factors(_meta_folder(measurements) / ROUNDING_FILE) if measurements else None
            if job.factors is None:
                raise HumanizerError("the rounding factors of the earlier measurements are missing",
                                     f"remove {work} and convert again without --resume / measurements")


def _measure(job: ConvertState) -> None:
    """Every layer not measured yet; on a stop, the finished Fisher sums are kept for --resume."""
    try:
        _measure_all(job, time.perf_counter())
    except BaseException:
        if job.todo and len(job.measured) < sum(1 for layer in job.layers if layer.quantized):
            with contextlib.suppress(Exception):  # the pass is done: keep it for --resume
                _save_fisher(job.work, job.fisher, len(job.calib))
        raise
    job.fisher = None  # free the Fisher sums before writing


def _allocate(job: ConvertState) -> None:
    """The bits per layer (select_allocation), reported as `layer` events and a metric."""
    run, layers, target, budget = job.run, job.layers, job.target, job.budget
    run.progress(0, 1, f"allocating bits for {target:g} bits per weight", phase="allocate")
    sens = {p: _unkeyed(v["sensitivity"]) for p, v in job.measured.items()}
    job.chosen, job.selection, job.kept = select_allocation(job.model, layers, sens, job.bits, budget, target,
                                                            job.check, job.params, job.factors, job.out_dtype,
                                                            job.choices, run)
    job.params = None
    chosen = job.chosen
    job.layer_bits = sum(layer.cost_bits(chosen[layer.path]) for layer in layers if layer.quantized)
    job.planned_bpw = budget.bpw(job.layer_bits)
    job.predicted_kl = sum(sens[layer.path][chosen[layer.path]] for layer in layers if layer.quantized)
    job.measure_seconds = time.perf_counter() - job.t_measure
    for idx, layer in enumerate(layers):
        b = chosen[layer.path]
        ev = {**layer.describe(), "phase": "allocated", "index": idx, "total": len(layers),
              "bits_measured": job.bits if layer.quantized else [], "sensitivity": job.measured.get(
                  layer.path, {}).get("sensitivity", {}),
              "chosen_bits": b if layer.quantized else FLOAT_BITS,
              "bpw": layer_bpw(b, layer.group_size) if layer.quantized else float(FLOAT_BITS)}
        if "role_sensitivity" in job.measured.get(layer.path, {}):
            ev["role_sensitivity"] = job.measured[layer.path]["role_sensitivity"]
        run.emit("layer", **ev)
    job.check_kl = job.selection[job.kept].get("check_kl")
    run.metric(len(layers), achieved_bpw=job.planned_bpw, target_bpw=target, predicted_kl=job.predicted_kl,
               size_mb=job.planned_bpw * job.total_params / 8 / 1e6,
               **({"check_kl": job.check_kl} if job.check_kl else {}))
    run.progress(1, 1, f"allocated: {job.planned_bpw:.4f} bits per weight (target {target:g})", phase="allocate")
    run.log(f"sensitivity measurement and allocation took {job.measure_seconds:.1f} s "
            f"(calibration pass {job.stats_seconds:.1f} s)")


def model_plan(model_spec, group_size: int = DEFAULT_GROUP_SIZE, candidate_bits=DEFAULT_CANDIDATE_BITS,
               ws=None) -> dict:
    """What a convert of this model would measure, and what a target means in MB (for a form):
    {"params", "layers": [...], "min_bpw", "max_bpw", "bytes_per_bpw", "target_min", "target_max"}, the
    last two the range a --target-bpw may take here, rounded inward to 3 decimals (shown_floor:
    a form that shows them shows numbers it accepts). Loads no weights."""
    from mlx_lm.utils import load_model as mlx_load_model

    from engine.models import resolve_model

    bits = parse_bits(candidate_bits)
    model_dir = Path(resolve_model(model_spec, ws))
    _architecture_check(model_dir)
    model, _ = mlx_load_model(model_dir, lazy=True)
    layers = quantizable_layers(model, int(group_size))
    total = _total_params(model)
    budget = budget_of(layers, total)
    lo, hi = bpw_range(layers, budget, bits)
    return {"path": str(model_dir), "params": total, "layers": [layer.describe() for layer in layers],
            "min_bpw": lo, "max_bpw": hi, "bytes_per_bpw": total / 8, "target_min": shown_floor(lo),
            "target_max": shown_ceiling(min(hi, layer_bpw(bits[-1], int(group_size))))}
