"""Stopping between optimiser steps: signals (SLURM preemption and time limit, SIGTERM, SIGINT), divergence.

SLURM sends ``slurm.signal`` (USR1 or USR2) to every rank before the time limit (``--signal``) or when
``scancel --signal`` is used; ``kill``, ``timeout``, container stops and plain ``scancel`` send SIGTERM,
Ctrl-C SIGINT. The handlers only set a flag; after every optimiser step the trainer calls
:meth:`StopCheck.poll`, where the ranks agree (one all-reduce of two numbers) on whether any rank got a
signal and whether any rank saw a non-finite loss or gradient norm, so they all stop at the same step. On a
signal the trainer saves a checkpoint and exits (after the SLURM signal rank 0 first runs ``scontrol
requeue``; the requeued job resumes from the checkpoint); on divergence it exits without saving, so the last
checkpoint is the last good state.
A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
NO_SIGNAL, STOP, REQUEUE = 0, 1, 2  # what the agreed signal asks for (the highest of any rank wins)


class Preempted(Exception):
    """Training stopped at a checkpoint because of a signal."""

    def __init__(self, step: int, requeued: bool, signal_name: str = "") -> None:
        self.step, self.requeued = step, requeued
        action = "job requeued" if requeued else "start the same command again to resume"
        super().__init__(f"stopped by {signal_name or 'a signal'} at step {step}; checkpoint saved, {action}")


class Pruned(Exception):
    """Training stopped after an epoch because an epoch callback (a study's pruner) asked for it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        super().__init__(f"pruned after epoch {epoch}: the study's pruner stopped this trial")


class Diverged(FloatingPointError):
    """A loss or gradient norm became inf or NaN (fp32/bf16; fp16 overflows are the loss scaler's)."""


def slurm_job() -> dict[str, str] | None:
    """The SLURM job this process runs in (id, restart count), or None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {"job_id": os.environ["SLURM_JOB_ID"], "restarts": os.environ.get("SLURM_RESTART_COUNT", "0")}


class StopCheck:
    """Signal handlers for ``SIG<slurm_signal>`` (requeue; only with ``requeue_signal``), SIGTERM and SIGINT
    (stop), installed until :meth:`close`, and the per-step agreement between ranks."""

    def __init__(self, slurm_signal: str, world: int, requeue_signal: bool) -> None:
        self.world, self.slurm_signal = world, f"SIG{slurm_signal}"
        self.received: tuple[int, str] | None = None  # (what it asks for, the signal's name)
        self._previous: dict[int, object] = {}
        wanted = {signal.SIGTERM: STOP, signal.SIGINT: STOP}
        if requeue_signal:
            wanted[getattr(signal, self.slurm_signal)] = REQUEUE
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: signals stop this run without a checkpoint")
            return
        for signum, action in wanted.items():
            self._previous[signum] = signal.signal(signum, self._handler(action))

    def _handler(self, action: int):
        def handle(signum, frame) -> None:
            name = signal.Signals(signum).name
            if signum == signal.SIGINT and self.received is not None and self.received[1] == "SIGINT":
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            if self.received is None or action > self.received[0]:
                self.received = (action, name)

        return handle

    def poll(self, nonfinite: bool) -> tuple[int, bool]:
        """(NO_SIGNAL, STOP or REQUEUE, whether any rank saw a non-finite value); the same on every rank."""
        mine = self.received[0] if self.received else NO_SIGNAL
        if self.world == 1:
            return mine, nonfinite
        flags = torch.tensor([float(mine), float(nonfinite)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[0].item()), bool(flags[1].item())

    @property
    def signal_name(self) -> str:
        return self.received[1] if self.received else self.slurm_signal

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

    def close(self) -> None:
        """Put the previous handlers back (a phased run installs its own for every phase)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
