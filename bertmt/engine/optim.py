"""AdamW parameter groups and the learning-rate schedule (linear warm-up, then linear/cosine/constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bertmt.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (any 1-D parameter). The shared parameters
    (``model.shared_parameters()``, the encoder) are in groups of their own, marked ``shared``, so that ZeRO
    partitions them apart from the heads and PALs (gradient surgery captures their partition alone); plain
    training uses the same groups, so that both issue the same collectives. Empty groups are left out."""
    shared = {id(p) for p in model.shared_parameters()}
    groups: dict[tuple[bool, bool], list] = {(s, d): [] for s in (True, False) for d in (True, False)}
    for p in model.parameters():
        if p.requires_grad:
            groups[(id(p) in shared, p.ndim >= 2)].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "shared": is_shared}
        for (is_shared, decay), params in groups.items()
        if params
    ]


def shared_group_indices(optimizer) -> list[int]:
    """Indices of the parameter groups marked ``shared`` (the same in DeepSpeed's ZeRO optimiser)."""
    groups = getattr(optimizer, "optimizer", optimizer).param_groups
    return [i for i, g in enumerate(groups) if g.get("shared")]


DECAYS = {  # optim.schedule -> the factor after warm-up, at progress 0..1 through the remaining steps
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total``."""
    if schedule not in DECAYS:
        raise ValueError(f"unknown optim.schedule {schedule!r}: expected one of {sorted(DECAYS)}")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return DECAYS[schedule](min(1.0, (step - warmup) / max(1, total - warmup)))


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )
    warmup = int(cfg.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule))
    return opt, sched
