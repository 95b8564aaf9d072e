"""``mgda`` (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization"; Désidéri 2012): the
min-norm point of the convex hull of the task gradients, solved exactly (not by Frank-Wolfe; solvers.py).
Paper scale: a convex combination (weights sum to 1); bertmt: times the number of tasks (sum scale)."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register
from bertmt.mtl.solvers import min_norm


@register("mgda")
class MGDA(Method):
    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        w, self.residual = min_norm(gram)
        return w * len(tasks)
