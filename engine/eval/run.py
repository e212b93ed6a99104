"""`humanizer eval`: rewrite a dataset's held-out drafts with every model choice, score them all,
and write the table.

    run folder/report.json     settings, model, adapters, dataset, detectors, the table, headline,
                               counts, timings (layout: `run_eval`)
    run folder/samples.jsonl   one row per held-out sample: draft, human, each choice's rewrite,
                               every score and P(AI), slop hits
    run folder/rewrites.jsonl  the rewrite cache (engine/eval/rewrite.py); eval-state.json says
                               what the rewrites depend on, so `--resume` finds them again

Steps: read the held-out split (engine/eval/heldout.py; a row without a draft or a human
reference is an error naming its file, line and field); resolve the model, adapters and choices;
open every detector (engine/eval/scoring.py: a calibration profile fitted for another model is
refused before anything is generated) and the sentence encoder; rewrite every (sample, choice) in
one batched engine run (engine/eval/rewrite.py); measure the rewrites
(engine/eval/rewrite_metrics.py); score the drafts, the human references and every choice's usable
rewrites with each detector (degenerate rewrites are counted and never scored); pick the headline
detector (engine/eval/scoring.py `pick_headline`); build the table (engine/eval/table.py).

Ranks (under `mlx.launch`): every rank runs the eval; the rewrites and each detector's scoring are
split over them (each rank its shard, gathered in the samples' order) and rank 0 alone reads and
writes the run folder (cache, eval-state.json, report, samples) and the events."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from engine.errors import HumanizerError
from engine.eval.heldout import Sample, heldout_location, manifest_chain, pick_samples, read_heldout
from engine.eval.scoring import (HEADLINE_ORDER, detector_entry, involvement, open_detectors, open_meaning_encoder,
                                 pick_headline, score_rows)
from engine.eval.settings import EvalSettings
from engine.eval.table import HUMAN, SOURCE
from engine.events import NullRun, Run
from engine.workspace import Workspace, atomic_write_text

FORMAT = 1
REPORT, SAMPLES, STATE = "report.json", "samples.jsonl", "eval-state.json"

__all__ = ["FORMAT", "HEADLINE_ORDER", "REPORT", "SAMPLES", "STATE", "Sample", "heldout_location", "involvement",
           "manifest_chain", "pick_headline", "pick_samples", "read_heldout", "run_eval"]


def _encoder_name(encoder) -> str | None:
    if encoder is None:
        return None
    return Path(getattr(encoder, "folder", "") or "encoder").name


def _float(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def _find_resume(ws: Workspace, out: Path, state: dict) -> Path | None:
    """The newest run folder (this one first) with an eval-state.json equal to `state`."""
    candidates = [out] if (out / STATE).is_file() else []
    if ws.runs_dir.is_dir():
        others = [d for d in ws.runs_dir.iterdir() if (d / STATE).is_file() and d.resolve() != out.resolve()]
        candidates += sorted(others, key=lambda d: (d / STATE).stat().st_mtime, reverse=True)
    if not candidates:
        raise HumanizerError("nothing to resume: no earlier eval in " + str(ws.runs_dir),
                             "run the same command without --resume")
    newest = None
    for d in candidates:
        try:
            saved = json.loads((d / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if saved == state:
            return d
        newest = newest or saved
    changed = sorted(k for k in set(newest or {}) | set(state) if (newest or {}).get(k) != state.get(k))
    raise HumanizerError(f"--resume: no earlier eval with these rewrite settings (the newest differs in: "
                         f"{', '.join(changed)})", "resume with the same model, adapters, dataset, choices, "
                         "--samples, --seed and sampling flags, or run without --resume")


def run_eval(settings: EvalSettings, ws: Workspace, run: Run = NullRun(), out: Path | None = None,
             w=None) -> Path:
    """The whole eval; returns the path of report.json in `out` (default: the run's folder). With
    several ranks (w, default: this process's world) only rank 0 writes; the others return after
    their share of the rewrites and scores.

    report.json:
      format, kind, created
      settings                  EvalSettings.to_dict()
      model                     {name, path, fingerprint}
      adapters                  [{name, path, fingerprint, method, parent}]
      choices                   row labels of the choices, in order; choice_adapters: label -> adapters
      dataset                   {name, path, heldout, heldout_sha256, template, source, licence, chain,
                                 rows, samples, sample_keys}
      detectors                 [{name, describe, calibrated, profile: {path, calibrated_on, auroc,
                                 tpr_at_1pct_fpr} | None, trained_on, helped_make_training_data,
                                 involvement, notes, max_tokens}]
      headline                  {detector, reason}
      columns                   column -> meaning (engine/eval/table.py COLUMNS)
      table                     {rows: [{row, kind, n, slop_per_1k, ..., detectors: {name: cells}, missing}]}
      counts                    samples, heldout_rows, rewrites {total, generated, from_cache},
                                degenerate {choice: {reason: n}}, not_generated {choice: {reason: n}},
                                truncated {detector: {row: n}}, skipped {detector: {row: {reason: n}}},
                                encoder_truncated {choice: n}
      encoder                   {name, path} or None, and why_none
      timings                   {resolve_s, rewrite_s, measure_s, score_s, total_s, rewrites_per_s}
    """
    from engine.adapters import model_fingerprint, read_adapter, resolve_adapter
    from engine.distributed.spread import on_writer
    from engine.distributed.world import world
    from engine.eval import rewrite as R
    from engine.eval.rewrite_metrics import summarize_choice, summarize_texts
    from engine.eval.slop import slop_hits
    from engine.eval.table import COLUMNS, detector_cells, rewrite_cells
    from engine.models import resolve_model

    w = w or world()
    settings.check()
    out = Path(out) if out is not None else Path(run.dir)
    run = run if w.writer else NullRun()

    def make_out() -> None:
        if str(out) == "/dev/null" or not out.parent.exists():
            raise HumanizerError("the eval needs a folder for its report", "run it as a recorded run or pass out=")
        out.mkdir(parents=True, exist_ok=True)

    on_writer(make_out, w)
    t0 = time.time()

    # the held-out split
    held, folder = heldout_location(ws, settings.data)
    all_samples = read_heldout(held)
    samples = pick_samples(all_samples, settings.samples, settings.seed)
    chain = manifest_chain(folder)
    root = chain[-1]["manifest"] if chain else {}
    source = root.get("source") if isinstance(root.get("source"), dict) else {}
    n = len(samples)
    run.log(f"{held}: {len(all_samples)} held-out rows, {n} evaluated")

    # model, adapters, choices
    if w.size > 1:  # the writer first: a model it pulls is then there for the ranks beside it
        on_writer(lambda: str(resolve_model(settings.model, ws, run)), w)
    model_dir = resolve_model(settings.model, ws, run)
    model_info = {"name": model_dir.name, "path": str(model_dir), "fingerprint": model_fingerprint(model_dir)}
    adapter_paths = [resolve_adapter(a, ws) for a in settings.adapters]
    infos = [read_adapter(p) for p in adapter_paths]
    adapters = [{"name": i.name, "path": str(i.path), "fingerprint": i.fingerprint, "method": i.method,
                 "parent": (i.parent or {}).get("name")} for i in infos]
    by_spec = {str(a): i.name for a, i in zip(settings.adapters, infos)} | {i.name: i.name for i in infos}
    fingerprints = {i.name: i.fingerprint for i in infos}
    for k, i in enumerate(infos):  # a DPO delta mounts only after its parent
        parent = i.parent or {}
        if parent.get("fingerprint") and parent["fingerprint"] not in [j.fingerprint for j in infos[:k]]:
            raise HumanizerError(f"--adapter {i.name} is a delta on '{parent.get('name')}', which is not given "
                                 "before it",
                                 f"pass its parent first: --adapter {parent.get('path') or parent.get('name')} "
                                 f"--adapter {i.path}")
    choices: dict[str, str] = {}  # label -> engine spec
    for c in settings.choice_list():
        parts = ["base" if p.strip() == "base" else by_spec.get(p.strip(), p.strip()) for p in c.split("+")]
        label = "+".join(parts)
        if label in (SOURCE, HUMAN):
            raise HumanizerError(f"--choices: {label!r} names a row of the table", "rename that adapter folder")
        chosen = {fingerprints.get(p) for p in parts}
        for i in infos:
            want = (i.parent or {}).get("fingerprint")
            if i.name in parts and want and want not in chosen:
                raise HumanizerError(f"--choices: {c!r}: adapter '{i.name}' is a delta on "
                                     f"'{(i.parent or {}).get('name')}' and cannot be used without it",
                                     f"stack them: {(i.parent or {}).get('name')}+{i.name}")
        choices[label] = label

    # what the rewrites depend on (--resume finds them by it)
    state = {"model": model_info["fingerprint"], "adapters": [[a["name"], a["fingerprint"]] for a in adapters],
             "heldout": _sha(held), "choices": list(choices), "samples": [s.key for s in samples],
             "seed": settings.seed, "temperature": settings.temperature, "top_p": settings.top_p,
             "max_tokens": settings.max_tokens}
    cache = R.RewriteCache(out if w.writer else None)

    def cached() -> list[dict]:  # on the writer: its run folders hold the cache
        if settings.resume:
            prev = _find_resume(ws, out, state)
            if prev.resolve() != out.resolve():
                carried = [rec for rec in R.RewriteCache(prev).done.values()
                           if rec.get("key") in set(state["samples"]) and rec.get("choice") in choices]
                cache.add(carried)
                run.log(f"resuming {prev.name}: {len(carried)} rewrites cached")
        return [rec for rec in cache.done.values() if rec.get("key") in set(state["samples"])
                and rec.get("choice") in choices]

    cache.done.update({(rec["key"], rec["choice"]): rec for rec in on_writer(cached, w)})

    # detectors and the encoder: every refusal before anything is generated
    # (the writer first, so what it pulls is there for the ranks beside it; meaning kept is
    # measured by the writer alone: the other ranks only need which rewrites are usable)
    opened: dict = {}

    def open_here() -> None:
        opened["detectors"] = open_detectors(settings, ws, run, chain, model_dir)
        opened["encoder"] = open_meaning_encoder(settings, ws, run, opened["detectors"])

    on_writer(open_here, w)
    if not w.writer:
        opened = {"detectors": open_detectors(settings, ws, run, chain, model_dir), "encoder": (None, "rank 0's")}
    detectors, (encoder, no_encoder) = opened["detectors"], opened["encoder"]
    t_resolved = time.time()

    # the rewrites
    jobs = [R.Job(s.key, label, spec, s.prompt, s.draft, s.human, R.rewrite_seed(settings.seed, s.key, label))
            for s in samples for label, spec in choices.items()]
    from_cache = sum(j.id in cache.done for j in jobs)
    if w.writer:
        atomic_write_text(out / STATE, json.dumps(state, indent=1))  # from here on there is something to resume
    if from_cache < len(jobs):
        from engine.generate import Engine

        run.log(f"loading {model_dir.name}" + (f" with {', '.join(a['name'] for a in adapters)}" if adapters else ""))
        engine = Engine.load(model_dir, adapters=adapter_paths, max_rows=settings.rows).start()
        try:
            for spec in set(choices.values()):
                engine.resolve(spec)  # a delta without its parent is refused here, before generating
            records = R.rewrite_all(engine, jobs, cache, run, temperature=settings.temperature,
                                    top_p=settings.top_p, max_tokens=settings.max_tokens, rows=settings.rows, w=w)
        finally:
            engine.close()
    else:
        run.log(f"all {len(jobs)} rewrites come from the cache")
        records = {j.id: cache.done[j.id] for j in jobs}
    t_rewritten = time.time()

    # the rewrite metrics
    drafts, humans = [s.draft for s in samples], [s.human for s in samples]
    rewrites = {c: [records[(s.key, c)].get("text") or "" for s in samples] for c in choices}
    summaries = {c: summarize_choice(drafts, rewrites[c], humans, encoder, c, encoder_name=_encoder_name(encoder))
                 for c in choices}
    if encoder is None:
        for s in summaries.values():
            s.missing["cos_draft"] = s.missing["cos_human"] = no_encoder
    src_sum, hum_sum = summarize_texts(drafts, SOURCE), summarize_texts(humans, HUMAN)
    not_generated = {c: {} for c in choices}
    for c in choices:
        for s in samples:
            err = records[(s.key, c)].get("error")
            if err:
                reason = err.split(" (")[0]
                not_generated[c][reason] = not_generated[c].get(reason, 0) + 1
    usable = {c: [row.scored for row in summaries[c].rows] for c in choices}
    t_measured = time.time()

    # the detectors
    segments = [(SOURCE, list(range(n)), drafts)]
    segments += [(c, [i for i in range(n) if usable[c][i]], [rewrites[c][i] for i in range(n) if usable[c][i]])
                 for c in choices]
    segments.append((HUMAN, list(range(n)), humans))
    not_scored = {c: {row.index: f"degenerate rewrite: {row.degenerate or row.skipped}"
                      for row in summaries[c].rows if not row.scored} for c in choices}
    det_entries, det_rows = [], {}
    for name, det in detectors:
        rows, meta = score_rows(det, segments, n, not_scored, settings.detect_settings(name).batch(), run, w)
        det_rows[name] = rows
        entry = detector_entry(name, det, meta, chain, model_info)
        det_entries.append(entry)
    headline = pick_headline(det_entries)
    t_scored = time.time()
    if not w.writer:
        return out / REPORT  # the writer writes it

    # the table
    labels = [SOURCE, *choices, HUMAN]
    cells = {SOURCE: rewrite_cells(SOURCE, "source", src_sum), HUMAN: rewrite_cells(HUMAN, "human", hum_sum)}
    for c in choices:
        cells[c] = rewrite_cells(c, "choice", summaries[c])
    for label in labels:
        cells[label]["detectors"] = {}
    for e in det_entries:
        for label, cell in detector_cells(det_rows[e["name"]], e["calibrated"]).items():
            cells[label]["detectors"][e["name"]] = cell
    table = {"rows": [cells[label] for label in labels]}

    counts = {
        "samples": n, "heldout_rows": len(all_samples),
        "rewrites": {"total": len(jobs), "generated": len(jobs) - from_cache, "from_cache": from_cache},
        "degenerate": {c: dict(summaries[c].degenerate) for c in choices},
        "not_generated": not_generated,
        "truncated": {e["name"]: {lab: len(det_rows[e["name"]][lab].truncated) for lab in labels} for e in det_entries},
        "skipped": {e["name"]: {lab: cells[lab]["detectors"][e["name"]]["skipped"] for lab in labels}
                    for e in det_entries},
        "encoder_truncated": {c: summaries[c].n_truncated for c in choices},
    }
    end = time.time()
    report = {
        "format": FORMAT, "kind": "humanizer eval", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end)),
        "settings": settings.to_dict(), "model": model_info, "adapters": adapters, "choices": list(choices),
        "choice_adapters": {c: [] if c == "base" else c.split("+") for c in choices},
        "dataset": {"name": folder.name if folder else held.stem, "path": str(folder or held.parent),
                    "heldout": str(held), "heldout_sha256": state["heldout"],
                    "template": (chain[0]["manifest"].get("template") if chain else None),
                    "source": source.get("name") or source.get("spec"), "licence": source.get("licence"),
                    "chain": [link["dataset"] for link in chain], "rows": len(all_samples), "samples": n,
                    "sample_keys": [s.key for s in samples]},
        "detectors": det_entries, "headline": headline, "columns": COLUMNS, "table": table, "counts": counts,
        "encoder": ({"name": _encoder_name(encoder), "path": str(getattr(encoder, "folder", ""))}
                    if encoder is not None else None), "encoder_why_none": no_encoder,
        "timings": {"resolve_s": round(t_resolved - t0, 3), "rewrite_s": round(t_rewritten - t_resolved, 3),
                    "measure_s": round(t_measured - t_rewritten, 3), "score_s": round(t_scored - t_measured, 3),
                    "total_s": round(end - t0, 3),
                    "rewrites_per_s": (round((len(jobs) - from_cache) / (t_rewritten - t_resolved), 3)
                                       if len(jobs) > from_cache and t_rewritten > t_resolved else None)},
    }

    # samples.jsonl
    lines = []
    for i, s in enumerate(samples):
        row = {"key": s.key, "line": s.line, "source_id": s.source_id, "draft": s.draft, "human": s.human,
               "locks": s.locks, "rewrites": {}, "scores": {},
               "slop": {SOURCE: [h.phrase for h in slop_hits(s.draft)], HUMAN: [h.phrase for h in slop_hits(s.human)]}}
        for c in choices:
            rec, m = records[(s.key, c)], summaries[c].rows[i]
            row["rewrites"][c] = {"text": rec.get("text") or "", "finish": rec.get("finish"), "error": rec.get("error"),
                                  "tokens": rec.get("tokens"), "max_tokens": rec.get("max_tokens"),
                                  "seed": rec.get("seed"), "degenerate": m.degenerate,
                                  "skipped": m.skipped, "length_ratio": m.length_ratio, "cos_draft": m.cos_draft,
                                  "cos_human": m.cos_human}
            row["slop"][c] = [h.phrase for h in slop_hits(rewrites[c][i])]
        for e in det_entries:
            rows = det_rows[e["name"]]
            row["scores"][e["name"]] = {
                lab: {"score": _float(rows[lab].score[i]),
                      "p_ai": _float(rows[lab].p_ai[i]) if rows[lab].p_ai is not None else None,
                      "truncated": i in rows[lab].truncated, "skipped": rows[lab].skipped.get(i)} for lab in labels}
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(out / SAMPLES, "\n".join(lines) + "\n")
    path = out / REPORT
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    run.artifact(out / SAMPLES, kind="eval samples")
    run.artifact(path, kind="eval report")
    if headline["detector"]:
        c = {r["row"]: r["detectors"][headline["detector"]] for r in table["rows"]}
        run.metric(n, **{f"p_ai/{k}": v["p_ai"] for k, v in c.items() if v["p_ai"] is not None})
    return path
