"""Distributed equivalence (fp32, CPU, tiny model without dropout): 2 processes with per-rank batch b give
the same per-step losses and final parameters as 1 process with batch 2b, for surgery methods none, pcgrad
and gradvac at ZeRO 0, 1 and 2 and plain training at ZeRO 0-3, with gradient accumulation 2, on data whose
passes end in odd-sized batches (one smaller than the world size) and runs that wrap a pass. Surgery with
method none is plain training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, torchrun, train_losses

STEPS = 9  # 18 micro-batches, 6 per task: every task wraps its 4-batch pass
GLOBAL_BATCH = 16


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


@pytest.fixture(scope="module")
def run(tiny_no_dropout, odd_data, tmp_path_factory) -> Callable[[str, int, int], Path]:
    """``run(method, stage, processes)``: the run directory of that training (trained once per module)."""
    done: dict[tuple, Path] = {}

    def get(method: str, stage: int, nproc: int) -> Path:
        if (method, stage, nproc) not in done:
            run_dir = tmp_path_factory.mktemp(f"{method}-zero{stage}-{nproc}proc")
            args = _args(tiny_no_dropout, odd_data, run_dir, method, stage, GLOBAL_BATCH // nproc)
            if nproc == 1:
                bertmt("train", str(QUICKSTART), *args)
            else:
                torchrun(nproc, "train", str(QUICKSTART), *args)
            done[method, stage, nproc] = run_dir
        return done[method, stage, nproc]

    return get


def _best(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "best" / "model.safetensors"))  # 1 epoch: the final weights


def _assert_same_training(got: Path, want: Path) -> None:
    losses_got, losses_want = train_losses(got), train_losses(want)
    assert set(losses_want) == {"train/sst/loss", "train/quora/loss", "train/sts/loss"}
    assert set(losses_got) == set(losses_want)
    for tag in losses_want:
        assert len(losses_want[tag]) >= STEPS // 2
        torch.testing.assert_close(
            torch.tensor(losses_got[tag]), torch.tensor(losses_want[tag]), rtol=1e-5, atol=1e-6, msg=tag
        )
    p_got, p_want = _best(got), _best(want)
    assert p_got.keys() == p_want.keys()
    for name in p_want:
        torch.testing.assert_close(p_got[name], p_want[name], rtol=1e-5, atol=1e-6, msg=name)


CASES = [(m, s) for m in ("plain", "none", "pcgrad", "gradvac") for s in (0, 1, 2)] + [("plain", 3)]


@pytest.mark.parametrize("method, stage", CASES)  # plain: DeepSpeed's own accumulation
def test_two_ranks_match_one_rank_with_twice_the_batch(method, stage, run, tiny_no_dropout):
    one = run(method, stage, 1)
    _assert_same_training(run(method, stage, 2), one)
    start = load_file(str(tiny_no_dropout / "model.safetensors"))
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(_best(one)[f"encoder.{query}"], start[query])  # it trained


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_surgery_with_method_none_is_plain_training(stage, run):
    """The surgery path (per-task gradients, Gram matrix, surrogate backward) with weights 1 trains exactly
    like DeepSpeed's own accumulation, 2 ranks. (ZeRO-3 with surgery is refused at config time.)"""
    _assert_same_training(run("none", stage, 2), run("plain", stage, 2))


def test_deepspeed_launcher_matches_torchrun(run, tiny_no_dropout, odd_data, tmp_path):
    """`deepspeed --num_gpus 2` (its CPU mode) runs the same 2-rank training as torchrun."""
    import subprocess
    import sys

    from tests.e2e.helpers import REPO, cli_env

    via_deepspeed = tmp_path / "deepspeed"
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
        *_args(tiny_no_dropout, odd_data, via_deepspeed, "pcgrad", 1, batch=GLOBAL_BATCH // 2),
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
    assert train_losses(via_deepspeed) == train_losses(run("pcgrad", 1, 2))
    info = (via_deepspeed / "run_info.json").read_text()
    assert '"world_size": 2' in info
