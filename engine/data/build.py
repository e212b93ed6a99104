"""`humanizer data build`: human text in, a workspace dataset out.

    datasets/NAME/sft/{train,valid}.jsonl   prompt (instruction + AI draft) -> completion (human)
    datasets/NAME/dpo/{train,valid}.jsonl   prompt, chosen (human), rejected (AI draft or own rewrite)
    datasets/NAME/heldout.jsonl             draft, human reference, source id: for eval only
    datasets/NAME/manifest.json             source + licence, template, prompts, models, sampling,
                                            seed, counts after each filter, time

Splits are by source document. Generations are cached in `datasets/.NAME.build/` chunk by
chunk, each with its own seed, so an interrupted build continues with `--resume` and gives
the same rows; the dataset folder appears only when it is complete (atomic rename).

Under `mlx.launch` every rank runs the build: each generates its shard of every chunk
(engine/distributed/spread.py) and rank 0 alone reads and writes the cache, the dataset, the
manifest and the events. A row's seed comes from its key, so the rows are those of one process,
and --resume works with any number of ranks."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.data import filters, locks as L
from engine.data.settings import DRAFT_PROMPT, LOCKS_SENTENCE, REWRITE_INSTRUCTION, BuildSettings
from engine.data.sources import Source, open_source, passages
from engine.errors import HumanizerError
from engine.events import ChunkProgress, NullRun, Run
from engine.workspace import atomic_dir

if TYPE_CHECKING:  # the world (and MLX) is imported when a build runs, not when this module loads
    from engine.distributed.world import World

SAMPLE_EVERY = 8.0  # seconds between two sample pairs in the events
CHUNK_BATCHES = 4  # generations submitted together = rows * CHUNK_BATCHES
PARTS = ("sft/train", "sft/valid", "dpo/train", "dpo/valid", "heldout")


@dataclass
class Item:
    """One human passage on its way to becoming rows."""

    key: str
    doc: str
    human: str
    split: str = "train"
    locks: list[str] = field(default_factory=list)
    draft: str = ""
    prompt: str = ""  # the SFT prompt (instruction + draft), when it already exists


@dataclass
class Output:
    rows: dict[str, list[dict]] = field(default_factory=lambda: {p: [] for p in PARTS})
    counts: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def instruction(draft: str, locks: list[str]) -> str:
    return REWRITE_INSTRUCTION.format(locks=L.locks_sentence(locks, LOCKS_SENTENCE), draft=draft.strip())


def draft_prompt(passage: str, locks: list[str]) -> str:
    return DRAFT_PROMPT.format(locks=L.locks_sentence(locks, LOCKS_SENTENCE), passage=passage)


def max_tokens_for(human: str) -> int:
    """Room for a rewrite a bit longer than the passage (~1.35 tokens a word), not for a loop."""
    return min(768, int(1.6 * 1.35 * len(human.split())) + 24)


def seed_of(seed: int, key: str) -> int:
    """A sample's own seed: the same for the same row whatever batch it lands in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


# --- the build --------------------------------------------------------------------------------------


