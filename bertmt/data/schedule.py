"""Task schedules: which task each micro-batch of an epoch comes from.

A schedule is a pure function of (seed, epoch, index): every rank computes the same task sequence, and a
resumed run needs no state beyond its position. Sampling kinds:

- ``round_robin``: tasks in turn;
- ``random``: uniform; ``proportional``: p_k ~ N_k; ``sqrt``: p_k ~ sqrt(N_k);
- ``annealed`` (Stickland & Murray 2019): p_k ~ N_k ** alpha, alpha = 1 - 0.8 (e - 1) / (E - 1), e = 1..E.

``weights`` multiply each task's probability (extra datasets sampled less or more), then renormalise.
``max_repeats`` caps how many passes over one task's data an epoch may draw; a capped task drops out and the
others share its probability.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

KINDS = ("round_robin", "random", "proportional", "sqrt", "annealed")


class TaskSchedule:
    def __init__(
        self,
        kind: str,
        sizes: dict[str, int],
        batches_per_pass: dict[str, int],
        epochs: int,
        seed: int = 0,
        max_repeats: float | None = None,
        weights: dict[str, float] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown task schedule '{kind}': expected one of {list(KINDS)}")
        if not sizes:
            raise ValueError("a task schedule needs at least one task")
        self.kind, self.tasks, self.epochs, self.seed = kind, list(sizes), epochs, seed
        self.sizes = np.array([sizes[t] for t in self.tasks], dtype=np.float64)
        self.weights = np.array([(weights or {}).get(t, 1.0) for t in self.tasks], dtype=np.float64)
        self.caps = (
            None
            if max_repeats is None
            else np.array([max(1, int(max_repeats * batches_per_pass[t])) for t in self.tasks])
        )
        self._epoch_tasks = lru_cache(maxsize=2)(self._draw_epoch)

    def alpha(self, epoch: int) -> float:
        """Annealing exponent for 0-based ``epoch``: 1 in the first epoch, 0.2 in the last."""
        return 1.0 if self.epochs == 1 else 1.0 - 0.8 * epoch / (self.epochs - 1)

    def probabilities(self, epoch: int) -> np.ndarray:
        power = {
            "random": 0.0,
            "proportional": 1.0,
            "sqrt": 0.5,
            "round_robin": 0.0,
            "annealed": self.alpha(epoch) if self.kind == "annealed" else 1.0,
        }[self.kind]
        p = self.weights * self.sizes**power
        return p / p.sum()

    def _draw_epoch(self, epoch: int, length: int) -> tuple[int, ...]:
        rng = np.random.default_rng([self.seed, epoch])
        p = self.probabilities(epoch)
        counts = np.zeros(len(self.tasks), dtype=np.int64)
        out = []
        for i in range(length):
            open_ = np.ones(len(self.tasks), bool) if self.caps is None else counts < self.caps
            if not open_.any():  # every task capped: start over rather than stop the epoch early
                counts[:] = 0
                open_[:] = True
            if self.kind == "round_robin":
                t = len(self.tasks)
                k = next(j % t for j in range(i, i + t) if open_[j % t])  # next task in turn that is open
            else:
                q = p * open_
                k = int(rng.choice(len(self.tasks), p=q / q.sum()))
            counts[k] += 1
            out.append(k)
        return tuple(out)

    def task_at(self, epoch: int, index: int, length: int) -> str:
        """The task of micro-batch ``index`` of ``epoch`` in an epoch of ``length`` micro-batches."""
        return self.tasks[self._epoch_tasks(epoch, length)[index]]

    def counts(self, epoch: int, length: int) -> dict[str, int]:
        drawn = np.bincount(self._epoch_tasks(epoch, length), minlength=len(self.tasks))
        return dict(zip(self.tasks, drawn.tolist()))
