"""The interface of a gradient-surgery method and the registry of methods (DESIGN.md, "Gradient surgery").

A method sees only the T x T Gram matrix ``M = G G^T`` of the task gradients (rows of G) and returns
weights w (T,) float64: the shared parameters' gradient becomes ``w @ G``. That is all it can see when the
gradients are sharded across ranks, so every method runs unchanged under ZeRO. Its state (random-order
generator, EMA targets, warm starts) is explicit in ``state_dict()`` and identical on every rank.

Scale: where a method is linear in the size of the gradients, bertmt returns it on the *sum* scale, so that
T equal task gradients g combine to ``T g`` as in plain training of the summed loss (``mtl.reduction=mean``
then turns every method into its mean). Methods whose papers return a convex combination (MGDA, CAGrad,
IMTL-G, Aligned-MTL, UPGrad, DualProj) are therefore multiplied by the number of tasks in the step; Nash-MTL
and FairGrad set the size of the step themselves (their rows say how). README.md has the table.

Adding a method: one file in bertmt/mtl/methods/ with a ``@register("name")`` class (its options are its
constructor's keyword arguments), the same options as a dataclass in bertmt/config/mtl.py, and a test.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math

import numpy as np
import torch

METHODS: dict[str, type[Method]] = {}
log = logging.getLogger(__name__)


def register(name: str):
    """Class decorator: make a Method available as ``mtl.method=name``."""

    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"gradient-surgery method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


class Method:
    """Base: weights from the Gram matrix of the tasks present in the step (a task without a micro-batch in
    the step has a zero row and gets weight 0: a zero gradient would otherwise be the min-norm point)."""

    name = "?"

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.seed = seed
        self.residual: float | None = None  # optimality residual of the last solve (solver methods)

    def _check(self, gram: torch.Tensor) -> torch.Tensor:
        gram = gram.detach().to(torch.float64).cpu()
        if gram.shape != (self.num_tasks, self.num_tasks):
            raise ValueError(
                f"Gram matrix must be {self.num_tasks} x {self.num_tasks}, got {tuple(gram.shape)}"
            )
        return gram

    def weights(self, gram: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """w (T,) float64 for the rows whose Gram matrix is ``gram``; ``present`` (T,) bool: the tasks with
        micro-batches in this step (default all); the others get weight 0 and leave the state alone."""
        gram = self._check(gram)
        idx = np.arange(self.num_tasks) if present is None else np.flatnonzero(present.cpu().numpy())
        w = np.zeros(self.num_tasks)
        if len(idx):
            w[idx] = self.solve(gram.numpy()[np.ix_(idx, idx)], idx)
        return torch.from_numpy(w)

    def solve(self, gram: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """Weights for the sub-problem of ``tasks`` (indices into the T tasks) with Gram matrix ``gram``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def from_config(cfg, num_tasks: int, seed: int) -> Method:
        """The method of an ``MtlConfig``: its name and its own option section (``mtl.<name>.*``)."""
        section = getattr(cfg, cfg.gram_method, None)
        options = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else {}
        return make_method(cfg.gram_method, num_tasks, seed=seed, **options)


def warn_unsolved(method: Method, tolerance: float = 1e-6) -> None:
    """Log (once per method object) a solve whose optimality residual exceeds ``tolerance``; an infinite one
    is a Pareto-stationary point (no solution: zero weights), said once too."""
    r = method.residual
    if r is None or r <= tolerance or getattr(method, "_warned", False):
        return
    method._warned = True
    what = "no solution at a Pareto-stationary point: zero weights" if math.isinf(r) else f"residual {r:.2e}"
    log.warning("%s: %s (logged as mtl/solver_residual; said once)", method.name, what)


def options_of(cls: type[Method]) -> dict[str, object]:
    """A method's options and their defaults (its keyword arguments besides num_tasks and seed)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "num_tasks", "seed")}


def make_method(name: str, num_tasks: int, **options) -> Method:
    """``make_method("cagrad", 3, c=0.4)``; every method also takes ``seed``."""
    import bertmt.mtl.methods  # noqa: F401  (registers every method)

    if name not in METHODS:
        raise ValueError(f"unknown gradient-surgery method '{name}': expected one of {sorted(METHODS)}")
    cls = METHODS[name]
    unknown = set(options) - set(options_of(cls)) - {"seed"}
    if unknown:
        takes = sorted(options_of(cls)) or "none"
        raise ValueError(f"method {name!r} has no option(s) {sorted(unknown)}: it takes {takes}")
    return cls(num_tasks, **options)
