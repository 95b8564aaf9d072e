"""Evaluate and predict with the best model of a run directory (no DeepSpeed needed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from bertmt.config import ExperimentConfig, phase_configs, task_configs
from bertmt.engine.build import load_trained
from bertmt.evaluation.metrics import overall_score, task_metrics
from bertmt.evaluation.predict import (
    CS224N_FILES,
    evaluate_tasks,
    predict,
    to_predictions,
    write_cs224n_predictions,
    write_predictions,
)
from bertmt.files import atomic_write
from bertmt.rundir import RunDir

log = logging.getLogger(__name__)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def final_run(cfg: ExperimentConfig, run: RunDir) -> tuple[ExperimentConfig, RunDir]:
    """A phased run's model is its last phase's best: that phase's config and directory."""
    if not cfg.phases:
        return cfg, run
    _, last = phase_configs(cfg)[-1]
    return last, RunDir(run.phases / Path(last.run.dir).name)  # the run may have moved since training


def routes(cfg: ExperimentConfig, run: RunDir) -> list[tuple[ExperimentConfig, ExperimentConfig, RunDir]]:
    """Which model answers which tasks, as (config of the tasks, config of the model, its run): the run's
    final model for all tasks, or (train.exclusive) each model for its tasks (a task and the datasets sharing
    its head, or the tasks naming it in tasks.<t>.model; a model with phases: its last phase's). The tasks'
    configs keep ``cfg``'s overrides (e.g. other dev files)."""
    if not cfg.train.exclusive:
        return [(cfg, *final_run(cfg, run))]
    return [(task_cfg, *final_run(task_cfg, run.task_model(model))) for model, task_cfg in task_configs(cfg)]


def model_of_dataset(cfg: ExperimentConfig, run: RunDir, dataset: str) -> tuple[ExperimentConfig, RunDir]:
    """The config and run of the model that trained ``dataset``."""
    for tasks_cfg, model_cfg, model_run in routes(cfg, run):
        if dataset in tasks_cfg.tasks:
            return model_cfg, model_run
    raise KeyError(dataset)


def member_outputs(cfg: ExperimentConfig, run: RunDir, task: str, split: str, ids: list[str]) -> list:
    """tasks.<task>.ensemble: each member's raw outputs on ``task``'s ``split`` file (whose records are
    ``ids``), by the member's own model, head and encoding."""
    from bertmt.evaluation.ensemble import as_member, check_same_records

    resolved, outputs = cfg.resolved_tasks(), []
    for member in cfg.tasks[task].ensemble:
        model, tokenizer = _load(*model_of_dataset(cfg, run, member))
        enc = cfg.data.loader(tokenizer).load(as_member(resolved[member], resolved[task]), split)
        check_same_records(task, member, ids, enc.ids)
        spec = cfg.task_spec(member)
        outputs.append(predict(model, spec, enc, cfg.data.eval_batch_size, _device(), sharded=False))
        log.info("%s %s: scored by %s's model too (ensemble)", task, split, member)
    return outputs


def with_ensembles(
    cfg: ExperimentConfig, run: RunDir, split: str, encoded: dict, outputs: dict
) -> dict[str, np.ndarray]:
    """``outputs`` (dataset -> raw outputs on its ``split`` file) with every ensemble's dataset's replaced by
    the combination of its own and its members' (bertmt.evaluation.ensemble.combine)."""
    from bertmt.evaluation.ensemble import combine

    out = dict(outputs)
    for task in outputs:
        if cfg.tasks[task].ensemble:
            members = member_outputs(cfg, run, task, split, encoded[task].ids)
            out[task] = combine(cfg.task_spec(task), [outputs[task], *members])
    return out


def _load(cfg: ExperimentConfig, run: RunDir):
    for needed in (run.best_model, run.tokenizer, run.encoder_config):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist: has {run.path} finished an epoch?")
    tokenizer = Tokenizer.from_file(str(run.tokenizer))
    return load_trained(cfg, run.best_model, run.encoder_config).to(_device()), tokenizer


@dataclass
class DevScores:
    """One pass of a run's best model(s) over the dev files: every task's records, encoding, raw outputs
    (an ensemble's dataset: its members' joined) and metrics (with the overall score, members aside)."""

    data: dict
    encoded: dict
    outputs: dict
    metrics: dict
    specs: dict


