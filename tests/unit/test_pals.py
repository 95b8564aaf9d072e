"""Projected attention layers: zero-initialised PALs change nothing, PALs follow the paper's formula, and each
task's PALs learn from that task only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bertmt.model.multitask import PalSpec
from tests.unit.model_fixtures import batch, tiny_model


def _copy_shared(dst, src) -> None:
    """Give ``dst`` the encoder and heads of ``src`` (everything but the PALs)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pals.") for k in missing) and missing


@pytest.mark.parametrize("shared", [True, False])
def test_zero_initialised_pals_leave_the_output_unchanged(shared):
    plain = tiny_model()
    with_pals = tiny_model(PalSpec(size=12, heads=3, shared=shared))
    _copy_shared(with_pals, plain)
    ids, mask, types = batch()
    for task in ("sst", "quora", "sts"):
        torch.testing.assert_close(
            with_pals(task, ids, mask, types), plain(task, ids, mask, types), rtol=0, atol=0
        )
    # and they do act once V_D is no longer zero (so the equality above is not vacuous)
    for p in with_pals.pals["sst"].decode.parameters():
        torch.nn.init.normal_(p, std=0.5)
    assert not torch.allclose(with_pals("sst", ids, mask, types), plain("sst", ids, mask, types))
    assert torch.equal(with_pals("quora", ids, mask, types), plain("quora", ids, mask, types))


def _naive_pal_layer(layer, pal, index, h, mask):
    """One BERT layer with a PAL written out directly: LN(FFN(a) + a + V_D g(V_E h)), a = attention(h)."""
    a = layer.attention(h, mask)
    e = pal.encode[0 if pal.shared else index]
    d = pal.decode[0 if pal.shared else index]
    x = e(h)  # (B, L, s)
    qkv = pal.attend[index].qkv
    heads = pal.attend[index].heads
    size = x.size(-1)
    q, k, v = (F.linear(x, w, b) for w, b in zip(qkv.weight.chunk(3), qkv.bias.chunk(3)))
    outs = []
    for j in range(heads):  # one head at a time, softmax over the real tokens only
        sl = slice(j * size // heads, (j + 1) * size // heads)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(size // heads)
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        outs.append(scores.softmax(-1) @ v[..., sl])
    pal_out = d(torch.cat(outs, -1))
    out = layer.output
    return out.LayerNorm(out.dense(layer.intermediate(a)) + a + pal_out)


@pytest.mark.parametrize("shared", [True, False])
def test_pal_layer_matches_a_direct_implementation(shared):
    model = tiny_model(PalSpec(size=12, heads=3, shared=shared))
    for p in model.pals.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ids, mask, types = batch()
    enc = model.encoder
    bool_mask = mask.bool()[:, None, None, :]
    h = enc.embeddings(ids, types)
    for i, layer in enumerate(enc.encoder.layer):
        h = _naive_pal_layer(layer, model.pals["sts"], i, h, bool_mask)
    ours = enc(ids, mask, types, model.pals["sts"]).last_hidden_state
    torch.testing.assert_close(ours[mask.bool()], h[mask.bool()], rtol=1e-5, atol=1e-5)


def test_pal_parameters_get_gradients_only_from_their_task():
    model = tiny_model(PalSpec(size=12, heads=3, shared=True)).train()
    for p in model.pals.parameters():
        torch.nn.init.normal_(p, std=0.3)  # non-zero V_D: every PAL weight has a gradient path
    ids, mask, types = batch()
    model("quora", ids, mask, types).logsumexp(-1).sum().backward()
    for name, p in model.pals.named_parameters():
        if name.startswith("quora."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    own = {id(p) for p in model.task_parameters("quora")}
    assert {id(p) for p in model.pals["quora"].parameters()} <= own
    assert not own & {id(p) for p in model.shared_parameters()}  # PALs are never projected by surgery


def test_shared_projections_have_fewer_parameters():
    count = lambda m: sum(p.numel() for p in m.pals["sst"].parameters())  # noqa: E731
    shared, per_layer = tiny_model(PalSpec(12, 3, True)), tiny_model(PalSpec(12, 3, False))
    # 2 layers: per-layer V_E (32x12) and V_D (12x32) twice instead of once
    assert count(per_layer) - count(shared) == 2 * 32 * 12
