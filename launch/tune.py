"""`bertmt tune TUNE.yaml --backend local|sbatch|submitit`: prepare the study directory, then start its
workers (launch/tune_worker.py) as local processes, one SLURM job array (slurm/tune.sbatch) or a Submitit
job array. Each trial trains on ``slurm.tasks_per_node`` ranks of the base config (local: torchrun).
Imports no torch."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from bertmt.config import ConfigError
from launch.render import common, fill, load_template
from launch.study import finished, open_study, storage, trial_dir
from launch.tune_spec import SPEC_FILE, TuneSpec

# keys a study may change when it is started again: they do not change what a trial computes
ADJUSTABLE = ("trials", "workers", "slurm", "heartbeat_s", "stale_after_s")


def prepare(spec: TuneSpec) -> None:
    """Create (or reopen) the study directory: freeze the spec in tune.json (a restart may change only
    ADJUSTABLE keys), create the study, enqueue the ``enqueue`` trials once."""
    study_dir = Path(spec.dir)
    frozen = study_dir / SPEC_FILE
    if frozen.is_file():
        old, new = json.loads(frozen.read_text()), json.loads(spec.to_json())
        changed = sorted(k for k in new if k not in ADJUSTABLE and old.get(k) != new[k])
        if changed:
            lines = "\n".join(f"  {k}: {old.get(k)!r} in the study, {new[k]!r} now" for k in changed)
            raise ConfigError(
                f"{study_dir} holds a study with another search:\n{lines}\nUse another 'dir' for a new study"
            )
    (study_dir / "workers").mkdir(parents=True, exist_ok=True)
    (study_dir / "trials").mkdir(exist_ok=True)
    frozen.write_text(spec.to_json())
    study = open_study(spec, spec.config({}, trial_dir(study_dir, 0)).train.epochs)
    if not study.user_attrs.get("enqueued"):
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("enqueued", len(spec.enqueue))


def progress(spec: TuneSpec) -> tuple[int, int, float | None]:
    """(finished trials, running trials, best value so far) from the journal."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=spec.study_name, storage=storage(Path(spec.dir)))
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE]
    best = (max if spec.direction == "maximize" else min)(values) if values else None
    return len(finished(trials)), running, best


# ----------------------------------------------------------------------------------------------- local


def _worker_command(spec: TuneSpec, index: int, ranks: int) -> list[str]:
    worker = ["tune-worker", spec.dir, "--worker", f"local-{index}"]
    if ranks == 1:
        return [sys.executable, "-m", "bertmt.cli", *worker]
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
    return [*launch, "-m", "bertmt.cli", *worker]


def run_local(spec: TuneSpec) -> int:
    """Start ``workers`` local worker processes (logs: DIR/workers/local-<i>.log; the cores shared out
    through OMP_NUM_THREADS unless it is set), show the study's progress, and wait. SIGTERM is passed on
    (the workers stop at a checkpoint; run the same command to resume). Returns 0 when the study has its
    trials."""
    from tqdm import tqdm

    ranks = spec.config({}, trial_dir(Path(spec.dir), 0)).slurm.ranks_per_node
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (spec.workers * ranks))))
    procs = []
    for i in range(spec.workers):
        log = open(Path(spec.dir) / "workers" / f"local-{i}.log", "a")
        procs.append(
            subprocess.Popen(_worker_command(spec, i, ranks), stdout=log, stderr=subprocess.STDOUT, env=env)
        )
    previous = signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
    bar = tqdm(total=spec.trials, desc=f"study {spec.study_name}", unit="trial", dynamic_ncols=True)
    try:
        while any(p.poll() is None for p in procs):
            _update(bar, spec)
            time.sleep(2)
    except KeyboardInterrupt:  # the workers got the Ctrl-C too: they stop at a checkpoint
        for p in procs:
            p.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    done = _update(bar, spec)
    bar.close()
    codes = {f"local-{i}": p.returncode for i, p in enumerate(procs)}
    bad = {w: c for w, c in codes.items() if c != 0}
    if bad:
        print(
            f"bertmt tune: workers that did not end cleanly: {bad} (logs in {spec.dir}/workers)",
            file=sys.stderr,
        )
    return 0 if done >= spec.trials else 1


def _update(bar, spec: TuneSpec) -> int:
    try:
        done, running, best = progress(spec)
    except Exception:  # the journal is being written: the next poll reads it
        return bar.n
    bar.update(done - bar.n)
    bar.set_postfix(running=running, best="-" if best is None else f"{best:.4f}")
    return done


# ----------------------------------------------------------------------------------------------- SLURM


def render_array(spec: TuneSpec) -> str:
    cfg = spec.config({}, trial_dir(Path(spec.dir), 0))
    values = common(cfg, spec.base, job_name=f"bertmt-tune-{spec.study_name}")
    values |= {
        "workers": spec.workers,
        "last": spec.workers - 1,
        "dir": shlex.quote(spec.dir),
        "trials": spec.trials,
    }
    return fill(load_template("tune"), values)


def submit_sbatch(spec: TuneSpec) -> str:
    path = Path(spec.dir) / "tune.sbatch"
    path.write_text(render_array(spec))
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {path} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


class TuneWorkerJob:
    """A picklable tune worker for Submitit (one array task each); returns the worker's exit code."""

    def __init__(self, study_dir: str, index: int) -> None:
        self.study_dir, self.index = study_dir, index

    def __call__(self) -> int:
        import submitit

        from launch.tune_worker import EXIT_REQUEUED, work

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        worker = None if "SLURM_ARRAY_JOB_ID" in os.environ else f"submitit-{self.index}"
        code = work(self.study_dir, worker)
        if code == EXIT_REQUEUED:  # SLURM ends this process; returning would store a result
            time.sleep(3600)
        if code != 0:
            raise RuntimeError(f"tune worker exited with code {code} (log: {env.paths.stderr})")
        return code


def submit_submitit(spec: TuneSpec, cluster: str):
    from launch.submitit_job import executor

    cfg = spec.config({}, trial_dir(Path(spec.dir), 0))
    ex = executor(cfg, Path(spec.dir) / "workers" / "submitit", cluster, array_parallelism=spec.workers)
    ex.update_parameters(name=f"bertmt-tune-{spec.study_name}")
    return ex.map_array(_call, [TuneWorkerJob(spec.dir, i) for i in range(spec.workers)])


def _call(job: TuneWorkerJob) -> int:
    return job()
