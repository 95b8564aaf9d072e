"""SMART regularisation (Jiang et al. 2020, "SMART: Robust and Efficient Fine-Tuning ...").

Smoothness-inducing adversarial term: perturb the embedding output by ``delta`` (Gaussian, std ``noise``),
take ``steps`` projected ascent steps ``delta <- P(delta + step_size * g / ||g||_inf)`` on the divergence
between the perturbed and the clean outputs (``P``: clip to ``||delta||_inf <= epsilon``), and add
``weight * D(f(x + delta), f(x))``: symmetric KL for classification, MSE for regression. Zero for a model
whose output does not depend on its input.

Bregman proximal point: ``bregman_weight * D(f(x; theta), f(x; teacher))`` where the teacher is a momentum
copy of the model, ``teacher <- beta * teacher + (1 - beta) * theta`` after each optimiser step. Under ZeRO-3
(``partitioned``) no rank holds the model's whole parameters: the teacher is a whole copy built by ``build``
(same architecture) and its average gathers the parameters once per step (``GatheredParameters``).

Works on any task and with gradient surgery (the terms are part of the task's loss). Each rank perturbs its
own micro-batch; the regularised loss's gradient is reduced across ranks like any other.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bertmt.data.tasks import TaskSpec


class SmartSettings(Protocol):
    """What SMART reads of its settings (the config's ``mtl.smart`` section has these fields)."""

    weight: float  # lambda_s on the adversarial term
    steps: int  # projected ascent steps on the perturbation
    noise: float  # sigma of the initial perturbation
    step_size: float  # eta of each ascent step
    epsilon: float  # radius of the perturbation (max norm)
    bregman_weight: float  # mu on the proximal term
    teacher_beta: float  # momentum of the teacher


def divergence(spec: TaskSpec, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric KL between the softmax distributions of two logit tensors (classification), or MSE."""
    a, b = a.float(), b.float()
    if spec.kind == "regression":
        return F.mse_loss(a, b)
    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    kl_ab = F.kl_div(lb, la, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = F.kl_div(la, lb, log_target=True, reduction="batchmean")
    return kl_ab + kl_ba


class EmbeddingNoise:
    """Adds a perturbation to every output of ``module`` (the embedding layer) while active. The k-th call
    of a forward gets ``deltas[k]`` (a siamese forward embeds twice), created on first use."""

    def __init__(self, module: nn.Module, std: float) -> None:
        self.module, self.std = module, std
        self.deltas: list[torch.Tensor] = []
        self._calls = 0
        self._handle = None

    def _hook(self, module, inputs, output):
        if self._calls == len(self.deltas):
            self.deltas.append((torch.randn_like(output) * self.std).requires_grad_())
        delta = self.deltas[self._calls]
        self._calls += 1
        return output + delta.to(output.dtype)

    def __call__(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._calls = 0
        self._handle = self.module.register_forward_hook(self._hook)
        try:
            return forward()
        finally:
            self._handle.remove()

    def ascend(self, grads: list[torch.Tensor], step_size: float, epsilon: float) -> None:
        """One projected ascent step per delta, along the gradient normalised by its max-norm per token."""
        for i, (delta, g) in enumerate(zip(self.deltas, grads)):
            g = torch.zeros_like(delta) if g is None else g
            direction = g / g.abs().amax(-1, keepdim=True).clamp(min=1e-12)
            stepped = (delta + step_size * direction).clamp(-epsilon, epsilon)
            self.deltas[i] = stepped.detach().requires_grad_()


class Smart:
    def __init__(
        self, model: nn.Module, cfg: SmartSettings, build: Callable[[], nn.Module] | None = None
    ) -> None:
        """``build``: a fresh model of the same architecture, for a ZeRO-3 partitioned ``model``."""
        self.model, self.cfg = model, cfg
        self.teacher = None
        self.partitioned = build is not None
        if cfg.bregman_weight > 0:
            with self._whole_parameters():
                self.teacher = copy.deepcopy(model) if build is None else build().to(_device(model))
                if build is not None:
                    for t, p in zip(self.teacher.parameters(), model.parameters()):
                        t.data = p.detach().clone().to(t.dtype)
            self.teacher.eval().requires_grad_(False)
            # the EMA runs in fp32 (in bf16/fp16 the (1 - beta) increments would mostly round away); for an
            # fp32 model the average is the teacher's own parameters
            self.average = [
                t.detach() if t.dtype == torch.float32 else t.detach().float().clone()
                for t in self.teacher.parameters()
            ]

    def _whole_parameters(self):
        """Context in which every rank holds the model's whole parameters (a no-op unless ZeRO-3)."""
        if not self.partitioned:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()))

    def adversarial(
        self, spec: TaskSpec, forward: Callable[[], torch.Tensor], clean: torch.Tensor
    ) -> torch.Tensor:
        """``D(f(x + delta*), f(x))`` with ``delta*`` from the projected ascent; ``forward`` runs the model
        on the micro-batch, ``clean`` is its unperturbed output (gradients flow through both)."""
        cfg = self.cfg
        noise = EmbeddingNoise(self.model.encoder.embeddings, cfg.noise)
        for _ in range(cfg.steps):
            loss = divergence(spec, noise(forward), clean.detach())
            grads = torch.autograd.grad(loss, noise.deltas, allow_unused=True)
            noise.ascend(list(grads), cfg.step_size, cfg.epsilon)
        return divergence(spec, noise(forward), clean)

    def proximal(self, spec: TaskSpec, inputs: dict, task: str, clean: torch.Tensor) -> torch.Tensor:
        """``D(f(x; theta), f(x; teacher))``, the teacher's output taken without gradient."""
        with torch.no_grad():
            target = self.teacher(task, **inputs)
        return divergence(spec, clean, target)

    def loss(self, spec: TaskSpec, forward: Callable[[], torch.Tensor], inputs: dict, task: str, clean):
        """The regularisation added to the task loss, and its parts for logging."""
        parts = {}
        total = clean.new_zeros((), dtype=torch.float32)
        if self.cfg.weight > 0:
            parts["smart_adv"] = self.adversarial(spec, forward, clean)
            total = total + self.cfg.weight * parts["smart_adv"]
        if self.teacher is not None:
            parts["smart_prox"] = self.proximal(spec, inputs, task, clean)
            total = total + self.cfg.bregman_weight * parts["smart_prox"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def update_teacher(self) -> None:
        if self.teacher is None:
            return
        beta = self.cfg.teacher_beta
        with self._whole_parameters():
            for avg, t, p in zip(self.average, self.teacher.parameters(), self.model.parameters()):
                avg.mul_(beta).add_(p.detach().float(), alpha=1 - beta)
                t.copy_(avg)

    def state_dict(self) -> dict:
        return {} if self.teacher is None else {"teacher_fp32": [a.clone() for a in self.average]}

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is None:
            return
        if "teacher" in state:  # checkpoints written before the fp32 average
            self.teacher.load_state_dict(state["teacher"])
        saved = state.get("teacher_fp32", list(self.teacher.parameters()))
        with torch.no_grad():
            for avg, t, a in zip(self.average, self.teacher.parameters(), saved):
                avg.copy_(a)
                t.copy_(avg)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
