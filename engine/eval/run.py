"""`humanizer eval`: rewrite a dataset's held-out drafts with every model choice, score them all,
and write the table.

    run folder/report.json     settings, model, adapters, dataset, detectors, the table, headline,
                               counts, timings (layout: `run_eval`)
    run folder/samples.jsonl   one row per held-out sample: draft, human, each choice's rewrite,
                               every score and P(AI), slop hits
    run folder/rewrites.jsonl  the rewrite cache (engine/eval/rewrite.py); eval-state.json says
                               what the rewrites depend on, so `--resume` finds them again

Steps: read the held-out split (`read_heldout`; a row without a draft or a human reference is an
error naming its file, line and field); resolve the model, adapters and choices; open every
detector (a calibration profile fitted for another model is refused before anything is
generated) and the sentence encoder; rewrite every (sample, choice) in one batched engine run
(engine/eval/rewrite.py); measure the rewrites (engine/eval/rewrite_metrics.py); score the
drafts, the human references and every choice's usable rewrites with each detector (degenerate
rewrites are counted and never scored); build the table (engine/eval/table.py).

Which detectors (when --detector is not given, "every one at hand"): fast-detectgpt on the
scorer (default: MODEL) when a calibration profile for it exists (or --profile names one); the
classifier trained on this dataset (or --classifier); radar and binoculars only when named.
Named detectors are used calibrated or not; an uncalibrated one reports scores, AUROC and TPR,
and "uncalibrated" instead of P(AI).

The headline detector (`pick_headline`): the first of HEADLINE_ORDER at hand that did not help
make the training data (`involvement` says what counts) and has P(AI); failing that, the first
that did not help make the data; failing that, none, and the report says why."""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import HumanizerError
from engine.eval.settings import EvalSettings
from engine.eval.table import HUMAN, SOURCE, RowScores
from engine.events import NullRun, Run
from engine.workspace import Workspace, atomic_write_text

FORMAT = 1
REPORT, SAMPLES, STATE = "report.json", "samples.jsonl", "eval-state.json"
HEADLINE_ORDER = ("radar", "classifier", "fast-detectgpt", "binoculars")
REQUIRED = ("draft", "human")
MAX_CHAIN = 8  # parent datasets followed at most


# --- the held-out split -----------------------------------------------------------------------------


@dataclass
class Sample:
    key: str
    line: int
    draft: str
    human: str
    prompt: str
    source_id: str | None = None
    locks: list[str] = field(default_factory=list)


def heldout_location(ws: Workspace, spec: str) -> tuple[Path, Path | None]:
    """(heldout.jsonl, its dataset folder or None) for a workspace dataset name, a dataset
    folder, or a held-out .jsonl file."""
    text = str(spec).strip()
    if not text:
        raise HumanizerError("no dataset given", "pass --data NAME (humanizer data list shows them)")
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise HumanizerError(f"{path} is not a .jsonl file",
                                 "pass a dataset name, its folder, or its heldout.jsonl")
        return path, (path.parent if (path.parent / "manifest.json").is_file() else None)
    folder = path if path.is_dir() else (ws.datasets_dir / text if "/" not in text else None)
    if folder is None or not folder.is_dir():
        raise HumanizerError(f"no dataset named {text!r}",
                             "see `humanizer data list`; build one with `humanizer data build`")
    held = folder / "heldout.jsonl"
    if not held.is_file():
        raise HumanizerError(f"{folder} has no held-out split (heldout.jsonl)",
                             "build the dataset with `humanizer data build` (style-transfer or paired make one); "
                             "a preference set has none")
    return held, folder


