"""``dwa``: dynamic weight average (Liu et al. 2019, "End-to-End Multi-Task Learning with Attention"):
``w_k = T softmax_k(r_k / temperature)`` with ``r_k = L_k(n-1) / L_k(n-2)`` the ratio of task k's mean losses
over the last two windows of ``window`` optimiser steps (the paper's windows are epochs, the default); ones
until two windows have passed. State: the running window and the last two window means."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.loss_weighting import LossWeighting, register_weighting


@register_weighting("dwa")
class DynamicWeightAverage(LossWeighting):
    state_keys = ("sums", "counts", "steps", "means")

    def __init__(self, tasks: list[str], temperature: float = 2.0, window: int = 1) -> None:
        super().__init__(tasks)
        if window < 1 or temperature <= 0:
            raise ValueError(f"dwa window must be >= 1 and temperature > 0, got {window} and {temperature}")
        self.temperature, self.window = temperature, window
        self.sums, self.counts, self.steps = np.zeros(self.num_tasks), np.zeros(self.num_tasks), 0
        self.means: list[np.ndarray] = []  # the last two windows' mean losses, oldest first

    def weights(self) -> np.ndarray:
        if len(self.means) < 2:
            return np.ones(self.num_tasks)
        older, last = self.means
        ratio = np.where(older > 0, last / np.where(older > 0, older, 1.0), 1.0)
        z = np.exp((ratio - ratio.max()) / self.temperature)
        return self.num_tasks * z / z.sum()

    def update(self, losses: np.ndarray, present: np.ndarray) -> None:
        self.sums += np.where(present, losses, 0.0)
        self.counts += present
        self.steps += 1
        if self.steps == self.window:
            previous = self.means[-1] if self.means else np.zeros(self.num_tasks)
            # a task without micro-batches in the window keeps its previous mean (ratio 1 next time)
            mean = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), previous)
            self.means = (self.means + [mean])[-2:]
            self.sums, self.counts, self.steps = np.zeros(self.num_tasks), np.zeros(self.num_tasks), 0
