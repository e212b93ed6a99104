"""engine.data: reading, checking and tokenizing SFT / DPO data (tiny ChatML tokenizer)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer

from engine import data
from engine.data import DataError, Example, Pair, RowIssue, load_data, preview, read_rows
from engine.errors import HumanizerError
from tests.tiny import CHATML_TEMPLATE, train_tiny_tokenizer

EOS = "<|im_end|>"


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def tokenizer_with_template(tmp_path, tok_dir, template):
    """A copy of the tiny tokenizer with another chat template (None: no template)."""
    d = tmp_path / "tok2"
    shutil.copytree(tok_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    if template is None:
        cfg.pop("chat_template", None)
    else:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(d)


def write_jsonl(path: Path, rows) -> Path:
    """rows: dicts (dumped as JSON) or raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def decode(tok, ids):
    return tok.decode(ids)


def templated(tok, messages, gen=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


PC = {"prompt": "What is the capital of France?", "completion": "The capital of France is Paris."}
PAIR = {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "The capital is Lyon."}


# ------------------------------------------------------------------- SFT formats


def test_sft_prompt_completion_mask(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [PC])
    ds = load_data(str(f), "sft", tok, 256)
    (ex,) = ds.train
    assert isinstance(ex, Example) and ds.valid == [] and ds.method == "sft"
    assert decode(tok, ex.tokens[ex.prompt_len:]) == PC["completion"] + EOS
    user = [{"role": "user", "content": PC["prompt"]}]
    assert decode(tok, ex.tokens[:ex.prompt_len]) == templated(tok, user, gen=True)
    # the same tokens the chat template gives, up to the end-of-turn token
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": PC["completion"]}])
    assert ex.tokens == full[:len(ex.tokens)]
    assert (ex.file, ex.line) == ("d.jsonl", 1)


def test_sft_messages_mask_up_to_last_assistant(tmp_path, tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs}])
    (ex,) = load_data(str(f), "sft", tok, 256).train
    assert decode(tok, ex.tokens[ex.prompt_len:]) == "Paris." + EOS
    prompt = decode(tok, ex.tokens[:ex.prompt_len])
    assert prompt == templated(tok, msgs[:-1], gen=True)
    assert "hello" in prompt  # earlier assistant turns are masked


def test_sft_messages_after_last_assistant_are_dropped_with_warning(tmp_path, tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"}]
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs}])
    ds = load_data(str(f), "sft", tok, 256)
    (ex,) = ds.train
    assert decode(tok, ex.tokens[ex.prompt_len:]) == "hello" + EOS
    (w,) = ds.issues
    assert not w.fatal and w.field == "messages" and w.line == 1 and ds.skipped == 0


def test_sft_text_rows_train_on_all_tokens(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "The quick brown fox."}])
    (ex,) = load_data(str(f), "sft", tok, 256).train
    assert ex.prompt_len == 0
    assert decode(tok, ex.tokens) == "The quick brown fox." + EOS


