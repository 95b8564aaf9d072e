"""``famo``: fast adaptive multitask optimisation (Liu et al. 2023, "FAMO: Fast Adaptive Multitask
Optimization"), O(1) per step: task logits xi, ``z = softmax(xi)``; the step's loss is
``sum_k z_k log L_k / c`` (c = sum_k z_k / L_k), i.e. weights ``z_k / (c L_k)``; after the step the logits
take an Adam step (``lr``, L2 ``weight_decay``) along ``J_softmax^T delta`` with ``delta_k = log L_k(before) -
log L_k(after)``, so tasks whose loss fell less gain weight.

Deviation from the paper's code, for the cost of plain training: L_k(before) and L_k(after) are the
rank-averaged mean losses of consecutive steps (different batches) instead of one batch before and after the
update (an extra forward), and the weights of a step use the previous step's losses (its own are not known
before its micro-batches). Paper scale: weights sum to 1; bertmt: times the number of tasks."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.loss_weighting import Adam, LossWeighting, register_weighting

EPS = 1e-8


@register_weighting("famo")
class FAMO(LossWeighting):
    state_keys = ("logits", "optimizer", "last")

    def __init__(self, tasks: list[str], lr: float = 0.025, weight_decay: float = 0.001) -> None:
        super().__init__(tasks)
        self.logits = np.zeros(self.num_tasks)
        self.optimizer = Adam(self.num_tasks, lr, weight_decay)
        self.last = np.full(self.num_tasks, np.nan)  # each task's last known mean loss

    def softmax(self) -> np.ndarray:
        z = np.exp(self.logits - self.logits.max())
        return z / z.sum()

    def weights(self) -> np.ndarray:
        z = self.softmax()
        if np.isnan(self.last).any():
            return z * self.num_tasks
        inverse = z / (self.last + EPS)
        return inverse / inverse.sum() * self.num_tasks

    def update(self, losses: np.ndarray, present: np.ndarray) -> None:
        known = present & ~np.isnan(self.last)
        if known.any():
            delta = np.where(known, np.log(self.last + EPS) - np.log(np.where(known, losses, 1.0) + EPS), 0.0)
            z = self.softmax()
            grad = z * (delta - z @ delta)  # J_softmax^T delta
            self.logits = self.optimizer.step(self.logits, grad, np.ones(self.num_tasks, dtype=bool))
        self.last = np.where(present, losses, self.last)

    def scalars(self) -> dict[str, float]:
        return super().scalars() | {f"mtl/famo/logit/{t}": float(x) for t, x in zip(self.tasks, self.logits)}
