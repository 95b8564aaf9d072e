"""``aligned_mtl`` (Senushkin et al. 2023, "Independent Component Alignment for Multi-Task Learning"): make
the task gradients orthogonal with equal norms (the balance transformation ``B = sqrt(s) V S^-1/2 V^T`` of
the Gram matrix's eigendecomposition on its numerical rank, s its smallest (``min``), median (the lower
of the middle two) or mean (``rmse``) kept eigenvalue) and average them: ``w = B 1 / T``. Paper scale:
the mean; bertmt: times the number of tasks."""

from __future__ import annotations

import numpy as np

from bertmt.mtl.method import Method, register

SCALE_MODES = ("min", "median", "rmse")


@register("aligned_mtl")
class AlignedMTL(Method):
    def __init__(self, num_tasks: int, scale_mode: str = "min", seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"aligned_mtl scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
        self.scale_mode = scale_mode

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        t = len(tasks)
        values, vectors = np.linalg.eigh(gram)
        keep = values > values.max() * t * np.finfo(np.float64).eps
        if not keep.any():
            return np.ones(t)  # all gradients zero: B = identity, as in the reference
        values, vectors = values[keep], vectors[:, keep]
        lower_median = np.sort(values)[(len(values) - 1) // 2]  # as torch.median, which the reference uses
        scale = {"min": values.min(), "median": lower_median, "rmse": values.mean()}[self.scale_mode]
        balance = np.sqrt(scale) * (vectors / np.sqrt(values)) @ vectors.T
        return balance @ np.ones(t)
