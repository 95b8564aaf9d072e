"""`bertmt submit CONFIG --cluster slurm|local|debug`: one Submitit job, one task per rank.

Each task sets torch.distributed's environment from SLURM's (Submitit's TorchDistributedEnvironment) and runs
`bertmt train` in-process. Submitit signals USR2 before the time limit and on preemption; bertmt's trainer
handles it (``slurm.signal=USR2``): checkpoint at the next optimiser step, ``scontrol requeue``, and the
requeued job calls this object again, which resumes from the checkpoint. The model, torch and deepspeed are
imported inside the job only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bertmt.config import ExperimentConfig


class TrainJob:
    """A picklable `bertmt train CONFIG OVERRIDES` for Submitit; task 0 returns the run's metrics.json."""

    def __init__(self, config: str, overrides: list[str]) -> None:
        self.config, self.overrides = str(Path(config).resolve()), list(overrides)

    def __call__(self) -> dict | None:
        import submitit

        from bertmt import run
        from bertmt.config import load_config
        from bertmt.rundir import FINISHED, RunDir

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = load_config(self.config, self.overrides)
        done = RunDir(cfg.run.dir)
        if done.status() == FINISHED:  # a resubmitted sweep: a finished run is not trained again
            return done.read_metrics() if env.global_rank == 0 else None
        code = run.train(cfg)
        if code == run.EXIT_REQUEUED:  # SLURM ends this process; returning or raising would store a result
            time.sleep(3600)
        if code != 0:
            raise RuntimeError(f"bertmt train exited with code {code} (see {RunDir(cfg.run.dir).train_log})")
        if env.global_rank != 0:
            return None  # rank 0 writes metrics.json
        return RunDir(cfg.run.dir).read_metrics()


def executor(cfg: ExperimentConfig, folder: Path, cluster: str, array_parallelism: int | None = None):
    """A Submitit AutoExecutor with the config's slurm resources; USR2 comes ``signal_seconds`` before the
    time limit."""
    import submitit

    s = cfg.slurm
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    hours, minutes, seconds = ([0, 0] + [int(x) for x in s.time.split("-")[-1].split(":")])[-3:]
    days = int(s.time.split("-")[0]) if "-" in s.time else 0
    params = {
        "timeout_min": max(1, days * 1440 + hours * 60 + minutes + (seconds > 0)),
        "nodes": s.nodes,
        "tasks_per_node": s.ranks_per_node,
        "cpus_per_task": s.cpus_per_task,
        "name": f"bertmt-{Path(cfg.run.dir).name}",
    }
    if cluster == "slurm":
        params |= {"slurm_signal_delay_s": s.signal_seconds}
        params |= {"slurm_partition": s.partition} if s.partition else {}
        params |= {"slurm_account": s.account} if s.account else {}
        params |= {"slurm_gpus_per_node": s.gpus_per_node} if s.gpus_per_node else {}
        params |= {"slurm_mem": s.mem} if s.mem else {}
        params |= {"slurm_setup": list(s.setup)} if s.setup else {}
        if array_parallelism:
            params["slurm_array_parallelism"] = array_parallelism
    ex.update_parameters(**params)
    return ex


def job_overrides(overrides: list[str], run_dir: str, cluster: str) -> list[str]:
    """Submitit's signal is USR2; run.dir is pinned to an absolute path (jobs start in another directory)."""
    extra = ["slurm.signal=USR2"] if cluster == "slurm" else []
    return [*overrides, *extra, f"run.dir={Path(run_dir).resolve()}"]


def submit(cfg: ExperimentConfig, config: str, overrides: list[str], cluster: str):
    run_dir = Path(cfg.run.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ex = executor(cfg, run_dir / "submitit", cluster)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return ex.submit(TrainJob(config, job_overrides(overrides, str(run_dir), cluster)))


def submit_array(
    cfg: ExperimentConfig,
    config: str,
    runs: list[tuple[str, list[str]]],
    cluster: str,
    folder: Path,
    parallel: int,
):
    """One Submitit job array (``map_array``): one array task per (run_dir, overrides)."""
    ex = executor(cfg, folder, cluster, array_parallelism=parallel)
    jobs = [TrainJob(config, job_overrides(o, d, cluster)) for d, o in runs]
    return ex.map_array(_call, jobs)


def _call(job: TrainJob) -> dict:
    return job()
