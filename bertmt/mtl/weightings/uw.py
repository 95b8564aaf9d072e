"""``uw``: uncertainty weighting (Kendall et al. 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics"), in its common form ``sum_k exp(-s_k) L_k + s_k`` with learned
log-variances s_k (all tasks alike; starting at 0: plain training). The s_k get their own Adam (``lr``) on
their exact gradient ``1 - exp(-s_k) L_k`` at the step's rank-averaged losses, so they move at a useful rate
whatever the encoder's learning rate (joint training with the encoder's optimiser is the same update at the
encoder's rate and weight decay). Weights ``exp(-s_k)``."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.loss_weighting import Adam, LossWeighting, register_weighting


@register_weighting("uw")
class UncertaintyWeighting(LossWeighting):
    state_keys = ("log_var", "optimizer")

    def __init__(self, tasks: list[str], lr: float = 0.01) -> None:
        super().__init__(tasks)
        self.log_var = np.zeros(self.num_tasks)
        self.optimizer = Adam(self.num_tasks, lr)

    def weights(self) -> np.ndarray:
        return np.exp(-self.log_var)

    def update(self, losses: np.ndarray, present: np.ndarray) -> None:
        grad = 1 - np.exp(-self.log_var) * losses
        self.log_var = self.optimizer.step(self.log_var, grad, present)

    def scalars(self) -> dict[str, float]:
        return super().scalars() | {f"mtl/uw/log_var/{t}": float(s) for t, s in zip(self.tasks, self.log_var)}
