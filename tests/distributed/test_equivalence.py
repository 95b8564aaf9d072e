"""Distributed equivalence (fp32, CPU, tiny model without dropout): 2 processes with per-rank batch b give
the same per-step losses and final parameters as 1 process with batch 2b, for surgery methods none, pcgrad
and gradvac, at ZeRO 0, 1 and 2, with gradient accumulation 2."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, torchrun

STEPS = 6


def _args(pretrained, data, run_dir, method: str, stage: int, batch: int) -> list[str]:
    extra = {
        "train.epochs": 1,
        "train.batches_per_epoch": 2 * STEPS,
        "train.grad_accum": 2,
        "run.log_every": 1,
        "train.zero_stage": stage,
        "mtl.method": method.replace("plain", "none"),
        "mtl.surgery": method != "plain",
        "model.dropout": 0.0,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
        "optim.warmup_ratio": 0.0,
    }
    extra |= {f"tasks.{t}.batch_size": batch for t in ("sst", "quora", "sts")}
    return tiny_overrides(pretrained, data, run_dir, **extra)


def _losses(run_dir) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [e.value for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("train/") and tag.endswith("/loss")
    }


def _final_params(run_dir) -> dict[str, torch.Tensor]:
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize(
    "method", ["plain", "none", "pcgrad", "gradvac"]
)  # plain: DeepSpeed's own accumulation
def test_two_ranks_match_one_rank_with_twice_the_batch(method, stage, tiny_no_dropout, small_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    bertmt("train", str(QUICKSTART), *_args(tiny_no_dropout, small_data, one, method, stage, batch=16))
    torchrun(2, "train", str(QUICKSTART), *_args(tiny_no_dropout, small_data, two, method, stage, batch=8))
    want, got = _losses(one), _losses(two)
    assert set(want) == {"train/sst/loss", "train/quora/loss", "train/sts/loss"} and set(got) == set(want)
    for tag in want:
        assert len(want[tag]) >= STEPS // 2
        torch.testing.assert_close(torch.tensor(got[tag]), torch.tensor(want[tag]), rtol=1e-5, atol=1e-6)
    p1, p2 = _final_params(one), _final_params(two)
    assert p1.keys() == p2.keys()
    for name in p1:
        torch.testing.assert_close(p2[name], p1[name], rtol=1e-5, atol=1e-6)
    start = load_file(str(tiny_no_dropout / "model.safetensors"))[
        "encoder.layer.0.attention.self.query.weight"
    ]
    assert not torch.allclose(p1["encoder.encoder.layer.0.attention.self.query.weight"], start)  # it trained


def test_deepspeed_launcher_matches_torchrun(tiny_no_dropout, small_data, tmp_path):
    """`deepspeed --num_gpus 2` (its CPU mode) runs the same 2-rank training as torchrun."""
    import subprocess
    import sys

    from tests.e2e.helpers import REPO, cli_env

    via_torchrun, via_deepspeed = tmp_path / "torchrun", tmp_path / "deepspeed"
    torchrun(
        2, "train", str(QUICKSTART), *_args(tiny_no_dropout, small_data, via_torchrun, "pcgrad", 1, batch=8)
    )
    launcher = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        "29731",
        "--module",
        "bertmt.cli",
        "train",
        str(QUICKSTART),
        *_args(tiny_no_dropout, small_data, via_deepspeed, "pcgrad", 1, batch=8),
    ]
    proc = subprocess.run(
        launcher,
        capture_output=True,
        text=True,
        env=cli_env() | {"OMP_NUM_THREADS": "1"},
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _losses(via_deepspeed) == _losses(via_torchrun)
    info = (via_deepspeed / "run_info.json").read_text()
    assert '"world_size": 2' in info
