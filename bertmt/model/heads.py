"""Sentence pooling and task heads (an MLP per task)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from bertmt.model.bert import EncoderOutput

Pooling = Literal["mean", "cls", "pooler"]


def pool(out: EncoderOutput, attention_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """One vector per sequence: masked mean of tokens, the [CLS] state, or BERT's tanh pooler. -> (B, H)"""
    if how == "cls":
        return out.last_hidden_state[:, 0]
    if how == "pooler":
        return out.pooler_output
    mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, L, 1)
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class TaskHead(nn.Module):
    """dropout -> [Linear -> GELU -> dropout] x len(hidden) -> Linear(out_size)."""

    def __init__(
        self, in_size: int, out_size: int, hidden: list[int], dropout: float, output_bias: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for width in hidden:
            layers += [nn.Linear(in_size, width), nn.GELU(), nn.Dropout(dropout)]
            in_size = width
        layers.append(nn.Linear(in_size, out_size))
        nn.init.constant_(layers[-1].bias, output_bias)  # e.g. the middle of a regression target's range
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)  # (B, out_size)