def test_sft_prompt_completion_with_system_and_message_lists(tmp_path, tok):
    rows = [
        {**PC, "system": "Be brief."},
        {"prompt": [{"role": "user", "content": PC["prompt"]}],
         "completion": [{"role": "assistant", "content": PC["completion"]}]},
    ]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    a, b = load_data(str(f), "sft", tok, 256, valid_fraction=0).train
    assert decode(tok, a.tokens[:a.prompt_len]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    for ex in (a, b):
        assert decode(tok, ex.tokens[ex.prompt_len:]) == PC["completion"] + EOS
    assert b.tokens[:b.prompt_len] == tok.apply_chat_template(
        [{"role": "user", "content": PC["prompt"]}], add_generation_prompt=True)


def test_template_that_breaks_the_prefix_falls_back_to_separate_tokenization(tmp_path, tok_dir):
    # the generation prompt says "assistant\n" but a rendered assistant turn says "bot\n"
    template = CHATML_TEMPLATE.replace(
        "{{'<|im_start|>' + message['role']",
        "{{'<|im_start|>' + ('bot' if message['role'] == 'assistant' else message['role'])",
    )
    tok2 = tokenizer_with_template(tmp_path, tok_dir, template)
    f = write_jsonl(tmp_path / "d.jsonl", [PC])
    ds = load_data(str(f), "sft", tok2, 256)
    (ex,) = ds.train
    assert ds.template_fallbacks == 1 and "tokenized separately" in ds.summary()
    assert ex.tokens[:ex.prompt_len] == tok2.apply_chat_template(
        [{"role": "user", "content": PC["prompt"]}], add_generation_prompt=True)
    assert decode(tok2, ex.tokens[ex.prompt_len:]) == PC["completion"] + EOS


def test_eos_appended_when_template_does_not_end_the_reply(tmp_path, tok_dir):
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}"
        "{% else %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok2 = tokenizer_with_template(tmp_path, tok_dir, template)
    f = write_jsonl(tmp_path / "d.jsonl", [PC])
    (ex,) = load_data(str(f), "sft", tok2, 256).train
    assert ex.tokens[-1] == tok2.eos_token_id
    assert decode(tok2, ex.tokens[ex.prompt_len:]) == PC["completion"] + EOS


def test_no_chat_template(tmp_path, tok_dir):
    tok2 = tokenizer_with_template(tmp_path, tok_dir, None)
    f = write_jsonl(tmp_path / "d.jsonl", [PC])
    with pytest.raises(HumanizerError, match="no chat template"):
        load_data(str(f), "sft", tok2, 256)
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain text works"}])
    (ex,) = load_data(str(f), "sft", tok2, 256).train
    assert decode(tok2, ex.tokens) == "plain text works" + EOS


def test_chat_template_error_names_the_row(tmp_path, tok_dir):
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" \
        + CHATML_TEMPLATE
    tok2 = tokenizer_with_template(tmp_path, tok_dir, template)
    f = write_jsonl(tmp_path / "d.jsonl", [PC, {**PC, "system": "x"}])
    with pytest.raises(DataError) as e:
        load_data(str(f), "sft", tok2, 256)
    (issue,) = [i for i in e.value.issues if i.fatal]
    assert (issue.line, issue.field) == (2, "completion") and "System role not supported" in issue.message


# ------------------------------------------------------------------- DPO formats


def test_dpo_string_rows(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [PAIR])
    ds = load_data(str(f), "dpo", tok, 256)
    (p,) = ds.train
    assert isinstance(p, Pair) and ds.method == "dpo"
    assert p.prompt == tok.apply_chat_template([{"role": "user", "content": PAIR["prompt"]}],
                                               add_generation_prompt=True)
    assert decode(tok, p.chosen) == "Paris." + EOS
    assert decode(tok, p.rejected) == "The capital is Lyon." + EOS


