"""``imtlg`` (IMTL-G, Liu et al. 2021, "Towards Impartial Multi-task Learning"): the combination whose
projections on every task's unit gradient are equal, ``G w`` proportional to the gradient norms, so
``w = G^+ d / 1^T G^+ d`` with ``d_i = ||g_i||`` (the pseudo-inverse form of Quinton & Rey 2024 handles
linearly dependent gradients; all-zero when the sum vanishes). Paper scale: weights sum to 1; bertmt: times
the number of tasks."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register


@register("imtlg")
class IMTLG(Method):
    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        d = np.sqrt(np.clip(np.diag(gram), 0, None))
        v = np.linalg.pinv(gram, hermitian=True) @ d
        total = v.sum()
        return np.zeros_like(v) if abs(total) < 1e-12 else v / total * len(tasks)
