"""The humanizer's table on a dataset's held-out drafts: base, SFT and SFT+DPO, with the goals.

    .venv/bin/python bench/bench_humanizer.py --data demo-st --sft demo-sft --dpo demo-dpo \
        [--workspace ~/.humanizer] [--model smollm2-135m] [--samples 100] [--seed 0] [--json out.json]

Every step is the real CLI (`python -m tui.cli ...` with HUMANIZER_HOME=--workspace, --json where
the verb has it) in a subprocess, timed by wall clock:

  1. count the usable rows of DATA's heldout.jsonl (a non-empty "draft" and "human"); fewer than
     100 drafts to rewrite is refused unless --allow-small (a table over a handful of drafts says
     little: the bootstrap intervals are wide and TPR at 1% FPR needs 100 human references to
     mean 1%);
  2. `detect list --json`: a fast-detectgpt profile for the scorer (MODEL) calibrated on DATA, and
     a classifier trained on DATA; each one missing is made on DATA's training split (never its
     held-out split): `detect calibrate --dataset DATA --scorer MODEL --profile DATA-fast-detectgpt`,
     `detect train --dataset DATA --name DATA-classifier`;
  3. `eval MODEL --adapter SFT --adapter DPO --data DATA --choices base,SFT,SFT+DPO --samples N
     --seed S --detector fast-detectgpt,classifier --profile P --classifier C --json` (also radar
     with --radar);
  4. the eval's report.json: a markdown table (rows source, base, sft, sft+dpo, human; per
     detector mean P(AI), gap closed, AUROC vs the human references, TPR at 1% FPR; slop per 1K
     words, meaning kept as cosine to the draft and to the human reference, length ratio,
     degenerate share), the report's bootstrap intervals, a paired bootstrap interval of the gap
     closed over the samples (from samples.jsonl), then the goal checks, each PASS / MISS with
     its figure (N/A when the figure could not be computed, with the reason).

Goals (`goal_checks`): sft+dpo closes >= 100% of the P(AI) gap between the drafts and the human
references on the headline detector (the eval's pick: the first of radar, classifier,
fast-detectgpt, binoculars at hand that did not help make the training data, with a P(AI));
cosine to the draft >= 0.8; length ratio within 0.8-1.25; degenerate share < 2%; slop per 1K
<= the human references'; sft+dpo closes more of the gap than sft alone.

The figures are the eval's; this script only runs it and reads its report. They hold for this
model, these adapters and this dataset's held-out drafts (drafted by a model, usually the same
SmolLM2 that scores fast-detectgpt: the report's detector notes say so), on N samples."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import machine_info, save_json, table  # noqa: E402

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent

MIN_DRAFTS = 100
GOAL_GAP = 1.0  # share of the drafts-to-human P(AI) gap sft+dpo closes
GOAL_COS_DRAFT = 0.8
LENGTH_BAND = (0.8, 1.25)
GOAL_DEGENERATE = 0.02  # strictly below
ROLES = ("source", "base", "sft", "sft+dpo", "human")
N_BOOT = 2000


class BenchError(Exception):
    """A refusal or a failed step: the message says what, the hint what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def run_explained(run, args) -> int:
    """`run(args)`, with a BenchError printed as error and hint lines and exit code 2."""
    try:
        return run(args)
    except BenchError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2


def print_facts(info: dict, blas: str) -> None:
    """The machine, as common.print_machine prints it, with this bench's own BLAS line."""
    v = info["versions"]
    print(f"date      {info['date']}")
    print(f"machine   {info['os']}, {info['cpus']} CPUs ({info['cpu']}), {info['memory_gib']} GiB")
    print(f"python    {info['python']}; " + ", ".join(f"{k} {v[k]}" for k in v if v[k]))
    print(f"BLAS      {blas}: {info['openblas'] or 'OpenBLAS NOT FOUND'}")


# --- the workspace and the held-out split (no models) ------------------------------------------------------


def workspace_home(spec: str | None) -> Path:
    """--workspace, else $HUMANIZER_HOME, else ~/.humanizer (as the CLI picks it)."""
    text = spec or os.environ.get("HUMANIZER_HOME") or "~/.humanizer"
    return Path(text).expanduser().resolve()


