"""`bertmt tune` on the real local SLURM: the workers as one sbatch job array (one of them preempted by
SLURM's signal mid-trial: checkpoint, requeue, the same trial resumes and ends as an uninterrupted run), and
as a Submitit job array."""

from __future__ import annotations

import json
import re
import sys
import time

from optuna.trial import TrialState

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, load_study, tune_file
from tests.slurm.conftest import bertmt_cli, run, submitted_id, wait_job

SLURM = {"python": sys.executable, "cpus_per_task": 1, "time": "00:15:00"}


def _overrides(pretrained, data, tmp_path, **extra) -> list[str]:
    extra = {"run.reports": False, "tasks.sst.test": None, "tasks.sts.test": None} | extra
    return tiny_overrides(pretrained, data, tmp_path / "unused", **extra)


def test_sbatch_array_study_survives_a_preempted_worker(slurm, tiny_pretrained, small_data, tmp_path):
    study_dir = tmp_path / "study"
    extra = {"run.checkpoint_every": 2, "train.epochs": 3, "data.max_length": 128}
    extra |= {f"tasks.{t}.batch_size": 16 for t in ("sst", "quora", "sts")}
    overrides = _overrides(tiny_pretrained, small_data, tmp_path, **extra)
    keys = {"trials": 4, "workers": 2, "pruner": {"kind": "none"}, "slurm": SLURM}
    path = tune_file(tmp_path / "tune.yaml", study_dir, overrides, enqueue=[{"optim.lr": 1.0e-3}], **keys)
    job = submitted_id(bertmt_cli("tune", str(path), "--backend", "sbatch"))

    trial0, deadline = study_dir / "trials" / "0", time.time() + 300
    while not (trial0 / "checkpoints" / "latest").is_file() and time.time() < deadline:
        time.sleep(0.05)
    task = json.loads((trial0 / "heartbeat.json").read_text())["job"]  # the array task training trial 0
    run("scancel", "--signal=USR1", task)  # what SLURM sends before the time limit or to preempt
    assert wait_job(job) == ["COMPLETED", "COMPLETED"], _logs(study_dir)

    trials = load_study(study_dir).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), _logs(study_dir)
    assert {t.user_attrs["worker"] for t in trials} == {f"slurm-{job}_0", f"slurm-{job}_1"}
    log = (trial0 / "train.log").read_text()
    stopped = re.search(r"SIGUSR1 received: stopping at step (\d+) to checkpoint", log)
    assert stopped and 0 < int(stopped[1]) < 36 and "resuming at epoch" in log, log[-3000:]
    assert "restart count 1" in _logs(study_dir, tail=None)  # the requeued array task came back: trial 0

    whole = tmp_path / "whole"  # the same trial, uninterrupted, with the array tasks' thread count
    bertmt(
        "train",
        str(QUICKSTART),
        *overrides,
        "optim.lr=0.001",
        f"run.dir={whole}",
        env={"OMP_NUM_THREADS": "1"},
    )
    reference = json.loads((whole / "metrics.json").read_text())
    assert json.loads((trial0 / "metrics.json").read_text()) == reference
    assert trials[0].params == {"optim.lr": 1.0e-3} and trials[0].value == reference["overall"]


def test_submitit_array_study(slurm, tiny_pretrained, small_data, tmp_path):
    study_dir = tmp_path / "study"
    overrides = _overrides(tiny_pretrained, small_data, tmp_path)
    keys = {"trials": 2, "workers": 2, "pruner": {"kind": "none"}, "slurm": SLURM}
    path = tune_file(tmp_path / "tune.yaml", study_dir, overrides, **keys)
    out = bertmt_cli("tune", str(path), "--backend", "submitit", "--wait")
    array = re.search(r"submitted 2 array tasks \((\d+)\)", out)
    assert array, out
    trials = load_study(study_dir).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["worker"] for t in trials} == {f"slurm-{array[1]}_0", f"slurm-{array[1]}_1"}
    assert json.loads((study_dir / "tune.json").read_text())["slurm"]["signal"] == "USR2"  # Submitit's
    assert f"best: trial {max(trials, key=lambda t: t.value).number}" in out


def _logs(study_dir, tail: int | None = 3000) -> str:
    logs = sorted((study_dir / "workers").glob("slurm-*.out"))
    return "".join(p.read_text()[-tail if tail else 0 :] for p in logs)
