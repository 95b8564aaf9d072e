"""Pooling and pair heads: attention pooling, siamese encoding, [u, v, |u-v|, u*v] and scaled-cosine heads,
segment features of cross-encoded pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertmt.model.bert import EncoderOutput
from bertmt.model.heads import Pooler, TaskHead
from bertmt.model.multitask import HeadSpec
from tests.unit.model_fixtures import batch, tiny_model


def test_attention_pooling_weights_real_tokens_by_learned_scores():
    torch.manual_seed(0)
    pooler = Pooler("attention", 8)
    h = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = EncoderOutput(h, h[:, 0])
    mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(pooler(out, mask), mean)  # zero query: uniform weights = masked mean
    torch.nn.init.normal_(pooler.query)
    scores = (h @ pooler.key.weight.T) @ pooler.query / 8**0.5
    expected = []
    for b in range(2):  # direct softmax over the real tokens of each row
        n = int(mask[b].sum())
        w = scores[b, :n].softmax(0)
        expected.append((w[:, None] * h[b, :n]).sum(0))
    torch.testing.assert_close(pooler(out, mask), torch.stack(expected))
    h2 = h.clone()
    h2[0, 3:] = 100.0  # padding states do not matter
    torch.testing.assert_close(pooler(EncoderOutput(h2, h2[:, 0]), mask), pooler(out, mask))


def test_siamese_forward_equals_encoding_each_sentence_alone():
    heads = {"quora": HeadSpec(2, pair_features="concat"), "sts": HeadSpec(1, "cosine", 2.5, (0.0, 5.0))}
    model = tiny_model(heads=heads, pooling="attention")
    torch.nn.init.normal_(model.heads["quora"].pool.query)
    a_ids, a_mask, _ = batch(seed=1, width=9)
    b_ids, b_mask, _ = batch(seed=2, width=6)  # a different width: padded to a common one inside
    for task in ("quora", "sts"):
        head = model.heads[task]
        u = head.pool(model.encoder(a_ids, a_mask), a_mask)
        v = head.pool(model.encoder(b_ids, b_mask), b_mask)
        out = model(task, a_ids, a_mask, None, b_ids, b_mask)
        torch.testing.assert_close(out, head(u, v), rtol=1e-5, atol=1e-5)
        if task == "quora":  # the MLP sees [u, v, |u - v|, u * v]
            expected = head.mlp(torch.cat([u, v, (u - v).abs(), u * v], -1))
        else:  # 5 * cos, clipped to [0, 5]: cos 0 -> 0, cos 1 -> 5 at the start
            expected = (5 * F.cosine_similarity(u, v)).clamp(0, 5)[:, None]
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_cosine_head_clips_to_the_label_range_and_learns_its_scale():
    head = TaskHead(4, 1, [], 0.0, "mean", "cosine", 2.5, (0.0, 5.0))
    u = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 1, 0, 0]])
    v = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    start = head(u, v)[:, 0]  # cos [0, 1] -> [0, 5]
    torch.testing.assert_close(start, torch.tensor([5.0, 0.0, 5 * 2**-0.5]))
    with torch.no_grad():
        head.cosine.scale.fill_(6.0)
        head.cosine.shift.fill_(-0.5)
    out = head(u, v)[:, 0]
    torch.testing.assert_close(out, torch.tensor([5.0, 0.0, 6 * 2**-0.5 - 0.5]))  # 5.5 -> 5, -6.5 -> 0
    out[2].backward()
    assert head.cosine.scale.grad is not None and head.cosine.scale.grad != 0
    binary = TaskHead(4, 2, [], 0.0, "mean", "cosine")
    logits = binary(u, v)
    assert logits.shape == (3, 2) and (logits[:, 0] == 0).all()  # class 1's logit is scale * cos + shift


def test_both_features_feed_the_scaled_cosine_to_the_mlp():
    head = TaskHead(4, 2, [8], 0.0, "mean", "both")
    assert head.mlp[1].in_features == 4 * 4 + 1
    torch.manual_seed(0)
    u, v = torch.randn(3, 4), torch.randn(3, 4)
    feats = torch.cat([u, v, (u - v).abs(), u * v, F.cosine_similarity(u, v)[:, None]], -1)  # unclipped
    torch.testing.assert_close(head(u, v), head.mlp(feats))


def test_segment_features_pool_each_sentence_of_the_cross_encoded_pair():
    """[p, a, b, |a - b|, a * b]: p the pooled pair, a and b its token-type-0 and token-type-1 tokens pooled
    alike, each checked row by row against the real tokens of that row (padding has type 0, not counted)."""
    for pooling in ("mean", "max", "attention"):
        model = tiny_model(heads={"quora": HeadSpec(2, segment_features=True)}, pooling=pooling)
        head = model.heads["quora"]
        if pooling == "attention":
            torch.nn.init.normal_(head.pool.query)
        ids, mask, types = batch(seed=3, rows=4, width=11)
        assert (mask == 0).any() and ((types == 1) & (mask == 1)).any()  # padded rows, two segments each
        out = model("quora", ids, mask, types)
        h = model.encoder(ids, mask, types)
        features = []
        for row in range(ids.size(0)):
            real = mask[row] == 1
            parts = [real, real & (types[row] == 0), real & (types[row] == 1)]
            p, a, b = (_pool_alone(head, h.last_hidden_state[row, keep], pooling) for keep in parts)
            features.append(torch.cat([p, a, b, (a - b).abs(), a * b]))
        torch.testing.assert_close(out, head.mlp(torch.stack(features)), rtol=1e-5, atol=1e-5)
        assert head.mlp[1].in_features == 5 * 32


def _pool_alone(head, states: torch.Tensor, pooling: str) -> torch.Tensor:
    """The pooled vector of one sequence's own tokens (L, H), with no mask: the direct reference."""
    if pooling == "mean":
        return states.mean(0)
    if pooling == "max":
        return states.amax(0)
    weights = ((states @ head.pool.key.weight.T) @ head.pool.query / states.size(-1) ** 0.5).softmax(0)
    return (weights[:, None] * states).sum(0)
