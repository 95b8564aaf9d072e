"""Tiny end-to-end runs of the heads over the token states, max pooling, segment features of a cross-encoded
pair, combined experts, the drop-in optimisers, the plateau schedule and symmetric pair tasks (pairs read in a
random order each pass); a run killed (SIGKILL) after a plateau reduction resumes exactly."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from bertmt.engine.optim import Plateau
from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, scalars

OPTIONS = {
    "model.pooling": "max",
    "tasks.sst.head_arch": "lstm",
    "tasks.quora.head_arch": "cnn",
    "model.lstm_size": 8,
    "model.cnn_kernels": [2, 3],
    "model.cnn_channels": 6,
    "tasks.sts.cross_features": "segments",
    "model.experts": {"count": 2, "layers": 1},
    "tasks.quora.symmetric": True,
    "tasks.sts.symmetric": True,
    "optim.name": "lion",
    "optim.lr": 3e-3,  # large enough for the tiny model's dev score to stall: the plateau schedule acts
    "optim.schedule": "plateau",
    "optim.warmup_ratio": 0.0,
    "train.epochs": 4,
    "train.batches_per_epoch": 6,
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("options") / "run"
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir, **OPTIONS))
    return run_dir


def test_heads_experts_and_pooling_are_trained(uninterrupted, tiny_pretrained):
    weights = load_file(str(uninterrupted / "best" / "model.safetensors"))
    assert weights["heads.sst.pool.lstm.weight_ih_l0_reverse"].shape == (4 * 8, 32)  # a BiLSTM over H = 32
    assert weights["heads.sst.mlp.1.weight"].shape[1] == 16  # reads 2 x 8 units, max-pooled
    assert [weights[f"heads.quora.pool.convs.{i}.weight"].shape for i in (0, 1)] == [(6, 32, 2), (6, 32, 3)]
    assert weights["heads.quora.mlp.1.weight"].shape[1] == 12
    assert weights["heads.sts.mlp.1.weight"].shape[1] == 5 * 32  # [p, a, b, |a-b|, a*b] (segment features)
    pretrained = load_file(str(tiny_pretrained / "model.safetensors"))
    top = "encoder.layer.1.output.dense.weight"
    expert0, expert1 = weights[f"encoder.{top}"], weights[f"experts.copies.0.0.{top.split('.', 3)[3]}"]
    assert not torch.equal(expert0, expert1)  # the two experts (both from the pretrained layer) diverged
    assert not torch.equal(expert1, pretrained[top])
    assert {k.split(".")[2] for k in weights if k.startswith("experts.gates.")} == {"sst", "quora", "sts"}


def test_plateau_lowers_the_learning_rate_after_a_stalled_epoch(uninterrupted):
    history = json.loads((uninterrupted / "history.json").read_text())
    scores = [h["overall"] for h in history]
    steps = [h["step"] for h in history]
    lr = scalars(uninterrupted, "train/lr")  # logged every 2 steps: at steps 2, 4, ..., 24
    expected = []
    for step in range(2, 25, 2):
        finished = [s for s in steps if s < step]  # epochs evaluated before this step was taken
        expected.append(3e-3 * Plateau(0.5, 0).replay(scores[: len(finished)]))
    assert min(expected) < 3e-3, f"the dev score never stalled: {scores}; the test needs a plateau"
    assert lr == pytest.approx(expected, rel=1e-6)


def test_killed_after_a_plateau_reduction_resumes_exactly(
    uninterrupted, tiny_pretrained, small_data, tmp_path
):
    history = json.loads((uninterrupted / "history.json").read_text())
    scores = [h["overall"] for h in history]
    reduced = next(n for n in range(1, 5) if Plateau(0.5, 0).replay(scores[:n]) < 1)  # epochs before it
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir, **OPTIONS)
    env = {"BERTMT_TEST_KILL": str(6 * reduced + 3)}  # the kill inside the epoch after the reduction
    proc = bertmt("train", str(QUICKSTART), *args, module="tests.distributed.worker", env=env, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    bertmt("train", str(QUICKSTART), *args)
    assert f"resuming at epoch {reduced + 1}, micro-batch 0" in (run_dir / "train.log").read_text()
    for name in ("metrics.json", "history.json"):
        assert json.loads((run_dir / name).read_text()) == json.loads((uninterrupted / name).read_text())
