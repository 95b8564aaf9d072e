"""Where DeepSpeed holds the reduced gradients, and how surgery hands its own to it.

ZeRO 2 and 3 reduce-scatter gradients after every micro-batch, so right after a micro-batch of task k a rank
holds its shard of task k's rank-averaged gradient (DESIGN.md, "Data flow"). ``take`` moves that shard into
row k of the surgery buffer (overwriting it at the task's first micro-batch of the step, adding after) and
clears DeepSpeed's accumulator for the shared parameters; ``put`` writes the combined shard back just before
``engine.step()``. Heads and PALs live in their own optimiser parameter groups (engine/optim.py) and keep
accumulating untouched.

- stage 3: DeepSpeed's public fragment API (``safe_get_local_grad`` / ``safe_set_local_grad``).
- stage 2: no public API reads a partition without an all-reduce; this uses the DeepSpeed 0.19 partition
  buffers (``all_grad_tensors`` between micro-batches, ``averaged_gradients`` at the boundary), checked here
  and by tests/distributed/test_zero_partitions.py against a DeepSpeed-only reference.
- stages 0 and 1: ``backward_reduced`` gives DeepSpeed gradients that every rank already holds reduced,
  skipping DeepSpeed's own reduction (same test file).
"""

from __future__ import annotations

from typing import Protocol

import torch

from bertmt.engine.deepspeed_compat import DeepSpeedInternalsChanged


class PartitionGrads(Protocol):
    """One ZeRO stage's view of the shared parameters' gradient partition on this rank (``numel`` values)."""

    numel: int

    def take(self, out: torch.Tensor, boundary: bool, first: bool) -> None:
        """``out = partition`` if ``first`` else ``out += partition`` (fp32, loss-scaled as DeepSpeed holds
        it); DeepSpeed's accumulator cleared."""

    def put(self, flat: torch.Tensor) -> None:
        """Make ``flat`` the partition that ``engine.step()`` uses (after the boundary micro-batch's take)."""


def backward_reduced(engine, loss: torch.Tensor) -> None:
    """ZeRO 0 and 1: ``engine.backward(loss)`` for a loss whose gradients are already reduced (identical on
    every rank), without DeepSpeed's reduction: its loss scaling applies, then ``no_sync`` skips the
    all-reduce. At ZeRO 1 the optimiser's epilogue then takes this rank's partition of those gradients (what
    it does after its own reduction; DeepSpeed 0.19, checked by tests/distributed/test_zero_partitions.py)."""
    stage = engine.zero_optimization_stage()
    if stage > 1:
        raise ValueError(f"backward_reduced is for ZeRO 0 and 1, not stage {stage}")
    opt, epilogue = engine.optimizer, None
    if stage == 1:  # checked before any work; the two ValueErrors are configs bertmt does not generate
        epilogue = getattr(opt, "independent_gradient_partition_epilogue", None)
        if epilogue is None:
            name = type(opt).__name__
            raise DeepSpeedInternalsChanged(f"ZeRO-1 {name} has no independent_gradient_partition_epilogue")
        if getattr(opt, "overlap_comm", False):
            raise ValueError("surgery at ZeRO 1 needs zero_optimization.overlap_comm false (hooks reduce)")
        compact = getattr(opt, "_use_compact_grad_partition_buffer", lambda g: False)
        if any(compact(g) for g in range(len(getattr(opt, "bit16_groups", [])))):
            raise ValueError("surgery at ZeRO 1 needs grad_accum_dtype equal to the parameters' dtype")
    with engine.no_sync():
        engine.backward(loss)
    if epilogue is not None:
        epilogue()


def partition_grads(engine, shared_groups: list[int], shared: list[torch.nn.Parameter]) -> PartitionGrads:
    stage = engine.zero_optimization_stage()
    if stage == 3:
        return Stage3(engine.optimizer, shared)
    if stage == 2:
        return Stage2(engine.optimizer, shared_groups)
    raise ValueError(f"gradient partitions are captured at ZeRO 2 and 3, not at stage {stage}")