def test_dpo_message_list_rows(tmp_path, tok):
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "capital of France?"}]
    rows = [
        # prompt: the conversation so far; chosen/rejected: just the assistant reply
        {"prompt": convo, "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}]},
        # chosen/rejected as whole conversations continuing a string prompt (+ system field)
        {"prompt": "capital of France?", "system": "Be brief.",
         "chosen": [convo[1], {"role": "assistant", "content": "Paris."}],
         "rejected": [convo[1], {"role": "assistant", "content": "Lyon."}]},
        # no prompt field: chosen and rejected share the conversation before the reply
        {"chosen": [*convo, {"role": "assistant", "content": "Paris."}],
         "rejected": [*convo, {"role": "assistant", "content": "Lyon."}]},
    ]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    pairs = load_data(str(f), "dpo", tok, 256, valid_fraction=0).train
    want = tok.apply_chat_template(convo, add_generation_prompt=True)
    assert len(pairs) == 3
    for p in pairs:
        assert p.prompt == want
        assert decode(tok, p.chosen) == "Paris." + EOS and decode(tok, p.rejected) == "Lyon." + EOS


def test_dpo_reply_context_must_match_prompt(tmp_path, tok):
    row = {"prompt": "capital of France?",
           "chosen": [{"role": "user", "content": "something else"}, {"role": "assistant", "content": "Paris."}],
           "rejected": "Lyon."}
    f = write_jsonl(tmp_path / "d.jsonl", [PAIR, row])
    with pytest.raises(DataError) as e:
        load_data(str(f), "dpo", tok, 256)
    assert any(i.line == 2 and i.field == "chosen" and "differ" in i.message for i in e.value.issues)


# --------------------------------------------------------------------- bad rows

GOOD = {"sft": PC, "dpo": PAIR}

BAD_ROWS = [
    # (method, raw line, field, words in the message)
    ("sft", '{"prompt": "x", "completion": ', None, "not valid JSON"),
    ("sft", '["a", "list"]', None, "not a JSON object"),
    ("sft", '"just a string"', None, "not a JSON object"),
    ("sft", {"prompt": "x"}, "completion", "missing"),
    ("sft", {"foo": "bar"}, "messages", "missing"),
    ("sft", {"prompt": "x", "chosen": "a", "rejected": "b"}, "completion", "looks like DPO"),
    ("sft", {"prompt": 3, "completion": "x"}, "prompt", "must be a string or a list of messages"),
    ("sft", {"prompt": "x", "completion": {"a": 1}}, "completion", "must be a string or a list of messages"),
    ("sft", {"text": ["a"]}, "text", "must be a string"),
    ("sft", {"messages": "hi"}, "messages", "must be a list of messages"),
    ("sft", {"messages": []}, "messages", "empty list"),
    ("sft", {"messages": ["hi"]}, "messages", "must be an object"),
    ("sft", {"messages": [{"role": "user"}]}, "messages", "no 'content'"),
    ("sft", {"messages": [{"content": "x"}]}, "messages", "no 'role'"),
    ("sft", {"messages": [{"role": "user", "content": 5}]}, "messages", "'content' must be a string"),
    ("sft", {"text": ""}, "text", "empty"),
    ("sft", {"text": "  \n\t"}, "text", "whitespace"),
    ("sft", {"prompt": "x", "completion": "   "}, "completion", "whitespace"),
    ("sft", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]},
     "messages", "empty content"),
    ("sft", {"messages": [{"role": "bot", "content": "x"}]}, "messages", "unknown role 'bot'"),
    ("sft", {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]},
     "messages", "no assistant message"),
    ("sft", {"prompt": "x", "completion": "y", "system": 7}, "system", "must be a string"),
    ("dpo", '{"prompt": "x", "chosen": "a", "rejected": "b"', None, "not valid JSON"),
    ("dpo", '3', None, "not a JSON object"),
    ("dpo", {"prompt": "x", "chosen": "a"}, "rejected", "missing"),
    ("dpo", {"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ("dpo", {"prompt": "x", "completion": "y"}, "chosen", "looks like SFT"),
    ("dpo", {"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "must be a string"),
    ("dpo", {"prompt": "x", "chosen": 1, "rejected": "b"}, "chosen", "must be a string or a list of messages"),
    ("dpo", {"prompt": "x", "chosen": "a", "rejected": ""}, "rejected", "empty"),
    ("dpo", {"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt", "whitespace"),
    ("dpo", {"prompt": [{"role": "human", "content": "x"}], "chosen": "a", "rejected": "b"},
     "prompt", "unknown role 'human'"),
    ("dpo", {"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "chosen", "last message must be the assistant reply"),
]


@pytest.mark.parametrize("method,raw,field,words", BAD_ROWS)
def test_bad_row_names_file_line_and_field(tmp_path, tok, method, raw, field, words):
    f = write_jsonl(tmp_path / "ds" / "train.jsonl", [GOOD[method], GOOD[method], raw, GOOD[method]])
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "ds"), method, tok, 256)
    fatal = [i for i in e.value.issues if i.fatal]
    assert len(fatal) == 1, fatal
    (issue,) = fatal
    assert (issue.file, issue.line, issue.field) == ("ds/train.jsonl", 3, field)
    assert words in issue.message
    text = str(e.value)
    assert f"ds/train.jsonl:3: " in text and (field is None or f"field '{field}'" in text)
    assert "--skip-bad-rows" in e.value.hint
    # the same check without a tokenizer (Train screen preview)
    rows, total, issues = preview(str(tmp_path / "ds"), method)
    assert total == 4 and [(i.line, i.field) for i in issues if i.fatal] == [(3, field)]
    # and with skip_bad_rows the other rows train
    ds = load_data(str(tmp_path / "ds"), method, tok, 256, skip_bad_rows=True, valid_fraction=0)
    assert ds.skipped == 1 and len(ds.train) == 3 and issue in ds.issues
    assert "skipped 1 bad row" in ds.summary()
    assert f.exists()


def test_invalid_utf8_row(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_bytes(json.dumps(PC).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        load_data(str(f), "sft", tok, 256)
    (issue,) = e.value.issues
    assert issue.line == 2 and "UTF-8" in issue.message


def test_chosen_equal_rejected_is_a_warning(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [PAIR, {**PAIR, "rejected": PAIR["chosen"]}])
    ds = load_data(str(f), "dpo", tok, 256, valid_fraction=0)
    assert len(ds.train) == 2 and ds.skipped == 0
    (w,) = ds.issues
    assert (w.line, w.field, w.fatal) == (2, "rejected", False)
    assert str(w) == "d.jsonl:2: warning: field 'rejected': is the same as 'chosen' (the pair teaches nothing)"
    assert "1 warning" in ds.summary()


def test_too_long_rows_are_errors_never_truncated(tmp_path, tok):
    long = "The quick brown fox jumps over the lazy dog. " * 20
    rows = [PC, {"prompt": "x", "completion": long}, {"text": long}, PC]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_data(str(f), "sft", tok, 64)
    got = [(i.line, i.field) for i in e.value.issues]
    assert got == [(2, "completion"), (3, "text")]
    assert "longer than max_seq_length 64" in str(e.value) and "never truncated" in str(e.value)
    ds = load_data(str(f), "sft", tok, 64, skip_bad_rows=True, valid_fraction=0)
    assert ds.skipped == 2 and [x.line for x in ds.train] == [1, 4]
    assert all(len(x.tokens) <= 64 for x in ds.train)

    f = write_jsonl(tmp_path / "p.jsonl", [PAIR, {**PAIR, "rejected": long}])
    with pytest.raises(DataError) as e:
        load_data(str(f), "dpo", tok, 64)
    (issue,) = e.value.issues
    assert (issue.line, issue.field) == (2, "rejected") and "tokens" in issue.message


def test_empty_file(tmp_path, tok):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("\n  \n")
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "ds"), "sft", tok, 256, skip_bad_rows=True)
    (issue,) = e.value.issues
    assert (issue.file, issue.line, issue.field) == ("ds/train.jsonl", 0, None)
    assert str(issue) == "ds/train.jsonl: file is empty (no rows)"
    assert "--skip-bad-rows" not in e.value.hint


def test_file_with_no_valid_rows_stops_even_when_skipping(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", ["nope", {"text": ""}])
    with pytest.raises(DataError) as e:
        load_data(str(f), "sft", tok, 256, skip_bad_rows=True)
    assert str(e.value.issues[0]) == "d.jsonl: no valid rows (all 2 rows have errors)"
    assert str(e.value).splitlines()[1].strip() == "d.jsonl: no valid rows (all 2 rows have errors)"
    _, total, issues = preview(str(f), "sft")
    assert total == 2 and issues[0].message.startswith("no valid rows")


def test_error_lists_first_ten_issues_and_the_total(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [PC] + ["bad"] * 25)
    with pytest.raises(DataError) as e:
        load_data(str(f), "sft", tok, 256)
    text = str(e.value)
    assert len(e.value.issues) == 25 and text.startswith("25 problems in ")
    assert "d.jsonl:11:" in text and "d.jsonl:12:" not in text and "and 15 more (25 in all)" in text
    ds = load_data(str(f), "sft", tok, 256, skip_bad_rows=True)
    assert ds.skipped == 25 and len(ds.train) == 1 and len(ds.issues) == 25


def test_row_issue_str():
    assert str(RowIssue("train.jsonl", 12, "chosen", "must be a string or a list of messages")) == \
        "train.jsonl:12: field 'chosen': must be a string or a list of messages"
    assert str(RowIssue("train.jsonl", 3, None, "not valid JSON: x")) == "train.jsonl:3: not valid JSON: x"


def test_unknown_method(tmp_path, tok):
    f = write_jsonl(tmp_path / "d.jsonl", [PC])
    with pytest.raises(HumanizerError, match="method"):
        load_data(str(f), "ppo", tok, 256)


# ------------------------------------------------------------------ data sources


def test_folder_with_valid_split(tmp_path, tok):
    write_jsonl(tmp_path / "ds" / "train.jsonl", [PC] * 5)
    write_jsonl(tmp_path / "ds" / "valid.jsonl", [PC] * 2)
    ds = load_data(str(tmp_path / "ds"), "sft", tok, 256)
    assert (len(ds.train), len(ds.valid), ds.held_out) == (5, 2, 0)
    assert {x.file for x in ds.valid} == {"ds/valid.jsonl"}
    assert "train.jsonl, valid.jsonl" in ds.source and "5 train / 2 valid" in ds.summary()


def test_folder_without_valid_holds_out_deterministically(tmp_path, tok):
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"text": f"row {i}"} for i in range(20)])
    a = load_data(str(tmp_path / "ds"), "sft", tok, 256, seed=1)
    b = load_data(str(tmp_path / "ds"), "sft", tok, 256, seed=1)
    c = load_data(str(tmp_path / "ds"), "sft", tok, 256, seed=2)
    lines = lambda xs: [x.line for x in xs]  # noqa: E731
    assert (len(a.train), len(a.valid), a.held_out) == (18, 2, 2)
    assert lines(a.valid) == lines(b.valid) and lines(a.train) == lines(b.train)
    assert lines(a.valid) != lines(c.valid)
    assert sorted(lines(a.train) + lines(a.valid)) == list(range(1, 21))
    assert "held out" in a.summary()
    quarter = load_data(str(tmp_path / "ds"), "sft", tok, 256, valid_fraction=0.25)
    assert len(quarter.valid) == 5


def test_holdout_at_least_one_row_when_two_or_more(tmp_path, tok):
    f = write_jsonl(tmp_path / "two.jsonl", [PC, PC])
    ds = load_data(str(f), "sft", tok, 256, valid_fraction=0.01)
    assert (len(ds.train), len(ds.valid)) == (1, 1)
    f = write_jsonl(tmp_path / "one.jsonl", [PC])
    ds = load_data(str(f), "sft", tok, 256)
    assert (len(ds.train), len(ds.valid)) == (1, 0)


def test_single_jsonl_file(tmp_path, tok):
    f = write_jsonl(tmp_path / "pairs.jsonl", [PAIR] * 3)
    ds = load_data(str(f), "dpo", tok, 256)
    assert len(ds.train) + len(ds.valid) == 3 and ds.source == str(f)
    assert read_rows(str(f))["train"][0] == ("pairs.jsonl", 1, PAIR)


def test_parquet_file_and_folder(tmp_path, tok):
    rows = [PAIR, {"prompt": "x", "chosen": "a", "rejected": None}, {"prompt": "x", "chosen": "", "rejected": "b"}]
    f = write_parquet(tmp_path / "pairs.parquet", rows)
    with pytest.raises(DataError) as e:
        load_data(str(f), "dpo", tok, 256)
    got = [(i.file, i.line, i.field) for i in e.value.issues]
    assert got == [("pairs.parquet", 2, "rejected"), ("pairs.parquet", 3, "chosen")]  # line = row index + 1

    msgs = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
    write_parquet(tmp_path / "pq" / "train.parquet", msgs)
    write_parquet(tmp_path / "pq" / "valid.parquet", msgs[:1])
    ds = load_data(str(tmp_path / "pq"), "sft", tok, 256)
    assert (len(ds.train), len(ds.valid)) == (4, 1)
    ex = ds.train[0]
    assert decode(tok, ex.tokens[ex.prompt_len:]) == "hello" + EOS


def test_two_files_for_one_split_is_an_error(tmp_path, tok):
    write_jsonl(tmp_path / "ds" / "train.jsonl", [PC])
    write_parquet(tmp_path / "ds" / "train.parquet", [PC])
    with pytest.raises(HumanizerError, match="more than one file"):
        load_data(str(tmp_path / "ds"), "sft", tok, 256)


def test_workspace_dataset_name(ws, tok):
    write_jsonl(ws.datasets_dir / "humanizer-sft" / "train.jsonl", [PC] * 3)
    ds = load_data("humanizer-sft", "sft", tok, 256, ws=ws)
    assert len(ds.train) + len(ds.valid) == 3
    # ws=None falls back to the default workspace (HUMANIZER_HOME, set by the fixture)
    assert len(read_rows("humanizer-sft")["train"]) == 3


@pytest.mark.parametrize("spec", ["./no/such/folder", "missing.jsonl", "a/b/c", "/abs/missing", "bad name!"])
def test_missing_path_is_a_clear_error(tmp_path, tok, ws, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HumanizerError, match="dataset not found") as e:
        load_data(spec, "sft", tok, 256, ws=ws)
    assert e.value.hint


def test_unsupported_file_type(tmp_path, tok):
    f = tmp_path / "d.csv"
    f.write_text("a,b\n")
    with pytest.raises(HumanizerError, match="unsupported data file"):
        load_data(str(f), "sft", tok, 256)


def test_read_rows_and_preview(tmp_path):
    write_jsonl(tmp_path / "ds" / "train.jsonl", [PC, "oops", PC, PC])
    write_jsonl(tmp_path / "ds" / "valid.jsonl", [PC])
    splits = read_rows(str(tmp_path / "ds"))
    assert set(splits) == {"train", "valid"}
    assert [line for _, line, _ in splits["train"]] == [1, 2, 3, 4]
    assert isinstance(splits["train"][1][2], RowIssue) and splits["train"][0][2] == PC
    rows, total, issues = preview(str(tmp_path / "ds"), "sft", limit=2)
    assert rows == [PC, PC] and total == 5
    assert [(i.file, i.line) for i in issues] == [("ds/train.jsonl", 2)]


def test_thousands_of_rows_are_quick(tmp_path, tok):
    rows = [{"prompt": f"Rewrite draft number {i}, please.", "chosen": f"Here is draft {i}, rewritten.",
             "rejected": f"It is a testament to draft {i}."} for i in range(3000)]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    t = time.perf_counter()
    ds = load_data(str(f), "dpo", tok, 256)
    assert len(ds.train) == 2700 and len(ds.valid) == 300
    assert time.perf_counter() - t < 15  # ~1 s on a 2-core CPU machine


# ---------------------------------------------------------- Hugging Face datasets


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An isolated datasets cache, so tests never touch ~/.cache/huggingface."""
    import datasets

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture
def hub_offline(monkeypatch):
    """As HF_HUB_OFFLINE=1 (datasets and huggingface_hub read it at import, so patch both)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_hf_saved_to_disk(tmp_path, tok, hf_cache):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([PAIR] * 4),
        "test": datasets.Dataset.from_list([PAIR] * 2),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    ds = load_data(str(tmp_path / "saved"), "dpo", tok, 256)
    assert (len(ds.train), len(ds.valid)) == (4, 2)
    assert ds.train[0].file == "saved[train]" and ds.valid[0].file == "saved[test]"
    assert decode(tok, ds.train[0].chosen) == "Paris." + EOS


def test_hf_repo_layout_folder_goes_through_load_dataset(tmp_path, tok, hf_cache):
    """A folder laid out like a Hub dataset repo (data/<split>-*.parquet) is read by
    datasets.load_dataset itself: the same call that loads a Hub id."""
    repo = tmp_path / "tiny_dpo"
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", [PAIR] * 3 + [{**PAIR, "chosen": " "}])
    write_parquet(repo / "data" / "validation-00000-of-00001.parquet", [PAIR])
    with pytest.raises(DataError) as e:
        load_data(str(repo), "dpo", tok, 256)
    (issue,) = e.value.issues
    assert (issue.file, issue.line, issue.field) == ("tiny_dpo[train]", 4, "chosen")
    ds = load_data(str(repo), "dpo", tok, 256, skip_bad_rows=True)
    assert (len(ds.train), len(ds.valid), ds.skipped) == (3, 1, 1)
    assert "dataset folder" in ds.source


def _cache_like_a_hub_download(cache: Path, repo_id: str, rows: dict[str, list], config: str = "default") -> None:
    """Put `repo_id` into the datasets cache the way a past online load_dataset(repo_id) leaves
    it: build it with the parquet builder, then move it under <owner>___<name>/default/."""
    import datasets

    files = {split: str(write_parquet(cache.parent / "src" / f"{split}.parquet", r)) for split, r in rows.items()}
    datasets.load_dataset("parquet", data_files=files, cache_dir=str(cache))
    (built,) = [p.parent for p in cache.glob("parquet/*/*/*/dataset_info.json")]
    owner, name = repo_id.split("/")
    dest = cache / f"{owner}___{name}" / config / built.parent.name / built.name
    shutil.copytree(built, dest)
    for f in dest.glob("parquet-*.arrow"):
        f.rename(dest / f.name.replace("parquet-", f"{name}-"))
    info = json.loads((dest / "dataset_info.json").read_text())
    info.update(config_name=config, dataset_name=name)
    (dest / "dataset_info.json").write_text(json.dumps(info))
    shutil.rmtree(cache / "parquet")


def test_hf_id_from_local_cache_when_offline(tok, hf_cache, hub_offline):
    sft = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    _cache_like_a_hub_download(hf_cache, "someone/tiny_sft", {"train": sft * 3, "test": sft})
    for spec in ("someone/tiny_sft", "hf:someone/tiny_sft"):
        ds = load_data(spec, "sft", tok, 256)
        assert (len(ds.train), len(ds.valid)) == (3, 1)
        assert ds.train[0].file == "someone/tiny_sft[train]"
        assert "from the local cache" in ds.source
        ex = ds.train[0]
        assert decode(tok, ex.tokens[ex.prompt_len:]) == "hello" + EOS
    rows, total, issues = preview("someone/tiny_sft", "sft")
    assert total == 4 and issues == [] and rows[0] == sft[0]


def test_hf_id_with_config_from_local_cache(tok, hf_cache, hub_offline):
    _cache_like_a_hub_download(hf_cache, "someone/prefs", {"train_prefs": [PAIR] * 3, "test_prefs": [PAIR]},
                               config="binarized")
    ds = load_data("someone/prefs:binarized", "dpo", tok, 256)
    assert (len(ds.train), len(ds.valid)) == (3, 1)  # train_prefs / test_prefs
    assert ds.valid[0].file == "someone/prefs[test_prefs]"


def test_hf_id_offline_and_not_cached_is_a_clear_error(tok, hf_cache, hub_offline):
    t = time.perf_counter()
    with pytest.raises(HumanizerError) as e:
        load_data("someone/not-cached", "sft", tok, 256)
    msg = str(e.value)
    assert "someone/not-cached" in msg and "can't be reached" in msg and "cache" in msg
    assert "local folder" in e.value.hint
    assert time.perf_counter() - t < 10


def test_hf_id_with_unreachable_hub_fails_fast(tok, hf_cache, monkeypatch):
    """Not in offline mode, but the Hub doesn't answer: no 20 s of retries, a clear error."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    t = time.perf_counter()
    with pytest.raises(HumanizerError, match="can't be reached"):
        load_data("someone/tiny", "sft", tok, 256)
    assert time.perf_counter() - t < 10
    assert datasets.config.HF_HUB_OFFLINE is False  # restored after the offline attempt
