"""SophiaH (optim.name=sophia) in a tiny end-to-end run on the real tiny BERT: the Hessian products go
through the encoder (its attention differentiated twice), and a run killed (SIGKILL) between two estimates
resumes exactly (momentum and Hessian moments from the checkpoint, the next draw from the step)."""

from __future__ import annotations

import json
import signal

import torch
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt

SOPHIA = {
    "optim.name": "sophia",
    "optim.lr": 3e-2,
    "optim.sophia_period": 5,  # estimates at steps 0, 5, 10, 15, 20: the resumed epoch starts at step 12
    "train.epochs": 2,
    "train.batches_per_epoch": 12,
}


def test_sophia_trains_and_a_killed_run_resumes_exactly(tiny_pretrained, small_data, tmp_path):
    whole = tmp_path / "whole"
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, whole, **SOPHIA))
    weights = load_file(str(whole / "best" / "model.safetensors"))
    start = load_file(str(tiny_pretrained / "model.safetensors"))
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(weights[f"encoder.{query}"], start[query])  # the encoder trained

    run_dir = tmp_path / "killed"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir, **SOPHIA)
    env = {"BERTMT_TEST_KILL": "17"}  # epoch 2, after the estimate of step 15
    proc = bertmt("train", str(QUICKSTART), *args, module="tests.distributed.worker", env=env, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    bertmt("train", str(QUICKSTART), *args)
    assert "resuming at epoch 2, micro-batch 0" in (run_dir / "train.log").read_text()
    for name in ("metrics.json", "history.json"):
        assert json.loads((run_dir / name).read_text()) == json.loads((whole / name).read_text())
    resumed = load_file(str(run_dir / "best" / "model.safetensors"))
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)