def heldout_path(home: Path, data: str) -> Path:
    """heldout.jsonl of a workspace dataset name or a dataset folder (the detectors are made on
    the same dataset's training split, so a bare .jsonl file will not do)."""
    text = str(data or "").strip()
    if not text:
        raise BenchError("no dataset given", "pass --data NAME (humanizer data list shows them)")
    path = Path(text).expanduser()
    if path.is_file():
        raise BenchError(f"{path} is a file", "pass the dataset's name or folder: its training split makes the "
                         "detectors, its held-out split is measured")
    folder = path if path.is_dir() else home / "datasets" / text
    if not folder.is_dir():
        raise BenchError(f"no dataset {text!r} in {home / 'datasets'}",
                         "build one (humanizer data build --template style-transfer ...) or run `humanizer demo`")
    held = folder / "heldout.jsonl"
    if not held.is_file():
        raise BenchError(f"{folder} has no held-out split (heldout.jsonl)",
                         "a style-transfer (or paired) dataset has one; a preference set has none")
    return held


def read_heldout_pairs(path: Path) -> dict:
    """{"human": [...], "draft": [...], "bad": n}: the rows with a non-empty "human" and "draft"
    (aligned), and how many rows lacked one or were not JSON objects (counted, not used)."""
    human, draft, bad = [], [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        ok = isinstance(row, dict) and all(isinstance(row.get(k), str) and row[k].strip() for k in ("human", "draft"))
        if not ok:
            bad += 1
            continue
        human.append(row["human"])
        draft.append(row["draft"])
    return {"human": human, "draft": draft, "bad": bad}


def check_size(available: int, samples: int, allow_small: bool, what: str = "held-out drafts") -> int:
    """How many drafts the eval will rewrite (samples 0 = all); refuses nothing to rewrite, and
    fewer than MIN_DRAFTS unless allow_small."""
    if available <= 0:
        raise BenchError(f"no {what}: there is nothing to measure",
                         "build the dataset with a held-out split (humanizer data build ... --heldout N)")
    n = available if samples <= 0 else min(samples, available)
    if n < MIN_DRAFTS and not allow_small:
        why = (f"--samples {samples} asks for" if samples and samples < available else
               f"the dataset has only {available} usable")
        raise BenchError(f"{why} {what}; the bench needs at least {MIN_DRAFTS} (its intervals would be too wide "
                         "and TPR at 1% FPR needs 100 human references to mean 1%)",
                         "build a bigger held-out split (humanizer data build ... --heldout N), or pass "
                         "--allow-small and quote the figures with their size")
    return n


# --- the detectors at hand, from `humanizer detect list --json` ---------------------------------------------


def model_label(spec: str) -> str:
    """The folder name a model spec resolves to (a workspace or embedded name, or a folder's name)."""
    return Path(str(spec).rstrip("/")).expanduser().name or str(spec)


def pick_profile(listing: dict, scorer: str, data: str) -> dict | None:
    """The newest fast-detectgpt profile for `scorer` (by name; the eval checks the weights'
    fingerprint) sampling with the scorer itself and calibrated on dataset `data`."""
    found = [p for p in listing.get("profiles") or [] if "error" not in p and p.get("detector") == "fast-detectgpt"
             and (p.get("models") or {}).get("scorer") == scorer
             and (p.get("settings") or {}).get("sampler_is_scorer", True)
             and (p.get("calibrated_on") or {}).get("dataset") == data]
    return max(found, key=lambda p: str(p.get("created") or "")) if found else None


def pick_classifier(listing: dict, data: str) -> dict | None:
    """The newest classifier trained on dataset `data` (what the eval would pick itself)."""
    found = [c for c in listing.get("classifiers") or [] if "error" not in c
             and (c.get("trained_on") or {}).get("dataset") == data]
    return max(found, key=lambda c: str(c.get("created") or "")) if found else None


def free_name(taken: set[str], want: str) -> str:
    """`want`, or want-2, want-3 ... : never overwrite a detector someone else made."""
    if want not in taken:
        return want
    k = 2
    while f"{want}-{k}" in taken:
        k += 1
    return f"{want}-{k}"


def taken_names(listing: dict) -> set[str]:
    out = {str(c.get("name")) for c in listing.get("classifiers") or []}
    out |= {str(p.get("file", "")).removesuffix(".json") for p in listing.get("profiles") or []}
    return out


# --- running the CLI ---------------------------------------------------------------------------------------


@dataclass
class CliResult:
    argv: list[str]
    rc: int | str
    wall_s: float
    events: list[dict] = field(default_factory=list)
    log: Path | None = None

    def last(self, kind: str) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("type") == kind), None)

    def failure(self) -> str:
        err = self.last("error")
        if err:
            return err.get("message", "") + (f" (hint: {err['hint']})" if err.get("hint") else "")
        tail = self.log.read_text(errors="replace")[-2000:] if self.log and self.log.is_file() else ""
        return f"exit {self.rc}; log tail:\n{tail}"


