"""The run lifecycle: check, lock, train (single or phased), then predictions, reports and plots; evaluate and
predict a finished run. `bertmt train|eval|predict` and the Submitit job call these. Imports no torch (the
trainer and the model are imported when a run starts).

Exit codes of :func:`train`: 0 finished, 1 failed (failed.json says why), 2 configuration refused,
3 stopped at a checkpoint by a signal (run the same command to resume), 4 the same and the SLURM job was
requeued (it resumes by itself), 5 diverged (non-finite loss or gradient; the last checkpoint is the last
good state), 6 the run directory is in use by another trainer, 7 pruned (an ``on_epoch`` callback, a study's
pruner, stopped it after an epoch; pruned.json says after which).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from bertmt import dist_env
from bertmt.config import ConfigError, ExperimentConfig, load_config, to_dict
from bertmt.rundir import RunDir, RunLocked

log = logging.getLogger("bertmt")
EXIT_FAILED, EXIT_CONFIG, EXIT_PREEMPTED, EXIT_REQUEUED, EXIT_DIVERGED, EXIT_LOCKED = 1, 2, 3, 4, 5, 6
EXIT_PRUNED = 7

# keys a restarted run may change: they do not alter what is trained (every other change is refused)
HARMLESS_KEYS = (
    "run.dir",  # the directory may have moved
    "run.log_every",
    "run.checkpoint_every",
    "run.reports",
    "data.eval_batch_size",
    "data.cache_dir",
    "train.dist_timeout_s",
    "slurm.",  # resources, signal, requeue
)


# ----------------------------------------------------------------------------------------------- checks


def check_inputs(cfg: ExperimentConfig) -> None:
    """Everything that can be checked before any work: the task files (with data.strict, every record) and
    the pretrained model."""
    from bertmt.data.loading import check_files
    from bertmt.model.pretrained import check_pretrained

    check_files(cfg.resolved_tasks().values(), cfg.data.dir, strict=cfg.data.strict)
    check_pretrained(cfg.model.pretrained)


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def config_changes(saved: ExperimentConfig, new: ExperimentConfig) -> dict[str, tuple]:
    """Dotted key -> (saved value, new value) for every key that differs and matters to training."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(new))
    changed = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    return {k: v for k, v in changed.items() if not k.startswith(HARMLESS_KEYS)}


def check_restart(cfg: ExperimentConfig, run: RunDir, allow_change: bool) -> dict[str, tuple]:
    """A run that has saved something must continue with the config it was started with (and the same
    number of ranks). Raises ConfigError naming every changed key with both values, unless
    ``allow_change``; returns the (allowed) changes."""
    if not (run.config.is_file() and (run.has_checkpoint() or run.metrics.is_file())):
        return {}
    saved = load_config(run.config)
    changes = config_changes(saved, cfg)
    if run.run_info.is_file():
        saved_world = run.read_json(run.run_info).get("world_size")
        if saved_world is not None and saved_world != dist_env.world():
            changes["world size (ranks)"] = (saved_world, dist_env.world())
    if changes and not allow_change:
        lines = "\n".join(f"  {k}: {old!r} in the run, {new!r} now" for k, (old, new) in changes.items())
        raise ConfigError(
            f"{run.path} was started with another configuration; resuming with this one would train "
            f"something that neither config describes:\n{lines}\nUse the saved config ({run.config}), a "
            "new run.dir, or --allow-config-change to continue anyway (recorded in config_changes.jsonl)"
        )
    return changes


def _record_changes(run: RunDir, changes: dict[str, tuple]) -> None:
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"time": when, "changes": {k: list(v) for k, v in changes.items()}}
    with open(run.config_changes, "a") as fp:
        fp.write(json.dumps(entry, default=str) + "\n")
    log.warning("continuing with a changed config (recorded in %s): %s", run.config_changes, entry["changes"])


# ----------------------------------------------------------------------------------------------- train


