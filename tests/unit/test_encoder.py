"""The bertmt encoder against Hugging Face transformers' BertModel on the real MiniLM weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertmt.model import PretrainedError, load_encoder, load_tokenizer
from tests.conftest import minilm_dir

SENTENCES = [
    ("The movie was great fun .", None),
    ("How do I learn Python?", "What is the best way to learn Python?"),
    ("A man is playing a guitar.", "A woman slices an onion on a wooden board in the kitchen."),
    ("Ok", None),
]


def _batch(tok):
    encs = [tok.encode(a) if b is None else tok.encode(a, b) for a, b in SENTENCES]
    width = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(encs), width, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        types[i, : len(e.ids)] = torch.tensor(e.type_ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask, types


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_matches_transformers_bert_on_minilm(impl):
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
    ours = load_encoder("minilm", attention=impl).eval()
    ids, mask, types = _batch(load_tokenizer("minilm"))
    assert mask.sum(1).min() < mask.size(1) and types.any()  # padded rows and token types are exercised
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    diff = (got.last_hidden_state - want.last_hidden_state).abs().max().item()
    assert diff < 1e-4, diff
    assert (got.pooler_output - want.pooler_output).abs().max().item() < 1e-4


def test_tokenizer_matches_transformers_on_pairs():
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast.from_pretrained(str(minilm_dir()))
    ours = load_tokenizer("minilm")
    for a, b in SENTENCES:
        want = ref(a, b) if b else ref(a)
        got = ours.encode(a, b) if b else ours.encode(a)
        assert got.ids == want["input_ids"] and got.type_ids == want["token_type_ids"]
    enc = ours.encode("a b", "c")
    assert enc.tokens == ["[CLS]", "a", "b", "[SEP]", "c", "[SEP]"] and enc.type_ids == [0, 0, 0, 0, 1, 1]


def test_tokenizer_from_vocab_txt_only(tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
        (tmp_path / name).write_bytes((minilm_dir() / name).read_bytes())
    a, b = SENTENCES[1]
    assert load_tokenizer(tmp_path).encode(a, b).ids == load_tokenizer("minilm").encode(a, b).ids


def test_missing_and_mismatched_weights_are_named(tiny_pretrained, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((tiny_pretrained / name).read_bytes())
    state = load_file(str(tiny_pretrained / "model.safetensors"))
    del state["encoder.layer.1.attention.self.key.weight"]
    state["pooler.dense.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(PretrainedError) as err:
        load_encoder(tmp_path)
    assert "encoder.layer.1.attention.self.key.weight" in str(err.value)
    assert "pooler.dense.bias: checkpoint (7,)" in str(err.value)


def test_bert_prefixed_checkpoint_loads(tiny_pretrained, tmp_path):
    """BertForPreTraining-style names (bert. prefix, cls.* heads) load; the heads are ignored."""
    (tmp_path / "config.json").write_bytes((tiny_pretrained / "config.json").read_bytes())
    state = load_file(str(tiny_pretrained / "model.safetensors"))
    prefixed = {f"bert.{k}": v for k, v in state.items()} | {"cls.predictions.bias": torch.zeros(3)}
    torch.save(prefixed, tmp_path / "pytorch_model.bin")
    model = load_encoder(tmp_path)
    assert torch.equal(
        model.state_dict()["embeddings.word_embeddings.weight"], state["embeddings.word_embeddings.weight"]
    )


def test_unknown_pretrained_name_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(PretrainedError, match="bert-base-uncased.*Hugging Face cache"):
        load_encoder("bert-base-uncased")


def test_hub_name_resolves_through_local_cache(tiny_pretrained, tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in tiny_pretrained.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert load_encoder("org/tiny").config.hidden_size == 32


@pytest.mark.parametrize("how", ["cls", "pooler"])
def test_cls_and_pooler_pooling_are_transformers_cls_state_and_pooler_output(how):
    """Pooling ``cls`` is the [CLS] token's last hidden state, ``pooler`` BERT's tanh pooler: both against
    transformers' BertModel on MiniLM (a different vector per sentence, so a wrong index fails)."""
    from transformers import BertModel

    from bertmt.model.heads import Pooler

    ref = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
    ours = load_encoder("minilm", attention="eager").eval()
    ids, mask, types = _batch(load_tokenizer("minilm"))
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = Pooler(how, ours.config.hidden_size)(ours(ids, mask, types), mask)
    expected = want.last_hidden_state[:, 0] if how == "cls" else want.pooler_output
    assert (got - expected).abs().max().item() < 1e-4
    assert (got[0] - got[1]).abs().max().item() > 1e-2
