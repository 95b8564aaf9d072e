"""Runs with injected faults (tests/distributed/worker.py). fp16 (CPU, capability check patched): an overflow
on one rank skips the step on both, lowers the loss scale and leaves weights and surgery state unchanged
(ZeRO 1, 2 and 3: surrogate and captured-partition paths); surgery's head gradients equal fp32's at the
default loss scale. A crashing rank and a hung rank end the whole run with a non-zero exit."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import NO_REPORTS, tiny_overrides
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
    return [
        "train",
        str(QUICKSTART),
        *tiny_overrides(pretrained, data, run_dir, **(NO_REPORTS | base | extra)),
    ]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_fp16_overflow_on_one_rank_skips_the_step_on_both(
    stage, tiny_pretrained, small_data, tmp_path, monkeypatch
):
    extra = {
        "train.precision": "fp16",
        "train.zero_stage": stage,
        "train.loss_scale_hysteresis": 1,
        "train.initial_scale_power": 10,
        "mtl.method": "gradvac",  # its targets move at every applied step
    }
    monkeypatch.setenv("BERTMT_TEST_FP16", "1")
    monkeypatch.setenv("BERTMT_TEST_OUT", str(tmp_path))
    monkeypatch.setenv("BERTMT_TEST_SURGERY", str(tmp_path))
    monkeypatch.setenv("BERTMT_TEST_POISON", "1:4")  # rank 1, second optimiser step (micro-batches 3-5)
    torchrun(2, *_args(tiny_pretrained, small_data, tmp_path / "run", **extra), module=WORKER)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["skipped"] for r in ranks] == [1, 1]
    for rank in range(2):  # the skipped step leaves the weights as they were; the others move them
        steps = json.loads((tmp_path / f"rank{rank}-surgery.json").read_text())
        assert [s["weights_changed"] for s in steps] == [True, False, True, True]
        assert [s["state_changed"] for s in steps] == [True, False, True, True]
    assert [r["scale"] for r in ranks] == [2.0**9, 2.0**9]  # halved once from 2**10
    assert ranks[0]["param"] == ranks[1]["param"]  # the ranks still hold the same weights
    ds = json.loads((tmp_path / "run" / "deepspeed_config.json").read_text())
    assert ds["fp16"]["enabled"] and ds["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("method", ["gradvac", "pcgrad"])
def test_a_step_deepspeed_skips_leaves_the_surgery_state_unchanged(
    method, tiny_pretrained, small_data, tmp_path, monkeypatch
):
    """An overflow only DeepSpeed sees (a task-head gradient held by the ZeRO 0/1 surgery step; the shared
    ones and so the Gram matrix stay finite): every rank skips the step, and GradVac's targets / the
    task-order generator do not advance."""
    extra = {
        "mtl.method": method,
        "mtl.gradvac.beta": 0.5,
        "train.precision": "fp16",
        "train.zero_stage": 1,
        "train.loss_scale_hysteresis": 1,
        "train.initial_scale_power": 10,
    }
    for var, value in {
        "BERTMT_TEST_FP16": "1",
        "BERTMT_TEST_OUT": str(tmp_path),
        "BERTMT_TEST_SURGERY": str(tmp_path),
        "BERTMT_TEST_POISON_HEAD": "1:4",  # rank 1, second optimiser step (micro-batches 3-5)
    }.items():
        monkeypatch.setenv(var, value)
    torchrun(2, *_args(tiny_pretrained, small_data, tmp_path / "run", **extra), module=WORKER)
    for rank in range(2):
        steps = json.loads((tmp_path / f"rank{rank}-surgery.json").read_text())
        assert [s["applied"] for s in steps] == [True, False, True, True]
        assert [s["state_changed"] for s in steps] == [True, False, True, True]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["skipped"] for r in ranks] == [1, 1] and ranks[0]["param"] == ranks[1]["param"]


def _first_step_grads(pretrained, data, tmp_path, monkeypatch, precision: str, stage: int) -> dict:
    """Gradients DeepSpeed holds before the first optimiser step of a 1-rank PCGrad run with the default
    initial loss scale 2**16 and small task weights (their gradients underflow unscaled fp16)."""
    out = tmp_path / f"{precision}-zero{stage}"
    out.mkdir()
    extra = {
        "train.precision": precision,
        "train.zero_stage": stage,
        "train.batches_per_epoch": 3,
        "model.dropout": 0.0,
        **{f"tasks.{t}.weight": 1e-3 for t in ("sst", "quora", "sts")},
    }
    monkeypatch.setenv("BERTMT_TEST_FP16", "1")
    monkeypatch.setenv("BERTMT_TEST_OUT", str(out))
    monkeypatch.setenv("BERTMT_TEST_GRADS", str(out))
    torchrun(1, *_args(pretrained, data, out / "run", **extra), module=WORKER)
    record = json.loads((out / "rank0.json").read_text())
    return {"skipped": record["skipped"], "grads": torch.load(out / "rank0-grads.pt")["grads"]}


def test_fp16_surgery_keeps_head_gradients_at_the_default_loss_scale(
    tiny_no_dropout, small_data, tmp_path, monkeypatch
):
    """Task-head and encoder gradients reach DeepSpeed loss-scaled like every other gradient, on both surgery
    paths (ZeRO 1: the surrogate's fp32 products; ZeRO 2: the captured partitions): no overflow at 2**16, and
    equal to the fp32 run's to fp16 precision (cast to fp16 unscaled they would be inf or flushed to zero)."""
    fp32 = _first_step_grads(tiny_no_dropout, small_data, tmp_path, monkeypatch, "fp32", 2)
    heads = [n for n in fp32["grads"] if n.startswith("heads.")]
    for stage in (1, 2):
        fp16 = _first_step_grads(tiny_no_dropout, small_data, tmp_path, monkeypatch, "fp16", stage)
        assert fp16["skipped"] == 0
        assert heads and fp16["grads"].keys() == fp32["grads"].keys()
        for name in heads + ["encoder.encoder.layer.0.attention.self.query.weight"]:
            want, got = fp32["grads"][name], fp16["grads"][name]
            assert want.abs().max() > 0, name
            # fp16 forward and backward: ~3 significant digits, relative to the tensor's largest entry
            atol = 2e-2 * float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=2e-2, atol=atol, msg=(stage, name))


