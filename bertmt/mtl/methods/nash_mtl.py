"""``nash_mtl`` (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game"): the Nash bargaining solution,
weights w > 0 with ``w_i (G w)_i = 1``, solved exactly by Newton's method (solvers.fair_weights, alpha = 1)
warm-started from the previous weights (the paper's sequence of convex approximations converges to the same
point); recomputed every ``update_weights_every`` steps and reused in between. Scale: set by the method,
``||w @ G|| = sqrt(T)``, then capped at ``max_norm`` (the paper's default 1.0; 0: no cap) on every step, as
in the paper's code. It is invariant to the size of each task's gradient, so ``mtl.reduction`` does not
change it. State: the last weights and the step count. Zero weights at a Pareto-stationary point."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register, warn_unsolved
from bertmt.mtl.solvers import fair_weights


@register("nash_mtl")
class NashMTL(Method):
    def __init__(
        self, num_tasks: int, update_weights_every: int = 1, max_norm: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(num_tasks, seed)
        if update_weights_every < 1 or max_norm < 0:
            raise ValueError(
                "nash_mtl update_weights_every must be >= 1 and max_norm >= 0, "
                f"got {update_weights_every} and {max_norm}"
            )
        self.update_weights_every, self.max_norm = update_weights_every, max_norm
        self.last = np.ones(num_tasks)  # the weights of the last solve (warm start), on all T tasks
        self.steps = 0

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        if self.steps % self.update_weights_every == 0:
            w, self.residual = fair_weights(gram, 1.0, start=self.last[tasks])
            warn_unsolved(self)
            if np.isfinite(self.residual):
                self.last[tasks] = w
        else:
            w = self.last[tasks]
        self.steps += 1
        norm = np.sqrt(max(w @ gram @ w, 0.0))
        if self.max_norm > 0 and norm > self.max_norm:
            w = w * (self.max_norm / norm)
        return w

    def state_dict(self) -> dict:
        return {"last": self.last.tolist(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.last, self.steps = np.asarray(state["last"], dtype=np.float64).copy(), int(state["steps"])
