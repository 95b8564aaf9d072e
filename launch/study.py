"""The study of a `bertmt tune` directory and the bookkeeping that makes its workers safe on a cluster.

    DIR/tune.json          the spec the workers use (launch/tune_spec.py)
    DIR/study.journal      Optuna's JournalStorage (file backend, open(O_EXCL) lock: works on NFS)
    DIR/claim.lock         held (briefly) while a worker picks its next trial
    DIR/trials/<n>/        trial n's run directory, and its heartbeat.json
    DIR/workers/           the workers' logs

Which trial a worker trains is decided under the claim lock, in this order: its own trial that is still
running (it was preempted and requeued, or stopped, and resumes from its checkpoint), a waiting trial
(enqueued, or the retry of a stale one), a new trial while fewer than ``trials`` are finished or in flight.
A running trial whose heartbeat is older than ``stale_after_s`` (its worker was killed) is marked failed
(``bertmt:stale``) and enqueued again with the same parameters (``retry_of``); one whose worker was requeued
by SLURM and waits in the queue is not stale. Finished trials are complete, pruned, or failed except stale.
Imports no torch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bertmt.files import atomic_write
from launch.tune_spec import SPEC_FILE, TuneSpec, make_pruner, make_sampler

JOURNAL, CLAIM_LOCK = "study.journal", "claim"
STALE_ATTR, WORKER_ATTR, RETRY_ATTR, RUN_DIR_ATTR = "bertmt:stale", "worker", "retry_of", "run_dir"


def storage(study_dir: Path):
    """The study's JournalStorage: a file backend with Optuna's NFS-safe open lock."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(Path(study_dir) / JOURNAL)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def load_spec(study_dir: Path) -> TuneSpec:
    path = Path(study_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {study_dir} a bertmt tune directory?")
    return TuneSpec.from_json(path)


def open_study(spec: TuneSpec, epochs: int, seed: int | None = None):
    """The study (created when it does not exist); ``seed`` seeds this process's sampler."""
    import optuna

    seed = spec.sampler.get("seed", 0) if seed is None else seed
    return optuna.create_study(
        study_name=spec.study_name,
        storage=storage(Path(spec.dir)),
        sampler=make_sampler(spec, seed),
        pruner=make_pruner(spec, epochs),
        direction=spec.direction,
        load_if_exists=True,
    )


@dataclass
class Worker:
    """Who trains: a stable id (the same after a SLURM requeue), its index and its SLURM job (if any)."""

    id: str
    index: int
    restarts: int = 0
    job: str | None = None  # SLURM job id of this (array) task: what `scontrol requeue` requeued

    @classmethod
    def from_env(cls, given: str | None = None) -> Worker:
        env = os.environ
        restarts = int(env.get("SLURM_RESTART_COUNT", "0"))
        if given:
            index = int(given.rsplit("-", 1)[-1]) if given.rsplit("-", 1)[-1].isdigit() else 0
            return cls(given, index, restarts, env.get("SLURM_JOB_ID"))
        if "SLURM_ARRAY_JOB_ID" in env:
            task = int(env["SLURM_ARRAY_TASK_ID"])
            return cls(f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{task}", task, restarts, env["SLURM_JOB_ID"])
        if "SLURM_JOB_ID" in env:
            return cls(f"slurm-{env['SLURM_JOB_ID']}", 0, restarts, env["SLURM_JOB_ID"])
        return cls(f"{socket.gethostname()}-{os.getpid()}", 0)

    def seed(self, base: int) -> int:
        """Each worker (and each restart) samples with its own seed: equal seeds would give equal trials."""
        import numpy as np

        return int(np.random.SeedSequence([base, self.index, self.restarts]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------- heartbeats

RUNNING, REQUEUED, STOPPED = "running", "requeued", "stopped"


def heartbeat_path(study_dir: Path, number: int) -> Path:
    return trial_dir(study_dir, number) / "heartbeat.json"


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / "trials" / str(number)


def write_heartbeat(study_dir: Path, number: int, worker: Worker, state: str = RUNNING) -> None:
    beat = {"worker": worker.id, "state": state, "time": time.time(), "job": worker.job}
    beat |= {"host": socket.gethostname(), "pid": os.getpid()}
    path = heartbeat_path(study_dir, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(beat))


def read_heartbeat(study_dir: Path, number: int) -> dict | None:
    try:
        return json.loads(heartbeat_path(study_dir, number).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Heartbeat:
    """Rewrites a trial's heartbeat every ``interval`` seconds from a thread, until stopped."""

    def __init__(self, study_dir: Path, number: int, worker: Worker, interval: float) -> None:
        import threading

        self.args, self.interval, self._stop = (study_dir, number, worker), interval, threading.Event()
        write_heartbeat(*self.args)
        self._thread = threading.Thread(target=self._run, name="bertmt-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                write_heartbeat(*self.args)
            except OSError:  # a full or unreachable disk: the next beat tries again
                pass

    def stop(self, state: str | None = None) -> None:
        """Stop beating; ``state`` (requeued, stopped) is written last, for the worker that comes back."""
        self._stop.set()
        self._thread.join()
        if state is not None:
            write_heartbeat(*self.args, state=state)


def slurm_job_queued(job: str) -> bool:
    """Whether a SLURM job is still pending or running (a requeued array task waits in the queue)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def stale_reason(spec: TuneSpec, trial, now: float) -> str | None:
    """Why a running trial is stale (its worker is gone), or None while it is alive or will come back."""
    beat = read_heartbeat(Path(spec.dir), trial.number)
    if beat is None:  # asked for, but its worker died before its first heartbeat
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        beat = {"time": started, "state": RUNNING, "worker": trial.user_attrs.get(WORKER_ATTR)}
    if beat["state"] == REQUEUED and beat.get("job") and slurm_job_queued(beat["job"]):
        return None
    age = now - beat["time"]
    if age <= spec.stale_after_s:
        return None
    return f"worker {beat.get('worker')}: last heartbeat ({beat['state']}) {age:.0f} s ago"


# ----------------------------------------------------------------------------------------- the claim


def finished(trials) -> list:
    """Trials that count towards ``trials``: complete, pruned, and failed ones that are not retried."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return [
        t
        for t in trials
        if t.state in done or (t.state == TrialState.FAIL and STALE_ATTR not in t.user_attrs)
    ]


@dataclass
class Claim:
    number: int
    params: dict
    resumed: bool  # the worker's own trial, to continue from its checkpoint


def claim_next(study, spec: TuneSpec, worker: Worker) -> Claim | None | bool:
    """The trial this worker trains next (a Claim), None when the study has its trials, or False when there is
    nothing to start now but trials are still in flight (wait and ask again: one of them may become stale)."""
    from optuna.storages.journal import JournalFileOpenLock
    from optuna.trial import TrialState

    lock = JournalFileOpenLock(str(Path(spec.dir) / CLAIM_LOCK))
    lock.acquire()
    try:
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        mine = [t for t in running if t.user_attrs.get(WORKER_ATTR) == worker.id]
        if mine:
            write_heartbeat(Path(spec.dir), mine[0].number, worker)
            return Claim(mine[0].number, dict(mine[0].params), resumed=True)
        if len(finished(trials)) >= spec.trials:
            return None
        now = time.time()
        for t in running:
            reason = stale_reason(spec, t, now)
            if reason is not None:
                retry_stale(study, t, reason)
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        in_flight = [t for t in trials if t.state == TrialState.RUNNING]
        if not waiting and len(finished(trials)) + len(in_flight) >= spec.trials:
            return False
        trial = study.ask()  # a waiting trial first (Optuna claims it atomically in the journal)
        params = {k: p.suggest(trial, k) for k, p in spec.space.items()}
        run_dir = trial_dir(Path(spec.dir), trial.number)
        trial.set_user_attr(WORKER_ATTR, worker.id)
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
        write_heartbeat(Path(spec.dir), trial.number, worker)
        return Claim(trial.number, params, resumed=False)
    finally:
        lock.release()


def retry_stale(study, trial, reason: str) -> None:
    """Mark a stale trial failed and enqueue its parameters again (a new trial number, a fresh run)."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial._trial_id, STALE_ATTR, reason)
    study.tell(trial.number, state=TrialState.FAIL)
    retry = trial.user_attrs.get(RETRY_ATTR, trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: retry}, skip_if_exists=False)