def test_fp16_without_the_overflow_skips_nothing(tiny_pretrained, small_data, tmp_path, monkeypatch):
    extra = {"train.precision": "fp16", "train.zero_stage": 2, "train.initial_scale_power": 10}
    monkeypatch.setenv("BERTMT_TEST_FP16", "1")
    monkeypatch.setenv("BERTMT_TEST_OUT", str(tmp_path))
    torchrun(2, *_args(tiny_pretrained, small_data, tmp_path / "run", **extra), module=WORKER)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["skipped"] for r in ranks] == [0, 0]
    assert [r["scale"] for r in ranks] == [2.0**10, 2.0**10]  # really fp16: a loss scale, never lowered


def test_a_crashing_rank_ends_the_run_nonzero(tiny_pretrained, small_data, tmp_path, monkeypatch):
    """A rank that raises: torchrun stops the other rank (bounded by the subprocess timeout, no wall-clock
    assert: the machine may be slow), the run exits non-zero and writes no metrics."""
    monkeypatch.setenv("BERTMT_TEST_CRASH", "1:5")
    proc = torchrun(
        2,
        *_args(tiny_pretrained, small_data, tmp_path / "run", **{"train.dist_timeout_s": 60}),
        module=WORKER,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "test crash on rank 1 at micro-batch 5" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_hung_rank_ends_the_run_through_the_collective_timeout(
    tiny_pretrained, small_data, tmp_path, monkeypatch
):
    """A rank that stops without dying (no launcher notices): the other rank's next collective gives up
    after ``train.dist_timeout_s`` and fails, so the run ends instead of hanging until the job's limit."""
    monkeypatch.setenv("BERTMT_TEST_HANG", "1:5")
    timeout_s = 15
    proc = torchrun(
        2,
        *_args(tiny_pretrained, small_data, tmp_path / "run", **{"train.dist_timeout_s": timeout_s}),
        module=WORKER,
        check=False,
        timeout=180,  # without the collective timeout, this would expire: rank 1 sleeps for 10**6 s
    )
    assert proc.returncode != 0
    assert "test hang on rank 1 at micro-batch 5" in proc.stderr
    assert re.search(r"[Tt]imed? ?out", proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
