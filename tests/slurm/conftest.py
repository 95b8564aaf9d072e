"""A real SLURM for these tests: ../shared/tools/local-slurm/start-slurm.sh with two emulated nodes, started
once per session and stopped at its end. Skipped (with the reason) when not root or the scripts are absent,
except under CI=true, where that fails; a start that fails is an error, not a skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import skip_unless_ci
from tests.e2e.helpers import REPO, cli_env

TOOLS = REPO.parent / "shared" / "tools" / "local-slurm"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


@pytest.fixture(scope="session")
def slurm():
    if os.geteuid() != 0:
        skip_unless_ci("the local SLURM needs root (start-slurm.sh installs packages and starts daemons)")
    if not (TOOLS / "start-slurm.sh").is_file():
        skip_unless_ci(f"{TOOLS}/start-slurm.sh not found")
    env = dict(os.environ, SLURM_CI_NODES="2", SLURM_CI_GPUS="0")
    proc = subprocess.run(
        ["bash", str(TOOLS / "start-slurm.sh")], capture_output=True, text=True, env=env, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"start-slurm.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    yield
    subprocess.run(["bash", str(TOOLS / "stop-slurm.sh")], capture_output=True, env=env, timeout=300)


def job_env() -> dict:
    """The environment jobs inherit (sbatch exports it): no rank variables, one thread per rank."""
    return cli_env() | {"OMP_NUM_THREADS": "1"}


def run(*cmd: str, timeout: int = 120) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=job_env(), cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def bertmt_cli(*args: str, timeout: int = 600) -> str:
    return run(sys.executable, "-m", "bertmt.cli", *args, timeout=timeout)


def job_states(job_id: str) -> list[str]:
    """Accounting state of the job, or of every task of a job array ([] before accounting knows it)."""
    out = subprocess.run(
        ["sacct", "-j", job_id, "-n", "-X", "-P", "-o", "State"], capture_output=True, text=True
    ).stdout.split("\n")
    return [line.split()[0] for line in out if line.strip()]


def wait_job(job_id: str, timeout: int = 600) -> list[str]:
    """Poll accounting until the job (every array task) is in a terminal state; a requeued job goes on."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout
        states = job_states(job_id)
        if not queued.strip() and states and all(s in TERMINAL for s in states):
            return states
        time.sleep(1)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s: {job_states(job_id)}")


def submitted_id(stdout: str) -> str:
    """The job id in `bertmt submit --sbatch` / `bertmt sweep` output ('submitted batch job N; ...')."""
    return stdout.split("submitted batch job ")[1].split(";")[0].strip()


def slurm_log(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(run_dir.glob("slurm-*.out")))