def build(settings: BuildSettings, ws, run: Run = NullRun(), w: World | None = None) -> Path:
    """The dataset's folder. With several ranks (w, default: this process's world) only rank 0
    writes; the others return the same path once their share is generated."""
    from engine.distributed.spread import on_writer
    from engine.distributed.world import world

    w = w or world()
    run = run if w.writer else NullRun()
    settings.check()
    final = ws.datasets_dir / settings.output
    work = ws.datasets_dir / f".{settings.output}.build"

    def prepare() -> None:
        if final.exists():
            raise HumanizerError(f"dataset '{settings.output}' already exists ({final})",
                                 "pick another --output name, or remove that folder first")
        _prepare_work(work, settings)

    on_writer(prepare, w)
    started = time.time()
    template = {"style-transfer": _style_transfer, "dpo-pairs": _dpo_pairs, "paired": _paired,
                "judgements": _judgements}[settings.template]
    try:
        src, out = template(settings, ws, run, work, w)
    except BaseException:
        if w.writer and not (work / "generations.jsonl").is_file():
            shutil.rmtree(work, ignore_errors=True)  # nothing generated yet: nothing to resume
        raise
    for part in PARTS:
        out.counts[part.replace("/", "_")] = len(out.rows[part])
    if not out.rows["sft/train"] and not out.rows["dpo/train"]:
        raise HumanizerError(f"no rows survived the filters (counts: {_counts_text(out.counts)})",
                             "use more or longer source text, or loosen the filters (--min-words, --max-copy, "
                             "--min-locks-kept); `humanizer data build --help` lists them")
    if not w.writer:
        return final
    ended = time.time()
    manifest = {
        "name": settings.output, "template": settings.template, "source": src.manifest(),
        "prompts": {"draft": DRAFT_PROMPT, "instruction": REWRITE_INSTRUCTION, "locks": LOCKS_SENTENCE},
        "settings": settings.to_dict(), "seed": settings.seed,
        "sampling": {"temperature": settings.temperature, "top_p": settings.top_p,
                     "max_tokens": settings.max_tokens or "about twice the passage",
                     "seeds": "one per sample: sha256(seed:row key)"},
        "counts": out.counts, "created": ended, "seconds": round(ended - started, 1), **out.extra,
    }
    with atomic_dir(final) as tmp:
        for part, rows in out.rows.items():
            if not rows:
                continue  # no empty files: a trainer would stop at an empty valid.jsonl
            path = tmp / f"{part}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    run.artifact(final, kind="dataset")
    run.log(f"dataset {settings.output}: {_counts_text(out.counts)}")
    return final


