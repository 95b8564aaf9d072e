"""bertmt on a real SLURM (two emulated nodes): sbatch of the rendered scripts, 2 ranks on 2 nodes through
srun, a sweep as one job array with its summary, preemption by signal (checkpoint, requeue, resume), and
Submitit jobs (2 tasks; map_array)."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
import yaml

from tests.conftest import tiny_overrides
from tests.distributed.test_equivalence import _args as equivalence_args
from tests.e2e.helpers import QUICKSTART, bertmt, torchrun, train_losses
from tests.slurm.conftest import bertmt_cli, run, slurm_log, submitted_id, wait_job

JOB = [f"slurm.python={sys.executable}", "slurm.cpus_per_task=1", "slurm.time=00:15:00"]


def test_sbatch_single_node_script_trains_and_writes_metrics(slurm, tiny_pretrained, small_data, tmp_path):
    run_dir = tmp_path / "run"
    out = bertmt_cli(
        "submit", str(QUICKSTART), "--sbatch", *tiny_overrides(tiny_pretrained, small_data, run_dir), *JOB
    )
    assert wait_job(submitted_id(out)) == ["COMPLETED"], slurm_log(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"sst", "quora", "sts", "overall"}
    assert re.search(r"SLURM job \d+, restart count 0", (run_dir / "train.log").read_text())
    assert (run_dir / "job.sbatch").read_text().startswith("#!/bin/bash")


@pytest.mark.parametrize("launcher", ["srun", "torchrun", "deepspeed"])  # see slurm/multi-node.sbatch
def test_two_ranks_on_two_nodes_match_one_process(launcher, slurm, tiny_no_dropout, small_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    bertmt(
        "train", str(QUICKSTART), *equivalence_args(tiny_no_dropout, small_data, one, "pcgrad", 1, batch=16)
    )
    args = equivalence_args(tiny_no_dropout, small_data, two, "pcgrad", 1, batch=8)
    nodes = ["slurm.nodes=2", "slurm.tasks_per_node=1", f"slurm.launcher={launcher}"]
    out = bertmt_cli("submit", str(QUICKSTART), "--sbatch", *args, *JOB, *nodes)
    assert wait_job(submitted_id(out)) == ["COMPLETED"], slurm_log(two)
    assert "on ci-node[1-2] (master ci-node1)" in slurm_log(two)
    assert '"world_size": 2' in (two / "run_info.json").read_text()
    want, got = train_losses(one), train_losses(two)
    assert set(want) == set(got) == {"train/sst/loss", "train/quora/loss", "train/sts/loss"}
    for tag in want:
        assert got[tag] == pytest.approx(want[tag], rel=1e-5, abs=1e-6)


def _sweep_file(tmp_path, pretrained, data, backend_extra=()) -> tuple:
    sweep_dir = tmp_path / "sweep"
    common = [o for o in tiny_overrides(pretrained, data, tmp_path / "unused") if not o.startswith("run.dir")]
    spec = {
        "base": str(QUICKSTART),
        "dir": str(sweep_dir),
        "overrides": common + ["tasks.sst.test=null", "tasks.sts.test=null", *backend_extra],
        "grid": {"optim.lr": [1.0e-3, 1.0e-4, 1.0e-6]},
        "slurm": {"python": sys.executable, "cpus_per_task": 1, "time": "00:15:00"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, sweep_dir


def _check_summary(sweep_dir, runs: int) -> None:
    out = bertmt_cli("sweep-summary", str(sweep_dir))
    rows = [line for line in out.splitlines() if line.startswith("| ") and "rank" not in line]
    assert len(rows) == runs and all("| finished |" in r for r in rows), out
    overall = [float(r.split("|")[4]) for r in rows]
    assert overall == sorted(overall, reverse=True)
    csv_lines = (sweep_dir / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,run,status,overall") and len(csv_lines) == runs + 1
    lrs = {
        json.loads(json.dumps(yaml.safe_load((d / "config.yaml").read_text())["optim"]["lr"]))
        for d in sweep_dir.iterdir()
        if (d / "config.yaml").is_file()
    }
    assert lrs == {1.0e-3, 1.0e-4, 1.0e-6}


def test_sweep_runs_as_one_job_array_and_is_summarised(slurm, tiny_pretrained, small_data, tmp_path):
    path, sweep_dir = _sweep_file(tmp_path, tiny_pretrained, small_data)
    out = bertmt_cli("sweep", str(path))
    job = submitted_id(out)
    assert wait_job(job) == ["COMPLETED"] * 3, out
    assert len(list(sweep_dir.glob(f"slurm-{job}_*.out"))) == 3  # one array task per run
    _check_summary(sweep_dir, 3)


# the preempted runs: long enough (3 epochs, 128 tokens) for the signal to arrive mid-run
PREEMPTED = {"run.checkpoint_every": 2, "train.epochs": 3, "data.max_length": 128, "tasks.sst.test": None}
PREEMPTED |= {"tasks.sts.test": None} | {f"tasks.{t}.batch_size": 16 for t in ("sst", "quora", "sts")}


@pytest.fixture(scope="module")
def preemption_reference(tiny_pretrained, small_data, tmp_path_factory) -> dict:
    """The metrics of the preempted runs' configuration trained without interruption (2 ranks, torchrun)."""
    whole = tmp_path_factory.mktemp("preemption") / "whole"
    torchrun(2, "train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, whole, **PREEMPTED))
    return json.loads((whole / "metrics.json").read_text())


@pytest.mark.parametrize(
    "layout",
    [
        ["--sbatch", "slurm.tasks_per_node=2"],
        ["--sbatch", "slurm.nodes=2", "slurm.tasks_per_node=1", "slurm.launcher=torchrun"],
        ["--cluster", "slurm", "slurm.tasks_per_node=2"],  # Submitit: its signal is USR2
    ],
    ids=["1-node-srun", "2-nodes-torchrun", "submitit"],
)
def test_preemption_signal_checkpoints_requeues_and_resumes(
    layout, slurm, tiny_pretrained, small_data, preemption_reference, tmp_path
):
    parts = tmp_path / "parts"
    args = tiny_overrides(tiny_pretrained, small_data, parts, **PREEMPTED)
    out = bertmt_cli("submit", str(QUICKSTART), *args, *JOB, *layout)
    job = submitted_id(out) if "--sbatch" in layout else out.split("submitted slurm job ")[1].split(";")[0]
    signal = "USR1" if "--sbatch" in layout else "USR2"
    latest, deadline = parts / "checkpoints" / "latest", time.time() + 300
    while not latest.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert latest.exists(), slurm_log(parts)
    run("scancel", f"--signal={signal}", job)  # what SLURM sends before the time limit or to preempt
    assert wait_job(job) == ["COMPLETED"], slurm_log(parts)

    log = (parts / "train.log").read_text()
    assert re.search(rf"SLURM job {job}, restart count 1", log), log[-3000:]
    assert "requeued SLURM job" in log and "resuming at epoch" in log
    stopped = re.search(rf"SIG{signal} received: stopping at step (\d+) to checkpoint", log)
    assert stopped and 0 < int(stopped[1]) < 18, log[-3000:]
    assert json.loads((parts / "metrics.json").read_text()) == preemption_reference


def test_submitit_two_task_job_trains_distributed(slurm, tiny_pretrained, small_data, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir) + [
        "tasks.sst.test=null",
        "tasks.sts.test=null",
    ]
    out = bertmt_cli(
        "submit", str(QUICKSTART), "--cluster", "slurm", "--wait", *args, *JOB, "slurm.tasks_per_node=2"
    )
    assert "submitted slurm job" in out
    printed = json.loads(out[out.index("{") :])
    assert printed == json.loads((run_dir / "metrics.json").read_text())
    assert '"world_size": 2' in (run_dir / "run_info.json").read_text()


def test_submitit_map_array_runs_a_sweep(slurm, tiny_pretrained, small_data, tmp_path):
    path, sweep_dir = _sweep_file(tmp_path, tiny_pretrained, small_data)
    out = bertmt_cli("sweep", str(path), "--backend", "submitit", "--wait")
    assert "submitted 3 array tasks" in out
    _check_summary(sweep_dir, 3)
