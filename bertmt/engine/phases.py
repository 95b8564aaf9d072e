"""Training phases: run the configs of ``phases:`` one after another, each from the previous one's best model.

Phase ``i`` is a complete run directory ``<run.dir>/phases/<i+1>-<name>`` (config, checkpoints, best/,
metrics.json, TensorBoard events). A phase whose directory has a metrics.json is finished and skipped, so a
phased run started again resumes inside the phase it stopped in (from that phase's latest checkpoint). The
top-level run directory gets the whole config, ``phases.json`` (each phase's best epoch and metrics),
``history.json`` (every epoch of every phase) and ``metrics.json``: the last phase's best.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch.distributed as dist

from bertmt import dist_env
from bertmt.config import ExperimentConfig, phase_configs, save_config
from bertmt.engine.runtime import setup_logging
from bertmt.files import atomic_write
from bertmt.rundir import RunDir

log = logging.getLogger(__name__)


def run_phases(cfg: ExperimentConfig, on_phase_end=None, last: bool = True) -> tuple[dict, list[dict]]:
    """Train every phase; returns the final metrics and one summary per phase. ``on_phase_end(phase_cfg,
    trainer)`` runs on every rank after each phase that trained (e.g. to plot it). ``last=False``: another
    training follows in this process (the next model of an exclusive run), which keeps the process group."""
    from bertmt.engine.mlm import trainer_class

    run = RunDir(cfg.run.dir)
    # stderr only until a phase's trainer logs into its own directory: "finished before: skipped" is seen
    setup_logging(None, dist_env.rank())
    phases = phase_configs(cfg)
    summaries: list[dict] = []
    previous_best: Path | None = None
    for i, (name, phase_cfg) in enumerate(phases):
        phase = RunDir(phase_cfg.run.dir)
        if phase.metrics.is_file():
            log.info("phase %d/%d '%s' finished before: skipped", i + 1, len(phases), name)
        else:
            trainer = trainer_class(phase_cfg)(phase_cfg, init_from=previous_best)
            log.info("phase %d/%d '%s' in %s", i + 1, len(phases), name, phase.path)
            train_in_turn(cfg, trainer, last=last and i + 1 == len(phases), on_end=on_phase_end)
        summaries.append(_summary(name, phase))
        previous_best = phase.best_model
    _write_top_level(run, summaries)
    return summaries[-1]["metrics"], summaries


def train_in_turn(cfg: ExperimentConfig, trainer, last: bool, on_end=None) -> None:
    """Train one of a run's several trainings (a phase, a task's own model) to the end: the top-level config
    saved first, the process group kept for the next one, ``on_end(trainer_cfg, trainer)`` afterwards."""
    start = time.time()
    if trainer.is_main:
        save_config(cfg, RunDir(cfg.run.dir).config)
    try:
        trainer.fit()
        if dist.is_initialized():
            dist.barrier()  # every rank reads the metrics.json that rank 0 has just written
    finally:
        trainer.close(keep_process_group=not last)
    log.info("%s done in %.0f s", trainer.cfg.run.dir, time.time() - start)
    if on_end is not None:
        on_end(trainer.cfg, trainer)


def _summary(name: str, phase: RunDir) -> dict:
    history = phase.read_json(phase.history)
    return {
        "phase": name,
        "dir": str(phase.path),
        "epochs_trained": len(history),
        "best_epoch": phase.read_json(phase.best_info)["epoch"],
        "metrics": phase.read_metrics(),
        "history": history,
    }


def _write_top_level(run: RunDir, summaries: list[dict]) -> None:
    if dist_env.rank() != 0:  # the process group may be gone after the last phase
        return
    history = [dict(h, phase=s["phase"]) for s in summaries for h in s["history"]]
    brief = [{k: v for k, v in s.items() if k != "history"} for s in summaries]
    atomic_write(run.phases_json, json.dumps(brief, indent=2))
    atomic_write(run.history, json.dumps(history, indent=2))
    atomic_write(run.metrics, json.dumps(summaries[-1]["metrics"], indent=2))