def score_dev(cfg: ExperimentConfig, run: RunDir) -> DevScores:
    """The run's best model(s) on the (possibly overridden) dev files, each task by its own model."""
    data, encoded, metrics, outputs = {}, {}, {}, {}
    for tasks_cfg, model_cfg, model_run in routes(cfg, run):
        model, tokenizer = _load(model_cfg, model_run)
        loader, tasks = cfg.data.loader(tokenizer), tasks_cfg.resolved_tasks()
        part = {t: d for t in tasks if (d := loader.read(tasks[t], "dev")) is not None}
        part_encoded = {t: loader.encode(tasks[t], d) for t, d in part.items()}
        specs = {t: cfg.task_spec(t) for t in part_encoded}
        part_metrics, part_outputs = evaluate_tasks(
            model, specs, part_encoded, cfg.data.eval_batch_size, _device(), sharded=False
        )
        data |= part
        encoded |= part_encoded
        outputs |= part_outputs
        metrics |= {t: m for t, m in part_metrics.items() if t != "overall"}
    specs = {t: cfg.task_spec(t) for t in encoded}
    outputs = with_ensembles(cfg, run, "dev", encoded, outputs)
    for task in encoded:
        if cfg.tasks[task].ensemble:
            preds = to_predictions(specs[task], outputs[task])
            metrics[task] = task_metrics(specs[task], preds, encoded[task].labels)
    scored = {t: m for t, m in metrics.items() if t not in cfg.ensemble_members}
    metrics["overall"] = overall_score(scored, specs)
    return DevScores(data, encoded, outputs, metrics, specs)


def write_dev_reports(scores: DevScores, target: Path) -> None:
    """Every task's dev reports (confusion matrices, ROC, STS scatter, worst errors) and summary.json."""
    from bertmt.evaluation.task_reports import write_task_report

    target.mkdir(parents=True, exist_ok=True)
    summary = {
        t: write_task_report(scores.specs[t], scores.data[t], scores.outputs[t], target, "dev")
        for t in scores.encoded
    }
    atomic_write(target / "summary.json", json.dumps(summary, indent=2))
    log.info("reports: %s", target)


def evaluate_model(
    cfg: ExperimentConfig, run: RunDir, reports: bool = True, out: Path | None = None
) -> tuple[dict, Path]:
    """Dev metrics of the run's best model on the (possibly overridden) dev files. With ``out`` (what
    `bertmt eval` passes: eval/<time>/), metrics.json and the reports go there; without, the reports go to
    the run's reports/dev/ (after training). Returns the metrics and the directory written."""
    scores = score_dev(cfg, run)
    target = out or run.reports
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files = {t: str(cfg.task_path(t, "dev")) for t in scores.encoded}
        atomic_write(out / "metrics.json", json.dumps({"metrics": scores.metrics, "files": files}, indent=2))
    if reports:
        write_dev_reports(scores, target)
    return scores.metrics, target


def predict_model(cfg: ExperimentConfig, run: RunDir, split: str, fmt: str = "bertmt") -> list[Path]:
    """Predictions of every task with a file for ``split``: predictions/<task>-<split>.csv, or with
    ``fmt="cs224n"`` the starter code's files predictions/cs224n/<sst|para|sts>-<split>-output.csv (the
    datasets sst, quora and sts only)."""
    written = []
    for tasks_cfg, model_cfg, model_run in routes(cfg, run):
        written += _predict_route(cfg, tasks_cfg, model_cfg, model_run, run, split, fmt)
    return written


def _predict_route(
    cfg: ExperimentConfig,
    tasks_cfg: ExperimentConfig,
    model_cfg: ExperimentConfig,
    model_run: RunDir,
    run: RunDir,
    split: str,
    fmt: str,
) -> list[Path]:
    """Predictions of ``tasks_cfg``'s tasks by the model of ``model_run``, written into ``run``."""
    model, tokenizer = _load(model_cfg, model_run)
    written = []
    loader = cfg.data.loader(tokenizer)
    for task, resolved in tasks_cfg.resolved_tasks().items():
        if fmt == "cs224n" and task not in CS224N_FILES:
            log.info("%s: not one of the CS224N files %s, skipped", task, sorted(CS224N_FILES))
            continue
        enc = loader.load(resolved, split)
        if enc is None:
            continue
        spec = resolved.spec
        outputs = {task: predict(model, spec, enc, cfg.data.eval_batch_size, _device(), sharded=False)}
        preds = to_predictions(spec, with_ensembles(cfg, run, split, {task: enc}, outputs)[task])
        if fmt == "cs224n":
            path = write_cs224n_predictions(run.predictions / "cs224n", split, task, enc.ids, preds)
        else:
            path = run.prediction(task, split)
            write_predictions(path, spec, enc.ids, preds)
        written.append(path)
        log.info("wrote %d predictions to %s", len(preds), path)
    return written
