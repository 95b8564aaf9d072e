"""Dev metrics per task and the overall score used to pick the best checkpoint."""

from __future__ import annotations

import numpy as np

from bertmt.data.tasks import TaskSpec


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean())


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    if np.std(pred) == 0 or np.std(gold) == 0:
        return 0.0  # undefined for a constant prediction: count it as no correlation
    return float(np.corrcoef(pred, gold)[0, 1])


METRICS = {"accuracy": accuracy, "pearson": pearson}
# each metric mapped to [0, 1] for the overall score: (sst_acc + quora_acc + (sts_pearson + 1) / 2) / 3
NORMALISE = {"accuracy": lambda v: v, "pearson": lambda v: (v + 1) / 2}


def task_metrics(spec: TaskSpec, pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {spec.metric: METRICS[spec.metric](pred, gold)}


def overall_score(results: dict[str, dict[str, float]], specs: dict[str, TaskSpec]) -> float:
    """Mean over the tasks present of each task's metric mapped to [0, 1]."""
    scores = [NORMALISE[specs[t].metric](m[specs[t].metric]) for t, m in results.items()]
    return float(np.mean(scores)) if scores else float("nan")
