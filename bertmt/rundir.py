"""The run directory: every file a run writes, its status, its lock and its configuration history.

Nothing else in bertmt spells a run directory's file names. Imports no torch.

    config.yaml            the resolved config (the one a restart is compared with)
    config_changes.jsonl   changes allowed on restart (``--allow-config-change``), one JSON line each
    run_info.json          commit, versions, world size, command line, host
    train.log              rank 0's log
    tensorboard/           scalar events
    checkpoints/<tag>/     DeepSpeed checkpoints; checkpoints/latest names the newest complete one
    best/                  the best epoch's weights (model.safetensors) and info.json
    metrics.json           the best epoch's dev metrics: the run finished
    history.json           dev metrics after every epoch
    failed.json            the error that ended the run: the run failed
    pruned.json            a study's pruner stopped the run after an epoch (`bertmt tune`)
    predictions/           <task>-<split>.csv (cs224n/: the CS224N starter code's files)
    plots/                 training_curves.png
    reports/dev/           per-task reports and plots of the best model
    eval/<time>/           what `bertmt eval` wrote
    phases/<i>-<name>/     a phased run's phases, each a run directory of its own
    .lock                  held by the one trainer of the run (see RunLock)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from bertmt.files import atomic_write

log = logging.getLogger(__name__)

FINISHED, FAILED, PRUNED = "finished", "failed", "pruned"
UNFINISHED, NOT_STARTED = "unfinished", "not started"


class RunDir:
    """The paths of one run directory, its status and the readers of its small JSON files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / "config.yaml")
    config_changes = property(lambda self: self.path / "config_changes.jsonl")
    run_info = property(lambda self: self.path / "run_info.json")
    deepspeed_config = property(lambda self: self.path / "deepspeed_config.json")
    encoder_config = property(lambda self: self.path / "encoder_config.json")
    tokenizer = property(lambda self: self.path / "tokenizer.json")
    train_log = property(lambda self: self.path / "train.log")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoints = property(lambda self: self.path / "checkpoints")
    latest = property(lambda self: self.path / "checkpoints" / "latest")
    best = property(lambda self: self.path / "best")
    best_model = property(lambda self: self.path / "best" / "model.safetensors")
    best_info = property(lambda self: self.path / "best" / "info.json")
    metrics = property(lambda self: self.path / "metrics.json")
    history = property(lambda self: self.path / "history.json")
    failed = property(lambda self: self.path / "failed.json")
    pruned = property(lambda self: self.path / "pruned.json")
    predictions = property(lambda self: self.path / "predictions")
    reports = property(lambda self: self.path / "reports" / "dev")
    training_curves = property(lambda self: self.path / "plots" / "training_curves.png")
    eval = property(lambda self: self.path / "eval")
    phases = property(lambda self: self.path / "phases")
    phases_json = property(lambda self: self.path / "phases.json")
    task_models = property(lambda self: self.path / "tasks")  # train.exclusive: one run per task
    task_models_json = property(lambda self: self.path / "tasks.json")
    lock_file = property(lambda self: self.path / ".lock")

    def prediction(self, task: str, split: str) -> Path:
        return self.predictions / f"{task}-{split}.csv"

    def phase(self, index: int, name: str) -> RunDir:
        """Phase ``index`` (0-based) of a phased run: a run directory of its own."""
        return RunDir(self.phases / f"{index + 1}-{name}")

    def task_model(self, model: str) -> RunDir:
        """The run of model ``model`` (a head's task, or a tasks.<t>.model) in an exclusive run."""
        return RunDir(self.task_models / model)

    def has_checkpoint(self) -> bool:
        """Whether training has saved anything to resume from (here, in a phase, in a model of an exclusive
        run or in one of that model's phases)."""
        subs = [*self.phases.glob("*"), *self.task_models.glob("*"), *self.task_models.glob("*/phases/*")]
        return self.latest.is_file() or any(RunDir(p).latest.is_file() for p in subs)

    def status(self) -> str:
        """finished (metrics.json), failed (failed.json: the error that ended it), pruned (pruned.json: a
        study stopped it after an epoch), unfinished (started: running, preempted or killed), not started."""
        if self.metrics.is_file():
            return FINISHED
        if self.failed.is_file():
            return FAILED
        if self.pruned.is_file():
            return PRUNED
        if self.config.is_file() or self.has_checkpoint():
            return UNFINISHED
        return NOT_STARTED

    def read_json(self, path: Path) -> dict | list:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist: is {self.path} a finished bertmt run?") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None

    def read_metrics(self) -> dict:
        """The best epoch's dev metrics (metrics.json)."""
        return self.read_json(self.metrics)

    def write_failed(self, error: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.failed, json.dumps({"error": error, "time": time.ctime()}, indent=2))

    def write_pruned(self, epoch: int) -> None:
        atomic_write(self.pruned, json.dumps({"epoch": epoch, "time": time.ctime()}, indent=2))

    def lock(self) -> RunLock:
        return RunLock(self.lock_file)


class RunLocked(RuntimeError):
    """Another trainer holds the run directory."""


class RunLock:
    """One trainer per run directory: an exclusive POSIX record lock (``fcntl.lockf``, which NFS v3 with
    lockd and NFS v4 honour across hosts) on ``.lock``. The kernel (or the NFS server, after its lease time)
    releases it when the holding process dies, however it dies; the file keeps the holder's pid, host and
    start time, so a lock found free but not emptied is reported as left by a trainer that did not exit
    cleanly."""

    def __init__(self, path: Path) -> None:
        self.path, self._fd = Path(path), None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunLocked(
                f"run directory {self.path.parent} is in use by another trainer ({holder}); two trainers on "
                "one directory would mix their checkpoints. Wait for it, stop it, or choose another run.dir"
            ) from None
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            log.warning(
                "run directory %s: the previous trainer (%s) did not exit cleanly (killed, or its node "
                "failed); its lock was released, this trainer takes over",
                self.path.parent,
                _describe(previous),
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empty the file (a clean exit) and unlock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing releases the lock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        h = json.loads(raw.decode())
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
