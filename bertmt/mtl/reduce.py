"""Per-task gradients of the shared parameters in one flat (T, D) fp32 buffer, reduced across ranks.

Data flow of one optimiser step (DESIGN.md): every micro-batch's task gradient is added to its row with
``torch.autograd.grad``; at the accumulation boundary the buffer crosses ranks in one bucketed collective
(``reduce_scatter``: each rank keeps a column shard, then the partial Gram matrices are summed by one
T x T all-reduce; or ``all_reduce`` of the whole buffer), the Gram matrix ``M = G G^T`` gives the method's
weights w, and the caller feeds ``w @ G_local`` to the DeepSpeed engine, whose own averaging across ranks
makes it exactly ``w @ mean_ranks(G)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from bertmt.mtl.gram import Method, combine


@dataclass
class Combined:
    weights: torch.Tensor  # (T,) float64
    gram: torch.Tensor  # (T, T) float64, of the rank-averaged task gradients (scaled by the reduction)
    finite: bool  # False if any rank's buffer held inf/nan (fp16 overflow): skip the step


class TaskGradients:
    """The (T, D) buffer of task gradients of ``params`` (the shared parameters); counts its collectives."""

    def __init__(self, params: list[nn.Parameter], num_tasks: int, mode: str = "reduce_scatter") -> None:
        if mode not in ("reduce_scatter", "all_reduce"):
            raise ValueError(f"reduce mode must be 'reduce_scatter' or 'all_reduce', got {mode!r}")
        self.params, self.mode = params, mode
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        numel = sum(p.numel() for p in params)
        self.width = -(-numel // self.world) * self.world  # padded so that columns split evenly over ranks
        self.buffer = torch.zeros(num_tasks, self.width, dtype=torch.float32, device=params[0].device)
        self.bytes_moved = 0  # payload bytes handed to collectives since creation
        self.collectives = 0

    def add(self, task: int, grads: list[torch.Tensor | None], scale: float = 1.0) -> None:
        """Add one micro-batch's gradients of the shared params (from autograd.grad), divided by ``scale``."""
        for view, g in zip(self.row_views(self.buffer[task]), grads):
            if g is not None:  # unused parameter (e.g. the pooler under mean pooling)
                view.add_(g.float(), alpha=1.0 / scale)

    def row_views(self, row: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat D-vector back into tensors shaped like the shared parameters."""
        out, offset = [], 0
        for p in self.params:
            out.append(row[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def zero(self) -> None:
        self.buffer.zero_()

    def _count(self, tensor: torch.Tensor) -> None:
        self.collectives += 1
        self.bytes_moved += tensor.numel() * tensor.element_size()

    def gram(self) -> tuple[torch.Tensor, bool]:
        """Gram matrix of the rank-averaged task gradients, and whether every rank's buffer was finite.

        An inf or nan anywhere, on any rank, reaches the diagonal of the reduced Gram matrix (as a sum of
        squares), so finiteness costs no extra pass over the buffer and no extra collective."""
        if self.world == 1:
            gram = _gram(self.buffer)
        elif self.mode == "all_reduce":
            g = self.buffer.clone()
            self._count(g)
            dist.all_reduce(g)
            gram = _gram(g / self.world)
        else:
            shard = torch.empty(
                self.buffer.size(0),
                self.width // self.world,
                dtype=self.buffer.dtype,
                device=self.buffer.device,
            )
            self._count(self.buffer)
            dist.reduce_scatter_tensor(shard, _columns_by_rank(self.buffer, self.world))
            gram = _gram(shard / self.world)  # partial Gram matrix of this rank's column shard
            self._count(gram)
            dist.all_reduce(gram)
        return gram, bool(torch.isfinite(gram.diagonal()).all())

    def combine(self, method: Method, scales: torch.Tensor) -> Combined:
        """The method's weights on the rows scaled by ``scales`` (gram.task_scales: the reduction)."""
        gram, finite = self.gram()
        if not finite:
            return Combined(torch.zeros(self.buffer.size(0), dtype=torch.float64), gram, False)
        weights, scaled = combine(method, gram, scales)
        return Combined(weights, scaled, True)

    def combined_local(self, weights: torch.Tensor) -> torch.Tensor:
        """``w @ G_local`` as a flat fp32 vector (the engine averages it across ranks)."""
        return weights.to(self.buffer.dtype).to(self.buffer.device) @ self.buffer


def _gram(g: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """``g @ g.T`` in float64, converted in column chunks: exact like a full float64 copy (which costs 6x the
    time and 2x the buffer's memory here), unlike a float32 product over ~10^7 columns."""
    out = torch.zeros(g.size(0), g.size(0), dtype=torch.float64, device=g.device)
    for part in g.split(chunk, dim=1):
        part = part.double()
        out += part @ part.T
    return out


def _columns_by_rank(buf: torch.Tensor, world: int) -> torch.Tensor:
    """(T, D) -> (world * T, D / world): rank r's block is columns [r D/world, (r+1) D/world) of every row,
    the layout reduce_scatter_tensor splits along dim 0."""
    t, d = buf.shape
    return buf.view(t, world, d // world).transpose(0, 1).reshape(world * t, d // world)