def train(cfg: ExperimentConfig, allow_config_change: bool = False, on_epoch=None) -> int:
    """Train the run of ``cfg`` (or resume it) and write its predictions and reports; returns the exit code.
    Every rank calls this; rank 0 holds the run directory's lock. ``on_epoch``: see Trainer.fit (rank 0's
    callback after every epoch; True prunes the run). Phased runs take none."""
    if on_epoch is not None and (cfg.phases or cfg.train.exclusive):
        raise ConfigError(
            "phases / train.exclusive: a run of several models cannot report to a study after every epoch "
            "(bertmt tune)"
        )
    if cfg.train.objective == "mlm" and not cfg.phases:
        raise ConfigError(
            "config key 'train.objective': expected tasks outside phases (mlm pre-trains the encoder in a "
            "phase before the task phases), got 'mlm'"
        )
    dist_env.slurm_env_to_torch()
    check_inputs(cfg)  # before any work: a missing file or model creates no run directory
    run = RunDir(cfg.run.dir)
    changes = check_restart(cfg, run, allow_config_change)
    lock = run.lock() if dist_env.rank() == 0 else None
    try:
        if lock is not None:
            lock.acquire()
            if changes:
                _record_changes(run, changes)
            run.failed.unlink(missing_ok=True)
            run.pruned.unlink(missing_ok=True)
    except RunLocked as exc:
        print(f"bertmt: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOCKED
    try:
        return _train_locked(cfg, run, on_epoch)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg: ExperimentConfig, run: RunDir, on_epoch=None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from bertmt.engine.checkpoint import CheckpointError
    from bertmt.engine.preemption import Diverged, Preempted, Pruned

    start = time.time()
    try:
        with logging_redirect_tqdm():
            if cfg.train.exclusive:  # phases, if any, run inside each model
                is_main = _train_each_task(cfg, start)
            elif cfg.phases:
                is_main = _train_phases(cfg, start)
            else:
                is_main = _train_single(cfg, start, on_epoch)
    except Pruned as exc:
        log.info("%s", exc)
        if dist_env.rank() == 0:
            run.write_pruned(exc.epoch)
        return EXIT_PRUNED
    except Preempted as exc:
        log.warning("%s", exc)
        return EXIT_REQUEUED if exc.requeued else EXIT_PREEMPTED
    except Diverged as exc:
        log.error("%s", exc)
        _write_failed(run, f"diverged: {exc}")
        return EXIT_DIVERGED
    except CheckpointError as exc:
        log.error("%s", exc)
        _write_failed(run, f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    except Exception as exc:
        _write_failed(run, f"{type(exc).__name__}: {exc}")
        raise
    if is_main:
        predict_run(cfg, run, "test")  # dev predictions were written with the best model
        if cfg.run.reports and not cfg.train.exclusive:  # exclusive runs wrote theirs with their metrics
            if not cfg.phases:  # phased runs plotted each phase
                _plot(run)
            evaluate_run(cfg, run, reports=True)  # confusion matrices, ROC, STS scatter, worst errors
    return 0


def _write_failed(run: RunDir, error: str) -> None:
    if dist_env.rank() != 0:
        return
    try:
        run.write_failed(error)
    except OSError as exc:  # a full disk: the log has the error
        log.error("could not write %s: %s", run.failed, exc)


def summary(title: str, metrics: dict, extra: dict) -> str:
    lines = ["", "=" * 60, f" {title}", "-" * 60]
    for task, values in metrics.items():
        if isinstance(values, dict):
            lines += [f"  {task:<10} {name:<10} {v:.4f}" for name, v in values.items()]
    lines.append(f"  {'overall':<21} {metrics['overall']:.4f}")
    lines.append("-" * 60)
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    lines.append("=" * 60)
    return "\n".join(lines)


def _plot(run: RunDir) -> None:
    from bertmt.evaluation.report import plot_training_curves

    log.info("training curves: %s", plot_training_curves(run))


def _train_single(cfg: ExperimentConfig, start: float, on_epoch=None) -> bool:
    from bertmt.engine.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        metrics = trainer.fit(on_epoch)
        if trainer.is_main:
            extra = {
                "run directory": cfg.run.dir,
                "wall time": f"{time.time() - start:.0f} s",
                "optimiser steps": trainer.state.step,
            }
            print(
                summary(f"bertmt train: best dev metrics (epoch {trainer.state.best_epoch})", metrics, extra)
            )
    finally:
        trainer.close()
    return trainer.is_main


def _train_phases(cfg: ExperimentConfig, start: float) -> bool:
    from bertmt.engine.phases import run_phases

    metrics, phases = run_phases(cfg, _plotter(cfg))
    runs = ", ".join(f"{p['phase']} (best epoch {p['best_epoch']})" for p in phases)
    return _summarise(
        cfg, start, f"best dev metrics of phase '{phases[-1]['phase']}'", metrics, "phases", runs
    )


def _train_each_task(cfg: ExperimentConfig, start: float) -> bool:
    from bertmt.engine.exclusive import run_each_task

    metrics, models = run_each_task(cfg, _plotter(cfg))
    runs = ", ".join(f"{m['model']} (best epoch {m['best_epoch']})" for m in models)
    return _summarise(cfg, start, "every task's own model, best dev metrics", metrics, "models", runs)


def _plotter(cfg: ExperimentConfig):
    """The training curves of each of a run's trainings (phases, tasks' models), after it ends."""

    def plot(sub_cfg, trainer) -> None:
        if trainer.is_main and cfg.run.reports:
            _plot(RunDir(sub_cfg.run.dir))

    return plot


def _summarise(cfg: ExperimentConfig, start: float, title: str, metrics: dict, kind: str, runs: str) -> bool:
    """Rank 0 prints the summary of a run of several trainings; returns whether this is rank 0."""
    is_main = dist_env.rank() == 0
    if is_main:
        extra = {"run directory": cfg.run.dir, "wall time": f"{time.time() - start:.0f} s", kind: runs}
        print(summary(f"bertmt train: {title}", metrics, extra))
    return is_main


# ----------------------------------------------------------------------------------------- finished runs


def run_config(run_dir: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """The saved config of a run directory, with overrides (e.g. other dev files)."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise ConfigError(f"{run.config} does not exist: is {run_dir} a bertmt run directory?")
    return load_config(run.config, list(overrides))


def _model_epoch(run: RunDir) -> str:
    """Which epoch the best model is from, and whether the run has finished."""
    if run.task_models_json.is_file():  # train.exclusive
        models = run.read_json(run.task_models_json)
        # runs written before tasks.<t>.model named each model "task"
        epochs = [f"{m.get('model', m.get('task'))} epoch {m['best_epoch']}" for m in models]
        return "each task's own model: " + ", ".join(epochs)
    info = run.read_json(run.best_info) if run.best_info.is_file() else {}
    state = "" if run.status() == "finished" else f" (the run is {run.status()}: not its final best model)"
    return f"best model of epoch {info.get('epoch', '?')}{state}"


def evaluate_run(cfg: ExperimentConfig, run: RunDir, reports: bool = True, out: Path | None = None):
    """Dev metrics of the run's best model; see bertmt.evaluation.runs.evaluate_model."""
    from bertmt.evaluation.runs import evaluate_model

    return evaluate_model(cfg, run, reports, out)


def predict_run(cfg: ExperimentConfig, run: RunDir, split: str, fmt: str = "bertmt") -> list[Path]:
    from bertmt.evaluation.runs import predict_model

    return predict_model(cfg, run, split, fmt)


def evaluate(run_dir: str | Path, overrides: list[str] = ()) -> tuple[dict, Path, str]:
    """`bertmt eval RUN_DIR [overrides]`: metrics and reports under eval/<time>/ (the run's own reports/dev
    stay as training wrote them); returns the metrics, that directory and which model was evaluated."""
    cfg, run = run_config(run_dir, overrides), RunDir(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = (stamp if i == 1 else f"{stamp}-{i}" for i in range(1, 1000))
    out = next(run.eval / n for n in names if not (run.eval / n).exists())
    metrics, out = evaluate_run(cfg, run, reports=True, out=out)
    subs = [*sorted(run.phases.glob("*")), *sorted(run.task_models.glob("*"))]
    for done in [run, *(RunDir(p) for p in subs)]:  # curves of what trained
        if done.history.is_file() and done.tensorboard.is_dir():
            _plot(done)
    return metrics, out, _model_epoch(run)


def predict(
    run_dir: str | Path, split: str, overrides: list[str] = (), fmt: str = "bertmt"
) -> tuple[list[Path], str]:
    """`bertmt predict RUN_DIR --split S [--format cs224n]`: the written files and which model wrote them."""
    cfg, run = run_config(run_dir, overrides), RunDir(run_dir)
    return predict_run(cfg, run, split, fmt), _model_epoch(run)


def export(run_dir: str | Path, out: str | Path, fmt: str) -> tuple[Path, str]:
    """`bertmt export RUN_DIR OUT --format hf|sentence-transformers` (bertmt/export.py)."""
    from bertmt.export import export as write

    cfg, run = run_config(run_dir), RunDir(run_dir)
    return write(cfg, run, Path(out), fmt), _model_epoch(run)
