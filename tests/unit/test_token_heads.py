"""Max pooling and the heads over the token states (BiLSTM, CNN) against direct per-sequence loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertmt.model.bert import EncoderOutput
from bertmt.model.heads import Pooler, TaskHead
from bertmt.model.multitask import HeadSpec
from tests.unit.model_fixtures import batch, tiny_model

MASK = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])


def _states(seed: int = 0, width: int = 8) -> EncoderOutput:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 6, width, generator=g)
    h[MASK == 0] = 50.0  # padding states that would win any max or shift any mean if they leaked in
    return EncoderOutput(h, None)


def test_max_pooling_is_the_elementwise_max_over_real_tokens():
    out = _states()
    want = torch.stack([out.last_hidden_state[b, : int(MASK[b].sum())].max(0).values for b in range(3)])
    torch.testing.assert_close(Pooler("max", 8)(out, MASK), want)


@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_lstm_head_equals_the_bilstm_run_on_each_sequence_alone(pooling):
    torch.manual_seed(0)
    head = TaskHead(8, 3, [], 0.0, pooling, arch="lstm", lstm_size=5)
    out = _states()
    lstm = head.pool.lstm
    want = []
    for b in range(3):
        n = int(MASK[b].sum())
        states, _ = lstm(out.last_hidden_state[b : b + 1, :n])  # (1, n, 10): no padding at all
        states = states[0]
        want.append({"mean": states.mean(0), "max": states.max(0).values, "cls": states[0]}[pooling])
    got = head.pool(out, MASK)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head(got), head.mlp(torch.stack(want)), rtol=1e-5, atol=1e-6)


def test_cnn_head_max_pools_each_width_over_windows_of_real_tokens():
    torch.manual_seed(0)
    head = TaskHead(8, 2, [], 0.0, "mean", arch="cnn", cnn_kernels=(2, 3), cnn_channels=4)
    out = _states()
    want = []
    for b in range(3):
        n = int(MASK[b].sum())
        h = out.last_hidden_state[b, :n]  # (n, 8)
        per_width = []
        for conv in head.pool.convs:
            k = conv.kernel_size[0]
            h_k = torch.cat([h, torch.zeros(max(0, k - n), 8)])  # shorter than k: one zero-padded window
            windows = [h_k[t : t + k] for t in range(len(h_k) - k + 1)]  # (k, 8) each
            scores = [F.relu((conv.weight * w.T).sum((1, 2)) + conv.bias) for w in windows]  # (4,) each
            per_width.append(torch.stack(scores).max(0).values)  # (4,)
        want.append(torch.cat(per_width))
    got = head.pool(out, MASK)
    assert got.shape == (3, 8)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)


def test_token_heads_train_in_the_multitask_model_and_siamese_pairs():
    heads = {
        "sst": HeadSpec(5, arch="lstm", lstm_size=6),
        "quora": HeadSpec(2, pair_features="concat", arch="cnn", cnn_kernels=(2, 3), cnn_channels=3),
    }
    model = tiny_model(heads=heads, pooling="max")
    ids, mask, types = batch(seed=1, width=9)
    b_ids, b_mask, _ = batch(seed=2, width=6)
    assert model("sst", ids, mask, types).shape == (ids.size(0), 5)
    logits = model("quora", ids, mask, None, b_ids, b_mask)
    assert logits.shape == (ids.size(0), 2)
    assert model.heads["quora"].mlp[1].in_features == 2 * 3 * 4  # [u, v, |u-v|, u*v] of the CNN's 6
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["quora"].pool.parameters())
