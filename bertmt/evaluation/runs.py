"""Evaluate and predict with the best model of a run directory (no DeepSpeed needed)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

from bertmt.config import ExperimentConfig
from bertmt.data.loading import load_split
from bertmt.data.tasks import get_task
from bertmt.engine.build import load_trained
from bertmt.evaluation.predict import evaluate_tasks, predict, write_predictions

log = logging.getLogger(__name__)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(cfg: ExperimentConfig, run_dir: Path):
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    return load_trained(cfg, run_dir).to(_device()), tokenizer


def evaluate_run(cfg: ExperimentConfig, run_dir: Path) -> tuple[dict, Path]:
    """Dev metrics of the run's best model on the (possibly overridden) dev files; written to eval/."""
    model, tokenizer = _load(cfg, run_dir)
    encoded = {t: e for t in cfg.tasks if (e := load_split(cfg, t, "dev", tokenizer)) is not None}
    specs = {t: get_task(t) for t in encoded}
    metrics, _ = evaluate_tasks(model, specs, encoded, cfg.data.eval_batch_size, _device())
    out = run_dir / "eval" / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    files = {t: str(cfg.task_path(t, "dev")) for t in encoded}
    out.write_text(json.dumps({"metrics": metrics, "files": files}, indent=2))
    return metrics, out


def predict_run(cfg: ExperimentConfig, run_dir: Path, split: str) -> list[Path]:
    """predictions/<task>-<split>.csv for every task with a file for ``split``."""
    model, tokenizer = _load(cfg, run_dir)
    written = []
    for task in cfg.tasks:
        enc = load_split(cfg, task, split, tokenizer)
        if enc is None:
            continue
        preds = predict(model, get_task(task), enc, cfg.data.eval_batch_size, _device())
        path = run_dir / "predictions" / f"{task}-{split}.csv"
        write_predictions(path, get_task(task), enc.ids, preds)
        written.append(path)
        log.info("wrote %d predictions to %s", len(preds), path)
    return written
