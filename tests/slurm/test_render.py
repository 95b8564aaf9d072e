"""Rendering without SLURM: the scripts of `bertmt submit --dry-run` and `bertmt sweep --dry-run`, pinned by
saved references (tests/slurm/reference/; regenerate with BERTMT_UPDATE_REFERENCES=1 and review the diff);
node-list expansion; submission-side code imports neither torch nor deepspeed nor the model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from launch.hostfile import expand_nodelist, hostfile
from tests.e2e.helpers import QUICKSTART, REPO, cli_env

REFERENCE = REPO / "tests" / "slurm" / "reference"
GPU = [
    "slurm.partition=gpu",
    "slurm.account=nlp",
    "slurm.gpus_per_node=4",
    "slurm.mem=64G",
    "slurm.time=1-12:00:00",
]
SETUP = [
    "slurm.setup=[module load cuda/12.4, source ~/venvs/bertmt/bin/activate]",
    "slurm.sbatch=[--exclusive]",
]
CASES = {
    "single-node": ["optim.lr=2e-5"],
    "single-node-gpu": [*GPU, *SETUP, "slurm.signal=USR2", "slurm.signal_seconds=300"],
    "multi-node-srun": [*GPU, "slurm.nodes=2"],
    "multi-node-torchrun": [*GPU, "slurm.nodes=4", "slurm.launcher=torchrun"],
    "multi-node-deepspeed": [*GPU, "slurm.nodes=2", "slurm.launcher=deepspeed", "slurm.requeue=false"],
}


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "bertmt.cli", *args], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _check(name: str, text: str, tmp_path) -> None:
    text = (
        text.replace(str(tmp_path), "<tmp>").replace(str(REPO), "<repo>").replace(sys.executable, "<python>")
    )
    path = REFERENCE / f"{name}.sbatch"
    if os.environ.get("BERTMT_UPDATE_REFERENCES") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"rendered {name} differs from {path}"


# What each case's overrides mean for SLURM, written out by hand (independent of the saved references,
# which were produced by the renderer under test): the #SBATCH options and the line that starts the ranks.
EXPECTED = {
    "single-node": (
        {"nodes": "1", "ntasks-per-node": "1", "time": "01:00:00", "signal": "USR1@120", "requeue": None},
        "srun --kill-on-bad-exit=1 python -m bertmt.cli train",
    ),
    "single-node-gpu": (
        {
            "nodes": "1",
            "ntasks-per-node": "4",
            "gpus-per-node": "4",
            "partition": "gpu",
            "account": "nlp",
            "mem": "64G",
            "time": "1-12:00:00",
            "signal": "USR2@300",
            "exclusive": None,
        },
        "srun --kill-on-bad-exit=1 python -m bertmt.cli train",
    ),
    "multi-node-srun": (
        {"nodes": "2", "ntasks-per-node": "4", "gpus-per-node": "4", "signal": "USR1@120"},
        "srun --kill-on-bad-exit=1 python -m bertmt.cli train",
    ),
    "multi-node-torchrun": (
        {"nodes": "4", "ntasks-per-node": "1", "gpus-per-node": "4"},
        "--nnodes=$SLURM_NNODES --node_rank=$SLURM_NODEID --nproc_per_node=4",
    ),
    "multi-node-deepspeed": (
        {"nodes": "2", "ntasks-per-node": "1", "gpus-per-node": "4", "no-requeue": None},
        "python -m deepspeed.launcher.runner --hostfile",
    ),
}


def _sbatch_options(script: str) -> dict[str, str | None]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value or None
    return options


@pytest.mark.parametrize("name", list(CASES))
def test_rendered_job_scripts_match_their_references(name, tmp_path):
    run_dir = f"run.dir={tmp_path}/runs/{name}"
    script = _cli("submit", str(QUICKSTART), "--dry-run", run_dir, *CASES[name])
    _check(name, script, tmp_path)
    assert not (tmp_path / "runs").exists()  # a dry run submits and creates nothing
    options, launch = EXPECTED[name]
    rendered = _sbatch_options(script)
    assert {k: rendered.get(k, "<absent>") for k in options} == options
    assert ("requeue" in rendered) != ("no-requeue" in rendered)
    assert launch in script and f"run.dir={tmp_path}/runs/{name}" in script


def test_rendered_array_script_matches_its_reference(tmp_path):
    sweep = {
        "base": str(QUICKSTART),
        "dir": str(tmp_path / "sweep"),
        "overrides": ["train.epochs=1", "train.grad_accum=3"],
        "grid": {"optim.lr": [1.0e-4, 5.0e-5], "mtl.method": ["none", "pcgrad"]},
        "runs": [["schedule.kind=annealed"]],
        "max_parallel": 2,
        "slurm": {"partition": "gpu", "gpus_per_node": 1},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = _cli("sweep", str(tmp_path / "sweep.yaml"), "--dry-run")
    script, runs = out.split("# run 0:")[0], out[out.index("# run 0:") :].splitlines()
    _check("array", script, tmp_path)
    assert len(runs) == 5  # 2 x 2 grid + 1 listed run
    assert runs[1].split()[-3:-1] == ["mtl.method=none", "optim.lr=5e-05"]  # the grid in the file's key order
    assert runs[4].split()[-2] == "schedule.kind=annealed" and all("run.dir=" in r for r in runs)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("localhost", ["localhost"]),
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("a[1-2]-ib,login1,b[9-11]", ["a1-ib", "a2-ib", "login1", "b9", "b10", "b11"]),
    ],
)
def test_nodelist_expansion_and_hostfile(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    assert hostfile(nodelist, 4) == "".join(f"{h} slots=4\n" for h in hosts)


def test_submission_imports_no_torch_deepspeed_or_model(tmp_path):
    code = (
        "import sys; from bertmt.cli import main\n"
        f"main(['submit', {str(QUICKSTART)!r}, '--dry-run', 'run.dir={tmp_path}/r'])\n"
        "import launch.submitit_job, launch.sweep, launch.summary\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'bertmt.model', 'bertmt.engine') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
