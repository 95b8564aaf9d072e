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
import os
import time
from pathlib import Path

import torch.distributed as dist

from bertmt.config import ExperimentConfig, phase_configs, save_config
from bertmt.engine import checkpoint as ckpt
from bertmt.engine.runtime import setup_logging

log = logging.getLogger(__name__)


def run_phases(cfg: ExperimentConfig, on_phase_end=None) -> tuple[dict, list[dict]]:
    """Train every phase; returns the final metrics and one summary per phase. ``on_phase_end(phase_cfg,
    trainer)`` runs on every rank after each phase that trained (e.g. to plot it)."""
    from bertmt.engine.trainer import Trainer

    run_dir = Path(cfg.run.dir)
    # stderr only until a phase's trainer logs into its own directory: "finished before: skipped" is seen
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    setup_logging(None, rank)
    phases = phase_configs(cfg)
    summaries: list[dict] = []
    previous_best: Path | None = None
    for i, (name, phase_cfg) in enumerate(phases):
        phase_dir = Path(phase_cfg.run.dir)
        metrics_file = phase_dir / "metrics.json"
        if metrics_file.is_file():
            log.info("phase %d/%d '%s' finished before: skipped", i + 1, len(phases), name)
        else:
            start = time.time()
            trainer = Trainer(phase_cfg, init_from=previous_best)
            if trainer.is_main:
                save_config(cfg, run_dir / "config.yaml")
            log.info("phase %d/%d '%s' in %s", i + 1, len(phases), name, phase_dir)
            try:
                trainer.fit()
                if dist.is_initialized():
                    dist.barrier()  # every rank reads the metrics.json that rank 0 has just written
            finally:
                trainer.close(keep_process_group=i + 1 < len(phases))
            log.info("phase '%s' done in %.0f s", name, time.time() - start)
            if on_phase_end is not None:
                on_phase_end(phase_cfg, trainer)
        summaries.append(_summary(name, phase_dir))
        previous_best = phase_dir / "best" / "model.safetensors"
    _write_top_level(run_dir, summaries)
    return summaries[-1]["metrics"], summaries


def _summary(name: str, phase_dir: Path) -> dict:
    history = json.loads((phase_dir / "history.json").read_text())
    best = json.loads((phase_dir / "best" / "info.json").read_text())
    return {
        "phase": name,
        "dir": str(phase_dir),
        "epochs_trained": len(history),
        "best_epoch": best["epoch"],
        "metrics": json.loads((phase_dir / "metrics.json").read_text()),
        "history": history,
    }


def _write_top_level(run_dir: Path, summaries: list[dict]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # the process group may be gone after the last phase
        return
    history = [dict(h, phase=s["phase"]) for s in summaries for h in s["history"]]
    brief = [{k: v for k, v in s.items() if k != "history"} for s in summaries]
    ckpt.atomic_write_text(run_dir / "phases.json", json.dumps(brief, indent=2))
    ckpt.atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2))
    ckpt.atomic_write_text(run_dir / "metrics.json", json.dumps(summaries[-1]["metrics"], indent=2))
