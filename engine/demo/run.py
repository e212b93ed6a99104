"""The demo's stages and the loop that runs them.

Each stage is one `humanizer ...` command started as a job (engine.jobs.start_job), so the
app's Jobs screen, Data, Train and Eval screens show it like any other; the demo waits for
it and repeats its progress as its own ("stage 3/9 · SFT · step 12/40 ..."). A stage whose
result is already there is skipped, so `humanizer demo` run again continues where an
interrupted one stopped; the stages that can continue part-done work are given --resume
(a data build's generations cache, a training run's checkpoints, an eval's rewrite cache).

Stages: the embedded model, the human corpus, the style-transfer dataset (the model drafts
AI versions of human passages; held-out documents set aside), SFT on it, on-policy DPO pairs
(the SFT model rewrites SFT prompts; chosen = the human passage), DPO stacked on the SFT
adapter, the fast-detectgpt calibration and the classifier (both on the training split, never
the held-out one), and the eval (base, sft, sft+dpo on the held-out drafts). No detector
helps make the data, so every detector is an independent judge of the rewrites."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.demo.settings import DemoSettings
from engine.errors import HumanizerError
from engine.events import TERMINAL, NullRun, Run, read_json, write_json
from engine.workspace import Workspace

POLL = 0.5


@dataclass
class Stage:
    key: str
    title: str
    argv: list[str]  # after `humanizer`
    done: Callable[[], bool]  # its result is already there
    resumable: Callable[[], bool] = lambda: False  # there is part-done work to continue (adds --resume)
    kind: str = ""  # the job kind the Jobs screen shows
    check: Callable[[], str | None] = lambda: None  # after the stage: why its result cannot serve (None: it can)


def names(settings: DemoSettings) -> dict[str, str]:
    p = settings.prefix
    return {"data": f"{p}-st", "pairs": f"{p}-dpo", "sft": f"{p}-sft", "dpo": f"{p}-dpo",
            "profile": f"{p}-fast-detectgpt", "classifier": f"{p}-classifier"}


def plan(settings: DemoSettings, ws: Workspace) -> list[Stage]:
    """The stages in order, each knowing whether its result is already there."""
    from engine.data.corpus import is_pulled
    from engine.eval.classifier import classifier_path
    from engine.eval.registry import profile_location
    from engine.models import EMBEDDED_MODELS, is_complete

    s, n, model = settings.size, names(settings), settings.model
    data_dir, pairs_dir = ws.datasets_dir / n["data"], ws.datasets_dir / n["pairs"]
    sft_dir, dpo_dir = ws.adapters_dir / n["sft"], ws.adapters_dir / n["dpo"]
    seed, rows = str(settings.seed), str(settings.rows)
    stages = []
    if model in EMBEDDED_MODELS:
        stages.append(Stage("model", f"the embedded model ({model})", ["models", "pull", model],
                            lambda: is_complete(ws.models_dir / model), kind="models pull"))
    stages += [
        Stage("corpus", f"the human corpus ({settings.corpus})", ["data", "corpus", "pull", settings.corpus],
              lambda: is_pulled(ws, settings.corpus), kind="data corpus pull"),
        Stage("data", f"AI drafts of human passages ({n['data']})",
              ["data", "build", "--template", "style-transfer", "--source", settings.corpus, "--output", n["data"],
               "--model", model, "--limit", str(s.passages), "--heldout", str(s.heldout_documents),
               "--min-words", str(s.min_words), "--max-words", str(s.max_words), "--rows", rows, "--seed", seed],
              lambda: _dataset_done(data_dir), lambda: _build_started(ws, n["data"]),
              kind="data build style-transfer", check=lambda: _enough_rows(data_dir)),
        Stage("sft", f"SFT: draft -> human ({n['sft']})",
              ["lora", "train", model, "--data", n["data"], "--method", "sft", "--iters", str(s.sft_iters),
               "--batch-size", str(s.sft_batch), "--steps-per-eval", str(max(1, s.sft_iters // 2)),
               "--seed", seed, "--output", str(sft_dir)],
              lambda: _adapter_done(sft_dir, s.sft_iters), lambda: True, kind="lora train sft"),
        Stage("pairs", f"on-policy DPO pairs from the SFT model ({n['pairs']})",
              ["data", "build", "--template", "dpo-pairs", "--source", n["data"], "--model", model,
               "--adapter", str(sft_dir), "--output", n["pairs"], "--samples", "2", "--limit", str(s.dpo_prompts),
               "--rows", rows, "--seed", seed],
              lambda: _dataset_done(pairs_dir), lambda: _build_started(ws, n["pairs"]),
              kind="data build dpo-pairs"),
        Stage("dpo", f"DPO stacked on SFT ({n['dpo']})",
              ["lora", "train", model, "--data", n["pairs"], "--method", "dpo", "--mount-adapter", str(sft_dir),
               "--iters", str(s.dpo_iters), "--batch-size", str(s.dpo_batch),
               "--steps-per-eval", str(s.dpo_iters), "--seed", seed, "--output", str(dpo_dir)],
              lambda: _adapter_done(dpo_dir, s.dpo_iters), lambda: True, kind="lora train dpo"),
        Stage("calibrate", f"fast-detectgpt calibrated on the training split ({n['profile']})",
              ["detect", "calibrate", "--detector", "fast-detectgpt", "--scorer", model, "--dataset", n["data"],
               "--profile", n["profile"], "--seed", seed],
              lambda: profile_location(ws, n["profile"]).is_file(), kind="detect calibrate"),
        Stage("classifier", f"the classifier trained on the training split ({n['classifier']})",
              ["detect", "train", "--dataset", n["data"], "--name", n["classifier"], "--seed", seed],
              lambda: classifier_path(ws, n["classifier"]).is_file(), kind="detect train"),
    ]
    eval_argv = ["eval", model, "--adapter", str(sft_dir), "--adapter", str(dpo_dir), "--data", n["data"],
                 "--choices", f"base,{n['sft']},{n['sft']}+{n['dpo']}", "--detector", "fast-detectgpt,classifier",
                 "--profile", n["profile"], "--classifier", n["classifier"], "--samples", str(s.eval_samples),
                 "--rows", rows, "--seed", seed]
    stages.append(Stage("eval", "the eval: base, sft and sft+dpo rewrites of the held-out drafts, scored",
                        eval_argv, lambda: _eval_report(ws, settings) is not None,
                        lambda: _eval_started(ws, settings), kind="eval"))
    return stages


# --- what is there already ----------------------------------------------------------------------------


def _dataset_done(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()  # written last, atomically


def _lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError:
        return 0


def _enough_rows(folder: Path) -> str | None:
    """The eval needs held-out rows and the detectors' training needs training rows: say so
    now rather than after the training stages."""
    held, train = _lines(folder / "heldout.jsonl"), _lines(folder / "sft" / "train.jsonl")
    if held and train >= 10:
        return None
    return (f"{folder.name} kept {held} held-out and {train} training rows after the builder's filters (its "
            "manifest.json counts what was dropped and why): too few for the eval (at least 1 held-out) and the "
            "classifier (at least 10 training)")


def _build_started(ws: Workspace, name: str) -> bool:
    return (ws.datasets_dir / f".{name}.build").is_dir()  # engine.data.build's generations cache


def _adapter_done(folder: Path, iters: int) -> bool:
    """The finished adapter: training writes it (config with its step count) only at the end;
    checkpoints go to checkpoints/."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        steps = int(config["humanizer"]["metrics"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (folder / "adapters.safetensors").is_file() and steps >= iters


