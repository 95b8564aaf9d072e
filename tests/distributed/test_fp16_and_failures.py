"""2-process runs with injected faults: an fp16 overflow on one rank skips the step on both and lowers the
loss scale (ZeRO 1 and 2, gradient surgery, CPU with the fp16 capability check patched); a crashing rank
ends the whole run with a non-zero exit in bounded time."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, torchrun

WORKER = "tests.distributed.worker"


def _args(pretrained, data, run_dir, **extra) -> list[str]:
    base = {
        "train.epochs": 1,
        "train.batches_per_epoch": 12,
        "train.grad_accum": 3,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
        "mtl.method": "pcgrad",
    }
    return ["train", str(QUICKSTART), *tiny_overrides(pretrained, data, run_dir, **(base | extra))]


@pytest.mark.parametrize("stage", [1, 2])
def test_fp16_overflow_on_one_rank_skips_the_step_on_both(
    stage, tiny_pretrained, small_data, tmp_path, monkeypatch
):
    extra = {
        "train.precision": "fp16",
        "train.zero_stage": stage,
        "train.loss_scale_hysteresis": 1,
        "train.initial_scale_power": 10,
    }
    monkeypatch.setenv("BERTMT_TEST_FP16", "1")
    monkeypatch.setenv("BERTMT_TEST_OUT", str(tmp_path))
    monkeypatch.setenv("BERTMT_TEST_POISON", "1:4")  # rank 1, second optimiser step (micro-batches 3-5)
    torchrun(2, *_args(tiny_pretrained, small_data, tmp_path / "run", **extra), module=WORKER)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["skipped"] for r in ranks] == [1, 1]
    assert [r["scale"] for r in ranks] == [2.0**9, 2.0**9]  # halved once from 2**10
    assert ranks[0]["param"] == ranks[1]["param"]  # the ranks still hold the same weights
    ds = json.loads((tmp_path / "run" / "deepspeed_config.json").read_text())
    assert ds["fp16"]["enabled"] and ds["zero_optimization"]["stage"] == stage


def test_fp16_without_the_overflow_skips_nothing(tiny_pretrained, small_data, tmp_path, monkeypatch):
    extra = {"train.precision": "fp16", "train.zero_stage": 2, "train.initial_scale_power": 10}
    monkeypatch.setenv("BERTMT_TEST_FP16", "1")
    monkeypatch.setenv("BERTMT_TEST_OUT", str(tmp_path))
    torchrun(2, *_args(tiny_pretrained, small_data, tmp_path / "run", **extra), module=WORKER)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["skipped"] for r in range(2)] == [0, 0]


def test_a_crashing_rank_ends_the_run_nonzero_in_bounded_time(
    tiny_pretrained, small_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("BERTMT_TEST_CRASH", "1:5")
    start = time.time()
    proc = torchrun(
        2,
        *_args(tiny_pretrained, small_data, tmp_path / "run", **{"train.dist_timeout_s": 60}),
        module=WORKER,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert time.time() - start < 120
    assert "test crash on rank 1 at micro-batch 5" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
