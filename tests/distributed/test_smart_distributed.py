"""SMART in 2-rank runs (gloo), with and without gradient surgery: the adversarial term is logged positive and
its gradient reaches the weights. The model has no dropout, so the noise draws alone change nothing: a run
whose SMART gradient were lost would end with exactly the weights of a run without SMART."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import NO_REPORTS, tiny_overrides
from tests.e2e.helpers import QUICKSTART, torchrun

SMART = {
    "mtl.smart.weight": 1.0,
    "mtl.smart.noise": 1e-3,
    "mtl.smart.epsilon": 1e-2,
    "mtl.smart.step_size": 1e-2,
}


def _run(pretrained, data, run_dir, **extra):
    extra = {"train.epochs": 1, "train.grad_accum": 3, "model.dropout": 0.0, "run.log_every": 1} | extra
    extra |= {"tasks.sst.test": None, "tasks.sts.test": None}
    torchrun(2, "train", str(QUICKSTART), *tiny_overrides(pretrained, data, run_dir, **NO_REPORTS, **extra))
    return load_file(str(run_dir / "best" / "model.safetensors"))


@pytest.mark.parametrize("method", ["none", "pcgrad"])
def test_smart_gradient_flows_in_two_rank_runs(method, tiny_no_dropout, small_data, tmp_path):
    plain = _run(tiny_no_dropout, small_data, tmp_path / "plain", **{"mtl.method": method})
    smart = _run(tiny_no_dropout, small_data, tmp_path / "smart", **{"mtl.method": method}, **SMART)
    changed = [k for k in plain if k.startswith("encoder.") and not np.array_equal(plain[k], smart[k])]
    assert len(changed) > 10  # the encoder moved differently under the SMART term
    events = EventAccumulator(str(tmp_path / "smart" / "tensorboard"))
    events.Reload()
    for task in ("sst", "quora", "sts"):
        values = [e.value for e in events.Scalars(f"train/{task}/smart_adv")]
        assert values and min(values) > 0
