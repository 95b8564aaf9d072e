"""Task registry: adding a task is one entry in TASKS."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Literal["classification", "regression"]
    text_columns: tuple[str, ...]  # one column: single sentence; two: a sentence pair
    label_column: str
    num_labels: int  # classes (classification) or 1 (regression)
    metric: Literal["accuracy", "pearson"]  # dev metric; see bertmt.evaluation.metrics
    label_range: tuple[float, float] | None = None  # regression targets must lie inside it

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def output_size(self) -> int:
        return self.num_labels if self.kind == "classification" else 1


@dataclass(frozen=True)
class Task:
    """One configured dataset as data/ needs it (``ExperimentConfig.resolved_tasks()``): its format, its files
    (resolved against data.dir; none: split not configured; a training set may be several files) and how
    pairs are encoded."""

    spec: TaskSpec  # the registry format, under the dataset's own name
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)  # train / dev / test -> files
    siamese: bool = False  # a pair task whose sentences go through the encoder one by one
    symmetric: bool | str = False  # tasks.<t>.symmetric: true (trained and scored in both orders), "eval"
    # (scored in both orders only) or false

    @property
    def name(self) -> str:
        return self.spec.name

    def paths(self, split: str) -> tuple[Path, ...]:
        """The files of ``split``, in the order they are read (empty if it is not configured)."""
        return tuple(self.files.get(split) or ())


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("sst", "classification", ("sentence",), "sentiment", 5, "accuracy"),
        TaskSpec("quora", "classification", ("sentence1", "sentence2"), "is_duplicate", 2, "accuracy"),
        TaskSpec(
            "sts",
            "regression",
            ("sentence1", "sentence2"),
            "similarity",
            1,
            "pearson",
            label_range=(0.0, 5.0),
        ),
        TaskSpec("cfimdb", "classification", ("sentence",), "sentiment", 2, "accuracy"),
    ]
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}': expected one of {sorted(TASKS)}")
    return TASKS[name]
