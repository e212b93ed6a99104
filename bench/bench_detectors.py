"""Detector validity: how well each detector at hand tells a dataset's held-out human passages
from its held-out AI drafts, and how fast it scores.

    .venv/bin/python bench/bench_detectors.py --data demo-st [--workspace ~/.humanizer] \
        [--scorer smollm2-135m] [--profile P] [--classifier NAME] [--radar MODEL] \
        [--binoculars-performer MODEL] [--limit N] [--json out.json]

Texts: DATA's heldout.jsonl, "human" (written by people: the corpus the dataset was built from)
vs "draft" (the AI draft of that passage, written by the dataset's drafter model). The held-out
split is never read by calibration (`humanizer detect calibrate`) or classifier training
(`humanizer detect train`), which use the training split; the bench also counts held-out texts
that appear verbatim in the training split (0 expected). Exact duplicates within a class are
scored once. Fewer than 100 texts of a class are refused unless --allow-small; an empty or
one-class set always is.

Detectors (each in its own fresh process with OpenBLAS preloaded, `common.run_child`):
  fast-detectgpt  on --scorer, with its calibration profile (--profile, else the newest one for
                  that scorer calibrated on DATA, else on any dataset, else none: AUROC and TPR
                  are rank measures and need no profile, only P(AI) does)
  classifier      --classifier, else the newest one trained on DATA (skipped when none)
  binoculars      only with --binoculars-performer (a second model of the scorer's family)
  radar           --radar, else TrustSafeAI/RADAR-Vicuna-7B when it is in the local Hugging Face
                  cache (loaded offline); skipped otherwise

Measured per detector: AUROC (human vs AI scores) and TPR at 1% FPR (engine/eval/metrics.py,
the threshold flags at most 1% of the human texts; below 100 human texts that is 0 of them),
each with a 95% percentile bootstrap interval (2,000 resamples, human and AI texts resampled
separately); mean P(AI) per class with metrics.bootstrap_ci when the detector has P(AI); speed:
texts/s and tokens/s of one `detector.score(all texts, batch size)` call (human and AI texts
together, batched as the detector batches them: sorted by length, --batch-size at a time), after
an untimed warm-up call on one batch; the model's load time separately.

Reference (the issue's): single-model Fast-DetectGPT with this 135M scorer reaches about 0.76
AUROC and 15% TPR at 1% FPR on GPT-3/3.5/4 text. Ours is different text: SmolLM2-drafted (often
by the scorer itself, which a model finds likely), so the comparison is indicative only."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from bench_humanizer import (MIN_DRAFTS, BenchError, heldout_path, model_label, print_facts,  # noqa: E402
                             read_heldout_pairs, run_cli, run_explained, workspace_home)
from common import machine_info, save_json, table  # noqa: E402

SCRIPT = Path(__file__).resolve()
ORDER = ("fast-detectgpt", "classifier", "binoculars", "radar")
RADAR_REPO = "TrustSafeAI/RADAR-Vicuna-7B"
REFERENCE = {"detector": "fast-detectgpt", "auroc": 0.76, "tpr_at_1pct_fpr": 0.15,
             "what": "single-model Fast-DetectGPT with a 135M scorer, on GPT-3/3.5/4 text (the issue's reference)"}
N_BOOT = 2000
FPR = 0.01


# --- texts (no models) -------------------------------------------------------------------------------------


def dedupe(texts: list[str]) -> list[str]:
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def labelled_heldout(pairs: dict, limit: int = 0, seed: int = 0) -> dict:
    """{"human": [...], "ai": [...], "duplicates": {class: n}}: the held-out human references
    and AI drafts, each deduplicated, at most `limit` per class (a seeded pick; 0 all)."""
    out = {"duplicates": {}}
    for cls, key in (("human", "human"), ("ai", "draft")):
        texts = dedupe(pairs[key])
        out["duplicates"][cls] = len(pairs[key]) - len(texts)
        if limit and len(texts) > limit:
            keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
            texts = [texts[i] for i in keep]
        out[cls] = texts
    return out


def check_classes(n_human: int, n_ai: int, allow_small: bool) -> None:
    """Refuse an empty or one-class set always; fewer than MIN_DRAFTS of a class unless allow_small."""
    if n_human == 0 or n_ai == 0:
        which = "no texts at all" if n_human == n_ai == 0 else \
            f"only one class ({n_human} human, {n_ai} AI texts)"
        raise BenchError(f"{which}: AUROC and TPR need both human and AI texts; a number computed over nothing "
                         "is worse than none", "use a dataset whose heldout.jsonl has 'human' and 'draft' texts")
    small = min(n_human, n_ai)
    if small < MIN_DRAFTS and not allow_small:
        raise BenchError(f"{n_human} human and {n_ai} AI texts: fewer than {MIN_DRAFTS} of a class (TPR at 1% FPR "
                         "needs 100 human texts to mean 1%, and the intervals would be wide)",
                         "build a bigger held-out split, or pass --allow-small and quote the figures with their size")


# --- metrics (no models) ------------------------------------------------------------------------------------


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def stratified_ci(fn, human, ai, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95):
    """Percentile interval of fn(human, ai) over resamples of each class with replacement."""
    import numpy as np

    h, a = np.asarray(human, dtype=np.float64), np.asarray(ai, dtype=np.float64)
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        vals[b] = fn(h[rng.integers(0, len(h), len(h))], a[rng.integers(0, len(a), len(a))])
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def validity(human_scores, ai_scores, human_p=None, ai_p=None, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """AUROC and TPR at 1% FPR with stratified bootstrap intervals, the threshold and realised
    FPR, mean P(AI) per class with metrics.bootstrap_ci (when given). Skipped texts (NaN/None)
    are left out and counted; a side with nothing scored is refused."""
    from engine.eval import metrics

    h, a = finite(human_scores), finite(ai_scores)
    if not h or not a:
        raise BenchError(f"nothing to compare: {len(h)} human and {len(a)} AI texts were scored",
                         "see the detector's skipped counts (empty or too-short texts)")
    thr = metrics.threshold_at_fpr(h, FPR)
    out = {"n_human": len(h), "n_ai": len(a),
           "skipped": {"human": len(list(human_scores)) - len(h), "ai": len(list(ai_scores)) - len(a)},
           "auroc": metrics.auroc(h, a), "auroc_ci": stratified_ci(metrics.auroc, h, a, n_boot, seed),
           "tpr_at_1pct_fpr": metrics.tpr_at_fpr(h, a, FPR),
           "tpr_ci": stratified_ci(lambda x, y: metrics.tpr_at_fpr(x, y, FPR), h, a, n_boot, seed),
           "threshold": thr, "realised_fpr": sum(x > thr for x in h) / len(h),
           "human_texts_flaggable": math.floor(FPR * len(h) + 1e-9)}
    for cls, p in (("human", human_p), ("ai", ai_p)):
        vals = finite(p) if p is not None else []
        out[f"p_ai_{cls}"] = sum(vals) / len(vals) if vals else None
        out[f"p_ai_{cls}_ci"] = list(metrics.bootstrap_ci(vals, n_boot=n_boot, seed=seed)) if vals else None
    return out


def speed(n_texts: int, n_tokens: int, seconds: float) -> dict:
    return {"texts": n_texts, "tokens": n_tokens, "score_s": seconds,
            "texts_per_s": n_texts / seconds if seconds > 0 else None,
            "tokens_per_s": n_tokens / seconds if seconds > 0 else None}


def summarize_child(res: dict, n_human: int, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """A child's scores (human texts first, then AI) -> validity + speed + what it was."""
    score, p = res["score"], res.get("p_ai")
    out = {"detector": res["detector"], "describe": res.get("describe"), "made_on": res.get("made_on"),
           "calibrated": p is not None, "batch_size": res.get("batch_size"), "max_tokens": res.get("max_tokens"),
           "truncated": res.get("truncated"), "load_s": res.get("load_s"), "warmup_s": res.get("warmup_s"),
           "other_cpus": res.get("other_cpus"), "memory": res.get("memory"), "blas": res.get("blas")}
    out.update(validity(score[:n_human], score[n_human:], p[:n_human] if p else None, p[n_human:] if p else None,
                        n_boot=n_boot, seed=seed))
    out["speed"] = speed(len(score), int(res.get("n_tokens_total") or 0), float(res["score_s"]))
    return out


