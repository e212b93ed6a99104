"""The eval's detectors: which are at hand (`open_detectors`, `open_meaning_encoder`), scoring
every text in one call per detector (`score_rows`), whether a detector helped make the training
data (`involvement`), and the headline detector (`pick_headline`: the first of HEADLINE_ORDER at
hand that did not help make the training data and has P(AI); failing that, the first that did
not help make the data; failing that, none, and the report says why).

Which detectors (when --detector is not given, "every one at hand"): fast-detectgpt on the
scorer (default: MODEL) when a calibration profile for it exists (or --profile names one); the
classifier trained on this dataset (or --classifier); radar and binoculars only when named.
Named detectors are used calibrated or not; an uncalibrated one reports scores, AUROC and TPR,
and "uncalibrated" instead of P(AI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import HumanizerError
from engine.eval.settings import EvalSettings
from engine.eval.table import RowScores
from engine.events import Run
from engine.workspace import Workspace

HEADLINE_ORDER = ("radar", "classifier", "fast-detectgpt", "binoculars")


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


def _floats(a) -> list[float] | None:
    return None if a is None else [float(x) for x in a]  # NaN survives the JSON of gather_objects


def score_spread(detector, texts: list[str], batch_size: int, run: Run, w=None):
    """detector.score(texts) as one Scores in the texts' order on every rank, each rank scoring its
    shard (a world of one: all of them). The progress shown is the writer's share. A text's score
    does not depend on the others, but the detectors batch texts of similar length together
    (right-padded), so a shard's batches differ from one process's: scores agree to float
    rounding, not always to the last bit."""
    from engine.distributed.world import ONE, gather_objects, shard
    from engine.eval.detectors import Scores

    w = w or ONE
    name = detector.name
    if w.size == 1:
        return detector.score(texts, batch_size, lambda d, t: run.progress(d, t, f"scoring with {name}"))
    mine = shard(len(texts), w)
    part = {"score": [], "p_ai": [], "n_tokens": [], "truncated": [], "skipped": [], "max_tokens": None}
    if len(mine) or w.writer:  # a rank with no texts (fewer texts than ranks) only joins the gather
        s = detector.score(texts[mine.start:mine.stop], batch_size,
                           lambda d, t: run.progress(d, t, f"scoring with {name} ({t} of {len(texts)} texts here)"))
        part = {"score": _floats(s.score), "p_ai": _floats(s.p_ai),
                "n_tokens": None if s.n_tokens is None else [int(x) for x in s.n_tokens],
                "truncated": [mine.start + int(i) for i in s.truncated],
                "skipped": [[mine.start + int(i), r] for i, r in s.skipped.items()], "max_tokens": s.max_tokens}
    parts = gather_objects(part, w)

    def joined(field: str, dtype) -> np.ndarray | None:
        if any(p[field] is None for p in parts):
            return None
        return np.array([x for p in parts for x in p[field]], dtype=dtype)

    return Scores(detector=name, score=joined("score", np.float64), p_ai=joined("p_ai", np.float64),
                  n_tokens=joined("n_tokens", np.int64), truncated=[i for p in parts for i in p["truncated"]],
                  skipped={i: r for p in parts for i, r in p["skipped"]}, max_tokens=parts[0]["max_tokens"])


def score_rows(detector, segments: list[tuple[str, list[int], list[str]]], n: int, not_scored: dict[str, dict],
               batch_size: int, run: Run, w=None) -> tuple[dict[str, RowScores], dict]:
    """Score every segment (label, sample indices, texts) in one call to the detector (split over
    the ranks, `score_spread`) and split the result back into one RowScores per label, aligned with
    the n samples; `not_scored[label]` gives the reason for the indices left out (degenerate rewrites)."""
    texts = [t for _, _, ts in segments for t in ts]
    s = score_spread(detector, texts, batch_size, run, w)
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


def detector_entry(name: str, det, meta: dict, chain: list[dict], model_info: dict) -> dict:
    """A detector's report entry: what it is (describe), its calibration or training, whether it
    helped make the training data (`involvement`), and notes; `meta` is from `score_rows`."""
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
    return entry
