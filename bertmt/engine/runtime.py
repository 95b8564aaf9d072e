"""Process-level set-up: distributed initialisation, logging, run-directory metadata."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import bertmt
from bertmt.dist_env import slurm_env_to_torch

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int = 600) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU); returns (rank, world).

    A single process gets RANK/WORLD_SIZE/MASTER_* defaults so that DeepSpeed does not look for MPI. A
    collective that waits longer than ``timeout_s`` (a crashed peer) raises instead of hanging.
    """
    from datetime import timedelta

    import deepspeed
    import torch.distributed as dist

    slurm_env_to_torch()
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def setup_logging(log_file: Path | None, rank: int, level: int = logging.INFO) -> None:
    """One logger set-up: rank 0 logs INFO to stderr and ``log_file`` (a run's train.log), other ranks
    warnings only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def git_commit() -> str:
    """Commit of the bertmt source tree (with '-dirty' for local changes), or 'unknown'."""
    src = Path(bertmt.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_info(path: Path, world: int) -> None:
    import deepspeed

    info = {
        "git_commit": git_commit(),
        "bertmt": bertmt.__version__,
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "world_size": world,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
    }
    with open(path, "w") as fp:
        json.dump(info, fp, indent=2)
