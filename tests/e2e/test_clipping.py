"""Gradient clipping (`optim.grad_clip`, DeepSpeed's `gradient_clipping`) reaches the update, on the plain
and the surgery path. AdamW is almost blind to a gradient's scale, except where the clipped gradient falls
far below its epsilon: clipping to a global norm of 1e-12 must leave the weights nearly where they were,
while the same step unclipped moves them by about the learning rate."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt

QUERY = "encoder.layer.0.attention.self.query.weight"


def _first_step_change(pretrained, data, run_dir, clip: float, method: str) -> float:
    extra = {
        "train.epochs": 1,
        "train.batches_per_epoch": 3,
        "train.grad_accum": 3,  # one optimiser step
        "optim.grad_clip": clip,
        "optim.weight_decay": 0.0,
        "optim.warmup_ratio": 0.0,
        "optim.lr": 1e-3,
        "mtl.method": method,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
    }
    bertmt("train", str(QUICKSTART), *tiny_overrides(pretrained, data, run_dir, **extra))
    after = load_file(str(run_dir / "best" / "model.safetensors"))[f"encoder.{QUERY}"]
    before = load_file(str(pretrained / "model.safetensors"))[QUERY]
    return float((after - before).abs().max())


@pytest.mark.parametrize("method", ["none", "pcgrad"])
def test_gradient_clipping_limits_the_first_update(method, tiny_pretrained, small_data, tmp_path):
    free = _first_step_change(tiny_pretrained, small_data, tmp_path / "free", 0.0, method)
    clipped = _first_step_change(tiny_pretrained, small_data, tmp_path / "clipped", 1e-12, method)
    assert free == pytest.approx(1e-3, rel=0.2)  # Adam's first step: about lr per weight
    assert clipped < 1e-2 * free
