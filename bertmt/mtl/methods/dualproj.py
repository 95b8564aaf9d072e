"""``dualproj`` (Quinton & Rey 2024): project the mean gradient onto the dual cone of the task gradients,
``w = argmin_{v >= 1 / T} v^T G v`` (solved exactly on the normalised, regularised Gram matrix, as in
``upgrad``). Paper scale: the mean; bertmt: times the number of tasks."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import register
from bertmt.mtl.methods.upgrad import UPGrad, regularised
from bertmt.mtl.solvers import project_dual_cone


@register("dualproj")
class DualProj(UPGrad):
    """UPGrad's options and conditioning; one projection, of the mean."""

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        g = regularised(gram, self.norm_eps, self.reg_eps)
        w, self.residual = project_dual_cone(np.ones(len(tasks)), g)  # 1, not 1 / T: sum scale
        return w
