"""The Gram matrix of the task gradients and what surrounds a method (bertmt/mtl/method.py): the Gram
matrix of sharded rows in float64 (``gram_matrix``), the reduction (``task_scales``), the method on the
scaled rows (``combine``) and the telemetry of a step (``gram_stats``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from bertmt.mtl.method import Method

Reduction = Literal["sum", "mean"]


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


def combine(
    method: Method, gram: torch.Tensor, scales: torch.Tensor, present: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights w on the unscaled rows G, and the Gram matrix of the scaled rows D G that ``method`` saw:
    ``w = method.weights(D M D) * d``, so that ``w @ G = method.weights(D M D) @ (D G)``. ``present``: the
    tasks with micro-batches in the step (the method leaves the others out)."""
    scaled = gram * scales[:, None] * scales[None, :]
    return method.weights(scaled, present) * scales, scaled


def gram_matrix(rows: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """``rows @ rows.T`` summed in float64 over float32 products of column chunks: the rounding of a float32
    dot product grows with its length, so 2^14 columns at a time keeps it near float64's (measured on
    3 x 22.7M normal rows: 1.5e-8 of the largest entry, against 1e-7 at 2^16 columns and far worse for one
    float32 product) at 40% of the time of float64 chunks (42 vs 74-110 ms) and no float64 copy."""
    out = torch.zeros(rows.size(0), rows.size(0), dtype=torch.float64, device=rows.device)
    for part in rows.split(chunk, dim=1):
        out += (part @ part.T).double()
    return out


def gram_stats(
    gram: torch.Tensor, weights: torch.Tensor, tasks: Sequence[str], residual: float | None = None
) -> dict[str, float]:
    """TensorBoard scalars of one step: per-task gradient norms and weights, the task-pair cosines, the number
    of conflicting pairs (negative cosine), the norm of the combined gradient ``||w @ G||`` and, for the
    methods that solve a problem, the residual of its optimality conditions."""
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
    if residual is not None:
        out["mtl/solver_residual"] = residual
    return out