def cli_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "tui.cli", *map(str, argv)]


def cli_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update(HUMANIZER_HOME=str(home), PYTHONUNBUFFERED="1")
    env.setdefault("TQDM_DISABLE", "1")
    return env


def _event(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) and "type" in ev else None


def run_cli(home: Path, argv: list[str], log_path: Path, echo=print, every: float = 30.0,
            timeout: float | None = None) -> CliResult:
    """Run `humanizer ARGV` with HUMANIZER_HOME=home; its output goes to log_path, its JSON events
    are parsed; log lines and errors are echoed, progress at most every `every` seconds."""
    echo(f"$ HUMANIZER_HOME={home} python -m tui.cli {' '.join(map(str, argv))}")
    events: list[dict] = []
    t0 = last = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cli_command(argv), cwd=str(ROOT), env=cli_env(home), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
        try:
            for line in proc.stdout:
                logf.write(line)
                ev = _event(line)
                if ev is None:
                    continue
                events.append(ev)
                kind, now = ev["type"], time.perf_counter()
                if kind in ("log", "error"):
                    echo(f"  {ev.get('message')}" + (f" (hint: {ev['hint']})" if ev.get("hint") else ""))
                elif kind == "progress" and now - last >= every:
                    last = now
                    total = ev.get("total")
                    echo(f"  {ev.get('step')}/{total or '?'} {ev.get('message') or ''} ({now - t0:.0f} s)".rstrip())
                if timeout and now - t0 > timeout:
                    proc.kill()
                    break
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    for ev in events:  # the report line holds the whole report: keep only its path
        if ev.get("type") == "report":
            for k in [k for k in ev if k not in ("type", "path")]:
                del ev[k]
    return CliResult(list(map(str, argv)), rc, time.perf_counter() - t0, events, log_path)


# --- the report (pure: a report.json dict in, text and verdicts out) -------------------------------------


def row_roles(report: dict) -> dict[str, str]:
    """role (ROLES) -> the table row's label: sft = the choice with one adapter, sft+dpo the one
    with two (the bench asks for base, SFT, SFT+DPO)."""
    labels = {r["row"] for r in report["table"]["rows"]}
    by_count = {len(ads): c for c, ads in (report.get("choice_adapters") or {}).items()}
    roles = {"source": "source", "base": "base" if "base" in labels else None, "sft": by_count.get(1),
             "sft+dpo": by_count.get(2), "human": "human"}
    missing = [k for k, v in roles.items() if v is None or v not in labels]
    if missing:
        raise BenchError(f"the report has no {', '.join(missing)} row (choices: {', '.join(report.get('choices', []))})",
                         "run the eval with --choices base,SFT,SFT+DPO")
    return roles


def rows_by_label(report: dict) -> dict[str, dict]:
    return {r["row"]: r for r in report["table"]["rows"]}


def detector_names(report: dict) -> list[str]:
    return [d["name"] for d in report.get("detectors") or []]


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def _ci(ci, spec: str) -> str:
    return "—" if not ci else f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def markdown_table(report: dict) -> str:
    """Rows source, base, sft, sft+dpo, human; per detector: mean P(AI) (mean score when
    uncalibrated), gap closed, AUROC vs human, TPR@1%FPR; then slop/1K, cos→draft, cos→human,
    length ratio, degenerate share. '—' = not computed (the report's `missing` says why)."""
    roles, rows = row_roles(report), rows_by_label(report)
    dets = {d["name"]: d for d in report.get("detectors") or []}
    header = ["row"]
    for name, d in dets.items():
        header += [f"P(AI) {name}" if d.get("calibrated") else f"score {name}", "gap closed", "AUROC", "TPR@1%FPR"]
    header += ["slop/1K", "cos→draft", "cos→human", "length", "degenerate"]
    body = []
    for role in ROLES:
        r = rows[roles[role]]
        name = role if role == roles[role] else f"{role} ({roles[role]})"
        line = [name]
        for det, d in dets.items():
            c = r["detectors"].get(det) or {}
            line += [_fmt(c.get("p_ai"), ".3f") if d.get("calibrated") else _fmt(c.get("mean_score"), "+.3f"),
                     _fmt(c.get("gap_closed"), "+.0%"), _fmt(c.get("auroc"), ".3f"),
                     _fmt(c.get("tpr_at_1pct_fpr"), ".1%")]
        line += [_fmt(r.get("slop_per_1k"), ".1f"), _fmt(r.get("cos_draft"), ".3f"), _fmt(r.get("cos_human"), ".3f"),
                 _fmt(r.get("length_ratio"), ".2f"), _fmt(r.get("degenerate_share"), ".1%")]
        body.append(line)
    return table(body, header)


