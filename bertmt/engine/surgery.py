"""Gradient surgery steps (interface in engine/steps.py; data flow in DESIGN.md). Each rank ends the step
holding its shard of every task's rank-averaged gradient of the shared parameters; the partial Gram matrices
of the shards, summed by one T x T all-reduce, give the method's weights w; ``w @ shard`` becomes the shared
parameters' gradient without a second reduction.

- ``CapturedSurgery`` (ZeRO 2, 3): DeepSpeed reduce-scatters every micro-batch as in plain training; after
  each micro-batch of task k the shared parameters' reduced partition moves into row k of a (T, D/N) shard
  (engine/zero_partitions.py); at the boundary ``w @ shard`` is written back as that partition. Collectives:
  those of plain training plus the T x T all-reduce. Memory: T * D/N fp32.
- ``AutogradSurgery`` (ZeRO 0, 1; DeepSpeed's gradient_accumulation_steps is 1): one ``torch.autograd.grad``
  per micro-batch (through the bare module: engine.forward's hooks break autograd.grad) into task k's local
  row; after task k's last micro-batch of the step the row is reduce-scattered asynchronously into the shard
  (mtl/reduce.py) and reused. At the boundary the combined shard ``w @ shard`` is all-gathered once into the
  whole combined gradient, the heads' and PALs' gradients (summed over the step) are averaged by one
  all-reduce of their size, and one ``engine.backward`` of a surrogate hands both to DeepSpeed with its
  reduction off (``backward_reduced``, engine/zero_partitions.py): its loss scaling, clipping and overflow
  check apply as usual. Collectives: T reduce-scatters of D, one all-gather of D, the heads' all-reduce and
  the T x T all-reduce, instead of plain training's all-reduce of D + heads. Memory: T * D/N fp32 plus the
  local rows of tasks whose micro-batches are not finished (one row when each task's micro-batches are
  consecutive), plus the heads' gradients.

A step that DeepSpeed skips (fp16 overflow) leaves the method's state (GradVac's targets, the task orders'
generator, Nash-MTL's warm start) as it was, like the parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from bertmt.config import MtlConfig
from bertmt.engine.preemption import Diverged
from bertmt.engine.steps import PlainStep, Step
from bertmt.engine.zero_partitions import backward_reduced, partition_grads
from bertmt.mtl.gram import combine, gram_matrix, gram_stats, task_scales
from bertmt.mtl.method import Method
from bertmt.mtl.reduce import RowReducer, all_gather_row, all_reduce_gram, all_reduce_mean, world_size


@dataclass
class Combined:
    weights: torch.Tensor  # (T,) float64, on the rows as accumulated (sum of micro-batch gradients / accum)
    gram: torch.Tensor  # (T, T) float64 Gram matrix of those rows, rank-averaged
    finite: bool  # False if any rank's gradient held inf/nan (fp16 overflow): the step is skipped


class _Surgery(Step):
    """What both surgery paths share: the method on the Gram matrix, the reduction, telemetry and state."""

    def __init__(self, engine, tasks: list[str], cfg: MtlConfig, seed: int, fp16: bool, accum: int) -> None:
        super().__init__(engine)
        self.tasks, self.fp16, self.accum, self.reduction = tasks, fp16, accum, cfg.reduction
        self.method = Method.from_config(cfg, len(tasks), seed)
        self.last: Combined | None = None
        self.peak_bytes = 0  # largest size of the surgery buffers so far (tests/bench)

    def loss_scale(self) -> float:
        return float(getattr(self.engine.optimizer, "cur_scale", 1.0)) if self.fp16 else 1.0

    def _combine(self, gram: torch.Tensor) -> Combined:
        """The method's weights from the rank-averaged, unscaled Gram matrix. An inf or nan anywhere, on any
        rank, reaches its diagonal (a sum of squares), so finiteness costs no extra pass or collective."""
        if not torch.isfinite(gram.diagonal()).all():
            if not self.fp16:
                raise Diverged("non-finite task gradient in fp32/bf16 training: the run diverged")
            return Combined(torch.zeros(len(self.tasks), dtype=torch.float64), gram, False)
        micro_batches = [self.counts.get(t, 0) for t in self.tasks]
        scales = task_scales(micro_batches, self.accum, self.reduction)
        weights, _ = combine(self.method, gram, scales, torch.tensor(micro_batches) > 0)
        return Combined(weights, gram, True)

    def _apply(self, gram: torch.Tensor, write) -> bool:
        """Weights from ``gram``; ``write(combined)`` hands the combined gradient to the engine; then step,
        putting the method's state back as it was before the weights if DeepSpeed skips the step."""
        before = copy.deepcopy(self.method.state_dict())
        combined = self._combine(gram)
        write(combined)
        self.engine.step()
        applied = self.engine.was_step_applied()
        if not applied:
            self.method.load_state_dict(before)
        self.last = combined
        return applied

    def _zero_absent(self, shard: torch.Tensor) -> torch.Tensor:
        """Zero the rows of tasks without a micro-batch in this step (the others were overwritten)."""
        for k, task in enumerate(self.tasks):
            if task not in self.counts:
                shard[k].zero_()
        return shard

    def scalars(self) -> dict[str, float]:
        if self.last is None:
            return {}
        return gram_stats(self.last.gram, self.last.weights, self.tasks, self.method.residual)

    def state_dict(self) -> dict:
        return self.method.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state)