def state_path(ws: Workspace, settings: DemoSettings) -> Path:
    return ws.home / "demo" / f"{settings.prefix}.json"


def _state(ws: Workspace, settings: DemoSettings) -> dict:
    return read_json(state_path(ws, settings)) or {}


def _eval_report(ws: Workspace, settings: DemoSettings) -> Path | None:
    """The report of the demo's finished eval, when it is still there."""
    job_id = (_state(ws, settings).get("stages") or {}).get("eval", {}).get("job")
    if not job_id:
        return None
    info = read_json(ws.runs_dir / job_id / "job.json") or {}
    report = ws.runs_dir / job_id / "report.json"
    return report if info.get("status") == "done" and report.is_file() else None


def _eval_started(ws: Workspace, settings: DemoSettings) -> bool:
    job_id = (_state(ws, settings).get("stages") or {}).get("eval", {}).get("job")
    return bool(job_id) and (ws.runs_dir / job_id / "eval-state.json").is_file()


def _record(ws: Workspace, settings: DemoSettings, key: str, **fields) -> None:
    state = _state(ws, settings)
    state.setdefault("stages", {}).setdefault(key, {}).update(fields)
    state.update(prefix=settings.prefix, size="quick" if settings.quick else "default", updated=time.time())
    path = state_path(ws, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, state)