class Stage3:
    def __init__(self, optimizer, params: list[torch.nn.Parameter]) -> None:
        missing = [
            n
            for n in ("get_local_fp32_grad_for_param", "set_local_grad_for_param")
            if not hasattr(optimizer, n)
        ]
        if missing or not all(hasattr(p, "ds_tensor") for p in params):
            raise DeepSpeedInternalsChanged(f"ZeRO-3 optimizer lacks {missing or 'param.ds_tensor'}")
        self.params = params
        self.sizes = [p.ds_tensor.numel() for p in params]
        self.numel = sum(self.sizes)

    def take(self, out: torch.Tensor, boundary: bool, first: bool) -> None:
        from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

        for view, p in zip(out.split(self.sizes), self.params):
            grad = safe_get_local_grad(p)
            _into(view, grad.view(-1), first)
            safe_set_local_grad(p, torch.zeros_like(grad))

    def put(self, flat: torch.Tensor) -> None:
        from deepspeed.utils import safe_set_local_grad

        for view, p in zip(flat.split(self.sizes), self.params):
            safe_set_local_grad(p, view)


class Stage2:
    """DeepSpeed 0.19 ZeRO-2: after a non-boundary micro-batch, ``all_grad_tensors[g]`` holds the reduced
    gradients of the group's parameters in this partition (read through DeepSpeed's ``get_flat_partition``)
    and is rebuilt from scratch when set to None; after the boundary micro-batch, ``averaged_gradients[g]`` is
    the flat partition as a list of tensors, which ``step`` flattens. With fp32 accumulation of 16-bit
    gradients (bf16), one ``flat_partition`` buffer accumulates instead."""

    def __init__(self, optimizer, groups: list[int]) -> None:
        for name in ("all_grad_tensors", "averaged_gradients", "params_in_partition", "partition_size"):
            if not hasattr(optimizer, name):
                raise DeepSpeedInternalsChanged(f"ZeRO-2 optimizer has no attribute {name!r}")
        if not isinstance(optimizer.all_grad_tensors, dict) or not isinstance(
            optimizer.averaged_gradients, dict
        ):
            raise DeepSpeedInternalsChanged("ZeRO-2 all_grad_tensors/averaged_gradients are no longer dicts")
        self.opt, self.groups = optimizer, groups
        self.sizes = [int(optimizer.partition_size[g]) for g in groups]
        self.numel = sum(self.sizes)

    def _flat(self, g: int) -> torch.Tensor:
        from deepspeed.accelerator import get_accelerator

        opt = self.opt
        return opt.get_flat_partition(
            opt.params_in_partition[g],
            opt.first_offset[g],
            opt.partition_size[g],
            dtype=opt.gradient_accumulation_dtype,
            device=get_accelerator().current_device_name(),
            param_group_idx=g,
        )

    def take(self, out: torch.Tensor, boundary: bool, first: bool) -> None:
        opt = self.opt
        for view, g in zip(out.split(self.sizes), self.groups):
            compact = getattr(opt.averaged_gradients.get(g), "flat_partition", None)
            if compact is not None:
                _into(view, compact, first)
                compact.zero_()
            elif boundary:
                _into(view, torch.cat([t.reshape(-1) for t in opt.averaged_gradients[g]]), first)
            elif opt.all_grad_tensors.get(g) is not None:
                _into(view, self._flat(g), first)
                opt.all_grad_tensors[g] = None
            elif first:  # no parameter of the group in this partition received a gradient
                view.zero_()

    def put(self, flat: torch.Tensor) -> None:
        opt = self.opt
        for part, g in zip(flat.split(self.sizes), self.groups):
            held = opt.averaged_gradients[g]
            compact = getattr(held, "flat_partition", None)
            if compact is not None:
                compact.copy_(part)
                continue
            offset = 0
            for t in held:
                t.copy_(part[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            if offset != part.numel():
                raise DeepSpeedInternalsChanged(f"ZeRO-2 partition of group {g}: {offset} != {part.numel()}")


def _into(out: torch.Tensor, grad: torch.Tensor, first: bool) -> None:
    if first:
        out.copy_(grad)  # converts to fp32
    else:
        out.add_(grad.float())
