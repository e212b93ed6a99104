"""The eval table: one row per text set (the source drafts, each choice's rewrites, the human
references), detector columns per detector, and the rewrite columns; plus its plain-text form.

Detector columns (per detector, per row; "scored" = the texts the detector gave a score):

    p_ai             mean P(AI) over the row's scored texts (None when the detector is
                     uncalibrated: a zero-shot score has no probability scale without a profile)
    p_ai_ci          95% percentile bootstrap interval of that mean (metrics.bootstrap_ci)
    mean_score       mean raw score (higher = more AI), calibrated or not
    delta            p_ai - the source row's p_ai (choices and human)
    gap_closed       (P_source - P_row) / (P_source - P_human) (metrics.gap_closed; choices only)
    auroc            AUROC of the human references vs this row's texts (metrics.auroc: 1 = every
                     text of the row scores above every human text, 0.5 = indistinguishable)
    tpr_at_1pct_fpr  share of this row's texts flagged at the threshold that flags at most 1% of
                     the human references (metrics.tpr_at_fpr)
    n_scored, skipped {reason: n}, truncated (texts cut to the detector's context, still scored)

Rewrite columns (engine/eval/rewrite_metrics.py, choices only; slop for every row):
slop_per_1k, cos_draft, cos_human, length_ratio, length_within, degenerate_share.

A value computed over nothing is None, and the row's (or the detector cell's) `missing`
says why: an empty side, an uncalibrated detector, no gap between source and human, or a
column that does not apply to the row. Everything here is plain numpy and JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from engine.errors import HumanizerError
from engine.eval import metrics

SOURCE, HUMAN = "source", "human"
FPR = 0.01

COLUMNS = {
    "p_ai": "mean P(AI) per detector (needs a calibration profile for a zero-shot detector)",
    "p_ai_ci": "95% bootstrap interval of that mean",
    "mean_score": "mean detector score (higher = more AI), calibrated or not",
    "delta": "P(AI) of the row minus P(AI) of the source drafts",
    "gap_closed": "(P_source - P_choice) / (P_source - P_human): 0 = as AI as the drafts, 1 = as human as the "
                  "references",
    "auroc": "AUROC of human references vs the row's texts (0.5 = indistinguishable, 1 = always told apart)",
    "tpr_at_1pct_fpr": "share of the row's texts flagged at the threshold flagging 1% of human references",
    "slop_per_1k": "weighted slop phrases per 1,000 words (engine/eval/slop.py)",
    "cos_draft": "meaning kept: mean sentence-embedding cosine, rewrite vs its draft",
    "cos_human": "mean sentence-embedding cosine, rewrite vs the human reference",
    "length_ratio": "mean rewrite words / draft words",
    "length_within": "share of rewrites with a length ratio in 0.8-1.25",
    "degenerate_share": "share of rewrites that are empty, refusals, loops, far too short/long or copies of the "
                        "draft (counted, left out of every detector and meaning column)",
}


@dataclass
class RowScores:
    """One detector's verdict on one row's texts, aligned with the samples: score NaN where
    not scored (`skipped` says why), p_ai None when the detector is uncalibrated."""

    score: np.ndarray
    p_ai: np.ndarray | None
    skipped: dict[int, str] = field(default_factory=dict)
    truncated: list[int] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        return np.isfinite(self.score)


def _safe(fn, *args, missing: dict, key: str):
    """fn(*args), or None with the reason in missing[key] (the metric refused its input)."""
    try:
        return fn(*args)
    except HumanizerError as e:
        missing[key] = e.message
        return None


def detector_cells(rows: dict[str, RowScores], calibrated: bool) -> dict[str, dict]:
    """The detector columns of every row (`rows` holds SOURCE, the choices and HUMAN)."""
    if SOURCE not in rows or HUMAN not in rows:
        raise HumanizerError("the table needs the source and human rows")
    human = rows[HUMAN]
    h_scores = human.score[human.mask]
    out: dict[str, dict] = {}
    for label, r in rows.items():
        m = r.mask
        missing: dict[str, str] = {}
        nothing = "no text of this row was scored" if len(r.score) else "no texts"
        cell = {"n": int(len(r.score)), "n_scored": int(m.sum()),
                "skipped": dict(Counter(r.skipped.values()).most_common()), "truncated": len(r.truncated),
                "mean_score": float(r.score[m].mean()) if m.any() else None, "p_ai": None, "p_ai_ci": None,
                "delta": None, "gap_closed": None, "auroc": None, "tpr_at_1pct_fpr": None, "missing": missing}
        if not m.any():
            missing["mean_score"] = nothing
        if not calibrated or r.p_ai is None:
            missing["p_ai"] = missing["p_ai_ci"] = "uncalibrated: no P(AI) without a calibration profile"
        elif m.any():
            p = r.p_ai[m]
            cell["p_ai"] = float(p.mean())
            cell["p_ai_ci"] = list(metrics.bootstrap_ci(p))
        else:
            missing["p_ai"] = missing["p_ai_ci"] = nothing
        if label == HUMAN:
            missing["auroc"] = missing["tpr_at_1pct_fpr"] = "the human references are the reference"
        elif not m.any() or not len(h_scores):
            why = nothing if not m.any() else "no human reference was scored"
            missing["auroc"] = missing["tpr_at_1pct_fpr"] = why
        else:
            cell["auroc"] = _safe(metrics.auroc, h_scores, r.score[m], missing=missing, key="auroc")
            cell["tpr_at_1pct_fpr"] = _safe(metrics.tpr_at_fpr, h_scores, r.score[m], FPR, missing=missing,
                                            key="tpr_at_1pct_fpr")
        out[label] = cell
    p_src, p_hum = out[SOURCE]["p_ai"], out[HUMAN]["p_ai"]
    for label, cell in out.items():
        missing = cell["missing"]
        if label == SOURCE:
            missing["delta"] = missing["gap_closed"] = "the source is the reference point"
            continue
        if cell["p_ai"] is None or p_src is None:
            missing["delta"] = missing.get("p_ai") or "the source drafts have no P(AI)"
        else:
            cell["delta"] = cell["p_ai"] - p_src
        if label == HUMAN:
            missing["gap_closed"] = "the human references are the target (1 by definition)"
            continue
        if cell["p_ai"] is None or p_src is None or p_hum is None:
            missing["gap_closed"] = (missing.get("p_ai") or ("the source drafts have no P(AI)" if p_src is None
                                                             else "the human references have no P(AI)"))
            continue
        cell["gap_closed"] = metrics.gap_closed(p_src, cell["p_ai"], p_hum)
        if cell["gap_closed"] is None:
            missing["gap_closed"] = (f"no gap to close: P(AI) of source {p_src:.3f} and human {p_hum:.3f} "
                                     "are within 0.001")
    return out


REWRITE_KEYS = ("cos_draft", "cos_draft_ci", "cos_human", "cos_human_ci", "length_ratio", "length_within",
                "degenerate_share")


def rewrite_cells(label: str, kind: str, summary) -> dict:
    """The non-detector columns of a row from rewrite_metrics' ChoiceSummary (choices) or
    TextsSummary (source, human)."""
    missing = dict(summary.missing)
    cell = {"row": label, "kind": kind, "n": summary.n, "words": summary.words,
            "slop_per_1k": summary.slop_per_1k, "slop_hits_per_1k": summary.slop_hits_per_1k,
            "slop_hits": summary.slop_hits, "slop_by_phrase": dict(summary.slop_by_phrase)}
    if kind == "choice":
        for k in REWRITE_KEYS:
            v = getattr(summary, k)
            cell[k] = list(v) if isinstance(v, tuple) else v
        cell.update(n_usable=summary.n_scored, degenerate=dict(summary.degenerate), skipped=dict(summary.skipped),
                    encoder_truncated=summary.n_truncated)
    else:
        for k in REWRITE_KEYS:
            cell[k] = None
            missing[k] = "not a rewrite"
    cell["missing"] = missing
    return cell


# --- the plain-text table ---------------------------------------------------------------------------


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in body)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header)] + [line(r) for r in body]


def format_table(report: dict) -> str:
    """The report's table as plain text: the reference's columns first (P(AI) on the headline
    detector, gap closed, slop per 1K), then delta, AUROC, TPR at 1% FPR, meaning kept, length
    and degenerate share; then every other detector's columns; then why any '—' is empty."""
    rows = report["table"]["rows"]
    head = (report.get("headline") or {}).get("detector")
    dets = {d["name"]: d for d in report.get("detectors", [])}
    notes: dict[str, None] = {}  # why a shown '—' is empty, in order of appearance

    def cell(c: dict, key: str, fmt: str) -> str:
        v = c.get(key)
        if v is None:
            why = c.get("missing", {}).get(key)
            if why and "reference" not in why and "not a rewrite" not in why:
                notes.setdefault(why)
            return "—"
        return fmt.format(v)

    def det_cols(name: str) -> tuple[list[str], list[list[str]]]:
        cal = dets[name].get("calibrated")
        header = [f"P(AI) {name}" if cal else f"score {name}", "gap closed", "ΔP(AI)", "AUROC", "TPR@1%FPR"]
        body = []
        for r in rows:
            c = r["detectors"].get(name, {})
            body.append([cell(c, "p_ai", "{:.3f}") if cal else cell(c, "mean_score", "{:+.3f}"),
                         cell(c, "gap_closed", "{:+.2f}"), cell(c, "delta", "{:+.3f}"), cell(c, "auroc", "{:.3f}"),
                         cell(c, "tpr_at_1pct_fpr", "{:.3f}")])
        return header, body

    header, body = ["row"], [[r["row"]] for r in rows]
    if head:
        h, b = det_cols(head)
        header += h[:2]
        for line, cells in zip(body, b):
            line += cells[:2]
    header.append("slop/1K")
    for line, r in zip(body, rows):
        line.append(cell(r, "slop_per_1k", "{:.1f}"))
    if head:
        header += h[2:]
        for line, cells in zip(body, b):
            line += cells[2:]
    header += ["cos→draft", "cos→human", "length", "degenerate"]
    for line, r in zip(body, rows):
        line += [cell(r, "cos_draft", "{:.3f}"), cell(r, "cos_human", "{:.3f}"), cell(r, "length_ratio", "{:.2f}"),
                 cell(r, "degenerate_share", "{:.0%}")]
    ds, counts, hl = report.get("dataset", {}), report.get("counts", {}), report.get("headline") or {}
    out = [f"eval of {report.get('model', {}).get('name')} on {ds.get('name')}: {counts.get('samples')} held-out "
           f"samples; choices {', '.join(report.get('choices', []))}",
           f"headline detector: {hl.get('detector') or 'none'} ({hl.get('reason', '')})", ""]
    out += _grid(header, body)
    for name in dets:
        if name != head:
            h, b = det_cols(name)
            out += [""] + _grid(["row"] + h, [[r["row"]] + cells for r, cells in zip(rows, b)])
    extra = []
    for name, d in dets.items():
        bits = []
        if d.get("helped_make_training_data"):
            bits.append("helped make the training data (" + d.get("involvement", "") + ")")
        truncated = sum(r["detectors"].get(name, {}).get("truncated", 0) for r in rows)
        skipped: Counter = Counter()
        for r in rows:
            skipped.update(r["detectors"].get(name, {}).get("skipped", {}))
        if truncated:
            bits.append(f"{truncated} texts cut to {d.get('max_tokens')} tokens (scored, counted)")
        if skipped:
            bits.append("not scored: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
        if not d.get("calibrated"):
            bits.append("uncalibrated: scores, AUROC and TPR only")
        if bits:
            extra.append(f"{name}: " + "; ".join(bits))
    degenerate = {r["row"]: r["degenerate"] for r in rows if r.get("degenerate")}
    if degenerate:
        extra.append("degenerate rewrites: " + "; ".join(
            f"{k}: " + ", ".join(f"{why} {n}" for why, n in v.items()) for k, v in degenerate.items()))
    if extra or notes:
        out.append("")
    out += extra
    if notes:
        out.append("'—' = not computed: " + "; ".join(notes))
    return "\n".join(out)