class CapturedSurgery(_Surgery):
    """ZeRO 2 and 3. ``shared_groups``: the optimiser parameter groups that hold the shared parameters."""

    def __init__(self, engine, tasks, cfg, seed, fp16, accum, shared_groups: list[int]) -> None:
        super().__init__(engine, tasks, cfg, seed, fp16, accum)
        shared = [p for p in engine.module.shared_parameters() if p.requires_grad]
        self.partition = partition_grads(engine, shared_groups, shared)
        device = shared[0].device
        self.shard = torch.zeros(len(tasks), self.partition.numel, dtype=torch.float32, device=device)
        self.peak_bytes = self.shard.numel() * self.shard.element_size()

    def backward(self, task: str, loss: torch.Tensor) -> None:
        first = self.left.get(task) == self.counts.get(task)
        _, last = self._count(task)
        self.engine.backward(loss)
        k = self.tasks.index(task)
        # loss-scaled in fp16, as DeepSpeed holds it; the task's first micro-batch overwrites its row
        self.partition.take(self.shard[k], boundary=last, first=first)
        if not last:
            self.engine.step()  # not a boundary: DeepSpeed only counts the micro-batch

    def step(self) -> bool:
        scale = self.loss_scale()
        self._zero_absent(self.shard)
        gram = all_reduce_gram(gram_matrix(self.shard)) / scale**2

        def write(c: Combined) -> None:
            if c.finite:
                self.partition.put(c.weights.to(self.shard) @ self.shard)
            else:  # DeepSpeed sees the overflow on every rank, skips the step and lowers the scale
                self.partition.put(torch.full_like(self.shard[0], float("inf")))

        return self._apply(gram, write)


