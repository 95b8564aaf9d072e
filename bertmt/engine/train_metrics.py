"""Training losses between two log lines: running sums on each rank, averaged over all ranks when logged."""

from __future__ import annotations

import time
from collections import defaultdict

import torch
import torch.distributed as dist

QUANTITIES = ("loss", "smart_adv", "smart_prox")  # what a micro-batch may log (SMART adds the last two)


class RunningMeans:
    """Per ``task/quantity`` sums and counts of the micro-batches since the last ``pop``, and the tokens."""

    def __init__(self, tasks: list[str], world: int) -> None:
        self.keys = [f"{t}/{q}" for t in tasks for q in QUANTITIES]
        self.world = world
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.tokens, self.start = 0, time.time()

    def add(self, logged: list[tuple[str, dict[str, float]]], tokens: int) -> None:
        """One optimiser step's micro-batches (task, {quantity: value}) and the real tokens they held."""
        for task, values in logged:
            for name, value in values.items():
                self.sums[f"{task}/{name}"] += value
                self.counts[f"{task}/{name}"] += 1
        self.tokens += tokens

    def pop(self) -> tuple[dict[str, float], float]:
        """The mean of each ``task/quantity`` over all ranks (one small all-reduce: every rank trains the
        same task sequence, so every rank has the same keys) and this rank's tokens per second; resets."""
        tokens_per_s = self.tokens / (time.time() - self.start)
        stats = torch.tensor([[self.sums[k], self.counts[k]] for k in self.keys], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(stats)
        means = {k: float(s / c) for k, (s, c) in zip(self.keys, stats.tolist()) if c > 0}
        self._reset()
        return means, tokens_per_s


def format_dev(results: dict, specs: dict) -> str:
    """``sst accuracy 0.4923  quora accuracy 0.8385 ...``: each task's main dev metric."""
    return "  ".join(
        f"{t} {specs[t].metric} {m[specs[t].metric]:.4f}" for t, m in results.items() if t in specs
    )