def ci_table(report: dict, gap_cis: dict | None = None) -> str | None:
    """The report's 95% bootstrap intervals (P(AI) per detector, cos→draft, cos→human), and the
    paired bootstrap intervals of the gap closed when given ({detector: {label: [lo, hi]}})."""
    roles, rows = row_roles(report), rows_by_label(report)
    dets = [d["name"] for d in report.get("detectors") or [] if d.get("calibrated")]
    header = ["row"] + [f"P(AI) {d}" for d in dets] + [f"gap closed {d}" for d in dets if gap_cis] + \
        ["cos→draft", "cos→human"]
    body, any_ci = [], False
    for role in ROLES:
        r = rows[roles[role]]
        line = [role]
        for d in dets:
            ci = (r["detectors"].get(d) or {}).get("p_ai_ci")
            any_ci |= bool(ci)
            line.append(_ci(ci, ".3f"))
        if gap_cis:
            for d in dets:
                ci = (gap_cis.get(d) or {}).get(roles[role])
                any_ci |= bool(ci)
                line.append(_ci(ci, "+.0%"))
        for k in ("cos_draft_ci", "cos_human_ci"):
            any_ci |= bool(r.get(k))
            line.append(_ci(r.get(k), ".3f"))
        body.append(line)
    return table(body, header) if any_ci else None


def _goal(goal: str, ok: bool | None, figure: str, detail: str = "") -> dict:
    return {"goal": goal, "status": "N/A" if ok is None else "PASS" if ok else "MISS", "figure": figure,
            "detail": detail}


def judge_detector(report: dict) -> tuple[str | None, str]:
    """(the detector the gap goals are judged on, why): the headline, when it did not help make
    the training data and has a P(AI)."""
    head = (report.get("headline") or {}).get("detector")
    reason = (report.get("headline") or {}).get("reason") or ""
    dets = {d["name"]: d for d in report.get("detectors") or []}
    if not head or head not in dets:
        return None, f"no headline detector ({reason or 'none at hand'})"
    d = dets[head]
    if d.get("helped_make_training_data"):
        return None, f"the headline {head} helped make the training data ({d.get('involvement')})"
    if not d.get("calibrated"):
        return None, f"the headline {head} is uncalibrated: no P(AI), no gap closed"
    return head, f"headline detector {head}: {reason}"