class AutogradSurgery(_Surgery):
    """ZeRO 0 and 1."""

    def __init__(self, engine, tasks, cfg, seed, fp16, accum) -> None:
        super().__init__(engine, tasks, cfg, seed, fp16, accum)
        model = engine.module
        self.module = model
        self.shared = [p for p in model.shared_parameters() if p.requires_grad]
        self.own = {t: [p for p in model.task_parameters(t) if p.requires_grad] for t in tasks}
        self.world, self.rank = world_size(), engine.global_rank
        self.numel = sum(p.numel() for p in self.shared)
        self.width = -(-self.numel // self.world) * self.world  # padded: every rank's shard has the same size
        device = self.shared[0].device
        self.reducer = RowReducer(len(tasks), self.width, device)
        self.rows: dict[int, torch.Tensor] = {}  # local rows of tasks still accumulating in this step
        self.free: list[torch.Tensor] = []  # rows whose reduction is done, to reuse
        self.allocated = 0  # local rows in existence
        # heads and PALs (a head shared by two tasks once): their gradients, summed over the step's
        # micro-batches, reduced at the boundary with one all-reduce of their size (not D)
        unique = {id(p): p for t in tasks for p in self.own[t]}
        self.own_params = list(unique.values())
        own_numel = sum(p.numel() for p in self.own_params)
        self.own_flat = torch.zeros(own_numel, dtype=torch.float32, device=device)
        self.peak_bytes = own_numel * 4
        own_views = dict(zip(unique, _views(self.own_flat, self.own_params)))
        self.own_views = {t: [own_views[id(p)] for p in self.own[t]] for t in tasks}

    def _take_row(self) -> torch.Tensor:
        """A free row: one whose reduction finished, else the oldest in flight once it finishes (the wait
        comes after this micro-batch's backward, which overlapped it), else a new one."""
        row = self.free.pop() if self.free else self.reducer.wait_one()
        if row is None:
            row = torch.empty(self.width, dtype=torch.float32, device=self.shared[0].device)
            self.allocated += 1
            shard = self.reducer.shard
            held = shard.numel() * shard.element_size() + self.allocated * row.numel() * 4
            self.peak_bytes = max(self.peak_bytes, held + self.own_flat.numel() * 4)
        return row

    def backward(self, task: str, loss: torch.Tensor) -> None:
        done, _ = self._count(task)
        k, scale = self.tasks.index(task), self.loss_scale()
        grads = torch.autograd.grad(
            loss * (scale / self.accum), self.shared + self.own[task], allow_unused=True
        )
        first = k not in self.rows
        if first:
            self.rows[k] = self._take_row()
        row = self.rows[k]
        if first:
            row[self.numel :].zero_()  # the padding
        for view, g in zip(_views(row, self.shared), grads[: len(self.shared)]):
            if g is None:  # unused parameter (e.g. the pooler under mean pooling)
                if first:
                    view.zero_()
            elif first:  # a reused row is overwritten, not zeroed and added to
                view.copy_(g).div_(scale)
            else:
                view.add_(g.float(), alpha=1.0 / scale)
        for view, g in zip(self.own_views[task], grads[len(self.shared) :]):
            if g is not None:
                view.add_(g.float(), alpha=1.0 / scale)
        if done:
            self.reducer.reduce(k, self.rows.pop(k))

    def step(self) -> bool:
        self.free += self.reducer.wait_all()
        shard = self._zero_absent(self.reducer.shard)
        gram = all_reduce_gram(gram_matrix(shard))
        all_reduce_mean(self.own_flat)

        def write(c: Combined) -> None:
            full = self._take_row()  # D-sized: the combined gradient of the shared parameters
            mine = full.view(self.world, -1)[self.rank]
            if c.finite:
                torch.matmul(c.weights.to(shard), shard, out=mine)
            else:  # DeepSpeed sees the overflow on every rank, skips the step and lowers the scale
                mine.fill_(float("inf"))
            all_gather_row(full)
            grads = _views(full, self.shared) + _views(self.own_flat, self.own_params)
            surrogate = _Surrogate.apply(grads, *self.shared, *self.own_params)
            backward_reduced(self.engine, surrogate)
            self.free.append(full)

        applied = self._apply(gram, write)
        self.own_flat.zero_()
        return applied


class _Surrogate(torch.autograd.Function):
    """A scalar whose gradient with respect to ``params`` is ``grads`` times the gradient that reaches it
    (DeepSpeed's loss scale): hands prepared gradients to ``engine.backward`` with no pass over D in the
    forward. The products stay fp32, so the loss scale meets fp32 numbers, and autograd casts each gradient
    to its parameter's dtype once scaled (fp16: no overflow of unscaled small values)."""

    @staticmethod
    def forward(ctx, grads: list[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return torch.zeros((), dtype=torch.float32, device=params[0].device)

    @staticmethod
    def backward(ctx, scale: torch.Tensor):
        return (None, *(g * scale for g in ctx.grads))


def _views(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat buffer as tensors shaped like ``params``, in order (any padding at the end left out)."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def make_step(engine, tasks: list[str], cfg, shared_groups: list[int]) -> Step:
    """The step of an ExperimentConfig: plain, or the surgery path of its ZeRO stage."""
    if not cfg.mtl.per_task:
        return PlainStep(engine)
    args = (engine, tasks, cfg.mtl, cfg.run.seed, cfg.train.precision == "fp16", cfg.train.grad_accum)
    if cfg.train.zero_stage >= 2:
        return CapturedSurgery(*args, shared_groups=shared_groups)
    return AutogradSurgery(*args)
