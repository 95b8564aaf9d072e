"""One optimiser step on the DeepSpeed engine, plain or with gradient surgery (DESIGN.md, "Data flow of one
optimiser step"). Every kind has the same small interface, which ``Trainer.train_step`` drives:

    step.module                  what a micro-batch's forward runs through
    step.begin(tasks)            the tasks of the step's micro-batches, in order (known from the schedule)
    step.backward(task, loss)    one micro-batch; ``loss`` is its weighted loss, not divided by grad_accum
    step.step() -> applied       the optimiser step (False: DeepSpeed skipped it, fp16 overflow)
    step.scalars(), step.state_dict(), step.load_state_dict(state)

``PlainStep`` is plain training (DeepSpeed accumulates, reduces and steps); the surgery kinds are in
engine/surgery.py: ``CapturedSurgery`` at ZeRO 2/3, ``AutogradSurgery`` at ZeRO 0/1, and so is
``make_step``, which picks the kind of a config.
"""

from __future__ import annotations

import torch


class Step:
    """The bookkeeping every kind shares: which micro-batch of the step this is."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.module = engine
        self.counts: dict[str, int] = {}  # micro-batches of each task in this step
        self.left: dict[str, int] = {}  # of those, still to come
        self.total_left = 0

    def begin(self, tasks: list[str]) -> None:
        self.counts = {t: tasks.count(t) for t in set(tasks)}
        self.left = dict(self.counts)
        self.total_left = len(tasks)

    def _count(self, task: str) -> tuple[bool, bool]:
        """Counts one micro-batch of ``task``: (its last in the step, the step's last)."""
        if self.left.get(task, 0) <= 0:
            raise RuntimeError(f"micro-batch of task {task!r} was not announced by begin() for this step")
        self.left[task] -= 1
        self.total_left -= 1
        return self.left[task] == 0, self.total_left == 0

    def scalars(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PlainStep(Step):
    """Plain training: DeepSpeed divides by grad_accum, averages over ranks and steps at the boundary."""

    def backward(self, task: str, loss: torch.Tensor) -> None:
        _, last = self._count(task)
        self.engine.backward(loss)
        if not last:
            self.engine.step()  # not a boundary: DeepSpeed only counts the micro-batch

    def step(self) -> bool:
        self.engine.step()
        return self.engine.was_step_applied()
