"""SophiaH (Liu et al. 2023, "Sophia: a scalable stochastic second-order optimizer"): pytorch-optimizer's
update, fed a Hutchinson estimate of the Hessian diagonal that the trainer computes and reduces across ranks.

Every ``optim.sophia_period`` optimiser steps (the first included) the step's micro-batches also give
Hessian-vector products: for the step's random vector u ~ N(0, I) (drawn from the run seed and the step, so
every rank and a resumed run draw the same), micro-batch b's weighted loss L_b (weighted as the one its
gradient comes from) gives H_b u = d(grad L_b . u)/dtheta. DeepSpeed averages gradients over ranks and
divides them by grad_accum; the products are summed over micro-batches and ranks (one all-reduce) and divided
the same way, so Hu is the product of the global batch's loss however the batch is split, and u * Hu
(elementwise) is the estimate, E[u * Hu] = diag(H).

L_b gets a forward of its own through the bare module (one more forward and a double backward, every
``sophia_period`` steps): the engine's forward hooks its outputs so that any backward through them is
DeepSpeed's (scaled by grad_accum, all-reduced). That forward runs attention through PyTorch's math kernel:
the fused CPU/GPU kernels have no second derivative.

Only at ZeRO 0 in fp32 (checked at config time): there the optimiser DeepSpeed steps is the one built here,
holding whole parameters, and no loss scale multiplies the products.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytorch_optimizer
import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel


class SophiaH(pytorch_optimizer.SophiaH):
    """pytorch-optimizer's SophiaH (pinned in setup.py), which takes its Hessian estimate from
    ``estimate`` (set by ``HutchinsonDiagonal.finish`` before the step). The library's own estimate
    (``loss.backward(create_graph=True)``, then one rank's products) is never used: a step that would
    need it and has none is an error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.estimate: list[torch.Tensor] | None = None

    def step(self, closure=None, hessian: list[torch.Tensor] | None = None):
        hessian = self.estimate if hessian is None else hessian
        self.estimate = None
        done = self.param_groups[0].get("step", 0)
        if hessian is None and done % self.update_period == 0:
            raise RuntimeError(
                f"SophiaH step {done + 1} updates its Hessian estimate but was given none "
                "(HutchinsonDiagonal.finish sets it before the step)"
            )
        return super().step(closure, hessian)


class HutchinsonDiagonal:
    """The Hessian-diagonal estimate of one optimiser step, accumulated over its micro-batches
    (``begin`` / ``add`` per micro-batch / ``finish``); see the module docstring."""

    def __init__(self, optimizer: SophiaH, seed: int, world: int, accum: int) -> None:
        self.optimizer = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]  # set_hessian's order
        self.seed, self.world, self.accum = seed, world, accum
        self.u: list[torch.Tensor] | None = None  # this step's random vector; None: not an estimating step
        self.products: list[torch.Tensor] = []

    def begin(self, step: int) -> None:
        """Starts optimiser step ``step`` (0-based): draws its u if it estimates."""
        if step % self.optimizer.update_period:
            self.u = None
            return
        gen = torch.Generator().manual_seed(zlib.crc32(f"sophia/{self.seed}/{step}".encode()))
        self.u = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in self.params]
        self.products = [torch.zeros_like(p) for p in self.params]

    def add(self, weighted_loss: Callable[[], torch.Tensor]) -> None:
        """Adds H_b u for a micro-batch, whose weighted loss ``weighted_loss()`` computes through the bare
        module (called only in an estimating step)."""
        if self.u is None:
            return
        with sdpa_kernel(SDPBackend.MATH):
            loss = weighted_loss()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not used:  # nothing of this loss is more than linear in the parameters
            return
        products = torch.autograd.grad(
            [grads[i] for i in used],
            [self.params[i] for i in used],
            grad_outputs=[self.u[i] for i in used],
            allow_unused=True,
        )
        for i, hu in zip(used, products):
            if hu is not None:
                self.products[i] += hu.detach()

    def finish(self) -> None:
        """Reduces the step's products over ranks and hands u * Hu to the optimiser's next step."""
        if self.u is None:
            return
        flat = torch.cat([h.reshape(-1) for h in self.products])
        if self.world > 1:
            dist.all_reduce(flat)
        flat /= self.world * self.accum
        hu = torch.split(flat, [p.numel() for p in self.params])
        self.optimizer.estimate = [u * h.view_as(u) for u, h in zip(self.u, hu)]
        self.u, self.products = None, []
