"""The optimiser (AdamW, Lion, AdaFactor or SophiaH over the same parameter groups) and the learning-rate
schedule (linear warm-up, then linear / cosine / constant, or constant reduced on a dev-score plateau)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bertmt.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, lr: float, layer_decay: float = 1.0) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (any 1-D parameter). The shared parameters
    (``model.shared_parameters()``, the encoder) are in groups of their own, marked ``shared``, so that ZeRO
    partitions them apart from the heads and PALs (gradient surgery captures their partition alone); plain
    training uses the same groups, so that both issue the same collectives. Each group's ``lr`` is ``lr``
    times its parameters' ``layer_scales`` (layer-wise decay; all 1 unless ``layer_decay < 1``). Empty groups
    are left out."""
    shared = {id(p) for p in model.shared_parameters()}
    scales = layer_scales(model, layer_decay)
    groups: dict[tuple[bool, bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in shared, p.ndim >= 2, scales.get(name, 1.0)), []).append(p)
    # shared first, then decayed, then from the top layer down (without layer decay: the four groups)
    order = sorted(groups, key=lambda k: (not k[0], not k[1], -k[2]))
    return [
        {"params": groups[k], "weight_decay": weight_decay if k[1] else 0.0, "shared": k[0], "lr": lr * k[2]}
        for k in order
    ]


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay (ELECTRA, BEiT; Sun et al. 2019, "How to fine-tune BERT"): the
    multiplier of each pretrained encoder parameter's learning rate, by name. With ``L`` layers, layer ``i``
    (0-based; an expert's copy of it too) gets ``decay ** (L - i)``, the embeddings ``decay ** (L + 1)``;
    everything else (pooler, heads, PALs, gates, tag embeddings: the parameters without a pretrained
    depth) keeps the full rate and is absent here. Empty when ``decay == 1``."""
    if decay == 1.0:
        return {}
    depth = len(model.encoder.encoder.layer)
    first = model.experts.first if getattr(model, "experts", None) is not None else depth
    scales = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if name.startswith("encoder.embeddings."):
            scales[name] = decay ** (depth + 1)
        elif name.startswith("encoder.encoder.layer."):
            scales[name] = decay ** (depth - int(parts[3]))
        elif name.startswith("experts.copies."):  # experts.copies.<expert>.<j>: a copy of layer first + j
            scales[name] = decay ** (depth - first - int(parts[3]))
    return scales


def shared_group_indices(optimizer) -> list[int]:
    """Indices of the parameter groups marked ``shared`` (the same in DeepSpeed's ZeRO optimiser)."""
    groups = getattr(optimizer, "optimizer", optimizer).param_groups
    return [i for i, g in enumerate(groups) if g.get("shared")]


DECAYS = {  # optim.schedule -> the factor after warm-up, at progress 0..1 through the remaining steps
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
    "plateau": lambda progress: 1.0,  # times Plateau.scale
}


class Plateau:
    """The plateau schedule's multiplier: torch's ReduceLROnPlateau (mode max, threshold 0, no cooldown)
    replayed over the dev overall scores of the epochs so far. A pure function of the run's history, so a
    resumed run (whose history is in its checkpoint) needs no state of its own, and every rank, holding the
    same dev scores, agrees."""

    def __init__(self, factor: float, patience: int) -> None:
        self.factor, self.patience = factor, patience
        self.scale = 1.0

    def replay(self, scores: list[float]) -> float:
        """Set and return ``scale`` after the epochs whose dev overall scores are ``scores``."""
        best, bad, scale = -math.inf, 0, 1.0
        for score in scores:
            if score > best:
                best, bad = score, 0
            else:
                bad += 1
            if bad > self.patience:
                scale, bad = scale * self.factor, 0
        self.scale = scale
        return scale


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total``."""
    if schedule not in DECAYS:
        raise ValueError(f"unknown optim.schedule {schedule!r}: expected one of {sorted(DECAYS)}")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return DECAYS[schedule](min(1.0, (step - warmup) / max(1, total - warmup)))


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """optim.name over ``groups``: torch's AdamW, or pytorch-optimizer's (pinned in setup.py)."""
    betas = tuple(cfg.betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
    import pytorch_optimizer

    if cfg.name == "lion":
        return pytorch_optimizer.Lion(groups, lr=cfg.lr, betas=betas, weight_decouple=True)
    if cfg.name == "adafactor":  # the configured lr, not AdaFactor's relative step; fp32 moments
        return pytorch_optimizer.AdaFactor(
            groups,
            lr=cfg.lr,
            betas=betas,
            relative_step=False,
            scale_parameter=False,
            weight_decouple=True,
            momentum_dtype=torch.float32,
        )
    if cfg.name == "sophia":  # fed the trainer's Hessian estimate, reduced across ranks
        from bertmt.engine.hessian import SophiaH

        return SophiaH(
            groups, lr=cfg.lr, betas=betas, p=cfg.sophia_clip, update_period=cfg.sophia_period, eps=1e-12
        )
    raise ValueError(f"unknown optim.name {cfg.name!r}")


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, Plateau]:
    """The optimiser, its per-step schedule and the plateau multiplier that schedule reads (1 unless
    ``optim.schedule=plateau``, where the trainer replays it after every epoch's evaluation)."""
    opt = make_optimizer(param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay), cfg)
    warmup = int(cfg.warmup_ratio * total_steps)
    plateau = Plateau(cfg.plateau_factor, cfg.plateau_patience)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule) * plateau.scale
    )
    return opt, sched, plateau


def refresh_lr(sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Rewrite the current learning rates from the schedule (after its multiplier changed between steps), so
    that the very next step uses them."""
    for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * factor(sched.last_epoch)
