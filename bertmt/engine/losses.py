"""Training losses per task kind: cross-entropy for classification, MSE for regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertmt.data.tasks import TaskSpec


def task_loss(spec: TaskSpec, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    outputs = outputs.float()
    if spec.kind == "classification":
        return F.cross_entropy(outputs, labels.long())
    return F.mse_loss(outputs.squeeze(-1), labels.float())
