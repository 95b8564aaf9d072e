"""The base of the methods that project task gradients one after another in a random order (PCGrad,
GradVac). Each projected gradient is kept as a combination of the original ones, ``g'_i = sum_k C[i, k] g_k``,
so every dot product they need is ``(C M)[i, j]`` or ``(C M C^T)[i, i]``. The orders come from a seeded
generator held in the state: every rank draws the same ones and a resumed run continues the sequence."""

from __future__ import annotations

import numpy as np
import torch

from bertmt.mtl.method import Method


class OrderedProjection(Method):
    """Sum scale: ``w = 1^T C``. Zero rows (absent tasks) are skipped by the projections themselves, so the
    method runs on all T rows and draws the same orders whatever tasks a step has."""

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        self.generator = torch.Generator().manual_seed(seed)

    def draw_orders(self) -> list[list[int]]:
        """For each task i, a random order of the other tasks (same on every rank for the same state)."""
        t = self.num_tasks
        return [[j for j in torch.randperm(t, generator=self.generator).tolist() if j != i] for i in range(t)]

    def combination(self, gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        """C (T, T): the projected gradients as combinations of the original ones."""
        raise NotImplementedError

    def weights(
        self, gram: torch.Tensor, present: torch.Tensor | None = None, orders: list[list[int]] | None = None
    ) -> torch.Tensor:
        gram = self._check(gram)
        c = self.combination(gram, self.draw_orders() if orders is None else orders)
        return c.sum(0)  # sum_i g'_i = sum_i sum_k C[i, k] g_k

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        return self.weights(torch.from_numpy(gram)).numpy()  # not used: weights() runs on all rows

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
