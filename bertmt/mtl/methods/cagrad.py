"""``cagrad`` (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning"): the direction
``g_0 + (c ||g_0|| / ||g_w||) g_w`` that maximises the worst task's improvement within a ball of radius
``c ||g_0||`` around the mean gradient g_0, with w the solution of its dual (solvers.cagrad_direction, exact).
As in the paper's Algorithm 1 (no rescaling by 1 + c^2); computed on the trace-normalised Gram matrix; when
``||g_w||`` < ``norm_eps`` there (0 in the convex hull) the weights are 0, as in the reference. Paper scale:
``w = 1/T + (c ||g_0|| / ||g_w||) w_dual``; bertmt: times the number of tasks."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register
from bertmt.mtl.solvers import cagrad_direction, trace_normalised


@register("cagrad")
class CAGrad(Method):
    def __init__(self, num_tasks: int, c: float = 0.4, norm_eps: float = 1e-4, seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        if c < 0 or norm_eps < 0:
            raise ValueError(f"cagrad c and norm_eps must be >= 0, got {c} and {norm_eps}")
        self.c, self.norm_eps = c, norm_eps

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        t = len(tasks)
        g = trace_normalised(gram)
        radius = self.c * np.sqrt(max(g.sum(), 0.0)) / t  # c ||g_0||
        if radius == 0:
            self.residual = 0.0
            return np.ones(t)  # c = 0 (or g_0 = 0): the mean, on the sum scale
        w, norm, self.residual = cagrad_direction(g, self.c)
        if norm < self.norm_eps:
            return np.zeros(t)
        return (1 / t + radius / norm * w) * t
