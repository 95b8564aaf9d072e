"""Masked-language modelling: BERT's masking statistics, the MLM head against Hugging Face's
BertForMaskedLM, and the pretrained MiniLM's encoder against a random one on real sentences."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from bertmt.model.mlm import IGNORE, MlmHead, mask_rows

SPECIAL, MASK, VOCAB = [0, 101, 102], 103, 1000


def test_masking_chooses_15_percent_and_replaces_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(200, VOCAB, (400, 64), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    mask[::2, 40:] = 0  # padding in half the rows
    ids[mask == 0] = 0
    seeds = [zlib.crc32(f"1234:7:{r}".encode()) for r in range(400)]  # as the MLM trainer seeds its rows
    masked, labels = mask_rows(ids, mask, seeds, SPECIAL, MASK, VOCAB)
    chosen = labels != IGNORE
    ordinary = (mask == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    assert not (chosen & ~ordinary).any()  # never padding, [CLS] or [SEP]
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    n = int(chosen.sum())
    assert abs(n / int(ordinary.sum()) - 0.15) < 0.01  # 18,600 ordinary tokens: std 0.0026
    as_mask = (masked[chosen] == MASK).float().mean()
    kept = (masked[chosen] == ids[chosen]).float().mean()
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.025  # 2,800 chosen: 4 std (0.008, 0.006)
    assert abs(1 - as_mask - kept - 0.1) < 0.025  # random tokens (rarely equal to the original)


def test_each_row_masks_alike_in_any_batch():
    """However a batch is split (over ranks) and so however wide each part is padded."""
    lengths = [20, 7, 12, 9, 16, 5]
    ids = torch.randint(200, VOCAB, (6, 20))
    mask = (torch.arange(20) < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = 0
    seeds = [11, 12, 13, 14, 15, 16]
    whole = mask_rows(ids, mask, seeds, SPECIAL, MASK, VOCAB)
    for part in ([0, 1, 2], [3, 4, 5], [1, 3], [5]):
        width = max(lengths[i] for i in part)  # the part's own padding
        got = mask_rows(ids[part, :width], mask[part, :width], [seeds[i] for i in part], SPECIAL, MASK, VOCAB)
        assert torch.equal(got[0], whole[0][part, :width]), part
        assert torch.equal(got[1], whole[1][part, :width]), part
    assert (whole[1] != IGNORE).sum() > 5


def test_mlm_head_with_a_checkpoints_weights_gives_hugging_faces_logits():
    from transformers import BertConfig as HFConfig
    from transformers import BertForMaskedLM

    from bertmt.model import BertConfig, BertModel
    from bertmt.model.pretrained import _normalise_names

    torch.manual_seed(0)
    hf = BertForMaskedLM(
        HFConfig(
            vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
    ).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()  # not the zero default: the test sees whether it is loaded
    state = {k: v for k, v in hf.state_dict().items()}
    cfg = BertConfig.from_dict(hf.config.to_dict())
    encoder = BertModel(cfg).eval()
    own = {k: v for k, v in _normalise_names(state).items() if k in encoder.state_dict()}
    missing, _ = encoder.load_state_dict(own, strict=False)
    assert set(missing) == {"pooler.dense.weight", "pooler.dense.bias"}  # BertForMaskedLM has no pooler
    head = MlmHead(cfg, encoder.embeddings.word_embeddings)
    assert head.load_pretrained(state)
    ids = torch.randint(1, 120, (3, 10))
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # (3, 10, 120)
        got = head(encoder(ids, torch.ones_like(ids)).last_hidden_state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not MlmHead(cfg, encoder.embeddings.word_embeddings).load_pretrained(encoder.state_dict())


def test_pretrained_minilm_predicts_masked_words_far_better_than_a_random_encoder(data_dir):
    """MiniLM's checkpoint has no MLM head, so each encoder (frozen) gets the same brief training of a fresh
    head on real SST sentences; the pretrained one's dev loss is far below the random one's."""
    from bertmt.data.readers import read_task_file
    from bertmt.data.tasks import TASKS
    from bertmt.model import BertModel
    from bertmt.model.pretrained import load_encoder, load_tokenizer
    from tests.conftest import minilm_dir

    tok = load_tokenizer(str(minilm_dir()), 40)
    texts = [t[0] for t in read_task_file(data_dir / "ids-sst-train.csv", TASKS["sst"], labelled=True).texts]
    rows = [tok.encode(t).ids for t in texts[:192]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = (ids != 0).long()
    specials = [tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
    masked, labels = mask_rows(ids, mask, list(range(len(rows))), specials, tok.token_to_id("[MASK]"), 30522)
    pretrained = load_encoder(str(minilm_dir())).eval()
    torch.manual_seed(0)
    random = BertModel(pretrained.config).eval()
    losses = {}
    for name, encoder in (("pretrained", pretrained), ("random", random)):
        with torch.no_grad():
            states = torch.cat(
                [encoder(masked[i : i + 64], mask[i : i + 64]).last_hidden_state for i in range(0, 640, 64)]
            )
        torch.manual_seed(1)
        head = MlmHead(encoder.config, encoder.embeddings.word_embeddings)
        head.word_embeddings[0].weight.requires_grad_(False)
        opt = torch.optim.Adam([p for p in head.parameters()], lr=1e-2)
        train, dev = slice(0, 128), slice(128, 192)
        for _ in range(10):
            pick = labels[train] != IGNORE
            loss = torch.nn.functional.cross_entropy(head(states[train][pick]), labels[train][pick])
            opt.zero_grad(), loss.backward(), opt.step()
        with torch.no_grad():
            pick = labels[dev] != IGNORE
            losses[name] = float(
                torch.nn.functional.cross_entropy(head(states[dev][pick]), labels[dev][pick])
            )
    assert losses["pretrained"] < losses["random"] - 1.0, losses
    assert np.isfinite(list(losses.values())).all()
