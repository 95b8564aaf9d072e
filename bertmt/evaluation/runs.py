"""Evaluate and predict with the best model of a run directory (no DeepSpeed needed)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

from bertmt.config import ExperimentConfig, phase_configs
from bertmt.data.loading import encode_split, load_split, read_split
from bertmt.engine.build import load_trained
from bertmt.evaluation.predict import evaluate_tasks, predict, to_predictions, write_predictions

log = logging.getLogger(__name__)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def final_run(cfg: ExperimentConfig, run_dir: Path) -> tuple[ExperimentConfig, Path]:
    """A phased run's model is its last phase's best: that phase's config and directory."""
    if not cfg.phases:
        return cfg, run_dir
    _, last = phase_configs(cfg)[-1]
    return last, run_dir / "phases" / Path(last.run.dir).name  # run_dir may have moved since training


def _load(cfg: ExperimentConfig, run_dir: Path):
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    return load_trained(cfg, run_dir).to(_device()), tokenizer


def evaluate_run(cfg: ExperimentConfig, run_dir: Path, reports: bool = True) -> tuple[dict, Path]:
    """Dev metrics of the run's best model on the (possibly overridden) dev files, written to
    ``eval/metrics-<time>.json``; with ``reports``, per-task reports and plots in ``reports/dev/``."""
    from bertmt.evaluation.task_reports import write_task_report

    model_cfg, model_dir = final_run(cfg, run_dir)
    model, tokenizer = _load(model_cfg, model_dir)
    data = {t: d for t in cfg.tasks if (d := read_split(cfg, t, "dev")) is not None}
    encoded = {t: encode_split(cfg, t, d, tokenizer) for t, d in data.items()}
    specs = {t: cfg.task_spec(t) for t in encoded}
    metrics, outputs = evaluate_tasks(model, specs, encoded, cfg.data.eval_batch_size, _device())
    out = run_dir / "eval" / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    files = {t: str(cfg.task_path(t, "dev")) for t in encoded}
    out.write_text(json.dumps({"metrics": metrics, "files": files}, indent=2))
    if reports:
        summary = {
            t: write_task_report(specs[t], data[t], outputs[t], run_dir / "reports" / "dev", "dev")
            for t in encoded
        }
        (run_dir / "reports" / "dev" / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("reports: %s", run_dir / "reports" / "dev")
    return metrics, out


def predict_run(cfg: ExperimentConfig, run_dir: Path, split: str) -> list[Path]:
    """predictions/<task>-<split>.csv for every task with a file for ``split``."""
    model_cfg, model_dir = final_run(cfg, run_dir)
    model, tokenizer = _load(model_cfg, model_dir)
    written = []
    for task in cfg.tasks:
        enc = load_split(cfg, task, split, tokenizer)
        if enc is None:
            continue
        spec = cfg.task_spec(task)
        preds = to_predictions(spec, predict(model, spec, enc, cfg.data.eval_batch_size, _device()))
        path = run_dir / "predictions" / f"{task}-{split}.csv"
        write_predictions(path, spec, enc.ids, preds)
        written.append(path)
        log.info("wrote %d predictions to %s", len(preds), path)
    return written
