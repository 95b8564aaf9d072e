"""Task schedules: which task each micro-batch of an epoch comes from.

A schedule is a pure function of (epoch, index), identical on every rank and needing no state to resume.
"""

from __future__ import annotations


class RoundRobin:
    """Tasks in turn: t0, t1, ..., t0, t1, ..."""

    def __init__(self, tasks: list[str], seed: int = 0) -> None:
        if not tasks:
            raise ValueError("a task schedule needs at least one task")
        self.tasks = list(tasks)

    def task_at(self, epoch: int, index: int) -> str:
        return self.tasks[index % len(self.tasks)]


SCHEDULES = {"round_robin": RoundRobin}


def make_schedule(name: str, tasks: list[str], seed: int = 0) -> RoundRobin:
    if name not in SCHEDULES:
        raise ValueError(f"unknown task schedule '{name}': expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](tasks, seed)
