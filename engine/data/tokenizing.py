"""Tokenizing checked rows with the model's chat template: SFT rows become `Example`s (loss on
the reply only), DPO rows `Pair`s. Rows are never truncated: a row longer than
``max_seq_length`` becomes a RowIssue."""

from __future__ import annotations

from dataclasses import dataclass

from engine.data.rows import Row, RowIssue
from engine.errors import HumanizerError


@dataclass
class Example:
    """SFT: one tokenized sequence; loss only on tokens[prompt_len:]."""

    tokens: list[int]
    prompt_len: int
    file: str
    line: int


@dataclass
class Pair:
    """DPO: prompt tokens (chat template with add_generation_prompt) and two responses."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    file: str
    line: int

def _has_chat_template(tokenizer) -> bool:
    has = getattr(tokenizer, "has_chat_template", None)
    if isinstance(has, bool):
        return has
    return getattr(tokenizer, "chat_template", None) is not None


def _encoder(tokenizer):
    """encode(texts, special) -> list of token lists, batched when the tokenizer allows it."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper holds the HF tokenizer
    batched = False
    try:
        from transformers import PreTrainedTokenizerBase

        batched = (
            isinstance(hf, PreTrainedTokenizerBase)
            and getattr(hf, "is_fast", False)
            and type(hf).encode is PreTrainedTokenizerBase.encode
            and type(hf).__call__ is PreTrainedTokenizerBase.__call__
        )
    except ImportError:
        pass

    def encode(texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        if batched:
            out = []
            for i in range(0, len(texts), 1024):
                out.extend(hf(texts[i:i + 1024], add_special_tokens=special)["input_ids"])
            return [list(t) for t in out]
        return [list(hf.encode(t, add_special_tokens=special)) for t in texts]

    return encode


def tokenize_rows(rows: list[Row], tokenizer, max_seq_length: int, method: str):
    """-> (items: list[Example | Pair | RowIssue] in row order, template fallbacks)."""
    encode = _encoder(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    eos_ids = set(getattr(tokenizer, "eos_token_ids", None) or ([] if eos is None else [eos]))
    chat = [r for r in rows if r.kind == "chat"]
    if chat and not _has_chat_template(tokenizer):
        raise HumanizerError(
            "the model's tokenizer has no chat template, so chat rows "
            f"({'messages / prompt + completion' if method == 'sft' else 'prompt / chosen / rejected'}) "
            "can't be formatted",
            "use an instruct/chat model, or (SFT) plain 'text' rows",
        )

    # 1. render every chat text (per row, so a template error names its row)
    rendered: dict[int, tuple[str, list[str]]] = {}
    errors: dict[int, RowIssue] = {}
    for idx, r in enumerate(rows):
        if r.kind != "chat":
            continue
        try:
            p = tokenizer.apply_chat_template(r.context, tokenize=False, add_generation_prompt=True)
            fulls = [
                tokenizer.apply_chat_template([*r.context, {"role": "assistant", "content": reply}],
                                              tokenize=False, add_generation_prompt=False)
                for reply in r.replies
            ]
        except Exception as e:  # jinja TemplateError, raise_exception() in templates, ...
            errors[idx] = RowIssue(r.file, r.line, r.field, f"chat template failed: {e}")
            continue
        rendered[idx] = (p, fulls)

    # 2. tokenize in batches
    plain_idx = [i for i, r in enumerate(rows) if r.kind == "text"]
    plain_tok = dict(zip(plain_idx, encode([rows[i].text for i in plain_idx], True)))
    chat_idx = list(rendered)
    flat: list[str] = []
    for i in chat_idx:
        p, fulls = rendered[i]
        flat.append(p)
        flat.extend(fulls)
    flat_tok = iter(encode(flat, False))

    def ensure_eos(response: list[int]) -> list[int]:
        if eos is None:
            return response
        last = max((k for k, t in enumerate(response) if t in eos_ids), default=None)
        if last is None:
            return response + [eos]
        tail = response[last + 1:]
        if tail and not tokenizer.decode(tail).strip():
            return response[:last + 1]  # e.g. ChatML's "\n" after <|im_end|>
        return response

    fallbacks = 0
    items: list = []
    chat_tok: dict[int, tuple[list[int], list[list[int]]]] = {}
    for i in chat_idx:
        p = next(flat_tok)
        chat_tok[i] = (p, [next(flat_tok) for _ in rendered[i][1]])

    for idx, r in enumerate(rows):
        if idx in errors:
            items.append(errors[idx])
            continue
        if r.kind == "text":
            toks = plain_tok[idx]
            if eos is not None and (not toks or toks[-1] not in eos_ids):
                toks = toks + [eos]
            if len(toks) > max_seq_length:
                items.append(_too_long(r, len(toks), max_seq_length, "text"))
                continue
            items.append(Example(toks, 0, r.file, r.line))
            continue
        prompt, fulls = chat_tok[idx]
        responses = []
        fell_back = False
        for reply, full in zip(r.replies, fulls):
            if full[:len(prompt)] == prompt:
                responses.append(ensure_eos(full[len(prompt):]))
            else:
                fell_back = True
                responses.append(ensure_eos(encode([reply], False)[0]))
        fallbacks += fell_back
        if method == "sft":
            total = len(prompt) + len(responses[0])
            if total > max_seq_length:
                items.append(_too_long(r, total, max_seq_length, r.field, len(prompt)))
                continue
            items.append(Example(prompt + responses[0], len(prompt), r.file, r.line))
        else:
            chosen, rejected = responses
            total = len(prompt) + max(len(chosen), len(rejected))
            if total > max_seq_length:
                field = "chosen" if len(chosen) >= len(rejected) else "rejected"
                items.append(_too_long(r, total, max_seq_length, field, len(prompt)))
                continue
            items.append(Pair(prompt, chosen, rejected, r.file, r.line))
    return items, fallbacks


def _too_long(r: Row, n: int, limit: int, field: str, prompt_len: int | None = None) -> RowIssue:
    detail = f" (prompt {prompt_len})" if prompt_len is not None else ""
    return RowIssue(r.file, r.line, field,
                    f"row is {n} tokens{detail}, longer than max_seq_length {limit} "
                    "(rows are never truncated: shorten it or raise --max-seq-length)")
