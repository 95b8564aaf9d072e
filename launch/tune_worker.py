"""One worker of a `bertmt tune` study (`bertmt tune-worker DIR`): a SLURM array task, a Submitit task or a
local process. It claims a trial (launch/study.py), trains it in ``DIR/trials/<number>/`` with bertmt's
ordinary run lifecycle, reports the objective to the study after every epoch, and claims the next one until
the study has its trials.

A worker may have several ranks (srun tasks, torchrun): rank 0 alone talks to the study; the claim and every
pruning decision are broadcast to the others. A signal stops the trial at a checkpoint (bertmt's preemption
path); the trial stays running in the study, owned by this worker's id, which is the same after a SLURM
requeue, so the requeued worker resumes it. Exit codes: 0 the study has its trials, 3 stopped by a signal
(run the same command to resume), 4 the same and SLURM requeued the job, 1 an error.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from bertmt import dist_env
from bertmt.rundir import RunDir
from launch.study import (
    REQUEUED,
    STOPPED,
    Claim,
    Heartbeat,
    Worker,
    claim_next,
    load_spec,
    open_study,
    trial_dir,
)

log = logging.getLogger("bertmt.tune")
EXIT_STOPPED, EXIT_REQUEUED = 3, 4


class IdleSignals:
    """Between trials (while no trainer has its own handlers): a signal ends the worker before the next
    trial; SLURM's signal also requeues the job."""

    def __init__(self, slurm_signal: str) -> None:
        self.received: str | None = None
        self.requeue_signal = getattr(signal, f"SIG{slurm_signal}")
        for signum in (signal.SIGTERM, signal.SIGINT, self.requeue_signal):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def exit_code(self, worker: Worker) -> int:
        """Requeue the SLURM job after SLURM's signal (rank 0); the worker's exit code."""
        import subprocess

        if self.received != self.requeue_signal.name or worker.job is None:
            return EXIT_STOPPED
        if dist_env.rank() == 0:
            subprocess.run(["scontrol", "requeue", worker.job], check=False)
        log.warning("%s between trials: job %s requeued", self.received, worker.job)
        return EXIT_REQUEUED


def work(study_dir: str | Path, worker_id: str | None = None) -> int:
    from bertmt.engine.runtime import init_distributed, setup_logging

    dist_env.slurm_env_to_torch()
    setup_logging(None, dist_env.rank())
    spec = load_spec(Path(study_dir))
    worker = Worker.from_env(worker_id)
    rank, world = dist_env.rank(), dist_env.world()
    base = spec.config({}, trial_dir(Path(spec.dir), 0))
    init_distributed(base.train.dist_timeout_s)  # one group for all trials (DeepSpeed keeps a reference)
    study = (
        open_study(spec, base.train.epochs, worker.seed(spec.sampler.get("seed", 0))) if rank == 0 else None
    )
    signals = IdleSignals(base.slurm.signal)
    log.info("worker %s (rank %d of %d) on study %s", worker.id, rank, world, spec.dir)
    while True:
        claim = _next_claim(study, spec, worker, signals) if rank == 0 else None
        claim = _broadcast(claim, world)
        if claim is None or claim is False:
            return signals.exit_code(worker) if signals.received else 0
        code = train_trial(study, spec, worker, claim)
        if code in (EXIT_STOPPED, EXIT_REQUEUED):
            return code
        if signals.received:
            return signals.exit_code(worker)


def _next_claim(study, spec, worker: Worker, signals: IdleSignals) -> Claim | None | bool:
    """Claim a trial, waiting while every remaining trial is in flight elsewhere; False after a signal."""
    while not signals.received:
        claim = claim_next(study, spec, worker)
        if claim is not False:
            return claim
        time.sleep(spec.heartbeat_s)
    return False


def _broadcast(obj, world: int):
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_trial(study, spec, worker: Worker, claim: Claim) -> int:
    """Train (or resume) one trial on every rank; rank 0 reports and tells the study. Returns run.train's
    exit code."""
    from bertmt import run
    from bertmt.engine.runtime import setup_logging

    run_dir = trial_dir(Path(spec.dir), claim.number)
    cfg = spec.config(claim.params, run_dir)
    if study is None:  # ranks > 0: the callback is rank 0's (Trainer.fit broadcasts its answer)
        code = run.train(cfg, on_epoch=_never)
        setup_logging(None, dist_env.rank())
        return code
    trial = _trial(study, claim.number)
    action = "resuming" if claim.resumed else "starting"
    log.info("%s trial %d in %s: %s", action, claim.number, run_dir, claim.params)
    beat = Heartbeat(Path(spec.dir), claim.number, worker, spec.heartbeat_s)
    stopped = None
    try:
        code = run.train(cfg, on_epoch=_reporter(trial, spec))
        stopped = {run.EXIT_PREEMPTED: STOPPED, run.EXIT_REQUEUED: REQUEUED}.get(code)
    except Exception as exc:
        code = run.EXIT_FAILED
        _tell(study, spec, claim.number, run_dir, code, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        beat.stop(stopped)
        setup_logging(None, 0)  # the trial's train.log is not the worker's
    if stopped is None:
        _tell(study, spec, claim.number, run_dir, code)
    return code


def _never(entry: dict) -> bool:
    raise AssertionError("only rank 0 decides whether a trial is pruned")


def _trial(study, number: int):
    """The live optuna Trial of a trial number (to report to and ask the pruner)."""
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def _reporter(trial, spec):
    def on_epoch(entry: dict) -> bool:
        value = spec.objective_of(entry, f"the dev metrics of epoch {entry['epoch']}")
        trial.report(value, entry["epoch"])  # a resumed trial reports only epochs it had not reported
        prune = trial.should_prune()
        log.info("trial %d epoch %d: %s %.4f%s", trial.number, entry["epoch"], spec.objective, value,
                 " -> pruned" if prune else "")  # fmt: skip
        return prune

    return on_epoch


def _tell(study, spec, number: int, run_dir: Path, code: int, error: str | None = None) -> None:
    """Tell the study how the trial ended: its metrics.json objective, pruned, or failed (with why)."""
    from optuna.trial import TrialState

    from bertmt import run

    rd = RunDir(run_dir)
    trial = _trial(study, number)
    try:
        history = rd.read_json(rd.history) if rd.history.is_file() else []
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("status", rd.status())
        if code == 0:
            study.tell(number, spec.objective_of(rd.read_metrics(), str(rd.metrics)))
        elif code == run.EXIT_PRUNED:
            study.tell(number, state=TrialState.PRUNED)
        else:
            if error is None:
                error = rd.read_json(rd.failed).get("error") if rd.failed.is_file() else f"exit code {code}"
            trial.set_user_attr("error", str(error)[:500])
            study.tell(number, state=TrialState.FAIL)
    except (RuntimeError, ValueError) as exc:  # the trial was retried meanwhile (its heartbeat went stale)
        log.error("trial %d could not be told (%s): %s", number, type(exc).__name__, exc)
