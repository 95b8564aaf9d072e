"""Gradient surgery inside the DeepSpeed engine (DESIGN.md, "Data flow of one optimiser step").

Per micro-batch: forward through ``engine.module`` (engine.forward's hooks break autograd.grad), then one
``torch.autograd.grad`` of the (loss-scaled) task loss into the task's row of the shared-parameter buffer
and into that task's head gradients. At the accumulation boundary: reduce + Gram + method weights, then one
cheap ``engine.backward`` of a surrogate whose gradient is ``w @ G_local`` (heads: their own gradient), so
DeepSpeed's loss scaling, averaging across ranks, ZeRO partitioning and clipping all still apply; then
``engine.step()``.
"""

from __future__ import annotations

import copy
import logging

import torch

from bertmt.config import MtlConfig
from bertmt.mtl.gram import make_method, task_scales
from bertmt.mtl.reduce import Combined, TaskGradients

log = logging.getLogger(__name__)


class SurgeryStep:
    def __init__(self, engine, tasks: list[str], cfg: MtlConfig, seed: int, fp16: bool, accum: int) -> None:
        model = engine.module
        self.engine, self.tasks, self.fp16 = engine, tasks, fp16
        self.shared = [p for p in model.shared_parameters() if p.requires_grad]
        self.own = {t: [p for p in model.task_parameters(t) if p.requires_grad] for t in tasks}
        self.buffer = TaskGradients(self.shared, len(tasks), cfg.reduce)
        self.own_grads: dict[str, list[torch.Tensor]] = {}
        self.micro_batches = [0] * len(tasks)  # per task, in the current optimiser step
        self.reduction, self.accum = cfg.reduction, accum
        options = {"seed": seed} | ({"beta": cfg.beta} if cfg.method == "gradvac" else {})
        self.method = make_method(cfg.method, len(tasks), **options)
        self.last: Combined | None = None

    def loss_scale(self) -> float:
        return float(getattr(self.engine.optimizer, "cur_scale", 1.0)) if self.fp16 else 1.0

    def micro_step(self, task: str, loss: torch.Tensor) -> None:
        """Accumulate one micro-batch's gradient of ``loss`` (already divided by the accumulation steps)."""
        scale = self.loss_scale()
        params = self.shared + self.own[task]
        grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
        self.buffer.add(self.tasks.index(task), grads[: len(self.shared)], scale)
        self.micro_batches[self.tasks.index(task)] += 1
        own = [
            torch.zeros_like(p, dtype=torch.float32) if g is None else g.float() / scale
            for p, g in zip(self.own[task], grads[len(self.shared) :])
        ]
        if task in self.own_grads:
            for acc, g in zip(self.own_grads[task], own):
                acc.add_(g)
        else:
            self.own_grads[task] = own

    def optimizer_step(self) -> Combined:
        """Combine the task gradients, hand them to the engine, step; returns weights and Gram matrix.
        A step that DeepSpeed skips (fp16 overflow) leaves the method's state (GradVac's targets, the task
        orders' generator) as it was, like the parameters."""
        before = copy.deepcopy(self.method.state_dict())
        scales = task_scales(self.micro_batches, self.accum, self.reduction)
        combined = self.buffer.combine(self.method, scales)
        if combined.finite:
            flat = self.buffer.combined_local(combined.weights)
        elif self.fp16:  # DeepSpeed sees the overflow on every rank, skips the step and lowers the scale
            flat = torch.full_like(self.buffer.buffer[0], float("inf"))
        else:
            raise FloatingPointError("non-finite task gradient in fp32/bf16 training: the run diverged")
        # c and g stay fp32: the products promote to fp32, so the loss scale that engine.backward applies
        # meets fp32 numbers and each gradient is cast to the parameter's dtype only once it is scaled
        surrogate = sum((p * c).sum() for p, c in zip(self.shared, self.buffer.row_views(flat)))
        for task, grads in self.own_grads.items():
            surrogate = surrogate + sum((p * g).sum() for p, g in zip(self.own[task], grads))
        self.engine.backward(surrogate)
        self.engine.step()
        if not self.engine.was_step_applied():
            self.method.load_state_dict(before)
        self.buffer.zero()
        self.own_grads = {}
        self.micro_batches = [0] * len(self.tasks)
        self.last = combined
        return combined

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars of the last step: task-pair cosines, conflicts, weights, gradient norms."""
        if self.last is None:
            return {}
        gram, w = self.last.gram, self.last.weights
        norms = gram.diagonal().clamp(min=0).sqrt()
        out = {f"mtl/grad_norm/{t}": float(norms[i]) for i, t in enumerate(self.tasks)}
        out |= {f"mtl/weight/{t}": float(w[i]) for i, t in enumerate(self.tasks)}
        conflicts = 0
        for i in range(len(self.tasks)):
            for j in range(i + 1, len(self.tasks)):
                if norms[i] > 0 and norms[j] > 0:
                    cos = float(gram[i, j] / (norms[i] * norms[j]))
                    out[f"mtl/cos/{self.tasks[i]}-{self.tasks[j]}"] = cos
                    conflicts += cos < 0
        out["mtl/conflicts"] = conflicts
        return out

    def state_dict(self) -> dict:
        return self.method.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state)