# --- output (no models) -------------------------------------------------------------------------------------


def _f(v, spec):
    return "—" if v is None else format(v, spec)


def _ci(ci, spec):
    return "—" if not ci else f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def results_table(results: list[dict]) -> str:
    """One row per detector measured, then the reference row."""
    header = ["detector", "AUROC", "95% CI", "TPR@1%FPR", "95% CI", "P(AI) human", "P(AI) AI", "texts/s",
              "tokens/s", "human+AI"]
    body = []
    for r in results:
        sp = r["speed"]
        body.append([r["detector"], _f(r["auroc"], ".3f"), _ci(r["auroc_ci"], ".3f"), _f(r["tpr_at_1pct_fpr"], ".1%"),
                     _ci(r["tpr_ci"], ".1%"), _f(r["p_ai_human"], ".3f"), _f(r["p_ai_ai"], ".3f"),
                     _f(sp["texts_per_s"], ".1f"), _f(sp["tokens_per_s"], ".0f"), f"{r['n_human']}+{r['n_ai']}"])
    body.append([f"reference: {REFERENCE['detector']}", f"{REFERENCE['auroc']:.2f}", "", f"{REFERENCE['tpr_at_1pct_fpr']:.0%}",
                 "", "", "", "", "", "GPT-3/3.5/4 text"])
    return table(body, header)


