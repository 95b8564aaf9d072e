"""Ensembles of finished models (tasks.<t>.ensemble, train.exclusive): a dataset's files scored by its own
model and by each member's model, the outputs averaged ("soft voting")."""

from __future__ import annotations

import dataclasses

import numpy as np

from bertmt.data.tasks import Task, TaskSpec
from bertmt.evaluation.predict import to_predictions


def combine(spec: TaskSpec, outputs: list[np.ndarray]) -> np.ndarray:
    """One output array (N, out_size) from several models' raw outputs of the same N records.

    Classification: the log of the mean of the models' class probabilities (a logit whose softmax is the
    mean and whose argmax is the soft vote). Regression: the mean of the models' predictions, each clipped
    to the label range first (as each model alone would predict)."""
    if spec.kind == "classification":
        probs = np.mean([_softmax(out) for out in outputs], axis=0)
        return np.log(np.maximum(probs, np.finfo(probs.dtype).tiny))
    return np.mean([to_predictions(spec, out) for out in outputs], axis=0)[:, None]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def as_member(member: Task, of: Task) -> Task:
    """Member dataset ``member`` reading ``of``'s files: its own name (its head) and encoding (cross or
    siamese, symmetric or not), the records of the dataset it joins."""
    return dataclasses.replace(member, files=dict(of.files))


def check_same_records(task: str, member: str, ids: list[str], member_ids: list[str]) -> None:
    if ids != member_ids:  # the same file read twice: only a file changed in between differs
        raise RuntimeError(
            f"tasks.{task}.ensemble: {member} read {len(member_ids)} records of {task}'s file where {task} "
            f"read {len(ids)}, or in another order: did the file change during evaluation?"
        )
