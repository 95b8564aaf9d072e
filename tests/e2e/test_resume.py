"""A run killed (SIGKILL) after its first checkpoint and started again ends with the same metrics.json as an
uninterrupted run with the same seed (fp32, CPU)."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, bertmt_popen


def _kill_after_first_checkpoint(args: list[str], run_dir, log) -> None:
    proc = bertmt_popen("train", str(QUICKSTART), *args, log=log)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert latest.exists(), f"no checkpoint was written:\n{log.read_text()[-3000:]}"
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"


@pytest.mark.parametrize(
    "variant",
    [
        {},
        # surgery state (GradVac's EMA targets, the seeded task orders) and a sampled schedule must resume too
        {"mtl.method": "gradvac", "mtl.beta": 0.5, "schedule.kind": "annealed", "train.grad_accum": 3},
        # SMART's momentum teacher lives in the checkpoint, its noise draws from the saved RNG state
        {"mtl.smart.weight": 1.0, "mtl.smart.bregman_weight": 1.0, "mtl.smart.epsilon": 1e-2},
    ],
    ids=["plain", "gradvac-annealed", "smart"],
)
def test_killed_and_resumed_run_matches_uninterrupted(variant, tiny_pretrained, small_data, tmp_path):
    # larger batches and longer rows than the other tiny runs: a step lasts long enough to be killed in
    extra = {
        "run.checkpoint_every": 2,
        "train.grad_accum": 2,
        "train.epochs": 3,
        "data.max_length": 128,
        "tasks.sst.batch_size": 32,
        "tasks.quora.batch_size": 32,
        "tasks.sts.batch_size": 32,
    } | variant
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, whole, **extra))

    args = tiny_overrides(tiny_pretrained, small_data, parts, **extra)
    _kill_after_first_checkpoint(args, parts, tmp_path / "killed.log")
    bertmt("train", str(QUICKSTART), *args)

    resumed = re.search(
        r"resuming at epoch (\d+), micro-batch (\d+), step (\d+)", (parts / "train.log").read_text()
    )
    assert resumed and 0 < int(resumed[3]) < 18  # 3 epochs x 6 optimiser steps: resumed part-way
    assert json.loads((parts / "metrics.json").read_text()) == json.loads(
        (whole / "metrics.json").read_text()
    )
    assert json.loads((parts / "history.json").read_text()) == json.loads(
        (whole / "history.json").read_text()
    )