def goal_checks(report: dict, gap_cis: dict | None = None) -> list[dict]:
    """PASS / MISS / N/A per goal (see the module docstring), each with its figure."""
    roles, rows = row_roles(report), rows_by_label(report)
    sd, sft, hum = rows[roles["sft+dpo"]], rows[roles["sft"]], rows[roles["human"]]
    out = []
    det, why = judge_detector(report)
    ci_of = lambda label: (gap_cis or {}).get(det, {}).get(label)  # noqa: E731
    if det is None:
        out.append(_goal("sft+dpo closes >= 100% of the gap (independent detector)", None, "—", why))
        out.append(_goal("sft+dpo closes more of the gap than sft", None, "—", why))
    else:
        g_sd, g_sft = sd["detectors"][det].get("gap_closed"), sft["detectors"][det].get("gap_closed")
        miss_sd = sd["detectors"][det].get("missing", {}).get("gap_closed", "")
        miss_sft = sft["detectors"][det].get("missing", {}).get("gap_closed", "")
        ci = ci_of(roles["sft+dpo"])
        p_src = rows["source"]["detectors"][det].get("p_ai")
        p_hum = hum["detectors"][det].get("p_ai")
        span = f"P(AI) drafts {_fmt(p_src, '.3f')} -> human {_fmt(p_hum, '.3f')}"
        out.append(_goal(f"sft+dpo closes >= {GOAL_GAP:.0%} of the gap ({det}, independent)",
                         None if g_sd is None else g_sd >= GOAL_GAP, _fmt(g_sd, "+.1%"),
                         miss_sd if g_sd is None else f"{why}; {span}"
                         + (f"; paired 95% CI {_ci(ci, '+.0%')}" if ci else "")))
        ok = None if g_sd is None or g_sft is None else g_sd > g_sft
        diff = (gap_cis or {}).get(det, {}).get("sft+dpo - sft")
        out.append(_goal(f"sft+dpo closes more of the gap than sft ({det})", ok,
                         f"{_fmt(g_sd, '+.1%')} vs {_fmt(g_sft, '+.1%')}",
                         (miss_sd or miss_sft) if ok is None else
                         (f"difference 95% CI {_ci(diff, '+.0%')}" if diff else "")))
    cos = sd.get("cos_draft")
    out.append(_goal(f"cos→draft >= {GOAL_COS_DRAFT}", None if cos is None else cos >= GOAL_COS_DRAFT,
                     _fmt(cos, ".3f"), sd.get("missing", {}).get("cos_draft", "") if cos is None else
                     (f"95% CI {_ci(sd.get('cos_draft_ci'), '.3f')}" if sd.get("cos_draft_ci") else "")))
    lr = sd.get("length_ratio")
    lo, hi = LENGTH_BAND
    out.append(_goal(f"length ratio within {lo}-{hi}", None if lr is None else lo <= lr <= hi, _fmt(lr, ".2f"),
                     sd.get("missing", {}).get("length_ratio", "") if lr is None else
                     (f"{_fmt(sd.get('length_within'), '.0%')} of rewrites within the band"
                      if sd.get("length_within") is not None else "")))
    dg = sd.get("degenerate_share")
    out.append(_goal(f"degenerate share < {GOAL_DEGENERATE:.0%}", None if dg is None else dg < GOAL_DEGENERATE,
                     _fmt(dg, ".1%"), sd.get("missing", {}).get("degenerate_share", "") if dg is None else
                     ", ".join(f"{k} {v}" for k, v in (sd.get("degenerate") or {}).items())))
    s_sd, s_h = sd.get("slop_per_1k"), hum.get("slop_per_1k")
    ok = None if s_sd is None or s_h is None else s_sd <= s_h
    out.append(_goal("slop/1K <= human's", ok, f"{_fmt(s_sd, '.1f')} vs {_fmt(s_h, '.1f')}",
                     (sd.get("missing", {}).get("slop_per_1k") or hum.get("missing", {}).get("slop_per_1k") or "")
                     if ok is None else ""))
    return out


def format_goals(goals: list[dict]) -> str:
    lines = []
    for g in goals:
        lines.append(f"{g['status']:<4}  {g['goal']}: {g['figure']}" + (f"  ({g['detail']})" if g["detail"] else ""))
    counts = {s: sum(g["status"] == s for g in goals) for s in ("PASS", "MISS", "N/A")}
    lines.append(f"{counts['PASS']} of {len(goals)} goals met, {counts['MISS']} missed"
                 + (f", {counts['N/A']} not measurable" if counts["N/A"] else ""))
    return "\n".join(lines)


def detector_notes(report: dict) -> list[str]:
    """What each detector is, what it was made on, and its relation to the data and model."""
    out = []
    for d in report.get("detectors") or []:
        bits = []
        prof = d.get("profile") or {}
        if d["name"] == "classifier":
            on = d.get("trained_on") or {}
            ev = prof.get("evaluation") or {}
            bits.append(f"trained on {on.get('dataset')} ({on.get('split')} split)"
                        + (f", AUROC {ev['auroc']:.3f} on its held-back texts" if ev.get("auroc") is not None else ""))
        elif prof.get("calibrated_on"):
            on = prof["calibrated_on"]
            bits.append(f"profile {Path(str(prof.get('path') or '')).name} calibrated on {on.get('dataset')} "
                        f"({on.get('split')} split)"
                        + (f", AUROC {prof['auroc']:.3f} there" if prof.get("auroc") is not None else ""))
        bits.append("HELPED MAKE THE TRAINING DATA: " + str(d.get("involvement")) if d.get("helped_make_training_data")
                    else "did not help make the training data")
        bits += list(d.get("notes") or [])
        out.append(f"{d['name']}: " + "; ".join(bits))
    return out