def reference_comparison(results: list[dict], drafter: str | None, scorer: str) -> list[str]:
    """Lines comparing our fast-detectgpt with the issue's reference figures, with the caveats."""
    fd = next((r for r in results if r["detector"] == REFERENCE["detector"]), None)
    if fd is None:
        return [f"reference: {REFERENCE['what']}: AUROC ~{REFERENCE['auroc']}, TPR ~{REFERENCE['tpr_at_1pct_fpr']:.0%} "
                "at 1% FPR; fast-detectgpt was not run here, so no comparison"]

    def side(value, ci, ref):
        if ci[0] > ref:
            return "above the reference (its 95% CI excludes it)"
        if ci[1] < ref:
            return "below the reference (its 95% CI excludes it)"
        return "not distinguishable from the reference (its 95% CI includes it)"

    text = f"AI drafts written by {drafter or 'an unknown drafter'} (SmolLM2-135M in `humanizer demo`)"
    if drafter and model_label(drafter) == model_label(scorer):
        text += ", drafted by the scorer model itself (a model finds its own text likely: easier than the reference's)"
    return [f"reference: {REFERENCE['what']}: AUROC ~{REFERENCE['auroc']}, TPR ~{REFERENCE['tpr_at_1pct_fpr']:.0%} at 1% FPR",
            f"ours: AUROC {fd['auroc']:.3f} {_ci(fd['auroc_ci'], '.3f')}: "
            + side(fd["auroc"], fd["auroc_ci"], REFERENCE["auroc"]),
            f"ours: TPR at 1% FPR {fd['tpr_at_1pct_fpr']:.1%} {_ci(fd['tpr_ci'], '.1%')}: "
            + side(fd["tpr_at_1pct_fpr"], fd["tpr_ci"], REFERENCE["tpr_at_1pct_fpr"]),
            f"not the same texts: ours are {text}; the reference's are GPT-3/3.5/4 generations"]


# --- which detectors --------------------------------------------------------------------------------------