# --- running ------------------------------------------------------------------------------------------


def run_demo(settings: DemoSettings, ws: Workspace, run: Run = NullRun(), *, argv_of: Callable[..., list[str]],
             poll: float = POLL) -> Path:
    """Run every stage not done yet, each as a job; returns the eval's report.json. `argv_of(*args)`:
    the command line that runs `humanizer ARGS` (the CLI knows its entry point; the engine does not)."""
    from engine.jobs import cancel_job, job_events, job_info, start_job

    settings.check()
    stages = plan(settings, ws)
    total = len(stages)
    size = "quick" if settings.quick else "default"
    run.log(f"humanizer demo ({size} size, prefix {settings.prefix}): {total} stages; state in "
            f"{state_path(ws, settings)}")
    started_at = time.time()
    for i, stage in enumerate(stages):
        head = f"stage {i + 1}/{total} · {stage.title}"
        if stage.done():
            _refuse_unusable(stage, head)
            run.log(f"{head}: already done, kept")
            _record(ws, settings, stage.key, status="done")
            run.progress(i + 1, total, f"{head}: already done")
            continue
        argv = stage.argv + (["--resume"] if stage.resumable() else [])
        job = start_job(ws, stage.kind or stage.key, argv_of(*argv))
        _record(ws, settings, stage.key, job=job.id, status="running", argv=argv)
        run.log(f"{head}: job {job.id}: humanizer {' '.join(argv)}")
        run.progress(i, total, head, job=job.id)
        try:
            info, error = _wait(job, run, i, total, head, poll, job_events, job_info)
        except BaseException:  # cancelled (SIGTERM, Ctrl-C) or crashed: the stage's job stops too
            try:
                cancel_job(ws, job.id)
            except HumanizerError:
                pass
            _record(ws, settings, stage.key, status="cancelled")
            raise
        _record(ws, settings, stage.key, status=info.status)
        if info.status != "done" or not stage.done():
            why = error or info.error or f"the job ended {info.status} without its result"
            raise HumanizerError(f"{head} failed: {why}",
                                 f"see {info.dir / 'log.txt'} and the job's events (humanizer jobs show {info.id}); "
                                 "fix the cause and run `humanizer demo` again with the same flags: finished stages "
                                 "are kept and this one continues")
        _refuse_unusable(stage, head)
        run.log(f"{head}: done in {_dur((info.ended or time.time()) - (info.started or time.time()))}")
    report = _eval_report(ws, settings)
    if report is None:
        raise HumanizerError("the eval's report is missing", "run `humanizer demo` again")
    run.artifact(report, kind="eval report")
    run.log(f"the demo is done ({_dur(time.time() - started_at)} this time): {report}")
    return report


def _refuse_unusable(stage: Stage, head: str) -> None:
    problem = stage.check()
    if problem:
        raise HumanizerError(f"{head}: {problem}", "start a new demo under another --name with more data (the "
                             "default size rather than --quick), or build the dataset yourself with a bigger --limit")


def _wait(job, run: Run, i: int, total: int, head: str, poll: float, job_events, job_info):
    """Repeat the stage job's progress until it ends; (final JobInfo, its last error message)."""
    offset, error = 0, None
    while True:
        info = job_info(job.dir)
        events, offset = job_events(info, offset)
        for ev in events:
            kind = ev.get("type")
            if kind == "progress":
                step, of = ev.get("step"), ev.get("total")
                inner = ev.get("message") or ""
                frac = (step / of) if isinstance(step, (int, float)) and of else 0.0
                counted = f"{step}/{of}" if of else ""
                run.progress(i, total, " · ".join(x for x in (head, counted, inner) if x), eta=ev.get("eta"),
                             stage_fraction=round(min(max(frac, 0.0), 1.0), 4), job=job.id)
            elif kind == "error":
                error = ev.get("message")
                if ev.get("hint"):
                    error += f" ({ev['hint']})"
        if info.status in TERMINAL:
            events, offset = job_events(info, offset)
            for ev in events:
                if ev.get("type") == "error":
                    error = ev.get("message")
            return info, error
        time.sleep(poll)


def _dur(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
