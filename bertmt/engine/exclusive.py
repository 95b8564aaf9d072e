"""Exclusive training (ExTraBERT: one model per task beat their multitask model): ``train.exclusive`` trains
the model of every head alone (or of every group of tasks naming the same ``tasks.<t>.model``), one after
another, each a complete run directory ``<run.dir>/tasks/<model>`` (config, checkpoints, best/, metrics.json),
or a phased run there when ``phases`` name the model (``phases[i].models``; a phase naming none runs in every
model). A model's run with a metrics.json is finished and skipped, so an exclusive run started again resumes
inside the model (and phase) it stopped in. The top-level directory gets the whole
config, ``tasks.json`` (each model's best epoch and metrics) and ``metrics.json``: every task's metrics from
its own model (a task with ``tasks.<t>.ensemble``: from its model and its members' together), and their
overall score (members aside). Its reports (run.reports) come from the same pass over the dev files as the
ensembles' metrics.
"""

from __future__ import annotations

import json
import logging

from bertmt import dist_env
from bertmt.config import ExperimentConfig, save_config, task_configs
from bertmt.engine.phases import run_phases, train_in_turn
from bertmt.engine.runtime import setup_logging
from bertmt.evaluation.metrics import overall_score
from bertmt.evaluation.runs import final_run, score_dev, write_dev_reports
from bertmt.files import atomic_write
from bertmt.rundir import RunDir

log = logging.getLogger(__name__)


def run_each_task(cfg: ExperimentConfig, on_task_end=None) -> tuple[dict, list[dict]]:
    """Train every task's model; returns the combined metrics and one summary per model. ``on_task_end(
    task_cfg, trainer)`` runs on every rank after each model that trained (e.g. to plot it)."""
    from bertmt.engine.trainer import Trainer

    run = RunDir(cfg.run.dir)
    setup_logging(None, dist_env.rank())
    configs = task_configs(cfg)
    if dist_env.rank() == 0:  # also when every model finished before (copied in): eval reads it
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    summaries = []
    for i, (model, task_cfg) in enumerate(configs):
        task_run, tasks = RunDir(task_cfg.run.dir), list(task_cfg.tasks)
        if task_run.metrics.is_file():
            log.info("model %d/%d (%s) finished before: skipped", i + 1, len(configs), model)
        else:
            log.info("model %d/%d (%s): %s, in %s", i + 1, len(configs), model, tasks, task_run.path)
            last = i + 1 == len(configs)
            if task_cfg.phases:
                run_phases(task_cfg, on_task_end, last=last)
            else:
                train_in_turn(cfg, Trainer(task_cfg), last=last, on_end=on_task_end)
        _, final = final_run(task_cfg, task_run)  # a model with phases: its last phase
        summaries.append(
            {
                "model": model,
                "tasks": tasks,
                "dir": str(task_run.path),
                **({"phase": final.path.name} if task_cfg.phases else {}),
                "best_epoch": final.read_json(final.best_info)["epoch"],
                "metrics": final.read_metrics(),
            }
        )
    metrics = combined_metrics(cfg, [s["metrics"] for s in summaries])
    if dist_env.rank() == 0:
        # one pass over the dev files gives the ensembles' metrics and the reports
        dev = score_dev(cfg, run) if cfg.ensemble_members or cfg.run.reports else None
        if dev is not None:
            ensembles = {t: m for t, m in dev.metrics.items() if t != "overall" and cfg.tasks[t].ensemble}
            metrics = combined_metrics(cfg, [metrics, ensembles])
        atomic_write(run.task_models_json, json.dumps(summaries, indent=2))
        atomic_write(run.metrics, json.dumps(metrics, indent=2))
        if cfg.run.reports:  # after metrics.json: a failed plot leaves the run finished
            write_dev_reports(dev, run.reports)
    return metrics, summaries


def combined_metrics(cfg: ExperimentConfig, per_model: list[dict]) -> dict:
    """Every task's metrics from its own model (a later dict's replacing an earlier's: an ensemble's), and
    the overall score over all of them but ensemble members."""
    merged = {t: m for metrics in per_model for t, m in metrics.items() if t != "overall"}
    scored = {t: m for t, m in merged.items() if t not in cfg.ensemble_members}
    return {**merged, "overall": overall_score(scored, {t: cfg.task_spec(t) for t in scored})}
