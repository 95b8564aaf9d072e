"""Preemption and time-limit handling on SLURM: checkpoint at the next optimiser step, then requeue.

SLURM sends ``slurm.signal`` (USR1 or USR2) to every rank before the time limit (``--signal``) or when
``scancel --signal`` is used. The handler only sets a flag; the trainer asks :meth:`requested` at every
optimiser step, where the ranks agree (one all-reduce of a flag) so they all stop at the same step. The
trainer then saves a checkpoint, rank 0 runs ``scontrol requeue`` and every rank exits; the requeued job
starts the same command again and resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped at a checkpoint because of a preemption or time-limit signal."""

    def __init__(self, step: int, requeued: bool) -> None:
        self.step, self.requeued = step, requeued
        action = "job requeued" if requeued else "start the same command again to resume"
        super().__init__(f"stopped by signal at step {step}; checkpoint saved, {action}")


def slurm_job() -> dict[str, str] | None:
    """The SLURM job this process runs in (id, restart count), or None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {"job_id": os.environ["SLURM_JOB_ID"], "restarts": os.environ.get("SLURM_RESTART_COUNT", "0")}


class Preemption:
    def __init__(self, signal_name: str, world: int, enabled: bool) -> None:
        self.world, self.enabled, self.signal_name = world, enabled, signal_name
        self._flag = False
        if enabled:
            signal.signal(getattr(signal, f"SIG{signal_name}"), self._handle)

    def _handle(self, signum, frame) -> None:
        self._flag = True

    def requested(self) -> bool:
        """Whether any rank got the signal (all ranks get the same answer)."""
        if not self.enabled:
            return False
        if self.world == 1:
            return self._flag
        flag = torch.tensor([float(self._flag)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def requeue(self, rank: int, allowed: bool) -> bool:
        """Rank 0 asks SLURM to requeue this job; every rank waits for it. Returns whether it was requeued."""
        job = slurm_job()
        done = False
        if rank == 0 and allowed and job is not None:
            proc = subprocess.run(["scontrol", "requeue", job["job_id"]], capture_output=True, text=True)
            done = proc.returncode == 0
            if done:
                log.warning("requeued SLURM job %s (restart %s)", job["job_id"], int(job["restarts"]) + 1)
            else:
                log.error("scontrol requeue %s failed: %s", job["job_id"], proc.stderr.strip())
        if self.world > 1:
            dist.barrier()
        return done if rank == 0 else allowed and job is not None
