"""CLI verbs of the detectors:

    humanizer detect FILE... [--detector NAME] [--text-column COL] [--json]
    humanizer detect calibrate --dataset NAME [--detector fast-detectgpt|binoculars] [--scorer M] [...]
    humanizer detect train --dataset NAME --name NAME [--encoder FOLDER]
    humanizer detect list [--json]

The flags are made from engine.eval.settings.DetectSettings (with
tui.cli.common.add_settings_arguments). `detect FILE...` and `detect calibrate|train|list`
share one parser name: the first word after `detect` picks (tui.cli.common.VerbParser)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tui.cli.common import VerbParser, add_json, add_settings_arguments, run_long

TEXT_SUFFIXES = (".txt", ".md")


def _epilog() -> str:
    from engine.eval.settings import DETECTORS, PROFILE_PLACE

    return ("Detectors:\n" + "\n".join(f"  {k}: {v}" for k, v in DETECTORS.items())
            + f"\n\nCalibration profiles: {PROFILE_PLACE} (per detector and model: a profile fitted for other models "
            "is refused). Classifiers: detectors/NAME/classifier.json.\n\n"
            "Also:\n  humanizer detect calibrate --dataset NAME   fit P(AI) for a zero-shot detector\n"
            "  humanizer detect train --dataset NAME --name NAME   train the classifier\n"
            "  humanizer detect list   profiles and classifiers, with what they were made on")


def register(sub) -> None:
    """Add `detect` to the top-level subparsers `sub`, whose parser class must be VerbParser."""
    from engine.eval.settings import setting_fields

    p = sub.add_parser("detect", help="score texts for AI (4 detectors); calibrate, train, list detectors",
                       description="Score .txt files (one text each) or .jsonl rows (--text-column): one line per "
                       "text with its score (higher = more AI), P(AI) (or 'uncalibrated'), tokens and whether it "
                       "was cut to the model's context.", epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="humanizer detect FILE... [options]\n       humanizer detect {calibrate,train,list} ...")
    assert isinstance(p, VerbParser), "build the subparsers with parser_class=VerbParser"
    p.add_argument("files", nargs="+", metavar="FILE", help=".txt / .md files (one text each) or .jsonl files")
    add_settings_arguments(p, setting_fields("score"))
    add_json(p)
    p.set_defaults(action="score", handler=cmd_detect)
    verbs = {}
    v = argparse.ArgumentParser(
        prog="humanizer detect calibrate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit P(AI) for a zero-shot detector (fast-detectgpt, binoculars) on a dataset's training "
        "split: human = its sft/train completions, AI = their drafts (the held-out split is never read). Writes "
        "the profile (a logistic fit of the scores) and prints its AUROC and TPR at 1% FPR.", epilog=_epilog())
    add_settings_arguments(v, setting_fields("calibrate"))
    add_json(v)
    verbs["calibrate"] = v
    v = argparse.ArgumentParser(
        prog="humanizer detect train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the classifier detector: MiniLM sentence embeddings + style features, a logistic head, "
        "on a dataset's training split (human = sft/train completions and human dpo/train chosen, AI = drafts; "
        "never the held-out split). 20% of the texts are held back for its AUROC and TPR at 1% FPR.",
        epilog="Written to detectors/NAME/classifier.json with what it was trained on.")
    add_settings_arguments(v, setting_fields("train"))
    add_json(v)
    verbs["train"] = v
    v = argparse.ArgumentParser(prog="humanizer detect list",
                                description="Calibration profiles and classifiers, with what each was made on.")
    add_json(v)
    verbs["list"] = v
    for name, v in verbs.items():
        v.set_defaults(action=name, handler=cmd_detect)
    p.verbs = verbs


# --- reading texts -----------------------------------------------------------------------------------


@dataclass
class Item:
    file: str
    line: int | None  # None for a whole .txt file
    text: str | None  # None: not a text (the reason says why)
    reason: str | None = None

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


def read_inputs(files: list[str], column: str) -> tuple[list[Item], list[str]]:
    """Items to score, and the files that held no text at all. Empty texts and unusable rows
    are items with a reason (counted, not scored); a .jsonl file where no row has `column` is
    an error naming the file and the column."""
    from engine.errors import HumanizerError
    from engine.jsonl import decode_text, json_lines, problem_kind

    items: list[Item] = []
    empty_files: list[str] = []
    for name in files:
        path = Path(name).expanduser()
        if path.is_dir():
            raise HumanizerError(f"{name} is a folder", "pass its files, e.g. " + str(Path(name) / "*.txt"))
        if not path.is_file():
            raise HumanizerError(f"no such file: {name}", "give .txt or .jsonl files")
        suffix = path.suffix.lower()
        if suffix not in TEXT_SUFFIXES + (".jsonl",):
            raise HumanizerError(f"{name}: cannot read {suffix or 'files without a suffix'}",
                                 "give .txt / .md files (one text each) or .jsonl files (one text per row, "
                                 "--text-column)")
        try:
            data = path.read_bytes()
            raw = decode_text(data)
        except UnicodeDecodeError as e:
            raise HumanizerError(f"{name} is not UTF-8 text (byte {e.start})", "convert it to UTF-8") from None
        except OSError as e:
            raise HumanizerError(f"cannot read {name}: {e.strerror or e}") from None
        if suffix in TEXT_SUFFIXES:
            items.append(Item(name, None, raw) if raw.strip() else Item(name, None, None, "empty"))
            if not raw.strip():
                empty_files.append(name)
            continue
        rows: list[Item] = []
        keys: set[str] = set()
        with_column = 0
        for lineno, row, problem in json_lines(data):
            if problem:
                rows.append(Item(name, lineno, None, problem_kind(problem)))
                continue
            keys |= set(row)
            if column not in row:
                rows.append(Item(name, lineno, None, f"no '{column}' column"))
            elif not isinstance(row[column], str):
                with_column += 1
                rows.append(Item(name, lineno, None, f"'{column}' is not a string"))
            else:
                with_column += 1
                text = row[column]
                rows.append(Item(name, lineno, text) if text.strip() else Item(name, lineno, None, "empty"))
        if not rows:
            empty_files.append(name)
        elif keys and not with_column:
            raise HumanizerError(f"{name} has no column '{column}' (its rows have: {', '.join(sorted(keys))})",
                                 "pass --text-column with the column that holds the text")
        items += rows
    return items, empty_files


# --- the verbs ---------------------------------------------------------------------------------------------


def cmd_detect(ws, args, argv) -> int:
    from engine.eval.settings import DetectSettings

    action = getattr(args, "action", None) or "score"
    if action == "list":
        return _list(ws, args)
    settings = DetectSettings.from_namespace(args).check(action)
    if action == "calibrate":
        return _calibrate(ws, settings, args, argv)
    if action == "train":
        return _train(ws, settings, args, argv)
    return _score(ws, settings, args, argv)


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _score(ws, settings, args, argv) -> int:
    from engine.eval.registry import open_detector

    items, empty_files = read_inputs(args.files, settings.text_column)
    texts = [it for it in items if it.text is not None]
    result: dict = {}

    def work(run):
        det = open_detector(settings, ws, run)
        result["detector"] = det
        scores = det.score([it.text for it in texts], settings.batch(),
                           lambda d, t: run.progress(d, t, "scoring"))
        result["scores"] = scores
        return f"{int(scores.scored.sum())} of {len(items)} texts scored"

    if texts:
        run_long(ws, f"detect {settings.detector}", argv, args.json, work)
    scores, det = result.get("scores"), result.get("detector")
    by_item: dict[int, tuple] = {}
    for k, it in enumerate(texts):
        by_item[id(it)] = (scores, k)
    lines, skipped, truncated, scored = [], {}, 0, 0
    for it in items:
        entry = {"type": "score", "file": it.file, "line": it.line, "score": None, "p_ai": None,
                 "tokens": 0, "truncated": False, "skipped": it.reason}
        if it.text is not None:
            s, k = by_item[id(it)]
            entry.update(score=_num(s.score[k]), p_ai=_num(s.p_ai[k]) if s.p_ai is not None else None,
                         tokens=int(s.n_tokens[k]) if s.n_tokens is not None else 0,
                         truncated=k in s.truncated, skipped=s.skipped.get(k))
        if entry["skipped"]:
            skipped[entry["skipped"]] = skipped.get(entry["skipped"], 0) + 1
        else:
            scored += 1
        truncated += entry["truncated"]
        lines.append((it, entry))
    profile_path = getattr(det, "profile_path", None) if det is not None else None
    calibrated = scores is not None and scores.p_ai is not None
    summary = {"type": "summary", "detector": settings.detector, "files": len(args.files), "texts": len(items),
               "scored": scored, "skipped": skipped, "truncated": truncated,
               "max_tokens": scores.max_tokens if scores is not None else None,
               "calibrated": calibrated, "profile": str(profile_path) if profile_path else None,
               "empty_files": empty_files, "models": det.describe().get("models") if det is not None else {}}
    if args.json:
        for _, entry in lines:
            print(json.dumps(entry))
        print(json.dumps(summary, default=str))
        return 0 if scored else 1
    width = max([len(it.where) for it, _ in lines] + [4])
    for it, e in lines:
        if e["skipped"]:
            print(f"{it.where:<{width}}  skipped: {e['skipped']}")
            continue
        p = f"P(AI) {e['p_ai']:.3f}" if e["p_ai"] is not None else "uncalibrated"
        cut = "  truncated" if e["truncated"] else ""
        print(f"{it.where:<{width}}  score {e['score']:+8.3f}  {p:<12}  {e['tokens']:>5} tokens{cut}")
    parts = [f"{len(items)} texts in {len(args.files)} files: {scored} scored"]
    if skipped:
        parts.append(f"{sum(skipped.values())} skipped (" + ", ".join(f"{k} {v}" for k, v in skipped.items()) + ")")
    parts.append(f"{truncated} truncated" + (f" to {summary['max_tokens']} tokens" if summary["max_tokens"] else ""))
    if empty_files:
        parts.append(f"{len(empty_files)} empty files")
    print("; ".join(parts))
    if det is not None:
        if profile_path:
            prof = det.profile
            print(f"{settings.detector}: P(AI) from {profile_path} (AUROC {prof.auroc:.3f} on "
                  f"{prof.calibrated_on.get('dataset', '?')})")
        elif settings.detector == "classifier":
            rec = det.record
            print(f"classifier {rec['name']}: trained on {rec['trained_on'].get('dataset')} "
                  f"({rec['trained_on'].get('split')} split), AUROC {rec['evaluation']['auroc']:.3f} "
                  "on held-back texts")
        elif settings.detector == "radar":
            print(f"radar: P(AI) is the classifier's own ({det.describe()['models']['classifier']['name']})")
        elif not calibrated:
            print(f"{settings.detector} is uncalibrated: no P(AI). Fit a profile with "
                  "`humanizer detect calibrate --dataset NAME` (same --detector and models)")
    return 0 if scored else 1


def _calibrate(ws, settings, args, argv) -> int:
    from engine.eval import calibrate
    from engine.eval.registry import calibrate_on_dataset

    path = run_long(ws, f"detect calibrate {settings.detector}", argv, args.json,
                    lambda run: calibrate_on_dataset(settings, ws, run))
    p = calibrate.load_profile(path)
    if args.json:
        print(json.dumps({"type": "profile", "path": str(path), "detector": p.detector, "auroc": p.auroc,
                          "tpr_at_1pct_fpr": p.tpr_at_1pct_fpr, "n_human": p.n_human, "n_ai": p.n_ai,
                          "calibrated_on": p.calibrated_on}))
        return 0
    print(f"profile written: {path}")
    print(f"  AUROC {p.auroc:.3f}, TPR at 1% FPR {p.tpr_at_1pct_fpr:.3f} on {p.n_human} human and {p.n_ai} AI "
          f"texts of {p.calibrated_on.get('dataset')} ({p.calibrated_on.get('split')} split)")
    return 0


def _train(ws, settings, args, argv) -> int:
    from engine.eval.classifier import train_classifier

    path = run_long(ws, "detect train", argv, args.json,
                    lambda run: train_classifier(ws, settings.dataset, settings.name, run,
                                                 encoder=settings.encoder or None, limit=settings.limit,
                                                 seed=settings.seed, batch_size=settings.batch("train")))
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    ev = record["evaluation"]
    if args.json:
        print(json.dumps({"type": "classifier", "path": str(path), "name": record["name"], **ev}))
        return 0
    c = record["trained_on"]["counts"]
    print(f"classifier written: {path}")
    print(f"  AUROC {ev['auroc']:.3f}, TPR at 1% FPR {ev['tpr_at_1pct_fpr']:.3f} on the held-back "
          f"{ev['n_human']} human and {ev['n_ai']} AI texts (fitted on {c['fit']['human']} + {c['fit']['ai']})")
    return 0


def _list(ws, args) -> int:
    from engine.eval.registry import list_detectors

    found = list_detectors(ws)
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    from tui.progress import print_table

    def num(x):
        return f"{x:.3f}" if isinstance(x, (int, float)) else "?"

    print("Calibration profiles")
    print_table(["file", "detector", "models", "calibrated on", "texts", "AUROC", "TPR@1%FPR"],
                [[p["file"], p.get("detector", "?"), " ".join(f"{k}={v}" for k, v in p.get("models", {}).items()),
                  "{dataset} ({split})".format_map({"dataset": "?", "split": "?", **(p.get("calibrated_on") or {})}),
                  f"{p.get('n_human', '?')}+{p.get('n_ai', '?')}", num(p.get("auroc")), num(p.get("tpr_at_1pct_fpr"))]
                 if "error" not in p else [p["file"], "error", p["error"], "", "", "", ""]
                 for p in found["profiles"]],
                empty="  none: humanizer detect calibrate --dataset NAME")
    print("\nClassifiers")
    print_table(["name", "trained on", "texts", "encoder", "AUROC (held back)", "TPR@1%FPR"],
                [[c.get("name", "?"),
                  f"{c['trained_on'].get('dataset')} ({c['trained_on'].get('split')})",
                  f"{c['trained_on']['counts']['human']}+{c['trained_on']['counts']['ai']}",
                  f"{c['encoder'].get('name')} ({c['encoder'].get('license')})",
                  num(c["evaluation"].get("auroc")), num(c["evaluation"].get("tpr_at_1pct_fpr"))]
                 if "error" not in c else [c.get("name", "?"), "error: " + c["error"], "", "", "", ""]
                 for c in found["classifiers"]],
                empty="  none: humanizer detect train --dataset NAME --name NAME")
    return 0
