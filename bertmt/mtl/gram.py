"""Gradient-surgery methods that only ever see the T x T Gram matrix ``M = G G^T`` of task gradients.

Each projected task gradient is kept as a linear combination of the original ones,
``g'_i = sum_k C[i, k] g_k``, so every dot product the methods need is ``(C M)[i, j]`` or ``(C M C^T)[i, i]``:
T x T numbers, never D-sized vectors, which is what lets them run on gradients sharded across ranks.
``weights(gram)`` returns w (T,) with the final shared gradient ``w @ G``. Random task orders come from a
seeded generator held in the method's state, so every rank draws the same orders and a resumed run continues
the same sequence. ``combine`` applies the reduction (``task_scales``) around a method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Reduction = Literal["sum", "mean"]


class Method:
    """Base: combine the task gradients with weights computed from their Gram matrix."""

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.generator = torch.Generator().manual_seed(seed)

    def draw_orders(self) -> list[list[int]]:
        """For each task i, a random order of the other tasks (same on every rank for the same state)."""
        t = self.num_tasks
        return [[j for j in torch.randperm(t, generator=self.generator).tolist() if j != i] for i in range(t)]

    def combination(self, gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        """C (T, T): the projected gradients as combinations of the original ones."""
        return torch.eye(self.num_tasks, dtype=torch.float64)

    def weights(self, gram: torch.Tensor, orders: list[list[int]] | None = None) -> torch.Tensor:
        gram = gram.detach().to(torch.float64).cpu()
        if gram.shape != (self.num_tasks, self.num_tasks):
            raise ValueError(
                f"Gram matrix must be {self.num_tasks} x {self.num_tasks}, got {tuple(gram.shape)}"
            )
        c = self.combination(gram, self.draw_orders() if orders is None else orders)
        return c.sum(0)  # sum_i g'_i = sum_i sum_k C[i, k] g_k

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @staticmethod
    def from_config(cfg, num_tasks: int, seed: int) -> Method:
        """The method of an ``MtlConfig`` (its name and the options that method takes)."""
        options = {"beta": cfg.beta} if cfg.method == "gradvac" else {}
        return make_method(cfg.method, num_tasks, seed=seed, **options)


class Sum(Method):
    """No surgery: the sum of the task gradients."""


class PCGrad(Method):
    """Yu et al. 2020: project g_i onto the normal plane of each g_j it conflicts with, in random order."""

    def combination(self, gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        c = torch.eye(self.num_tasks, dtype=torch.float64)
        for i, order in enumerate(orders):
            for j in order:
                dot = c[i] @ gram[:, j]  # g'_i . g_j
                if dot < 0 and gram[j, j] > 0:
                    c[i, j] -= dot / gram[j, j]
        return c


class GradVac(Method):
    """Wang et al. 2020: raise cos(g'_i, g_j) to an EMA target phi_ij (starting at 0, rate ``beta``)."""

    def __init__(self, num_tasks: int, beta: float = 0.01, seed: int = 0) -> None:
        super().__init__(num_tasks, seed)
        if not 0 < beta <= 1:
            raise ValueError(f"gradvac beta must be in (0, 1], got {beta}")
        self.beta = beta
        self.target = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)

    def combination(self, gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        c = torch.eye(self.num_tasks, dtype=torch.float64)
        for i, order in enumerate(orders):
            for j in order:
                norm_i2, norm_j2 = c[i] @ gram @ c[i], gram[j, j]
                if norm_i2 <= 0 or norm_j2 <= 0:
                    continue  # cosine undefined for a zero gradient: no adjustment, target unchanged
                phi = float((c[i] @ gram[:, j]) / math.sqrt(norm_i2 * norm_j2))
                phi = max(-1.0, min(1.0, phi))
                target = float(self.target[i, j])
                if phi < target < 1:
                    c[i, j] += (
                        math.sqrt(norm_i2)
                        * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                        / (math.sqrt(norm_j2) * math.sqrt(1 - target**2))
                    )
                self.target[i, j] = (1 - self.beta) * target + self.beta * phi
        return c

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.target = state["target"].clone().to(torch.float64)


METHODS: dict[str, type[Method]] = {"none": Sum, "pcgrad": PCGrad, "gradvac": GradVac}


def make_method(name: str, num_tasks: int, **options) -> Method:
    """``make_method("gradvac", 3, beta=0.01)``; options: seed, beta (gradvac)."""
    if name not in METHODS:
        raise ValueError(f"unknown gradient-surgery method '{name}': expected one of {sorted(METHODS)}")
    return METHODS[name](num_tasks, **options)


def task_scales(micro_batches: Sequence[int], accum: int, reduction: Reduction) -> torch.Tensor:
    """Factors d (T,) on the rows of G before a method sees them. Row k holds task k's gradient as plain
    training accumulates it: the sum over its ``micro_batches[k]`` micro-batches of their gradients / accum.

    - ``sum``: d = 1. A task drawn twice in a step counts twice, exactly as in plain training; surgery with
      method none is plain training.
    - ``mean``: every task present in the step counts once, with its mean micro-batch gradient, and the
      combination is divided by the number of tasks present: d_k = accum / (n_k * T_present). It equals plain
      training (and ``sum``) when the present tasks are drawn equally often, e.g. round robin with
      grad_accum a multiple of T; absent tasks (n_k = 0) do not count.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n = torch.tensor(micro_batches, dtype=torch.float64)
    if reduction == "sum":
        return torch.ones_like(n)
    present = int((n > 0).sum())
    return torch.where(n > 0, accum / (n.clamp(min=1) * max(present, 1)), torch.zeros_like(n))


def combine(method: Method, gram: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights w on the unscaled rows G, and the Gram matrix of the scaled rows D G that ``method`` saw:
    ``w = method.weights(D M D) * d``, so that ``w @ G = method.weights(D M D) @ (D G)``."""
    scaled = gram * scales[:, None] * scales[None, :]
    return method.weights(scaled) * scales, scaled


def gram_matrix(rows: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """``rows @ rows.T`` summed in float64 over float32 products of column chunks: the rounding of a float32
    dot product grows with its length, so 2^14 columns at a time keeps it near float64's (measured on
    3 x 22.7M normal rows: 1.5e-8 of the largest entry, against 1e-7 at 2^16 columns and far worse for one
    float32 product) at 40% of the time of float64 chunks (42 vs 74-110 ms) and no float64 copy."""
    out = torch.zeros(rows.size(0), rows.size(0), dtype=torch.float64, device=rows.device)
    for part in rows.split(chunk, dim=1):
        out += (part @ part.T).double()
    return out


def gram_stats(gram: torch.Tensor, weights: torch.Tensor, tasks: Sequence[str]) -> dict[str, float]:
    """TensorBoard scalars of one step: per-task gradient norms and weights, the task-pair cosines, the number
    of conflicting pairs (negative cosine) and the norm of the combined gradient ``||w @ G||``."""
    norms = gram.diagonal().clamp(min=0).sqrt()
    out = {f"mtl/grad_norm/{t}": float(norms[i]) for i, t in enumerate(tasks)}
    out |= {f"mtl/weight/{t}": float(weights[i]) for i, t in enumerate(tasks)}
    conflicts = 0
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            if norms[i] > 0 and norms[j] > 0:
                cos = float(gram[i, j] / (norms[i] * norms[j]))
                out[f"mtl/cos/{tasks[i]}-{tasks[j]}"] = cos
                conflicts += cos < 0
    out["mtl/conflicts"] = conflicts
    w = weights.to(gram.dtype)
    out["mtl/combined_norm"] = float((w @ gram @ w).clamp(min=0).sqrt())
    return out
