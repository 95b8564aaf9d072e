"""POS / NER tags: alignment to word pieces against a hand-worked example, a real (tiny, trained) spaCy
pipeline, and zero-initialised tag embeddings that leave the pretrained output unchanged."""

from __future__ import annotations

import numpy as np
import torch

from bertmt.data.tags import Tagger, align
from tests.conftest import minilm_dir
from tests.unit.model_fixtures import batch, tiny_model


def _char_tags(text: str, spans: list[tuple[str, int]]) -> np.ndarray:
    """(len(text), 1) tags from (word, tag) pairs in order."""
    out, pos = np.zeros((len(text), 1), dtype=np.int16), 0
    for word, tag in spans:
        start = text.index(word, pos)
        out[start : start + len(word)] = tag
        pos = start + len(word)
    return out


def test_each_piece_takes_the_tag_of_its_word_by_hand():
    from bertmt.model.pretrained import load_tokenizer

    tok = load_tokenizer(str(minilm_dir()), 64)
    a, b = "Unbelievably, Paris shines.", "Berlin sleeps"
    tags_a = _char_tags(a, [("Unbelievably", 1), (",", 2), ("Paris", 3), ("shines", 4), (".", 2)])
    tags_b = _char_tags(b, [("Berlin", 3), ("sleeps", 4)])
    enc = tok.encode(a, b)
    # worked by hand: "unbelievably" and "shines" split into pieces that all take their word's tag; the
    # offsets of the second sentence count from its own start; [CLS] and [SEP] take 0
    assert enc.tokens == [
        "[CLS]", "un", "##bel", "##ie", "##va", "##bly", ",", "paris", "shine", "##s", ".", "[SEP]",
        "berlin", "sleeps", "[SEP]",
    ]  # fmt: skip
    assert align(enc, [tags_a, tags_b], 1)[:, 0].tolist() == [0, 1, 1, 1, 1, 1, 2, 3, 4, 4, 2, 0, 3, 4, 0]


def test_a_trained_spacy_pipelines_tags_reach_the_pieces(tiny_spacy):
    tagger = Tagger(str(tiny_spacy), ("pos", "ner"))
    vocab = tagger.vocab()
    assert vocab["pos"][0] == "<none>" and "NNP" in vocab["pos"]
    assert vocab["ner"][:2] == ["<none>", "O"] and {"B-GPE", "I-GPE", "B-PERSON"} <= set(vocab["ner"])
    text = "Mary loves Paris ."
    doc = tagger.nlp(text)
    (chars,) = tagger.char_tags([text])
    for token in doc:
        assert vocab["pos"][chars[token.idx, 0]] == token.tag_
        iob = "O" if token.ent_iob_ == "O" else f"{token.ent_iob_}-{token.ent_type_}"
        assert vocab["ner"][chars[token.idx, 1]] == iob
    assert (chars[[4, 10], :] == 0).all()  # the spaces between words have no tag


def test_zero_tag_embeddings_leave_the_output_unchanged_and_learn():
    from bertmt.model.multitask import HeadSpec, MultitaskModel

    tagged = tiny_model()

    heads = {"sst": HeadSpec(5)}
    torch.manual_seed(0)
    with_tags = MultitaskModel(tagged.encoder, heads, "mean", [16], 0.0, tag_sizes={"pos": 7, "ner": 5})
    torch.manual_seed(0)
    without = MultitaskModel(tagged.encoder, heads, "mean", [16], 0.0)
    ids, mask, types = batch()
    tag_ids = torch.randint(0, 5, (*ids.shape, 2))
    torch.testing.assert_close(
        with_tags("sst", ids, mask, types, tag_ids=tag_ids), without("sst", ids, mask, types)
    )
    with_tags("sst", ids, mask, types, tag_ids=tag_ids).sum().backward()
    assert (
        with_tags.tags["pos"].weight.grad.abs().sum() > 0
        and with_tags.tags["ner"].weight.grad.abs().sum() > 0
    )
    with torch.no_grad():
        with_tags.tags["ner"].weight.normal_()
    assert not torch.allclose(
        with_tags("sst", ids, mask, types, tag_ids=tag_ids), without("sst", ids, mask, types)
    )
    shared = {id(p) for p in with_tags.shared_parameters()}
    assert all(id(p) in shared for p in with_tags.tags.parameters())  # used by every task: shared