# --- the paired bootstrap of the gap closed (samples.jsonl) ----------------------------------------------


def sample_p_ai(samples: list[dict], detector: str, label: str) -> list[float]:
    """P(AI) of row `label` per sample (NaN where not scored)."""
    out = []
    for s in samples:
        cell = ((s.get("scores") or {}).get(detector) or {}).get(label) or {}
        p = cell.get("p_ai")
        out.append(float(p) if p is not None else math.nan)
    return out


def gap_closed_cis(report: dict, samples: list[dict], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{detector: {choice label: [lo, hi], "sft+dpo - sft": [lo, hi]}}: 95% percentile intervals
    of the gap closed, resampling the samples with replacement (each resample keeps a sample's
    draft, rewrites and reference together); a resample with no gap (|P_source - P_human| <
    0.001) or an empty row is left out. Calibrated detectors only."""
    import numpy as np

    roles = row_roles(report)
    out: dict = {}
    if not samples:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    for d in report.get("detectors") or []:
        if not d.get("calibrated"):
            continue
        name = d["name"]
        p = {role: np.asarray(sample_p_ai(samples, name, roles[role])) for role in ("source", "sft", "sft+dpo", "human")}

        def means(v):
            x = v[idx]
            ok = np.isfinite(x)
            n = ok.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)

        src, hum = means(p["source"]), means(p["human"])
        gaps = {}
        for role in ("sft", "sft+dpo"):
            with np.errstate(invalid="ignore", divide="ignore"):
                g = (src - means(p[role])) / (src - hum)
            g[~np.isfinite(g) | (np.abs(src - hum) < 1e-3)] = np.nan
            gaps[role] = g
        cell = {}
        for key, g in ((roles["sft"], gaps["sft"]), (roles["sft+dpo"], gaps["sft+dpo"]),
                       ("sft+dpo - sft", gaps["sft+dpo"] - gaps["sft"])):
            g = g[np.isfinite(g)]
            if len(g) >= n_boot // 2:  # most resamples usable, else no interval
                cell[key] = [float(x) for x in np.quantile(g, [0.025, 0.975])]
        out[name] = cell
    return out


def read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the run ---------------------------------------------------------------------------------------------


def stage_line(stage: dict) -> str:
    return f"  {stage['stage']:<10} {stage['status']:<7} {stage['wall_s']:8.1f} s  {stage.get('what', '')}".rstrip()


def ensure_detectors(home: Path, args, work: Path, stages: list, echo=print) -> dict:
    """The profile and classifier for the eval (made when missing); returns {"profile": path,
    "classifier": name}."""
    res = run_cli(home, ["detect", "list", "--json"], work / "detect-list.log", echo=lambda *a: None)
    if res.rc != 0:
        raise BenchError(f"`humanizer detect list` failed: {res.failure()}")
    text = (work / "detect-list.log").read_text(encoding="utf-8")
    try:
        listing = json.loads(text[text.index("{"):])
    except ValueError:
        raise BenchError(f"`humanizer detect list --json` printed no JSON: {text[-500:]}") from None
    stages.append({"stage": "list", "status": "ran", "wall_s": res.wall_s, "what": "detect list"})
    data = Path(args.data).name if Path(args.data).expanduser().is_dir() else args.data
    taken = taken_names(listing)
    scorer = args.scorer or args.model
    prof = pick_profile(listing, model_label(scorer), data)
    if prof:
        stages.append({"stage": "calibrate", "status": "reused", "wall_s": 0.0, "what": prof["path"]})
        profile = prof["path"]
    else:
        name = free_name(taken, f"{data}-fast-detectgpt")
        res = run_cli(home, ["detect", "calibrate", "--dataset", args.data, "--scorer", scorer, "--profile", name,
                             "--json"], work / "calibrate.log", echo=echo)
        out = res.last("profile")
        if res.rc != 0 or not out:
            raise BenchError(f"`humanizer detect calibrate` failed: {res.failure()}")
        stages.append({"stage": "calibrate", "status": "ran", "wall_s": res.wall_s,
                       "what": f"{out['path']} (AUROC {out['auroc']:.3f} on the training split)"})
        profile = out["path"]
    clf = pick_classifier(listing, data)
    if clf:
        stages.append({"stage": "classifier", "status": "reused", "wall_s": 0.0, "what": clf["name"]})
        classifier = clf["name"]
    else:
        name = free_name(taken, f"{data}-classifier")
        res = run_cli(home, ["detect", "train", "--dataset", args.data, "--name", name, "--seed", args.seed, "--json"]
                      + (["--encoder", args.encoder] if args.encoder else []), work / "classifier.log", echo=echo)
        out = res.last("classifier")
        if res.rc != 0 or not out:
            raise BenchError(f"`humanizer detect train` failed: {res.failure()}")
        stages.append({"stage": "classifier", "status": "ran", "wall_s": res.wall_s,
                       "what": f"{name} (AUROC {out['auroc']:.3f} on its held-back training texts)"})
        classifier = name
    return {"profile": profile, "classifier": classifier}


def eval_argv(args, dets: dict) -> list[str]:
    sft, dpo = model_label(args.sft), model_label(args.dpo)
    detectors = ["fast-detectgpt", "classifier"] + (["radar"] if args.radar else [])
    argv = ["eval", args.model, "--adapter", args.sft, "--adapter", args.dpo, "--data", args.data,
            "--choices", f"base,{sft},{sft}+{dpo}", "--samples", str(args.samples), "--seed", str(args.seed),
            "--detector", ",".join(detectors), "--profile", dets["profile"], "--classifier", dets["classifier"],
            "--json"]
    if args.scorer:
        argv += ["--scorer", args.scorer]
    if args.radar:
        argv += ["--radar", args.radar]
    if args.rows:
        argv += ["--rows", str(args.rows)]
    if args.encoder:
        argv += ["--encoder", args.encoder]
    if args.resume:
        argv.append("--resume")
    return argv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", help="HUMANIZER_HOME (default: $HUMANIZER_HOME or ~/.humanizer)")
    ap.add_argument("--model", default=common.DEFAULT_MODEL, help="the base model (default: %(default)s)")
    ap.add_argument("--data", required=True, help="a style-transfer dataset with heldout.jsonl (name or folder)")
    ap.add_argument("--sft", required=True, help="the SFT adapter (workspace name or folder)")
    ap.add_argument("--dpo", required=True, help="the DPO delta on the SFT adapter")
    ap.add_argument("--samples", type=int, default=MIN_DRAFTS, help="held-out drafts rewritten per choice (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorer", default="", help="fast-detectgpt's scorer (default: --model)")
    ap.add_argument("--radar", default="", help="also score with radar (a RoBERTa folder or a cached HF repo id)")
    ap.add_argument("--rows", type=int, default=0, help="rewrites decoded together (0: the eval's default)")
    ap.add_argument("--encoder", default="", help="sentence encoder folder for the classifier and meaning kept "
                    "(default: all-MiniLM-L6-v2, from the workspace or PyPI)")
    ap.add_argument("--resume", action="store_true", help="continue the newest eval with the same settings")
    ap.add_argument("--allow-small", action="store_true", help=f"run on fewer than {MIN_DRAFTS} drafts")
    ap.add_argument("--json", metavar="PATH", help="also write every number (and the report) to PATH")
    ap.add_argument("--report", metavar="REPORT_JSON", help="present an eval already run (its run folder's "
                    "report.json, e.g. from `humanizer demo`) instead of running one; --data/--sft/--dpo are then "
                    "only checked against it")
    args = ap.parse_args(argv)
    return run_explained(run, args)


def run(args) -> int:
    import tempfile

    t_all = time.perf_counter()
    info = machine_info()
    print_facts(info, "every CLI step preloads OpenBLAS itself (engine.blas.ensure_fast_blas)")
    home = workspace_home(args.workspace)
    held = heldout_path(home, args.data)
    pairs = read_heldout_pairs(held)
    if pairs["bad"]:
        raise BenchError(f"{held}: {pairs['bad']} rows are not JSON objects with a non-empty 'draft' and 'human'; "
                         "the eval refuses such a file", "rebuild the dataset or fix those rows "
                         "(humanizer eval names the first one)")
    n = check_size(len(pairs["draft"]), args.samples, args.allow_small)
    print(f"data      {held}: {len(pairs['draft'])} held-out rows; {n} rewritten per choice")
    stages: list[dict] = []
    if args.report:
        report_path = Path(args.report).expanduser()
        if not report_path.is_file():
            raise BenchError(f"{report_path} does not exist", "pass an eval run folder's report.json")
        dets = None
        stages.append({"stage": "eval", "status": "reused", "wall_s": 0.0, "what": str(report_path)})
    else:
        with tempfile.TemporaryDirectory(prefix="bench-humanizer-") as tmp:
            work = Path(tmp)
            dets = ensure_detectors(home, args, work, stages)
            res = run_cli(home, eval_argv(args, dets), work / "eval.log")
            rep = res.last("report")
            if res.rc != 0 or not rep:
                raise BenchError(f"`humanizer eval` failed: {res.failure()}")
            stages.append({"stage": "eval", "status": "ran", "wall_s": res.wall_s, "what": rep["path"]})
        report_path = Path(rep["path"])
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if args.report:
        named = {a.get("name") for a in report.get("adapters") or []}
        data_name = (report.get("dataset") or {}).get("name")
        wanted = {Path(args.sft).name, Path(args.dpo).name}
        if not wanted <= named or data_name not in (args.data, Path(args.data).name):
            raise BenchError(f"{report_path} is an eval of {data_name} with {', '.join(sorted(named))}, not of "
                             f"{args.data} with {args.sft} and {args.dpo}", "pass the matching --data/--sft/--dpo")
    samples = read_samples(report_path.parent / "samples.jsonl")
    got = report["counts"]["samples"]
    if got < MIN_DRAFTS and not args.allow_small:
        raise BenchError(f"the eval rewrote only {got} drafts", "pass --allow-small to accept it")
    gap_cis = gap_closed_cis(report, samples, seed=args.seed)
    goals = goal_checks(report, gap_cis)
    ds = report.get("dataset") or {}

    print(f"\n## humanizer on {ds.get('name')}: {got} held-out drafts, model {report['model']['name']}, "
          f"adapters {', '.join(a['name'] for a in report.get('adapters') or [])}\n")
    print(markdown_table(report))
    print("\n'—' = not computed (report.json's `missing` says why). gap closed = (P_source - P_row) / "
          "(P_source - P_human); AUROC and TPR@1%FPR: the row's texts vs the human references.")
    if got < MIN_DRAFTS:
        print(f"NOTE: {got} drafts (--allow-small): with fewer than {MIN_DRAFTS} human references the 1% FPR "
              "threshold flags none of them, and every interval is wide.")
    cis = ci_table(report, gap_cis)
    if cis:
        print("\n95% bootstrap intervals (P(AI), cos: the report's, over texts; gap closed: paired, over samples, "
              f"{N_BOOT} resamples):\n")
        print(cis)
    print("\nDetectors:")
    for line in detector_notes(report):
        print(f"- {line}")
    print(f"- headline: {(report.get('headline') or {}).get('detector')} "
          f"({(report.get('headline') or {}).get('reason')})")
    print(f"\nData: {ds.get('source')} ({ds.get('licence')}), dataset chain {' <- '.join(ds.get('chain') or [])}")
    print("\n### Goals\n")
    print(format_goals(goals))
    t = report.get("timings") or {}
    print("\nWall time per stage:")
    for s in stages:
        print(stage_line(s))
    print(f"  eval inside: resolve {t.get('resolve_s')} s, rewrite {t.get('rewrite_s')} s "
          f"({t.get('rewrites_per_s')} rewrites/s, {report['counts']['rewrites']['generated']} generated, "
          f"{report['counts']['rewrites']['from_cache']} from cache), measure {t.get('measure_s')} s, "
          f"score {t.get('score_s')} s, total {t.get('total_s')} s")
    total = time.perf_counter() - t_all
    print(f"  bench total {total:.1f} s")
    save_json(args.json, {
        "bench": "humanizer", "machine": info, "args": vars(args), "workspace": str(home), "heldout": str(held),
        "heldout_usable_rows": len(pairs["draft"]), "samples": got, "detectors_used": dets, "stages": stages,
        "total_s": total, "report_path": str(report_path), "headline": report.get("headline"),
        "goals": goals, "gap_closed_ci": gap_cis, "table_markdown": markdown_table(report), "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
