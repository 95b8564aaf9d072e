"""2-rank runs killed (every rank SIGKILLs itself in the middle of the step after the first checkpoint, a
fixed micro-batch: no race) and started again end with exactly the metrics and dev history of uninterrupted
2-rank runs: ZeRO-2 with PCGrad, ZeRO-3 plain (exact since bertmt clears ZeRO-3's stale gradient
partitions, engine/deepspeed_compat.py), ZeRO-3 with PCGrad (captured partitions) and ZeRO-3 with SMART
(adversarial term and the Bregman teacher, a whole model gathered once per step)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import NO_REPORTS, tiny_overrides
from tests.e2e.helpers import QUICKSTART, torchrun

WORKER = "tests.distributed.worker"


SMART = {"mtl.smart.weight": 1.0, "mtl.smart.bregman_weight": 1.0}


@pytest.mark.parametrize(
    "stage, method, smart", [(2, "pcgrad", {}), (3, "none", {}), (3, "pcgrad", {}), (3, "none", SMART)]
)
def test_two_rank_run_resumes_exactly(
    stage, method, smart, tiny_pretrained, small_data, tmp_path, monkeypatch
):
    accum = 3
    extra = smart | {
        "train.zero_stage": stage,
        "mtl.method": method,
        "train.grad_accum": accum,
        "train.epochs": 3,
        "run.checkpoint_every": 2,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
    }
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(
        2,
        "train",
        str(QUICKSTART),
        *tiny_overrides(tiny_pretrained, small_data, whole, **NO_REPORTS, **extra),
    )
    args = [
        "train",
        str(QUICKSTART),
        *tiny_overrides(tiny_pretrained, small_data, parts, **NO_REPORTS, **extra),
    ]
    with monkeypatch.context() as env:
        env.setenv("BERTMT_TEST_KILL", str(2 * accum + 1))  # the second micro-batch of step 3
        killed = torchrun(2, *args, module=WORKER, check=False)
    assert killed.returncode != 0
    assert (parts / "checkpoints" / "latest").read_text().strip() == "step-2", killed.stderr[-3000:]
    assert not (parts / "metrics.json").exists()
    torchrun(2, *args)
    resumed = re.search(
        r"resuming at epoch (\d+), micro-batch (\d+), step (\d+)", (parts / "train.log").read_text()
    )
    assert resumed and resumed.groups() == ("1", str(2 * accum), "2")
    for name in ("metrics.json", "history.json"):
        assert json.loads((parts / name).read_text()) == json.loads((whole / name).read_text()), name
