"""The multitask model: one shared encoder, one head per task."""

from __future__ import annotations

import torch
from torch import nn

from bertmt.model.bert import BertModel
from bertmt.model.heads import Pooling, TaskHead, pool


class MultitaskModel(nn.Module):
    """``forward(task, input_ids, attention_mask, token_type_ids) -> (B, out_size)`` raw head outputs.

    Sentence pairs arrive already joined as one cross-encoded sequence (see bertmt.data.batching).
    """

    def __init__(
        self,
        encoder: BertModel,
        head_sizes: dict[str, int],
        pooling: Pooling,
        hidden: list[int],
        dropout: float,
        output_bias: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        width = encoder.config.hidden_size
        bias = output_bias or {}
        self.heads = nn.ModuleDict(
            {
                task: TaskHead(width, size, hidden, dropout, bias.get(task, 0.0))
                for task, size in head_sizes.items()
            }
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task uses (the encoder): the ones gradient surgery projects."""
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` uses (its head): they keep their own task's gradient."""
        return list(self.heads[task].parameters())

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.heads[task](pool(out, attention_mask, self.pooling))
