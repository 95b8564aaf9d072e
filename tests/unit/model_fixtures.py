"""Small random models and batches for the model unit tests (no files needed)."""

from __future__ import annotations

import torch

from bertmt.model import BertConfig, BertModel
from bertmt.model.multitask import ExpertSpec, HeadSpec, MultitaskModel, PalSpec


def tiny_encoder(seed: int = 0, layers: int = 2) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(cfg).eval()


def tiny_model(
    pals: PalSpec | None = None,
    pooling="mean",
    heads=None,
    seed: int = 0,
    experts: ExpertSpec | None = None,
    layers: int = 2,
) -> MultitaskModel:
    heads = heads or {"sst": HeadSpec(5), "quora": HeadSpec(2), "sts": HeadSpec(1, output_bias=2.5)}
    model = MultitaskModel(tiny_encoder(seed, layers), heads, pooling, [16], 0.0, pals=pals, experts=experts)
    return model.eval()


def batch(seed: int = 1, rows: int = 4, width: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids with right padding of different lengths (row 0 unpadded) and two token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (rows, width), generator=g)
    lengths = torch.tensor([width] + [max(2, width - 2 * i) for i in range(1, rows)])
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    types = (torch.arange(width)[None] >= lengths[:, None] // 2).long() * mask
    return ids * mask, mask, types
