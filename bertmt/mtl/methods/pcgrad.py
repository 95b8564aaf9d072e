"""``pcgrad`` (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): project g_i onto the normal plane
of each g_j it conflicts with, in random order. Sum scale."""

from __future__ import annotations

import torch

from bertmt.mtl.method import register
from bertmt.mtl.methods._ordered import OrderedProjection


@register("pcgrad")
class PCGrad(OrderedProjection):
    def combination(self, gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        c = torch.eye(self.num_tasks, dtype=torch.float64)
        for i, order in enumerate(orders):
            for j in order:
                dot = c[i] @ gram[:, j]  # g'_i . g_j
                if dot < 0 and gram[j, j] > 0:
                    c[i, j] -= dot / gram[j, j]
        return c
