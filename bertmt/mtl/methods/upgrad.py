"""``upgrad`` (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"): project every task
gradient onto the dual cone of all of them (the directions that conflict with none) and average:
``w = sum_i argmin_{v >= e_i / T} v^T G v``, each projection solved exactly (solvers.py) on the Gram matrix
normalised by its trace and regularised by ``reg_eps`` I (as the reference does; ``norm_eps``: below this
trace the matrix counts as zero). Paper scale: the mean; bertmt: times the number of tasks."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register
from bertmt.mtl.solvers import project_dual_cone


def regularised(gram: np.ndarray, norm_eps: float, reg_eps: float) -> np.ndarray:
    """The reference's conditioning: ``G / trace(G)`` (0 below ``norm_eps``) plus ``reg_eps`` I."""
    trace = float(np.trace(gram))
    g = gram / trace if trace >= norm_eps else np.zeros_like(gram)
    return g + reg_eps * np.eye(len(g))


@register("upgrad")
class UPGrad(Method):
    def __init__(self, num_tasks: int, norm_eps: float = 1e-4, reg_eps: float = 1e-4, seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        if norm_eps < 0 or reg_eps < 0:
            raise ValueError(f"{self.name} norm_eps and reg_eps must be >= 0, got {norm_eps} and {reg_eps}")
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        g = regularised(gram, self.norm_eps, self.reg_eps)
        projections = [project_dual_cone(e, g) for e in np.eye(len(tasks))]  # e_i, not e_i / T: sum scale
        self.residual = max(r for _, r in projections)
        return np.sum([v for v, _ in projections], axis=0)