def read_heldout(path: Path) -> list[Sample]:
    """Every row of a held-out file. A row that is not a JSON object, or lacks a non-empty
    "draft" or "human", stops the eval with its file, line and field (and how many rows share
    the problem). A missing "prompt" is rebuilt from the draft and locks with the builder's
    instruction (engine.data.build.instruction), as the dataset would have made it."""
    from engine.data.build import instruction

    from engine.jsonl import decode_text, json_lines, problem_kind

    data = path.read_bytes()
    try:
        decode_text(data)
    except UnicodeDecodeError as e:
        raise HumanizerError(f"{path} is not UTF-8 text (byte {e.start})") from None
    out: list[Sample] = []
    problems: list[tuple[int, str, str]] = []  # (line, field, what)
    seen: set[str] = set()
    for n, row, problem in json_lines(data):
        if problem:
            problems.append((n, "", "is " + problem_kind(problem)))
            continue
        bad = [(f, "is missing" if f not in row else "is not a string" if not isinstance(row[f], str) else "is empty")
               for f in REQUIRED if not isinstance(row.get(f), str) or not row[f].strip()]
        if bad:
            problems.append((n, *bad[0]))
            continue
        locks = [str(x) for x in row.get("locks") or [] if isinstance(x, (str, int, float))]
        prompt = row.get("prompt") if isinstance(row.get("prompt"), str) and row["prompt"].strip() else None
        key = str(row.get("key") or row.get("source_id") or f"line{n}")
        if key in seen:
            key = f"{key}@{n}"
        seen.add(key)
        out.append(Sample(key, n, row["draft"], row["human"], prompt or instruction(row["draft"], locks),
                          str(row["source_id"]) if row.get("source_id") is not None else None, locks))
    if problems:
        n, f, what = problems[0]
        where = f"{path}:{n}" + (f": field '{f}' {what}" if f else f" {what}")
        others = f" ({len(problems)} rows have a problem)" if len(problems) > 1 else ""
        raise HumanizerError(where + others, "every held-out row needs a non-empty 'draft' (the AI text to rewrite) "
                             "and 'human' (its human reference); rebuild the dataset or fix those rows")
    if not out:
        raise HumanizerError(f"{path} has no rows", "build the dataset with a held-out split (--heldout N)")
    return out


