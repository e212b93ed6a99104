"""RADAR in MLX: a RoBERTa sequence classifier (RobertaForSequenceClassification) in float32.

The reference's detector is TrustSafeAI/RADAR-Vicuna-7B, a RoBERTa-large classifier whose
label 0 is "AI-generated": P(AI) = softmax(logits)[:, 0], as its model card computes it. The
encoder is the shared BERT-style one in engine/eval/encoder.py (RoBERTa positions); the head
is dense + tanh + out_proj on the <s> token. Weights load from a local folder (config.json +
model.safetensors, or pytorch_model.bin when torch is installed) or from the Hub."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.errors import HumanizerError
from engine.eval.encoder import (
    ROBERTA_TYPES,
    Encoder,
    EncoderConfig,
    batches,
    load_tokenizer,
    load_weights_into,
    read_config,
    read_weights,
    resolve_folder,
    tokenize,
)
from engine.events import NullRun, Run
from engine.workspace import Workspace

RADAR_REPO = "TrustSafeAI/RADAR-Vicuna-7B"
RADAR_AI_LABEL = 0  # RADAR's label 0 is "AI-generated"


class ClassificationHead(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Linear(c.hidden_size, c.num_labels)

    def __call__(self, h: mx.array) -> mx.array:
        return self.out_proj(mx.tanh(self.dense(h[:, 0])))


class RobertaForSequenceClassification(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.roberta = Encoder(c)
        self.classifier = ClassificationHead(c)

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        return self.classifier(self.roberta(ids, mask))


class RobertaClassifier:
    """texts -> logits / P(label `ai_label`), batched, each text cut to max_tokens tokens
    (max_position_embeddings - 2 for RoBERTa, <s> and </s> included)."""

    def __init__(self, model: RobertaForSequenceClassification, tokenizer, config: EncoderConfig, folder: Path,
                 ai_label: int = RADAR_AI_LABEL, batch_size: int = 8):
        if not 0 <= ai_label < config.num_labels:
            raise HumanizerError(f"ai_label {ai_label} is not a label of {folder} ({config.num_labels} labels)")
        self.model, self.tokenizer, self.config, self.folder = model, tokenizer, config, folder
        self.ai_label, self.batch_size = ai_label, batch_size
        self.max_tokens = config.max_tokens

    def logits(self, texts, with_truncated: bool = False):
        """(n, num_labels) float32 logits; with_truncated=True returns (logits, how many texts were cut)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.config.num_labels), dtype=np.float32)
        encs, truncated = tokenize(self.tokenizer, texts, self.max_tokens)
        for idx, ids, mask in batches(encs, self.config.pad_token_id, self.batch_size):
            out[idx] = np.array(self.model(ids, mask))
        return (out, truncated) if with_truncated else out

    def classify(self, texts, with_truncated: bool = False):
        """(n,) P(AI) = softmax(logits)[:, ai_label]; with_truncated=True returns (probs, how many were cut)."""
        logits, truncated = self.logits(texts, with_truncated=True)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        probs = p[:, self.ai_label].astype(np.float32)
        return (probs, truncated) if with_truncated else probs


def load_roberta_classifier(spec=RADAR_REPO, ws: Workspace | None = None, run: Run = NullRun(),
                            ai_label: int = RADAR_AI_LABEL, batch_size: int = 8) -> RobertaClassifier:
    """A RobertaClassifier from a local folder, a folder in ws.models_dir, or a Hub repo id (default RADAR).
    Offline and not in the Hugging Face cache -> HumanizerError naming the repo."""
    folder = resolve_folder(spec, ws, run)
    config = EncoderConfig.from_hf(read_config(folder), folder)
    if config.model_type not in ROBERTA_TYPES:
        raise HumanizerError(f"{folder} holds a '{config.model_type}' model, not a RoBERTa classifier",
                             f"RADAR is {RADAR_REPO}")
    model = RobertaForSequenceClassification(config)
    load_weights_into(model, read_weights(folder), "", folder)
    return RobertaClassifier(model, load_tokenizer(folder), config, folder, ai_label, batch_size)
