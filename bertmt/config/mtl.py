"""The ``mtl:`` section: the multitask method (``mtl.method``), each method's own options
(``mtl.<method>.*``: the keyword arguments of its class in bertmt/mtl/methods/ or bertmt/mtl/weightings/),
the reduction and SMART."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bertmt.config.errors import check

# loss weightings: weights on the task losses, no per-task gradients (the plain, cheapest path)
LOSS_WEIGHTINGS = ("uw", "dwa", "famo")


@dataclass
class SmartConfig:
    """SMART (Jiang et al. 2020): adversarial smoothness on the embedding output + Bregman proximal point."""

    weight: float = 0.0  # lambda_s on the adversarial term (0: off)
    steps: int = 1  # K projected ascent steps on the perturbation
    noise: float = 1e-5  # sigma of the initial Gaussian perturbation
    step_size: float = 1e-3  # eta of each ascent step (along g / ||g||_inf per token)
    epsilon: float = 1e-5  # the perturbation is projected onto ||delta||_inf <= epsilon
    bregman_weight: float = 0.0  # mu on the proximal term against the momentum teacher (0: off)
    teacher_beta: float = 0.99  # teacher <- beta * teacher + (1 - beta) * model after each optimiser step

    def __post_init__(self) -> None:
        for key in ("weight", "bregman_weight"):
            check(getattr(self, key) >= 0, f"mtl.smart.{key}", "a float >= 0", getattr(self, key))
        for key in ("noise", "step_size", "epsilon"):
            check(getattr(self, key) > 0, f"mtl.smart.{key}", "a positive float", getattr(self, key))
        check(self.steps >= 1, "mtl.smart.steps", "an integer >= 1", self.steps)
        check(0 <= self.teacher_beta < 1, "mtl.smart.teacher_beta", "a float in [0, 1)", self.teacher_beta)

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.bregman_weight > 0


def _nonneg(section: str, obj, *keys: str) -> None:
    for key in keys:
        check(getattr(obj, key) >= 0, f"mtl.{section}.{key}", "a float >= 0", getattr(obj, key))


@dataclass
class GradVacOptions:
    beta: float = 0.01  # EMA rate of the target cosine similarities

    def __post_init__(self) -> None:
        check(0 < self.beta <= 1, "mtl.gradvac.beta", "a float in (0, 1]", self.beta)


@dataclass
class CAGradOptions:
    c: float = 0.4  # radius of the ball around the mean gradient, in units of its norm
    norm_eps: float = 1e-4  # below this ||g_w|| (trace-normalised) the weights are 0

    def __post_init__(self) -> None:
        _nonneg("cagrad", self, "c", "norm_eps")


@dataclass
class AlignedMTLOptions:
    scale_mode: Literal["min", "median", "rmse"] = "min"  # eigenvalue that sets the aligned gradients' norm


@dataclass
class UPGradOptions:
    norm_eps: float = 1e-4  # a Gram matrix with a smaller trace counts as zero
    reg_eps: float = 1e-4  # ridge on the trace-normalised Gram matrix, as in the reference
    section: ClassVar[str] = "upgrad"

    def __post_init__(self) -> None:
        _nonneg(self.section, self, "norm_eps", "reg_eps")


@dataclass
class DualProjOptions(UPGradOptions):
    norm_eps: float = 1e-4  # a Gram matrix with a smaller trace counts as zero
    reg_eps: float = 1e-4  # ridge on the trace-normalised Gram matrix, as in the reference
    section: ClassVar[str] = "dualproj"


@dataclass
class FairGradOptions:
    alpha: float = 1.0  # alpha-fairness: 1 proportional (Nash), larger favours the worst task, 0 the sum

    def __post_init__(self) -> None:
        _nonneg("fairgrad", self, "alpha")


@dataclass
class NashMTLOptions:
    update_weights_every: int = 1  # optimiser steps between solves (the weights are reused in between)
    max_norm: float = 1.0  # cap on ||w @ G|| (0: none)

    def __post_init__(self) -> None:
        check(
            self.update_weights_every >= 1,
            "mtl.nash_mtl.update_weights_every",
            "an integer >= 1",
            self.update_weights_every,
        )
        _nonneg("nash_mtl", self, "max_norm")


@dataclass
class UWOptions:
    lr: float = 0.01  # Adam learning rate of the log-variances (their own optimiser)

    def __post_init__(self) -> None:
        check(self.lr > 0, "mtl.uw.lr", "a positive float", self.lr)


@dataclass
class DWAOptions:
    temperature: float = 2.0  # softmax temperature on the loss ratios
    window: int = 0  # optimiser steps whose mean losses are compared (0: an epoch, as in the paper)

    def __post_init__(self) -> None:
        check(self.temperature > 0, "mtl.dwa.temperature", "a positive float", self.temperature)
        check(self.window >= 0, "mtl.dwa.window", "an integer >= 0 (0: an epoch)", self.window)


@dataclass
class FAMOOptions:
    lr: float = 0.025  # Adam learning rate of the task logits
    weight_decay: float = 0.001  # L2 decay of the logits (gamma)

    def __post_init__(self) -> None:
        check(self.lr > 0, "mtl.famo.lr", "a positive float", self.lr)
        _nonneg("famo", self, "weight_decay")


@dataclass
class MtlConfig:
    method: Literal[
        "none",
        "pcgrad",
        "gradvac",
        "mgda",
        "cagrad",
        "imtlg",
        "aligned_mtl",
        "upgrad",
        "dualproj",
        "fairgrad",
        "nash_mtl",
        "uw",
        "dwa",
        "famo",
    ] = "none"  # gradient surgery on the shared encoder (a Gram method) or a loss weighting (uw, dwa, famo)
    surgery: bool = False  # per-task gradients even without a Gram method (weights = sum/mean)
    # sum: tasks weighted as plain training weights them (by their micro-batches in the step); mean: every
    # task present in the step once, with its mean micro-batch gradient (bertmt.mtl.gram.task_scales)
    reduction: Literal["sum", "mean"] = "sum"
    gradvac: GradVacOptions = field(default_factory=GradVacOptions)
    cagrad: CAGradOptions = field(default_factory=CAGradOptions)
    aligned_mtl: AlignedMTLOptions = field(default_factory=AlignedMTLOptions)
    upgrad: UPGradOptions = field(default_factory=UPGradOptions)
    dualproj: DualProjOptions = field(default_factory=DualProjOptions)
    fairgrad: FairGradOptions = field(default_factory=FairGradOptions)
    nash_mtl: NashMTLOptions = field(default_factory=NashMTLOptions)
    uw: UWOptions = field(default_factory=UWOptions)
    dwa: DWAOptions = field(default_factory=DWAOptions)
    famo: FAMOOptions = field(default_factory=FAMOOptions)
    smart: SmartConfig = field(default_factory=SmartConfig)

    @property
    def gram_method(self) -> str:
        """The gradient-surgery method (``none`` under a loss weighting)."""
        return "none" if self.method in LOSS_WEIGHTINGS else self.method

    @property
    def loss_weighting(self) -> str | None:
        return self.method if self.method in LOSS_WEIGHTINGS else None

    @property
    def per_task(self) -> bool:
        """Whether per-task gradients are taken (gradient surgery path)."""
        return self.surgery or self.gram_method != "none"
