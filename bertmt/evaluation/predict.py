"""Run a multitask model over a dataset and turn head outputs into predictions."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from bertmt.data.batching import Encoded, collate, eval_batches, model_inputs
from bertmt.data.tasks import TaskSpec
from bertmt.files import atomic_write


def to_predictions(spec: TaskSpec, outputs: np.ndarray) -> np.ndarray:
    """Class ids for classification; regression values clipped to the task's label range (STS: 0-5).
    ``outputs``: (N, out_size) raw head outputs."""
    if spec.kind == "classification":
        return outputs.argmax(-1)
    out = outputs[:, 0]
    return out.clip(*spec.label_range) if spec.label_range else out


def _shard(sharded: bool) -> tuple[int, int]:
    if sharded and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(
    model: nn.Module,
    spec: TaskSpec,
    enc: Encoded,
    batch_size: int,
    device: torch.device,
    show_progress: bool = True,
    sharded: bool = True,
) -> np.ndarray:
    """Raw head outputs (N, out_size) for every row of ``enc``, in row order.

    Under torch.distributed each rank scores every world-th batch and one all-reduce gathers them: every
    example is scored exactly once. Every rank runs the same number of forward passes (a rank short of a
    batch repeats one and drops the result): ZeRO-3 gathers parameters collectively inside each forward.
    ``sharded=False``: this process scores everything alone (a finished run's model, on rank 0 only).
    A symmetric pair task (``enc.symmetric``) is scored in both sentence orders and the outputs averaged
    (logits; regression: the values)."""
    rank, world = _shard(sharded)
    was_training = model.training
    model.eval()
    outputs = torch.zeros(len(enc), spec.output_size, dtype=torch.float64)
    every = eval_batches(enc.lengths, batch_size)
    mine = every[rank::world]
    rounds = -(-len(every) // world)
    for i in tqdm(range(rounds), desc=f"eval {spec.name}", disable=not show_progress, leave=False):
        rows = mine[i] if i < len(mine) else every[0]
        out = model(spec.name, **model_inputs(collate(enc, rows), device))
        if enc.symmetric:
            swapped = collate(enc, rows, np.ones(len(rows), dtype=bool))
            out = (out + model(spec.name, **model_inputs(swapped, device))) / 2
        if i < len(mine):
            outputs[torch.from_numpy(rows)] = out.float().cpu().double()
    model.train(was_training)
    if world > 1:
        dist.all_reduce(outputs)  # rows are disjoint across ranks: the sum is the gather
    return outputs.numpy()


def write_predictions(path: str | Path, spec: TaskSpec, ids: list[str], preds: np.ndarray) -> None:
    """CSV with ``id`` and the prediction column named after the task's label; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", f"predicted_{spec.label_column}"])
    for rid, p in zip(ids, preds):
        writer.writerow([rid, int(p) if spec.kind == "classification" else f"{p:.4f}"])
    atomic_write(path, buf.getvalue())


# the CS224N starter code's prediction files: dataset -> (file prefix, header column), spelling included
CS224N_FILES = {
    "sst": ("sst", "Predicted_Sentiment"),
    "quora": ("para", "Predicted_Is_Paraphrase"),
    "sts": ("sts", "Predicted_Similiarity"),
}


def write_cs224n_predictions(out_dir: Path, split: str, task: str, ids: list[str], preds: np.ndarray) -> Path:
    """``<out_dir>/<sst|para|sts>-<split>-output.csv`` exactly as the CS224N starter code writes it: a header
    ``id \\t <column> `` and one ``<id> , <prediction> `` line per record."""
    prefix, column = CS224N_FILES[task]
    path = Path(out_dir) / f"{prefix}-{split}-output.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"id \t {column} \n"] + [f"{rid} , {p} \n" for rid, p in zip(ids, preds.tolist())]
    atomic_write(path, "".join(lines))
    return path


def evaluate_tasks(
    model: nn.Module,
    specs: dict[str, TaskSpec],
    encoded: dict[str, Encoded],
    batch_size: int,
    device: torch.device,
    show_progress: bool = True,
    sharded: bool = True,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Dev metrics in the metrics.json form ``{task: {metric: value}, "overall": score}`` and the raw
    outputs per task."""
    from bertmt.evaluation.metrics import overall_score, task_metrics

    results: dict = {}
    outputs = {}
    for task, enc in encoded.items():
        outputs[task] = predict(model, specs[task], enc, batch_size, device, show_progress, sharded)
        results[task] = task_metrics(specs[task], to_predictions(specs[task], outputs[task]), enc.labels)
    results["overall"] = overall_score({t: results[t] for t in encoded}, specs)
    return results, outputs
