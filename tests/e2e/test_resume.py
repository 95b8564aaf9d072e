"""A run killed (SIGKILL) in the middle of the optimiser step after its first checkpoint and started again
ends with the same metrics.json and history.json as an uninterrupted run with the same seed (fp32, CPU). The
kill comes from the run itself at a fixed micro-batch (tests/distributed/worker.py), not from a race."""

from __future__ import annotations

import json
import re
import signal

import pytest

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt

WORKER = "tests.distributed.worker"


def _kill_after_first_checkpoint(args: list[str], run_dir, accum: int) -> None:
    """Checkpoint every 2 steps: the run kills itself in the second micro-batch of step 3."""
    env = {"BERTMT_TEST_KILL": str(2 * accum + 1)}
    proc = bertmt("train", str(QUICKSTART), *args, module=WORKER, env=env, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (run_dir / "metrics.json").exists()


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
    extra = {"run.checkpoint_every": 2, "train.grad_accum": 2, "train.epochs": 3} | variant
    accum = extra["train.grad_accum"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, whole, **extra))

    args = tiny_overrides(tiny_pretrained, small_data, parts, **extra)
    _kill_after_first_checkpoint(args, parts, accum)
    bertmt("train", str(QUICKSTART), *args)

    resumed = re.search(
        r"resuming at epoch (\d+), micro-batch (\d+), step (\d+)", (parts / "train.log").read_text()
    )
    assert resumed and resumed.groups() == ("1", str(2 * accum), "2")  # step 3 again from its start
    assert json.loads((parts / "metrics.json").read_text()) == json.loads(
        (whole / "metrics.json").read_text()
    )
    assert json.loads((parts / "history.json").read_text()) == json.loads(
        (whole / "history.json").read_text()
    )