def hf_cached(repo: str) -> bool:
    """Whether a Hugging Face repo is in the local hub cache (no network)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    return (Path(cache) / ("models--" + repo.replace("/", "--")) / "snapshots").is_dir()


def plan_detectors(args, listing: dict, data: str) -> tuple[list[dict], dict[str, str]]:
    """([{"name", "settings": DetectSettings kwargs, "offline"}], {name: why not run})."""
    want = [d.strip() for d in (args.detectors or ",".join(ORDER)).split(",") if d.strip()]
    unknown = [d for d in want if d not in ORDER]
    if unknown:
        raise BenchError(f"--detectors: unknown {', '.join(unknown)}", "one of: " + ", ".join(ORDER))
    base = {"batch_size": args.batch_size, "max_tokens": args.max_tokens}
    plan, skipped = [], {}
    scorer = model_label(args.scorer)
    if "fast-detectgpt" in want:
        profile = args.profile
        if not profile:
            fds = [p for p in listing.get("profiles") or [] if "error" not in p and p.get("detector") == "fast-detectgpt"
                   and (p.get("models") or {}).get("scorer") == scorer
                   and (p.get("settings") or {}).get("sampler_is_scorer", True)]
            here = [p for p in fds if (p.get("calibrated_on") or {}).get("dataset") == data]
            pick = max(here or fds, key=lambda p: str(p.get("created") or ""), default=None)
            profile = pick["path"] if pick else ""
        plan.append({"name": "fast-detectgpt", "settings": {**base, "detector": "fast-detectgpt",
                                                            "scorer": args.scorer, "profile": profile}})
    if "classifier" in want:
        name = args.classifier
        if not name:
            found = [c for c in listing.get("classifiers") or [] if "error" not in c
                     and (c.get("trained_on") or {}).get("dataset") == data]
            name = max(found, key=lambda c: str(c.get("created") or ""))["name"] if found else ""
        if name:
            plan.append({"name": "classifier", "settings": {**base, "detector": "classifier", "name": name}})
        else:
            skipped["classifier"] = f"none trained on {data} (humanizer detect train --dataset {data} --name NAME)"
    if "binoculars" in want:
        if args.binoculars_performer:
            plan.append({"name": "binoculars", "settings": {**base, "detector": "binoculars", "scorer": args.scorer,
                                                            "sampler": args.binoculars_performer}})
        else:
            skipped["binoculars"] = "no second model of the scorer's family (--binoculars-performer)"
    if "radar" in want:
        radar = args.radar or (RADAR_REPO if hf_cached(RADAR_REPO) else "")
        if radar:
            plan.append({"name": "radar", "settings": {**base, "detector": "radar", "radar": radar}, "offline": True})
        else:
            skipped["radar"] = f"not available locally ({RADAR_REPO} is not in the Hugging Face cache; --radar)"
    return plan, skipped


def leaked(home: Path, data: str, texts: dict) -> dict:
    """Held-out texts that appear verbatim in the training split the detectors were made on."""
    try:
        from engine.eval.classifier import labelled_texts
        from engine.workspace import Workspace

        train = labelled_texts(Workspace.open(home), data, "train")
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"checked": False, "why": str(getattr(e, "message", e))}
    seen = set(train.human) | set(train.ai)
    return {"checked": True, "human": sum(t in seen for t in texts["human"]),
            "ai": sum(t in seen for t in texts["ai"]), "train_texts": len(seen)}


def drafter_of(held: Path) -> str | None:
    try:
        m = json.loads((held.parent / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    s = m.get("settings") if isinstance(m.get("settings"), dict) else {}
    return s.get("endpoint") or s.get("model")


# --- the child: one detector, in its own process --------------------------------------------------------------


def child(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    os.environ["HUMANIZER_HOME"] = spec["home"]
    if spec.get("offline"):
        os.environ["HF_HUB_OFFLINE"] = "1"
    import resource

    from engine.errors import HumanizerError
    from engine.eval.registry import open_detector
    from engine.eval.settings import DetectSettings
    from engine.workspace import Workspace

    out: dict = {"detector": spec["name"]}
    try:
        settings = DetectSettings(**spec["settings"]).check()
        t0 = time.perf_counter()
        det = open_detector(settings, Workspace.open(spec["home"]))
        out["load_s"] = time.perf_counter() - t0
        batch = settings.batch()
        texts = spec["texts"]
        t0 = time.perf_counter()
        det.score(texts[:batch], batch)  # warm-up: first calls allocate and build kernels
        out["warmup_s"] = time.perf_counter() - t0
        sample = common.cpu_sample()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        s = det.score(texts, batch)
        out["score_s"] = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        out["other_cpus"] = common.other_cpus_since(sample)
    except HumanizerError as e:
        out["error"] = e.message + (f" (hint: {e.hint})" if e.hint else "")
        Path(out_path).write_text(json.dumps(out), encoding="utf-8")
        return 0

    def num(x):
        return None if x is None or not math.isfinite(float(x)) else float(x)

    made_on = None
    prof = getattr(det, "profile", None)
    if prof is not None:
        made_on = {"profile": str(getattr(det, "profile_path", "") or ""), "calibrated_on": prof.calibrated_on,
                   "auroc": prof.auroc, "tpr_at_1pct_fpr": prof.tpr_at_1pct_fpr}
    elif spec["name"] == "classifier":
        rec = det.record
        made_on = {"classifier": rec.get("name"), "trained_on": {k: v for k, v in (rec.get("trained_on") or {}).items()
                                                                 if k != "counts"},
                   "auroc": (rec.get("evaluation") or {}).get("auroc"),
                   "tpr_at_1pct_fpr": (rec.get("evaluation") or {}).get("tpr_at_1pct_fpr")}
    out.update(score=[num(x) for x in s.score], p_ai=[num(x) for x in s.p_ai] if s.p_ai is not None else None,
               n_tokens_total=int(sum(int(x) for x in s.n_tokens)) if s.n_tokens is not None else 0,
               truncated=len(s.truncated), skipped=len(s.skipped), max_tokens=s.max_tokens, batch_size=batch,
               describe=det.describe(), made_on=made_on, memory=common.child_memory(), blas=common.child_blas())
    Path(out_path).write_text(json.dumps(out, default=str), encoding="utf-8")
    return 0


# --- the run ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", help="HUMANIZER_HOME (default: $HUMANIZER_HOME or ~/.humanizer)")
    ap.add_argument("--data", help="the dataset whose heldout.jsonl is measured (name or folder)")
    ap.add_argument("--scorer", default=common.DEFAULT_MODEL, help="fast-detectgpt's scorer (default: %(default)s)")
    ap.add_argument("--profile", default="", help="fast-detectgpt's profile (default: the newest for the scorer, "
                    "calibrated on DATA if there is one)")
    ap.add_argument("--classifier", default="", help="the classifier (default: the newest trained on DATA)")
    ap.add_argument("--radar", default="", help=f"radar's RoBERTa (default: {RADAR_REPO} if cached locally)")
    ap.add_argument("--binoculars-performer", default="", help="run binoculars with this second model")
    ap.add_argument("--detectors", default="", help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("--batch-size", type=int, default=0, help="texts scored together (0: each detector's default)")
    ap.add_argument("--max-tokens", type=int, default=0, help="cut texts to N tokens (0: the model's context)")
    ap.add_argument("--limit", type=int, default=0, help="at most N texts per class, a seeded pick (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --limit's pick and of the bootstrap")
    ap.add_argument("--allow-small", action="store_true", help=f"run with fewer than {MIN_DRAFTS} texts per class")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per detector")
    ap.add_argument("--json", metavar="PATH", help="also write every number to PATH")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.spec, args.out)
    if not args.data:
        ap.error("--data is required")
    return run_explained(run, args)


def run(args) -> int:
    t_all = time.perf_counter()
    info = machine_info()
    print_facts(info, "each detector runs in a fresh process with OpenBLAS preloaded (it reports what it mapped)")
    home = workspace_home(args.workspace)
    held = heldout_path(home, args.data)
    data = held.parent.name
    pairs = read_heldout_pairs(held)
    texts = labelled_heldout(pairs, args.limit, args.seed)
    check_classes(len(texts["human"]), len(texts["ai"]), args.allow_small)
    drafter = drafter_of(held)
    leak = leaked(home, args.data, texts)
    print(f"data      {held}: {len(texts['human'])} human and {len(texts['ai'])} AI texts"
          + (f" ({pairs['bad']} unusable rows left out)" if pairs["bad"] else "")
          + (f"; duplicates scored once: {texts['duplicates']}" if any(texts["duplicates"].values()) else ""))
    print(f"          drafter: {drafter or 'unknown'}; held-out texts found verbatim in the training split: "
          + (f"{leak['human']} human, {leak['ai']} AI (of {leak['train_texts']} training texts)" if leak["checked"]
             else f"not checked ({leak['why']})"))
    with tempfile.TemporaryDirectory(prefix="bench-detectors-") as tmp:
        work = Path(tmp)
        res = run_cli(home, ["detect", "list", "--json"], work / "list.log", echo=lambda *a: None)
        raw = (work / "list.log").read_text(encoding="utf-8")
        try:
            listing = json.loads(raw[raw.index("{"):]) if res.rc == 0 else None
        except ValueError:
            listing = None
        if listing is None:
            raise BenchError(f"`humanizer detect list --json` failed: {res.failure()}")
        plan, skipped = plan_detectors(args, listing, data)
        results, failed = [], {}
        for d in plan:
            spec = {"name": d["name"], "home": str(home), "settings": d["settings"], "offline": d.get("offline", False),
                    "texts": texts["human"] + texts["ai"]}
            spec_path, out_path = work / f"{d['name']}.spec.json", work / f"{d['name']}.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            print(f"\n{d['name']}: scoring {len(spec['texts'])} texts ...", flush=True)
            out = common.run_child(SCRIPT, d["name"], spec_path, out_path, args.timeout)
            if "error" in out:
                failed[d["name"]] = out["error"]
                print(f"  failed: {out['error']}")
                continue
            r = summarize_child(out, len(texts["human"]), seed=args.seed)
            results.append(r)
            print(f"  loaded in {r['load_s']:.1f} s, scored in {r['speed']['score_s']:.1f} s "
                  f"(other processes used {common.fmt_cpus(r['other_cpus'])} CPUs meanwhile)")
    print(f"\n## Detector validity on {data}'s held-out split\n")
    print(results_table(results))
    print()
    for name, why in {**skipped, **{k: f"failed: {v}" for k, v in failed.items()}}.items():
        print(f"- {name}: not run: {why}")
    for r in results:
        bits = [f"threshold {r['threshold']:+.4g} flags {r['realised_fpr']:.1%} of human texts "
                f"(at most {r['human_texts_flaggable']} of {r['n_human']})"]
        if r["skipped"]["human"] or r["skipped"]["ai"]:
            bits.append(f"not scored: {r['skipped']['human']} human, {r['skipped']['ai']} AI")
        if r["truncated"]:
            bits.append(f"{r['truncated']} texts cut to {r['max_tokens']} tokens")
        mo = r.get("made_on") or {}
        if mo.get("calibrated_on"):
            bits.append(f"profile calibrated on {mo['calibrated_on'].get('dataset')} "
                        f"({mo['calibrated_on'].get('split')} split; AUROC there {mo['auroc']:.3f})")
        elif mo.get("trained_on"):
            bits.append(f"trained on {mo['trained_on'].get('dataset')} ({mo['trained_on'].get('split')} split; "
                        f"AUROC on its held-back texts {mo['auroc']:.3f})")
        elif r["detector"] in ("fast-detectgpt", "binoculars"):
            bits.append("uncalibrated (no P(AI); AUROC and TPR need none)")
        bits.append(f"batch {r['batch_size']}, load {r['load_s']:.1f} s, {r['speed']['tokens']} tokens, "
                    f"BLAS {(r.get('blas') or {}).get('name')}")
        print(f"- {r['detector']}: " + "; ".join(bits))
    print()
    for line in reference_comparison(results, drafter, args.scorer):
        print(line)
    if min(len(texts["human"]), len(texts["ai"])) < MIN_DRAFTS:
        print(f"\nNOTE: fewer than {MIN_DRAFTS} texts of a class (--allow-small): the intervals are wide and the "
              "1% FPR threshold flags no human text at all")
    busy = max((r.get("other_cpus") or 0.0 for r in results), default=0.0)
    if busy >= 0.2:
        print(f"\nNOTE: other processes used up to {busy:.2f} of this machine's {info.get('cpus')} CPUs while a "
              "detector was scoring: its speed is lower than on a quiet machine")
    total = time.perf_counter() - t_all
    print(f"\nbench total {total:.1f} s")
    save_json(args.json, {"bench": "detectors", "machine": info, "args": vars(args), "workspace": str(home),
                          "heldout": str(held), "drafter": drafter, "leak_check": leak,
                          "counts": {"human": len(texts["human"]), "ai": len(texts["ai"]), "bad_rows": pairs["bad"],
                                     "duplicates": texts["duplicates"]},
                          "reference": REFERENCE, "results": results, "not_run": skipped, "failed": failed,
                          "total_s": total})
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