def _prepare_work(work: Path, settings: BuildSettings) -> None:
    state = work / "settings.json"
    # how many ranks (--nproc / --hosts) changes no row: a build resumes on any number of them
    wanted = {k: v for k, v in settings.to_dict().items() if k not in ("resume", "rows", "api_key", "nproc", "hosts")}
    if settings.resume:
        if not state.is_file():
            raise HumanizerError(f"nothing to resume: no interrupted build of '{settings.output}' ({work})",
                                 "run the same command without --resume")
        saved = json.loads(state.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if changed:
            raise HumanizerError(f"--resume with other settings than the interrupted build: {', '.join(changed)}",
                                 "resume with the same flags, or remove " + str(work) + " to start over")
        return
    if work.exists():
        raise HumanizerError(f"an interrupted build of '{settings.output}' is in {work}",
                             "continue it with --resume (same flags), or remove that folder to start over")
    work.mkdir(parents=True)
    state.write_text(json.dumps(wanted, indent=2), encoding="utf-8")


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


# --- generation with a cache ------------------------------------------------------------------------


class Generations:
    """Texts generated so far, by row key, in `work/generations.jsonl` (appended chunk by chunk);
    in memory only when `work` is None (a rank that is not the writer)."""

    def __init__(self, work: Path | None):
        self.path = work / "generations.jsonl" if work is not None else None
        self.done: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.done[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that chunk is generated again

    def add(self, records: list[dict]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                f.flush()
        for r in records:
            self.done[r["key"]] = r


def generate(jobs: list[tuple[str, str, str, str]], settings: BuildSettings, ws, run: Run, work: Path,
             adapters: tuple[str, ...] = (), what: str = "drafts", w: World | None = None) -> dict[str, str]:
    """jobs: (key, prompt text, human passage, draft-or-empty) -> {key: generated text}.
    Chunks of `rows` go to the writer; each finished chunk is cached before the next starts.
    With several ranks every rank writes its shard of each round of chunks (one chunk each)."""
    from engine.data.writers import open_writer
    from engine.distributed.spread import in_rounds, on_writer
    from engine.distributed.world import ONE

    w = w or ONE
    cache = Generations(work if w.writer else None)
    keys = [k for k, _, _, _ in jobs]
    cache.done.update(on_writer(lambda: {k: cache.done[k] for k in keys if k in cache.done}, w))
    todo = [j for j in jobs if j[0] not in cache.done]
    total = len(jobs)
    run.progress(total - len(todo), total, f"{what}: {total - len(todo)} of {total} already written"
                 if len(todo) < total else f"loading the {'endpoint' if settings.endpoint else 'model'}")
    if todo:
        if w.size > 1 and not settings.endpoint:  # the writer first: a model it pulls is there for the others
            from engine.models import resolve_model

            on_writer(lambda: str(resolve_model(settings.model, ws, run)), w)
        writer = open_writer(settings, ws, adapters, run)
        run.log(f"writing {len(todo)} {what} with {json.dumps(writer.describe)}"
                + (f" on {w.size} ranks" if w.size > 1 else ""))
        progress = ChunkProgress(run, total, total - len(todo), what, SAMPLE_EVERY)

        def write(chunk: list) -> list[dict]:
            limits = [settings.max_tokens or max_tokens_for(h) for _, _, h, _ in chunk]
            written = writer.write([[{"role": "user", "content": p}] for _, p, _, _ in chunk],
                                   [seed_of(settings.seed, k) for k, _, _, _ in chunk],
                                   temperature=settings.temperature, top_p=settings.top_p, max_tokens=limits)
            failed = next((g for g in written if g.finish == "error"), None)
            if failed is not None:
                raise HumanizerError(f"the model failed while writing {what}: {failed.error}",
                                     f"fix the cause and run the same command with --resume: the "
                                     f"{len(cache.done)} {what} written so far are kept")
            return [{"key": k, "text": g.text, "finish": g.finish, "tokens": g.tokens}
                    for (k, _, _, _), g in zip(chunk, written)]

        def cached(chunk: list, records: list[dict]) -> None:
            cache.add(records)
            key, _, human, draft = chunk[-1]
            text = records[-1]["text"]
            progress.advance(len(chunk), lambda: {"key": key, "human": human, "draft": draft or text,
                                                  "rewrite": text if draft else None})

        try:
            # A chunk of several batches keeps every row busy (a batch of exactly `rows` would wait
            # for its longest generation with the others idle); each round is cached when done.
            in_rounds(todo, settings.rows * CHUNK_BATCHES, write, w, cached)
        finally:
            writer.close()
        run.metric(total, **{f"{what}_per_s": round(progress.rate, 3)})
    return {k: cache.done[k]["text"] for k in keys}


# --- splits -----------------------------------------------------------------------------------------


def split_documents(doc_ids: list[str], settings: BuildSettings, heldout: int | None = None) -> dict[str, str]:
    """doc id -> heldout | valid | train, by a seeded shuffle of the documents. Held out:
    `heldout` (default settings.heldout; negative = 10%, at least one); valid: a share of the rest."""
    order = sorted(set(doc_ids))
    random.Random(settings.seed).shuffle(order)
    n = len(order)
    held = settings.heldout if heldout is None else heldout
    held = held if held >= 0 else max(1, round(0.1 * n))
    held = min(held, max(0, n - 1))  # leave at least one document to train on
    rest = n - held
    valid = round(settings.valid_share * rest)
    if settings.valid_share > 0 and valid == 0 and rest >= 3:
        valid = 1
    out = {}
    for i, d in enumerate(order):
        out[d] = "heldout" if i < held else "valid" if i < held + valid else "train"
    return out


def _passages(src: Source, settings: BuildSettings, counts: dict) -> list[Item]:
    docs = list(src.documents)
    random.Random(settings.seed).shuffle(docs)
    counts["documents"] = len(docs)
    items: list[Item] = []
    raw = 0
    for d in docs:
        ps = passages(d.text, settings.min_words, settings.max_words)
        raw += len(d.text.split("\n\n"))
        if settings.per_document:
            ps = ps[:settings.per_document]
        items += [Item(f"{d.id}#{i}", d.id, p) for i, p in enumerate(ps)]
        if settings.limit and len(items) >= settings.limit:
            items = items[:settings.limit]
            break
    counts["paragraphs_read"] = raw
    counts["passages_in_word_bounds"] = len(items)
    if not items:
        raise HumanizerError(f"{src.spec}: no passage of {settings.min_words}-{settings.max_words} words",
                             "give longer text, or change --min-words / --max-words")
    keep, exact, near = filters.dedupe([it.human for it in items], settings.near_duplicate)
    counts["exact_duplicates"], counts["near_duplicates"] = exact, near
    items = [items[i] for i in keep]
    counts["passages_after_dedupe"] = len(items)
    splits = split_documents([it.doc for it in items], settings)
    for it in items:
        it.split = splits[it.doc]
        it.locks = L.extract_locks(it.human)
    counts["documents_used"] = len(splits)
    counts["heldout_documents"] = sum(v == "heldout" for v in splits.values())
    return items


def _add_rows(out: Output, it: Item, rejected: str, prompt: str | None = None) -> None:
    prompt = prompt or instruction(it.draft, it.locks)
    meta = {"source_id": it.doc, "key": it.key, "locks": it.locks}
    if it.split == "heldout":
        out.rows["heldout"].append({"draft": it.draft, "human": it.human, "prompt": prompt, **meta})
        return
    out.rows[f"sft/{it.split}"].append({"prompt": prompt, "completion": it.human, "draft": it.draft, **meta})
    out.rows[f"dpo/{it.split}"].append({"prompt": prompt, "chosen": it.human, "rejected": rejected, **meta})


# --- templates --------------------------------------------------------------------------------------


def _style_transfer(settings: BuildSettings, ws, run: Run, work: Path,
                    w: World | None = None) -> tuple[Source, Output]:
    out = Output()
    src = open_source(settings.source, ws, settings.text_column)
    items = _passages(src, settings, out.counts)
    jobs = [(it.key, draft_prompt(it.human, it.locks), it.human, "") for it in items]
    drafts = generate(jobs, settings, ws, run, work, what="drafts", w=w)
    reasons: dict[str, int] = {}
    copies = dropped_locks = 0
    kept_items = []
    for it in items:
        it.draft = drafts[it.key].strip()
        why = filters.degenerate(it.draft, it.human)
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        elif filters.overlap(it.draft, it.human) >= settings.max_copy:
            copies += 1
        elif L.kept_share(it.locks, it.draft) < settings.min_locks_kept:
            dropped_locks += 1
        else:
            kept_items.append(it)
    out.counts["drafted"] = len(items)
    for why in ("empty", "refusal", "looping", "too short", "too long"):
        out.counts[f"degenerate_{why.replace(' ', '_')}"] = reasons.get(why, 0)
    out.counts["drafts_copying_source"] = copies
    out.counts["drafts_dropping_locks"] = dropped_locks
    out.counts["rows_kept"] = len(kept_items)
    for it in kept_items:
        _add_rows(out, it, rejected=it.draft)
    out.extra["models"] = {"drafter": settings.endpoint or settings.model}
    return src, out


def _dataset_rows(folder: Path, part: str) -> list[dict]:
    from engine.data.sources import read_table

    path = folder / f"{part}.jsonl"
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return []
    return [r for _, r in read_table(path)]


def _dpo_pairs(settings: BuildSettings, ws, run: Run, work: Path,
               w: World | None = None) -> tuple[Source, Output]:
    out = Output()
    folder = Path(settings.source).expanduser()
    if not folder.is_dir():
        folder = ws.datasets_dir / settings.source
    sft = folder / "sft" if (folder / "sft" / "train.jsonl").is_file() else folder  # or a plain SFT folder
    if not (sft / "train.jsonl").is_file():
        raise HumanizerError(f"--source {settings.source}: not a workspace dataset with sft/train.jsonl",
                             "build one first with --template style-transfer (or paired)")
    parent = json.loads((folder / "manifest.json").read_text(encoding="utf-8")) \
        if (folder / "manifest.json").is_file() else {}
    src = Source(settings.source, "dataset", folder.name, (parent.get("source") or {}).get("licence", "?"),
                 f"SFT rows of workspace dataset {folder}")
    items: list[Item] = []
    for split in ("train", "valid"):
        for n, r in enumerate(_dataset_rows(sft, split), 1):
            missing = [f for f in ("prompt", "completion") if not isinstance(r.get(f), str)]
            if missing:
                raise HumanizerError(f"{sft}/{split}.jsonl:{n}: field '{missing[0]}' is missing",
                                     "dpo-pairs reads rows made by style-transfer or paired")
            items.append(Item(str(r.get("key") or f"{split}:{n}"), str(r.get("source_id") or n), r["completion"],
                              split, list(r.get("locks") or []), str(r.get("draft") or ""), r["prompt"]))
    if settings.limit and len(items) > settings.limit:  # the same share of each split
        train = [it for it in items if it.split == "train"]
        keep_train = round(settings.limit * len(train) / len(items))
        items = train[:keep_train] + [it for it in items if it.split != "train"][:settings.limit - keep_train]
    src.documents = []
    out.counts["prompts"] = len(items)
    rewrites: dict[str, list[str]] = {}
    if settings.rejected != "draft":
        jobs = [(f"{it.key}~{k}", it.prompt, it.human, it.draft or it.prompt)
                for it in items for k in range(settings.samples)]
        texts = generate(jobs, settings, ws, run, work, adapters=(settings.adapter,), what="rewrites", w=w)
        for it in items:
            rewrites[it.key] = [texts[f"{it.key}~{k}"].strip() for k in range(settings.samples)]
    degenerate = same = fallback = 0
    for it in items:
        if settings.rejected == "draft":
            if not it.draft:
                raise HumanizerError(f"{folder}: its rows have no 'draft'", "use --rejected closest with --adapter")
            rejected = it.draft
        else:
            options = rewrites[it.key]
            usable = [t for t in options if not filters.degenerate(t, it.human)]
            degenerate += len(options) - len(usable)
            usable = [t for t in usable if filters.normalise(t) != filters.normalise(it.human)]
            same += sum(filters.normalise(t) == filters.normalise(it.human) for t in options)
            if not usable:
                fallback += 1  # every rewrite degenerate: reject one of them (on-policy failures teach too)
                usable = [t for t in options if filters.normalise(t) != filters.normalise(it.human)] or [it.draft]
            ref = it.draft or it.prompt
            if settings.rejected == "closest":
                rejected = max(usable, key=lambda t: filters.similarity(t, ref))
            else:
                rejected = min(usable, key=lambda t: filters.similarity(t, it.human))
        out.rows[f"dpo/{it.split}"].append({"prompt": it.prompt, "chosen": it.human, "rejected": rejected,
                                            "draft": it.draft, "source_id": it.doc, "key": it.key,
                                            "locks": it.locks, "rewrites": rewrites.get(it.key, [])})
    out.counts["rewrites"] = len(items) * (settings.samples if settings.rejected != "draft" else 0)
    out.counts["rewrites_degenerate"] = degenerate
    out.counts["rewrites_same_as_human"] = same
    out.counts["prompts_with_no_usable_rewrite"] = fallback
    for part in ("train", "valid"):  # the parent's rows come along, so one name trains and evals
        out.rows[f"sft/{part}"] = _dataset_rows(sft, part)
    out.rows["heldout"] = _dataset_rows(folder, "heldout")
    out.extra["parent"] = {"dataset": str(folder), "template": parent.get("template")}
    out.extra["models"] = {"rewriter": settings.endpoint or settings.model, "adapter": settings.adapter or None}
    out.extra["rejected_rule"] = settings.rejected
    return src, out


TEXT_TYPES = ("human_written", "ai_generated", "ai_edited")
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid",
               "test": "heldout", "heldout": "heldout"}


def _paired(settings: BuildSettings, ws, run: Run, work: Path,
            w: World | None = None) -> tuple[Source, Output]:
    out = Output()
    src = open_source(settings.source, ws, settings.text_column, tabular=True)
    if not src.rows:
        raise HumanizerError(f"{settings.source}: paired needs a file or dataset with rows "
                             "(text, text_type, source_id, split)")
    groups: dict[str, dict] = {}
    for origin, r in src.rows:
        for f in (settings.text_column, "text_type", "source_id"):
            if r.get(f) in (None, ""):
                raise HumanizerError(f"{origin}: field '{f}' is missing",
                                     "paired rows need text, text_type (human_written / ai_generated / "
                                     "ai_edited) and source_id")
        kind = r["text_type"]
        if kind not in TEXT_TYPES:
            raise HumanizerError(f"{origin}: field 'text_type' is {kind!r}", f"use one of {', '.join(TEXT_TYPES)}")
        g = groups.setdefault(str(r["source_id"]), {"split": None, **{t: [] for t in TEXT_TYPES}})
        g[kind].append(str(r[settings.text_column]))
        if r.get("split") not in (None, ""):
            split = SPLIT_NAMES.get(str(r["split"]).lower())
            if split is None:
                raise HumanizerError(f"{origin}: field 'split' is {r['split']!r}", "use train, valid or test")
            g["split"] = split
    out.counts["source_ids"] = len(groups)
    ours = split_documents([k for k, g in groups.items() if g["split"] is None], settings)
    items, unpaired = [], 0
    for sid, g in groups.items():
        ai = g["ai_generated"] + g["ai_edited"]
        if not g["human_written"] or not ai:
            unpaired += 1
            continue
        human = g["human_written"][0]
        it = Item(sid, sid, human, g["split"] or ours[sid], L.extract_locks(human), ai[0])
        items.append(it)
    out.counts["source_ids_without_a_pair"] = unpaired
    keep, exact, near = filters.dedupe([it.human for it in items], settings.near_duplicate)
    out.counts["exact_duplicates"], out.counts["near_duplicates"] = exact, near
    for i in keep:
        _add_rows(out, items[i], rejected=items[i].draft)
    out.counts["split_from_the_source"] = sum(g["split"] is not None for g in groups.values())
    return src, out


def _judgements(settings: BuildSettings, ws, run: Run, work: Path,
                w: World | None = None) -> tuple[Source, Output]:
    from engine.data import prefs

    out = Output()
    folder = Path(settings.source).expanduser()
    if not folder.is_dir():
        folder = ws.datasets_dir / settings.source
    if not (folder / "train.jsonl").is_file():
        raise HumanizerError(f"--source {settings.source}: not a preference set (no train.jsonl)",
                             "pick A or B in Chat's A/B mode first; the picks land in datasets/chat-picks")
    pairs = prefs.read_pairs(folder)
    src = Source(settings.source, "preferences", folder.name, "the judge's own", "A/B judgements in Chat")
    out.counts["pairs"] = len(pairs)
    out.counts["ties_left_out"] = len(prefs.read_ties(folder))
    seen, dup, bad = set(), 0, 0
    kept = []
    for r in pairs:
        key = (r.get("system"), r["prompt"], r["chosen"], r["rejected"])
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        if filters.degenerate(r["chosen"]) or filters.normalise(r["chosen"]) == filters.normalise(r["rejected"]):
            bad += 1
            continue
        kept.append(r)
    out.counts["duplicates"], out.counts["degenerate_or_equal"] = dup, bad
    by_prompt = split_documents([r["prompt"] for r in kept], settings, heldout=0)  # eval reads drafts, not picks
    for r in kept:
        out.rows[f"dpo/{by_prompt[r['prompt']]}"].append(r)
    return src, out
