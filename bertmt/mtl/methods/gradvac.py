"""``gradvac`` (Wang et al. 2020, "Gradient Vaccine"): raise cos(g'_i, g_j) to an EMA target phi_ij
(starting at 0, rate ``beta``), in random order. Sum scale. State: the targets and the order generator."""

from __future__ import annotations

import math

import torch

from bertmt.mtl.method import register
from bertmt.mtl.methods._ordered import OrderedProjection

# A target cosine this close to 1 asks for parallel gradients, which the formula below cannot give: it divides
# by sqrt(1 - target**2), and float64 rounding of phi and target then decides the adjustment. No adjustment.
PARALLEL = 1e-8


@register("gradvac")
class GradVac(OrderedProjection):
    def __init__(self, num_tasks: int, beta: float = 0.01, seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        if not 0 < beta <= 1:
            raise ValueError(f"gradvac beta must be in (0, 1], got {beta}")
        self.beta = beta
        self.target = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)

    def combination(self, gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        c = torch.eye(self.num_tasks, dtype=torch.float64)
        for i, order in enumerate(orders):
            for j in order:
                norm_i2, norm_j2 = c[i] @ gram @ c[i], gram[j, j]
                if norm_i2 <= 0 or norm_j2 <= 0:
                    continue  # cosine undefined for a zero gradient: no adjustment, target unchanged
                phi = float((c[i] @ gram[:, j]) / math.sqrt(norm_i2 * norm_j2))
                phi = max(-1.0, min(1.0, phi))
                target = float(self.target[i, j])
                if phi < target < 1 - PARALLEL:
                    c[i, j] += (
                        math.sqrt(norm_i2)
                        * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                        / (math.sqrt(norm_j2) * math.sqrt(1 - target**2))
                    )
                self.target[i, j] = (1 - self.beta) * target + self.beta * phi
        return c

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.target = state["target"].clone().to(torch.float64)
