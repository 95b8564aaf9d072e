"""Loss weightings: weights on the task losses computed from the losses alone, so they need no per-task
gradients and run on the plain, cheapest path (and on the surgery path too, before the Gram method).

The trainer multiplies each micro-batch's loss by ``weights()[task]`` (fixed for the whole optimiser step)
and, after a step DeepSpeed applied, calls ``update(losses, present)`` with each task's mean loss over the
step's micro-batches, averaged over ranks (one all-reduce of T floats): the state (log-variances, loss
history, logits) is therefore identical on every rank and equal to the single-process one. Weights are on
the sum scale: all ones is plain training. The state is checkpointed (``state_dict``).

Adding one: a file in bertmt/mtl/weightings/ with a ``@register_weighting("name")`` class (its options are
its constructor's keyword arguments), the same options in bertmt/config/mtl.py, and a test.
"""

from __future__ import annotations

import dataclasses

import numpy as np

WEIGHTINGS: dict[str, type[LossWeighting]] = {}


def register_weighting(name: str):
    def add(cls: type[LossWeighting]) -> type[LossWeighting]:
        cls.name = name
        WEIGHTINGS[name] = cls
        return cls

    return add


class LossWeighting:
    name = "?"

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def weights(self) -> np.ndarray:
        """(T,) weights of the coming step's task losses."""
        raise NotImplementedError

    def update(self, losses: np.ndarray, present: np.ndarray) -> None:
        """After an applied step: ``losses`` (T,) each task's rank-averaged mean loss over the step's
        micro-batches, ``present`` (T,) bool the tasks that had micro-batches (the others' losses are 0)."""
        raise NotImplementedError

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: the weights, plus the method's own state."""
        return {f"mtl/weight/{t}": float(w) for t, w in zip(self.tasks, self.weights())}

    state_keys: tuple[str, ...] = ()  # the attributes that make up the state

    def state_dict(self) -> dict:
        """The state as plain Python lists and numbers (float64 round-trips exactly through them)."""
        return {key: _plain(getattr(self, key)) for key in self.state_keys}

    def load_state_dict(self, state: dict) -> None:
        for key in self.state_keys:
            current = getattr(self, key)
            if isinstance(current, Adam):
                current.load_state_dict(state[key])
            elif isinstance(current, np.ndarray):
                setattr(self, key, np.asarray(state[key], dtype=current.dtype))
            elif isinstance(current, list):
                setattr(self, key, [np.asarray(v, dtype=np.float64) for v in state[key]])
            else:
                setattr(self, key, state[key])


def _plain(value):
    if isinstance(value, Adam):
        return value.state_dict()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Adam:
    """Adam (Kingma & Ba 2015; L2 ``weight_decay`` added to the gradient, as torch.optim.Adam) on a float64
    vector, updating only the coordinates of the present tasks (each with its own step count)."""

    def __init__(self, size: int, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m, self.v, self.t = np.zeros(size), np.zeros(size), np.zeros(size)

    def step(self, x: np.ndarray, grad: np.ndarray, mask: np.ndarray) -> np.ndarray:
        b1, b2 = self.betas
        grad = grad + self.weight_decay * x
        self.t = np.where(mask, self.t + 1, self.t)
        self.m = np.where(mask, b1 * self.m + (1 - b1) * grad, self.m)
        self.v = np.where(mask, b2 * self.v + (1 - b2) * grad**2, self.v)
        t = np.maximum(self.t, 1)
        update = self.lr * (self.m / (1 - b1**t)) / (np.sqrt(self.v / (1 - b2**t)) + self.eps)
        return np.where(mask, x - update, x)

    def state_dict(self) -> dict:
        return {"m": self.m.tolist(), "v": self.v.tolist(), "t": self.t.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.m, self.v, self.t = (np.asarray(state[k], dtype=np.float64).copy() for k in ("m", "v", "t"))


def make_weighting(name: str, tasks: list[str], **options) -> LossWeighting:
    """``make_weighting("famo", ["sst", "para", "sts"], lr=0.025)``."""
    import bertmt.mtl.weightings  # noqa: F401  (registers every weighting)

    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting '{name}': expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](tasks, **options)


def weighting_from_config(cfg, tasks: list[str], steps_per_epoch: int) -> LossWeighting | None:
    """The loss weighting of an ``MtlConfig`` (None without one); DWA's ``window: 0`` is an epoch."""
    name = cfg.loss_weighting
    if name is None:
        return None
    options = dataclasses.asdict(getattr(cfg, name))
    if name == "dwa" and options["window"] == 0:
        options["window"] = steps_per_epoch
    return make_weighting(name, tasks, **options)
