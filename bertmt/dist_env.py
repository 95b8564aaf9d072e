"""Rank and world size of this process, from the launcher's environment, before torch.distributed exists.

torchrun and the ``deepspeed`` launcher set RANK / WORLD_SIZE / LOCAL_RANK; an ``srun`` step with one task per
rank sets SLURM's variables, which :func:`slurm_env_to_torch` turns into torch's. Imports no torch.
"""

from __future__ import annotations

import os
import subprocess


def slurm_env_to_torch() -> None:
    """Inside an ``srun`` step with one task per rank (and no launcher that set RANK), take rank, world size
    and local rank from SLURM, and the master address from the first node of the job (port: MASTER_PORT, else
    one derived from the job id). The batch step itself (no SLURM_STEP_NUM_TASKS) stays a single process."""
    env = os.environ
    if "RANK" in env or "SLURM_STEP_NUM_TASKS" not in env:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_STEP_NUM_TASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodes = subprocess.run(
            ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True, text=True
        ).stdout.split()
        if not nodes:
            raise RuntimeError(f"scontrol show hostnames {env['SLURM_JOB_NODELIST']!r} returned no host")
        env["MASTER_ADDR"] = nodes[0]
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))


def rank() -> int:
    """This process's global rank (0 for a single process)."""
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    """The number of ranks of this run (1 for a single process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
