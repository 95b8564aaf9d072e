"""The collectives of gradient surgery (maths in mtl/gram.py, orchestration in engine/surgery.py).

- ``all_reduce_gram``: the sum of the ranks' partial Gram matrices, one T x T all-reduce; the only collective
  surgery adds at ZeRO 2 and 3, where DeepSpeed's own reduce-scatter after every micro-batch already leaves
  each rank its shard of every task's rank-averaged gradient (engine/zero_partitions.py).
- ``RowReducer`` (ZeRO 0 and 1, where DeepSpeed reduces only at the boundary): each task's local gradient row
  is reduce-scattered into the (T, D/N) shard as soon as the task's last micro-batch of the step is done,
  asynchronously, so it overlaps the next micro-batches; rank r receives columns [r D/N, (r+1) D/N) of the
  sum, with no layout copy (a row is contiguous).
- ``all_gather_row`` (ZeRO 0 and 1): the combined shard, gathered once into the whole combined gradient;
  ``all_reduce_mean``: the heads' and PALs' gradients (their size, not D).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _collective(new: str, old: str):
    """torch 2.13 renamed the tensor collectives (the old names warn); older torch has only the old ones.
    Looked up at each call, so that bertmt/engine/comm_stats.py's wrappers see them."""
    return getattr(dist, new, None) or getattr(dist, old)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_gram(partial: torch.Tensor) -> torch.Tensor:
    """Sum of the ranks' partial Gram matrices (T x T, in place)."""
    if world_size() > 1:
        dist.all_reduce(partial)
    return partial


def all_reduce_mean(flat: torch.Tensor) -> torch.Tensor:
    """The ranks' mean of ``flat``, in place (ZeRO 0/1: the heads' and PALs' gradients, not D-sized)."""
    if world_size() > 1:
        dist.all_reduce(flat)
        flat.div_(world_size())
    return flat


def all_gather_row(row: torch.Tensor) -> torch.Tensor:
    """In place: every rank's slice ``row.view(N, -1)[rank]`` gathered into the whole row on every rank
    (ZeRO 0/1: the combined shard ``w @ shard`` becomes the shared parameters' gradient, not reduced
    again)."""
    world = world_size()
    if world > 1:
        _collective("all_gather_single", "all_gather_into_tensor")(row, row.view(world, -1)[dist.get_rank()])
    return row


class RowReducer:
    """Reduce-scatters local rows of width ``width`` (a multiple of the world size) into ``shard``
    (T, width/N), averaged over ranks. ``reduce`` returns at once; a row may be reused once a ``wait_*``
    call has returned it."""

    def __init__(self, num_tasks: int, width: int, device: torch.device) -> None:
        self.world = world_size()
        if width % self.world:
            raise ValueError(f"row width {width} is not a multiple of the world size {self.world}")
        self.shard = torch.zeros(num_tasks, width // self.world, dtype=torch.float32, device=device)
        self.pending: list[tuple[object, torch.Tensor, int]] = []  # (work, row, task) in launch order
        self.bytes_moved = 0  # payload bytes handed to collectives since creation
        self.collectives = 0

    def reduce(self, task: int, row: torch.Tensor) -> None:
        if self.world == 1:
            self.shard[task].copy_(row)
            self.pending.append((None, row, task))
            return
        self.collectives += 1
        self.bytes_moved += row.numel() * row.element_size()
        scatter = _collective("reduce_scatter_single", "reduce_scatter_tensor")
        work = scatter(self.shard[task], row, async_op=True)
        self.pending.append((work, row, task))

    def wait_one(self) -> torch.Tensor | None:
        """Wait for the oldest reduction in flight; its row (free to reuse), or None if none is in flight."""
        if not self.pending:
            return None
        work, row, task = self.pending.pop(0)
        if work is not None:
            work.wait()
            self.shard[task].div_(self.world)
        return row

    def wait_all(self) -> list[torch.Tensor]:
        rows = []
        while self.pending:
            rows.append(self.wait_one())
        return rows
