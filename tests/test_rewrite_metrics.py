"""Slop phrases and the per-choice rewrite metrics (meaning kept, length, degenerate share).

The drafts and rewrites here are test strings, not human references; where a human
reference is needed it is a sentence of tests/fixtures/human/wikipedia.jsonl (Wikipedia,
CC BY-SA 3.0)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.data.filters import words
from engine.errors import HumanizerError
from engine.eval import slop
from engine.eval.rewrite_metrics import COPY, EMPTY_DRAFT, rewrite_problem, summarize_choice, summarize_texts

FIXTURE = Path(__file__).parent / "fixtures" / "human" / "wikipedia.jsonl"


def wiki_sentence(title: str) -> str:
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["title"] == title:
            return row["text"].split(". ")[0] + "."
    raise KeyError(title)


class BagOfWords:
    """Stub sentence encoder: unit vectors of word counts, so cosine = shared counts / norms."""

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        counts = [Counter(words(t)) for t in texts]
        vocab = sorted(set().union(*counts)) or ["<none>"]
        m = np.array([[c[w] for w in vocab] for c in counts], dtype=np.float32).reshape(len(texts), len(vocab))
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


class NeverCalled:
    def embed(self, texts):
        raise AssertionError("nothing should be embedded")


# --- slop -----------------------------------------------------------------------------------


def test_named_phrases_found_with_spans_and_weights():
    text = "Her work is a testament to patience. It underscores the importance of sleep."
    hits = slop.slop_hits(text)
    assert [(p, text[s:e], w) for p, s, e, w in hits] == [
        ("a testament to", "a testament to", 1.0),
        ("underscores the importance of", "underscores the importance of", 1.0),
    ]
    assert hits[0].start == text.index("a testament") and hits[0].end == hits[0].start + len("a testament to")


@pytest.mark.parametrize("text, phrase, span", [
    ("A TESTAMENT TO it", "a testament to", "A TESTAMENT TO"),
    ("This Underscored The Importance Of it", "underscores the importance of", "Underscored The Importance Of"),
    ("underscoring the\nimportance  of", "underscores the importance of", "underscoring the\nimportance  of"),
    ("In today’s fast-paced world", "in today's fast-paced world", "In today’s fast-paced world"),
    ("in today's fast paced world", "in today's fast-paced world", "in today's fast paced world"),
    ("It’s important to note that x", "it is important to note that", "It’s important to note that"),
    ("we delved into it", "delve into", "delved into"),
    ("it stands as a testament to x", "a testament to", "stands as a testament to"),  # one hit, not two
])
def test_case_apostrophe_and_inflection_variants(text, phrase, span):
    hits = slop.slop_hits(text)
    assert len(hits) == 1 and hits[0].phrase == phrase and text[hits[0].start:hits[0].end] == span


@pytest.mark.parametrize("text", [
    "The beta testament tool.",  # "a testament" inside "beta testament"
    "a testament toward peace",
    "redelve into it",
    "multifacetedness and the pivotalness",
    "the delves",
    "",
])
def test_no_hit_inside_other_words(text):
    assert slop.slop_hits(text) == []


def test_overlapping_hits_count_once_longest_wins():
    text = "A rich tapestry of voices played a pivotal role."
    assert [(h.phrase, h.weight) for h in slop.slop_hits(text)] == [
        ("rich tapestry", 1.0), ("plays a crucial role", 1.0)]  # not also "tapestry" and "pivotal"


def test_per_1k_arithmetic_by_hand():
    texts = ["This is a testament to care.",  # 6 words, 1 hit (1.0)
             "It underscores the importance of rest and sleep.",  # 8 words, 1 hit (1.0)
             "A multifaceted plan.",  # 3 words, 1 hit (0.5)
             ""]  # no words
    assert slop.slop_per_1k(texts) == pytest.approx(1000 * 2.5 / 17)
    assert slop.slop_per_1k(texts, weighted=False) == pytest.approx(1000 * 3 / 17)
    s = slop.slop_stats(texts)
    assert (s.texts, s.words, s.hits, s.weighted) == (4, 17, 3, 2.5)
    assert s.by_phrase == {"a testament to": 1, "underscores the importance of": 1, "multifaceted": 1}
    assert slop.slop_per_1k(["plain words only here"]) == 0.0
    assert slop.slop_per_1k("This is a testament to care.") == pytest.approx(1000 / 6)  # one string = one text


def test_per_1k_is_none_without_words():
    assert slop.slop_per_1k([]) is None
    assert slop.slop_per_1k(["", "   ", "!!", None]) is None
    s = slop.slop_stats([])
    assert s.per_1k is None and s.hits_per_1k is None and s.words == 0


def test_phrase_list_documented_and_extensible(tmp_path):
    phrases = slop.default_phrases()
    assert len(phrases) >= 50 and all(0 < p.weight <= 1 for p in phrases)
    weights = {p.phrase: p.weight for p in phrases}
    assert weights["a testament to"] == weights["underscores the importance of"] == weights["delve into"] == 1.0
    assert weights["shed light on"] < 1.0

    more = slop.phrase_list([("synergy", 0.5), {"phrase": "circle back", "weight": 0.75,
                                                "pattern": "circl(?:e|es|ed|ing) back"},
                             ("a testament to", 0)])  # weight 0 removes a built-in
    hits = slop.slop_hits("Synergy! Let's circled back. A testament to x.", more)
    assert [(h.phrase, h.weight) for h in hits] == [("synergy", 0.5), ("circle back", 0.75)]
    assert slop.slop_per_1k(["Synergy is a word"], phrases=more) == pytest.approx(1000 * 0.5 / 4)

    f = tmp_path / "slop.json"
    f.write_text(json.dumps([["synergy", 0.5]]))
    assert [h.phrase for h in slop.slop_hits("synergy, a testament to", slop.load_phrases(f))] == [
        "synergy", "a testament to"]
    for bad, match in [([("x", 2.0)], "weights are in"), ([("x", "heavy")], "not a number"),
                       ([("x", 1.0, "(unclosed")], "not a valid regex"), ([("", 1.0)], "no phrase"),
                       ([("x", 1.0, "(?:y)?")], "empty string"), (["x"], "a slop entry is")]:
        with pytest.raises(HumanizerError, match=match):
            slop.phrase_list(bad)
    f.write_text("{not json")
    with pytest.raises(HumanizerError, match="cannot read"):
        slop.load_phrases(f)


# --- rewrite metrics -------------------------------------------------------------------------


def test_meaning_and_length_by_hand():
    human = wiki_sentence("Anarchism")  # 14 distinct words
    assert len(set(words(human))) == len(words(human)) == 14
    drafts = ["Anarchism is a philosophy of politics.", "red blue green yellow"]
    rewrites = ["Anarchism is a political philosophy.", "red blue"]
    s = summarize_choice(drafts, rewrites, [human, None], BagOfWords(), choice="sft")
    assert (s.choice, s.n, s.n_scored, s.n_human, s.degenerate, s.degenerate_share) == ("sft", 2, 2, 1, {}, 0.0)
    r0, r1 = s.rows
    assert r0.cos_draft == pytest.approx(4 / math.sqrt(5 * 6))  # anarchism, is, a, philosophy shared
    assert r0.cos_human == pytest.approx(5 / math.sqrt(5 * 14))  # every rewrite word is in the reference
    assert r1.cos_draft == pytest.approx(2 / math.sqrt(2 * 4)) and r1.cos_human is None
    assert (r0.length_ratio, r1.length_ratio) == (pytest.approx(5 / 6), 0.5)
    assert s.cos_draft == pytest.approx((4 / math.sqrt(30) + 2 / math.sqrt(8)) / 2)
    assert s.cos_human == pytest.approx(5 / math.sqrt(70))
    assert s.length_ratio == pytest.approx((5 / 6 + 0.5) / 2)
    assert s.length_within == 0.5  # 5/6 in [0.8, 1.25], 0.5 not
    lo, hi = s.cos_draft_ci
    assert lo <= s.cos_draft <= hi and s.cos_human_ci == (pytest.approx(s.cos_human),) * 2
    assert s.slop_per_1k == 0.0 and s.words == 7 and s.missing == {}
    json.dumps(s.to_dict(rows=True))  # serialisable for the eval report


def test_degenerate_reasons_counted_and_excluded():
    long_draft = ("The committee met on Tuesday to review the budget and the schedule for the new library, "
                  "and it agreed to publish its minutes within a week of each meeting held this year.")
    cases = [  # (draft, rewrite, expected reason)
        ("Anarchism is a philosophy of politics.", "Anarchism is a political philosophy.", None),
        ("the sky was grey over the harbour", "", "empty"),
        ("the sky was grey over the harbour", "I'm sorry, but I can't rewrite that text.", "refusal"),
        ("one two three four five six seven eight nine ten eleven twelve",
         "the cat sat the cat sat the cat sat the cat sat", "looping"),
        ("The Sky Was Grey over the harbour.", "the sky was grey, over the harbour", COPY),  # verbatim
        (long_draft, long_draft + " Indeed", COPY),  # near copy: 29 of 30 4-grams from the draft
        ("one two three four five six seven eight nine ten eleven twelve", "one two", "too short"),
        ("", "A rewrite of nothing.", None),  # bad input: skipped, not degenerate
    ]
    for draft, rewrite, reason in cases[:-1]:
        assert rewrite_problem(rewrite, draft) == reason, rewrite
    drafts, rewrites, _ = zip(*cases)
    s = summarize_choice(list(drafts), list(rewrites), None, BagOfWords())
    assert s.n == 8 and s.n_scored == 1
    assert s.degenerate == {"empty": 1, "refusal": 1, "looping": 1, COPY: 2, "too short": 1}
    assert s.skipped == {EMPTY_DRAFT: 1}
    assert s.degenerate_share == pytest.approx(6 / 7)  # the skipped row is in neither side
    assert s.cos_draft == pytest.approx(4 / math.sqrt(30))  # the one scored row only
    assert s.length_ratio == pytest.approx(5 / 6) and s.length_within == 1.0
    assert all(r.cos_draft is None and r.length_ratio is None for r in s.rows[1:])
    assert s.cos_human is None and s.missing == {"cos_human": "no human references given"}


def test_slop_counted_over_all_rewrites_degenerate_included():
    drafts = ["It was a testament to their care for the town.", "a b c d e f g h"]
    rewrites = ["It was a testament to their care for the town.", "A plain rewrite of the letters here."]
    s = summarize_choice(drafts, rewrites, None, BagOfWords())
    assert s.degenerate == {COPY: 1} and s.n_scored == 1
    assert s.words == 10 + 7 and s.slop_hits == 1 and s.slop_by_phrase == {"a testament to": 1}
    assert s.slop_per_1k == pytest.approx(1000 / 17) and s.rows[0].slop_weight == 1.0
    src = summarize_texts(drafts, "source")
    assert (src.n, src.words, src.slop_hits, src.n_empty) == (2, 18, 1, 0)
    assert src.slop_per_1k == pytest.approx(1000 / 18) and src.mean_words == 9.0


def test_all_degenerate_is_none_with_reasons_never_nan():
    drafts = ["the sky was grey over the harbour"] * 3
    s = summarize_choice(drafts, ["", "   ", None], [wiki_sentence("Albedo")] * 3, NeverCalled())
    assert s.n == 3 and s.n_scored == 0 and s.degenerate == {"empty": 3} and s.degenerate_share == 1.0
    for key in ("cos_draft", "cos_human", "length_ratio", "length_within", "slop_per_1k"):
        assert getattr(s, key) is None and s.missing[key], key
    assert s.missing["cos_draft"] == "every rewrite is degenerate or its row skipped"
    assert s.missing["slop_per_1k"] == "the rewrites hold no words"
    assert s.cos_draft_ci is None and s.length_ratio_ci is None

    empty = summarize_choice([], [], [], NeverCalled())
    assert empty.n == 0 and empty.degenerate_share is None and empty.missing["degenerate_share"] == "no rewrites given"
    assert empty.missing["cos_draft"] == "no rewrites given"
    skipped = summarize_choice(["", " "], ["x y", "z"], None, NeverCalled())
    assert skipped.skipped == {EMPTY_DRAFT: 2} and skipped.degenerate_share is None

    t = summarize_texts([], "human")
    assert t.slop_per_1k is None and t.mean_words is None and t.missing["slop_per_1k"] == "no texts given"
    t = summarize_texts(["", "..."], "human")
    assert t.n_empty == 2 and t.missing["mean_words"] == "the texts hold no words"


def test_bad_input_is_a_clear_error():
    with pytest.raises(HumanizerError, match="2 drafts, 1 rewrites"):
        summarize_choice(["a b", "c d"], ["a c"], None, BagOfWords())
    with pytest.raises(HumanizerError, match="not one string"):
        summarize_choice("a draft", "a rewrite")

    class WrongShape:
        def embed(self, texts):
            return np.ones((1, 3))

    with pytest.raises(HumanizerError, match="one row per text"):
        summarize_choice(["a b c d"], ["e f g h"], None, WrongShape())


def test_no_encoder_gives_length_and_slop_only():
    s = summarize_choice(["a b c d"], ["e f g h"], None, None)
    assert s.cos_draft is None and s.missing["cos_draft"] == "no sentence encoder given"
    assert s.length_ratio == 1.0 and s.n_scored == 1


def test_tiny_bert_encoder_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from engine.eval.encoder import load_encoder
    from tests.test_eval_models import WORDS, make_tiny_bert

    make_tiny_bert(tmp_path, max_seq_length=12)
    enc = load_encoder(str(tmp_path), batch_size=2)
    drafts = [" ".join(WORDS[i:i + 5]) for i in range(4)] + [" ".join(WORDS)]
    rewrites = [" ".join(reversed(WORDS[i:i + 5])) for i in range(4)] + [" ".join(WORDS[::-1])]
    humans = [wiki_sentence("Alabama"), None, wiki_sentence("Aristotle"), "", wiki_sentence("Albedo")]
    s = summarize_choice(drafts, rewrites, humans, enc, choice="base", encoder_name="tiny-bert")
    assert (s.n, s.n_scored, s.n_human) == (5, 5, 3)

    r = enc.embed(rewrites)
    d = enc.embed(drafts)
    want = np.einsum("ij,ij->i", r, d)
    np.testing.assert_allclose([row.cos_draft for row in s.rows], want, atol=1e-5)
    h = enc.embed([humans[0], humans[2], humans[4]])
    np.testing.assert_allclose([s.rows[i].cos_human for i in (0, 2, 4)], np.einsum("ij,ij->i", r[[0, 2, 4]], h),
                               atol=1e-5)
    assert s.rows[1].cos_human is None and s.rows[3].cos_human is None
    assert s.cos_draft == pytest.approx(float(want.mean()), abs=1e-6)
    _, n_cut = enc.embed(rewrites + drafts + [humans[0], humans[2], humans[4]], with_truncated=True)
    assert s.n_truncated == n_cut > 0 and s.encoder == "tiny-bert"