def pick_samples(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """The first `n` after a seeded shuffle (n = 0 or more than there are: all, in file order)."""
    if not n or n >= len(samples):
        return list(samples)
    order = list(samples)
    random.Random(seed).shuffle(order)
    return order[:n]


# --- what made the training data -----------------------------------------------------------------------


def manifest_chain(folder: Path | None) -> list[dict]:
    """[{"dataset", "path", "manifest"}] for the dataset and every dataset it was built from
    (manifest "parent" -> "dataset"), nearest first."""
    chain, seen = [], set()
    while folder is not None and len(chain) < MAX_CHAIN:
        folder = Path(folder)
        key = str(folder.resolve())
        if key in seen:
            break
        seen.add(key)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        if not isinstance(manifest, dict):
            manifest = {}
        chain.append({"dataset": folder.name, "path": str(folder), "manifest": manifest})
        parent = manifest.get("parent") if isinstance(manifest.get("parent"), dict) else {}
        folder = Path(parent["dataset"]) if parent.get("dataset") else None
    return chain


def _is_detector_key(key) -> bool:
    k = str(key).lower()
    return k in ("detector", "detectors") or k.endswith("_detector") or k.endswith("_detectors")


def detector_mentions(manifest) -> list[tuple[str, str]]:
    """(where, value) for every value under a detector key anywhere in a manifest: strings, lists
    of strings, or dicts with "detector"/"name"/"profile"."""
    found: list[tuple[str, str]] = []

    def values(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from values(x)
        elif isinstance(v, dict):
            for k in ("detector", "name", "profile", "classifier"):
                if k in v:
                    yield from values(v[k])

    def walk(node, where: str):
        if isinstance(node, dict):
            for k, v in node.items():
                here = f"{where}.{k}" if where else str(k)
                if _is_detector_key(k):
                    found.extend((here, s) for s in values(v) if s.strip())
                walk(v, here)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(manifest, "")
    return found


def _names_detector(value: str, name: str, aliases: set[str]) -> bool:
    v = value.strip().lower()
    v = v.rsplit("/", 1)[-1]
    if v.endswith(".json"):
        v = v[:-5]
    return v == name or v.startswith(name + "-") or v.startswith(name + ":") or v in aliases


def involvement(name: str, describe: dict, chain: list[dict], model_info: dict) -> dict:
    """Whether detector `name` helped make the training data, and notes on its relation to it.

    What counts ("helped" = True): the dataset's manifest, or that of a dataset it was built
    from, names the detector under a key called "detector"/"detectors" or ending in
    "_detector(s)" (a filter that kept drafts a detector scored, a judge that picked DPO pairs,
    ...), by detector name ("radar", "fast-detectgpt-<scorer>.json", "classifier:NAME") or, for
    the classifier, by its own name. Such a detector was optimised against, directly or by
    selection, so its numbers on the rewrites lean toward the humanizer.

    What does not count (a note only): a classifier trained on this dataset's training split
    saw the training texts (human passages and drafts), never the held-out split, and chose
    none of them, so it is an independent judge of the held-out rewrites; a zero-shot scorer
    that is the evaluated model or the dataset's drafter (a model finds its own text likely)."""
    aliases: set[str] = set()
    settings = describe.get("settings") or {}
    if name == "classifier" and settings.get("name"):
        aliases.add(str(settings["name"]).lower())
    hits = []
    for link in chain:
        for where, value in detector_mentions(link["manifest"]):
            if _names_detector(value, name, aliases):
                hits.append(f"{link['dataset']}/manifest.json {where} = {value!r}")
    notes = []
    if name == "classifier":
        trained = settings.get("trained_on")
        if trained and trained in {link["dataset"] for link in chain}:
            notes.append(f"trained on {trained}'s training split: it saw the training texts, never the held-out "
                         "split, and chose none of them (independent of the held-out rewrites)")
        elif trained:
            notes.append(f"trained on another dataset ({trained})")
    models = describe.get("models") or {}
    drafter = None
    for link in chain:
        s = link["manifest"].get("settings") if isinstance(link["manifest"].get("settings"), dict) else {}
        if link["manifest"].get("template") == "style-transfer" and s.get("model") and not s.get("endpoint"):
            drafter = str(s["model"])
    seen: set = set()
    for role, m in models.items():
        m = m or {}
        if (m.get("fingerprint"), m.get("name")) in seen:
            continue  # the same model in two roles (fast-detectgpt's scorer samples too)
        seen.add((m.get("fingerprint"), m.get("name")))
        if m.get("fingerprint") and m.get("fingerprint") == model_info.get("fingerprint"):
            notes.append(f"its {role} is the evaluated model's base ({m.get('name')})")
        elif drafter and m.get("name") and (drafter == m.get("path") or Path(drafter).name == m.get("name")):
            notes.append(f"its {role} ({m.get('name')}) wrote the dataset's drafts")
    return {"helped": bool(hits), "why": "; ".join(hits), "notes": notes}


def pick_headline(entries: list[dict]) -> dict:
    """{"detector", "reason"} from the detectors' report entries (see the module docstring)."""
    order = sorted(entries, key=lambda e: HEADLINE_ORDER.index(e["name"]))
    if not order:
        return {"detector": None, "reason": "no detector at hand: calibrate fast-detectgpt (`humanizer detect "
                "calibrate --dataset NAME`), train the classifier (`humanizer detect train`), or name one with "
                "--detector"}
    clean = [e for e in order if not e["helped_make_training_data"]]
    marked = [e["name"] for e in order if e["helped_make_training_data"]]
    skipped = f"; {', '.join(marked)} helped make the training data" if marked else ""
    for e in clean:
        if e["calibrated"]:
            first = "the first" if e is order[0] else "the first independent one"
            return {"detector": e["name"], "reason": f"{first} at hand in the order {', '.join(HEADLINE_ORDER)} "
                    f"with a P(AI){skipped}"}
    if clean:
        return {"detector": clean[0]["name"], "reason": f"no independent detector has a P(AI): {clean[0]['name']} "
                f"is uncalibrated, so its scores, AUROC and TPR lead{skipped}"}
    return {"detector": None, "reason": f"every detector at hand helped make the training data ({', '.join(marked)});"
            " their columns are shown, none is the headline"}


# --- detectors and the encoder -----------------------------------------------------------------------


def _classifier_for(ws: Workspace, chain: list[dict]) -> str | None:
    """The newest classifier trained on this dataset (by folder, else by name)."""
    from engine.eval.classifier import list_classifiers

    if not chain:
        return None
    here = chain[0]
    found = []
    for c in list_classifiers(ws):
        on = c.get("trained_on") or {}
        if "error" in c:
            continue
        same_path = on.get("path") and Path(on["path"]).resolve() == Path(here["path"]).resolve()
        if same_path or on.get("dataset") == here["dataset"]:
            found.append((str(c.get("created") or ""), c["name"]))
    return max(found)[1] if found else None


def _profile_exists(ws: Workspace, settings: EvalSettings, scorer_dir: Path) -> bool:
    from engine.eval.registry import default_profile_path

    if settings.profile:
        return True
    sampler = str(settings.sampler).strip()
    if sampler and Path(sampler).expanduser().resolve() == scorer_dir.resolve():
        sampler = ""
    desc = {"detector": "fast-detectgpt", "models": {"scorer": {"name": scorer_dir.name},
                                                      "sampler": {"name": Path(sampler).name if sampler else ""}},
            "settings": {"sampler_is_scorer": not sampler}}
    return default_profile_path(ws, desc).is_file()


def open_detectors(settings: EvalSettings, ws: Workspace, run: Run, chain: list[dict],
                   model_dir: Path) -> list[tuple[str, object]]:
    """[(name, detector)] in HEADLINE_ORDER: the named ones, else every one at hand."""
    from engine.eval.registry import open_detector

    names = settings.detector_names()
    classifier = settings.classifier or _classifier_for(ws, chain) or ""
    if not names:
        from engine.models import resolve_model

        scorer = str(settings.scorer).strip()
        scorer_dir = resolve_model(scorer, ws, run) if scorer else model_dir
        if classifier:
            names.append("classifier")
        if _profile_exists(ws, settings, scorer_dir):
            names.append("fast-detectgpt")
        else:
            run.log(f"fast-detectgpt left out: no calibration profile for {scorer_dir.name} "
                    "(humanizer detect calibrate --dataset NAME --scorer ...; or name it with --detector)")
    out = []
    for name in sorted(set(names), key=HEADLINE_ORDER.index):
        ds = settings.detect_settings(name)
        if name == "classifier":
            ds.name = classifier
        if name in ("fast-detectgpt", "binoculars") and not str(settings.scorer).strip():
            ds.scorer = str(model_dir)
        out.append((name, open_detector(ds, ws, run)))
    return out


def open_meaning_encoder(settings: EvalSettings, ws: Workspace, run: Run, detectors) -> tuple[object, str | None]:
    """(encoder or None, why None). --encoder, else all-MiniLM-L6-v2 (pulled once), else the
    classifier's own encoder."""
    from engine.eval.classifier import open_encoder

    spec = str(settings.encoder).strip()
    if spec.lower() == "none":
        return None, "no sentence encoder (--encoder none)"
    if spec:
        return open_encoder(spec, ws, run), None
    try:
        return open_encoder(None, ws, run), None
    except HumanizerError as e:
        clf = next((d for n, d in detectors if n == "classifier"), None)
        if clf is not None:
            run.log(f"all-MiniLM-L6-v2 is not at hand ({e.message}): meaning kept uses the classifier's encoder")
            return clf.encoder, None
        run.log(f"no sentence encoder: {e.message}")
        return None, f"no sentence encoder at hand ({e.message}); pass --encoder FOLDER"


def _encoder_name(encoder) -> str | None:
    if encoder is None:
        return None
    return Path(getattr(encoder, "folder", "") or "encoder").name


# --- scoring ---------------------------------------------------------------------------------------------


def score_rows(detector, segments: list[tuple[str, list[int], list[str]]], n: int, not_scored: dict[str, dict],
               batch_size: int, run: Run) -> tuple[dict[str, RowScores], dict]:
    """Score every segment (label, sample indices, texts) in one call to the detector and split the
    result back into one RowScores per label, aligned with the n samples; `not_scored[label]`
    gives the reason for the indices left out (degenerate rewrites)."""
    texts = [t for _, _, ts in segments for t in ts]
    name = detector.name
    s = detector.score(texts, batch_size, lambda d, t: run.progress(d, t, f"scoring with {name}"))
    truncated = set(s.truncated)
    out, k = {}, 0
    for label, idx, _ in segments:
        score = np.full(n, np.nan)
        p = np.full(n, np.nan) if s.p_ai is not None else None
        skipped = dict(not_scored.get(label, {}))
        trunc = []
        for i in idx:
            score[i] = s.score[k]
            if p is not None:
                p[i] = s.p_ai[k]
            if k in s.skipped:
                skipped[i] = s.skipped[k]
            if k in truncated:
                trunc.append(i)
            k += 1
        out[label] = RowScores(score, p, dict(sorted(skipped.items())), trunc)
    return out, {"calibrated": s.p_ai is not None, "max_tokens": s.max_tokens}


def _float(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# --- the run ---------------------------------------------------------------------------------------------


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


def run_eval(settings: EvalSettings, ws: Workspace, run: Run = NullRun(), out: Path | None = None) -> Path:
    """The whole eval; returns the path of report.json in `out` (default: the run's folder).

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
    from engine.eval import rewrite as R
    from engine.eval.rewrite_metrics import summarize_choice, summarize_texts
    from engine.eval.slop import slop_hits
    from engine.eval.table import COLUMNS, detector_cells, rewrite_cells
    from engine.models import resolve_model

    settings.check()
    out = Path(out) if out is not None else Path(run.dir)
    if str(out) == "/dev/null" or not out.parent.exists():
        raise HumanizerError("the eval needs a folder for its report", "run it as a recorded run or pass out=")
    out.mkdir(parents=True, exist_ok=True)
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
    cache = R.RewriteCache(out)
    if settings.resume:
        prev = _find_resume(ws, out, state)
        if prev.resolve() != out.resolve():
            carried = [rec for rec in R.RewriteCache(prev).done.values()
                       if rec.get("key") in set(state["samples"]) and rec.get("choice") in choices]
            cache.add(carried)
            run.log(f"resuming {prev.name}: {len(carried)} rewrites cached")

    # detectors and the encoder: every refusal before anything is generated
    detectors = open_detectors(settings, ws, run, chain, model_dir)
    encoder, no_encoder = open_meaning_encoder(settings, ws, run, detectors)
    t_resolved = time.time()

    # the rewrites
    jobs = [R.Job(s.key, label, spec, s.prompt, s.draft, s.human, R.rewrite_seed(settings.seed, s.key, label))
            for s in samples for label, spec in choices.items()]
    from_cache = sum(j.id in cache.done for j in jobs)
    atomic_write_text(out / STATE, json.dumps(state, indent=1))  # from here on there is something to resume
    if from_cache < len(jobs):
        from engine.generate import Engine

        run.log(f"loading {model_dir.name}" + (f" with {', '.join(a['name'] for a in adapters)}" if adapters else ""))
        engine = Engine.load(model_dir, adapters=adapter_paths, max_rows=settings.rows).start()
        try:
            for spec in set(choices.values()):
                engine.resolve(spec)  # a delta without its parent is refused here, before generating
            records = R.rewrite_all(engine, jobs, cache, run, temperature=settings.temperature,
                                    top_p=settings.top_p, max_tokens=settings.max_tokens, rows=settings.rows)
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
        rows, meta = score_rows(det, segments, n, not_scored, settings.detect_settings(name).batch(), run)
        det_rows[name] = rows
        desc = det.describe()
        prof = getattr(det, "profile", None)
        inv = involvement(name, desc, chain, model_info)
        entry = {"name": name, "describe": desc, "calibrated": meta["calibrated"], "max_tokens": meta["max_tokens"],
                 "profile": None, "trained_on": None, "helped_make_training_data": inv["helped"],
                 "involvement": inv["why"], "notes": inv["notes"]}
        if prof is not None:
            entry["profile"] = {"path": str(getattr(det, "profile_path", "") or ""),
                                "calibrated_on": prof.calibrated_on,
                                "auroc": prof.auroc, "tpr_at_1pct_fpr": prof.tpr_at_1pct_fpr,
                                "n_human": prof.n_human, "n_ai": prof.n_ai, "created": prof.created}
        if name == "classifier":
            rec = det.record
            entry["trained_on"] = {k: rec.get("trained_on", {}).get(k) for k in ("dataset", "path", "split", "source")}
            entry["profile"] = {"path": str(det.path), "evaluation": rec.get("evaluation"),
                                "encoder": rec.get("encoder", {}).get("name")}
        if not meta["calibrated"]:
            entry["notes"].append("uncalibrated: no P(AI); scores, AUROC and TPR only")
        det_entries.append(entry)
    headline = pick_headline(det_entries)
    t_scored = time.time()

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
