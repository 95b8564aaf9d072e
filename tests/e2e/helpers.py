"""Running the real `bertmt` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def cli_env() -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def bertmt(
    *args: str, check: bool = True, timeout: int = 600, module: str = "bertmt.cli", env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m module args`` (the bertmt CLI, or the test worker that wraps it) in one process."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=cli_env() | (env or {}),
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"bertmt {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def torchrun(
    nproc: int,
    *args: str,
    module: str = "bertmt.cli",
    timeout: int = 600,
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc -m module args`` on CPU (gloo), on a free port."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        "-m",
        module,
        *args,
    ]
    env = cli_env() | {"OMP_NUM_THREADS": "1"} | (env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return proc


def train_many(
    nproc: int, runs: list[list[str]], scratch: Path, timeout: int = 1800, env: dict | None = None
) -> None:
    """``bertmt`` with each argument list of ``runs`` in turn, in one process (nproc 1) or one torchrun
    launch: the test worker (tests/distributed/worker.py) starts torch and DeepSpeed once for all of them.
    ``env``: more of the worker's variables (BERTMT_TEST_*)."""
    import json

    scratch.write_text(json.dumps(runs))
    env = {"BERTMT_TEST_RUNS": str(scratch)} | (env or {})
    worker = "tests.distributed.worker"
    if nproc == 1:
        bertmt(module=worker, env=env, timeout=timeout)
    else:
        torchrun(nproc, module=worker, env=env, timeout=timeout)


def train_losses(run_dir: Path) -> dict[str, list[float]]:
    """The ``train/<task>/loss`` scalars of a run's TensorBoard events, read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [e.value for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("train/") and tag.endswith("/loss")
    }


def scalars(run_dir: Path, tag: str) -> list[float]:
    """One TensorBoard scalar of a run, every logged value in step order, read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def tune_file(path: Path, study_dir: Path, overrides: list[str], **keys) -> Path:
    """A TUNE.yaml on configs/quickstart.yaml: ``overrides`` (tiny_overrides' run.dir dropped: every trial
    has its own) for every trial, an optim.lr space, and ``keys`` over the defaults below."""
    import yaml

    spec = {
        "base": str(QUICKSTART),
        "dir": str(study_dir),
        "overrides": [o for o in overrides if not o.startswith("run.dir=")],
        "trials": 4,
        "workers": 2,
        "sampler": {"kind": "random", "seed": 0},
        "pruner": {"kind": "asha", "min_epochs": 1},
        "space": {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}},
        "heartbeat_s": 1,
        "stale_after_s": 6,
    }
    path.write_text(yaml.safe_dump(spec | keys))
    return path


def load_study(study_dir: Path):
    """The study with plain Optuna: JournalStorage(JournalFileBackend(DIR/study.journal)), the one study."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(
        study_name=None, storage=JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    )
