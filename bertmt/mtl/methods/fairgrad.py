"""``fairgrad`` (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning"): the alpha-fair update,
weights w > 0 with ``(G w)_i = w_i^(-1/alpha)``, solved exactly by Newton's method (solvers.fair_weights).
alpha = 1 is proportional fairness (the Nash-MTL solution without its norm cap), larger alpha favours the
worst-off task. Scale: the method's own, as in the paper (the unnormalised Gram matrix): with T equal
gradients g, ``w @ G = T g (T ||g||^2)^(-alpha / (1 + alpha))``. alpha = 0 (linear scalarisation): the sum.
Zero weights when the tasks are at a Pareto-stationary point (no solution exists)."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register, warn_unsolved
from bertmt.mtl.solvers import fair_weights


@register("fairgrad")
class FairGrad(Method):
    def __init__(self, num_tasks: int, alpha: float = 1.0, seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        if alpha < 0:
            raise ValueError(f"fairgrad alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        if self.alpha == 0:
            self.residual = 0.0
            return np.ones(len(tasks))
        w, self.residual = fair_weights(gram, self.alpha)
        warn_unsolved(self)
        return w
