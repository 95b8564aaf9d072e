"""Distributed equivalence (fp32, CPU, tiny model without dropout): 2 processes with per-rank batch b give
the same per-step losses and final parameters as 1 process with batch 2b, for surgery methods none, pcgrad
and gradvac and plain training at ZeRO 0-3, cagrad, upgrad, nash_mtl, mgda and the loss weightings famo, uw
and dwa at ZeRO 2, with gradient accumulation T = 3 (and 2T), round robin and a
sampled (annealed) schedule (tasks drawn twice in a step or absent from it), on data whose passes end in
odd-sized batches (one smaller than the world size) and runs that wrap a pass. Surgery with method none
is plain training at every stage. The 2-rank runs' sharded dev evaluation scores every example once: their
metrics, history and dev predictions are the 1-rank ones, and those of a 1-process `bertmt eval`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import NO_REPORTS, tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, scalars, train_losses, train_many

MICRO_BATCHES = 18  # 6 per task: every task wraps its 4-batch pass
GLOBAL_BATCH = 16


# model and schedule options (``method@<name>``): heads over the token states, max pooling, STS's segment
# features (its two sentences' tokens pooled apart), experts (shared layers that surgery projects, per-task
# gates), the plateau schedule (2 epochs: one judgement) and layer-wise lr decay (every shared layer in a
# parameter group of its own, the experts' copies too); LSTM heads at ZeRO 0, 1 and 3 (refused at 2:
# test_deepspeed_gradient_order.py); the sign-based and normalised optimisers (Lion, AdaFactor) have a test of
# their own below
HEADS = {
    "model.pooling": "max",
    "tasks.quora.head_arch": "cnn",
    "model.cnn_channels": 6,
    "tasks.sts.cross_features": "segments",
    "model.experts": {"count": 2, "layers": 1},
    "optim.schedule": "plateau",
    "optim.layer_decay": 0.5,
    "train.epochs": 2,
}
OPTIONS = {
    "": {},
    "heads": HEADS,
    "options": HEADS | {"tasks.sst.head_arch": "lstm", "model.lstm_size": 8},
    # long inputs in segments: at 16 tokens most SST sentences are split; a record's segments stay on its rank
    "chunk": {
        "data.long_inputs": "chunk",
        "data.max_length": 16,
        "data.chunk_overlap": 4,
        "model.segment_pooling": "attention",
    },
    "lion": {"optim.name": "lion", "optim.lr": 1e-3},
    "adafactor": {"optim.name": "adafactor", "optim.lr": 1e-3},
    # SophiaH, a Hessian estimate every other step: its products summed over ranks like the gradients
    "sophia": {"optim.name": "sophia", "optim.lr": 1e-1, "optim.sophia_period": 2},
}


def _args(pretrained, data, run_dir, method: str, stage: int, batch: int) -> list[str]:
    """``method``: plain (DeepSpeed's own accumulation) or a surgery method, optionally ``+<schedule kind>``
    (default round robin), ``:<grad_accum>`` (default 3, the number of tasks T) and ``@<OPTIONS key>``."""
    method, _, options = method.partition("@")
    method, _, accum = method.partition(":")
    method, _, schedule = method.partition("+")
    extra = {
        "train.epochs": 1,
        "train.batches_per_epoch": MICRO_BATCHES,
        "train.grad_accum": int(accum or 3),
        "run.log_every": 1,
        "train.zero_stage": stage,
        "mtl.method": method.replace("plain", "none"),
        "mtl.surgery": method not in ("plain", "famo", "uw", "dwa"),  # loss weightings: the plain path
        "mtl.dwa.window": 1,  # dwa: a new window every step
        "mtl.uw.lr": 0.5,  # uw: log-variances that move enough to show a wrong loss average
        "model.dropout": 0.0,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
        "optim.warmup_ratio": 0.0,
        "data.eval_batch_size": 16,  # 4 dev batches per task: 2 ranks score 2 each
        "schedule.kind": schedule or "round_robin",  # sampled: a task twice in a step, absent from others
    }
    extra |= {f"tasks.{t}.batch_size": batch for t in ("sst", "quora", "sts")} | OPTIONS[options]
    return tiny_overrides(pretrained, data, run_dir, **NO_REPORTS, **extra)


@pytest.fixture(scope="module")
def run(tiny_no_dropout, odd_data, tmp_path_factory) -> Callable[[str, int, int], Path]:
    """``run(method, stage, processes)``: the run directory of that training. Every case of CASES is trained
    at the first call, the 1-process runs in one process and the 2-process runs in one torchrun launch."""
    root = tmp_path_factory.mktemp("equivalence")
    dirs = {(m, s, n): root / f"{m}-zero{s}-{n}proc" for m, s in CASES + DROP_INS for n in (1, 2)}
    done: list[int] = []

    def get(method: str, stage: int, nproc: int) -> Path:
        for n in (1, 2):
            if n not in done:
                runs = [
                    ["train", str(QUICKSTART), *_args(tiny_no_dropout, odd_data, d, m, s, GLOBAL_BATCH // n)]
                    for (m, s, k), d in dirs.items()
                    if k == n
                ]
                train_many(n, runs, root / f"runs-{n}proc.json")
                done.append(n)
        return dirs[method, stage, nproc]

    return get


def _best(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "best" / "model.safetensors"))  # 1 epoch: the final weights


def _assert_same_training(got: Path, want: Path) -> None:
    losses_got, losses_want = train_losses(got), train_losses(want)
    assert set(losses_want) == {"train/sst/loss", "train/quora/loss", "train/sts/loss"}
    assert set(losses_got) == set(losses_want)
    for tag in losses_want:
        assert len(losses_want[tag]) >= 2  # every step (3 or 6 steps); annealed (seed 1234): most steps
        torch.testing.assert_close(
            torch.tensor(losses_got[tag]), torch.tensor(losses_want[tag]), rtol=1e-5, atol=1e-6, msg=tag
        )
    p_got, p_want = _best(got), _best(want)
    assert p_got.keys() == p_want.keys()
    for name in p_want:
        # the experts' gates: at the first step the experts are identical and a gate's exact gradient is 0,
        # so AdamW's first (normalised) step turns rounding into up to ~lr / 5 = 1e-5 (measured: 1e-5)
        atol = 2e-5 if name.startswith("experts.gates.") else 1e-6
        torch.testing.assert_close(p_got[name], p_want[name], rtol=1e-5, atol=atol, msg=name)


CASES = [(m, s) for m in ("plain", "none", "pcgrad", "gradvac") for s in (0, 1, 2, 3)]  # grad_accum T = 3
CASES += [("pcgrad:6", s) for s in (0, 1, 2, 3)] + [("gradvac:6", 1), ("gradvac:6", 3), ("none:6", 2)]
CASES += [("plain+annealed", 2), ("gradvac+annealed", 1), ("pcgrad+annealed", 3)]
# the Gram methods with a solver and a state, and a loss weighting (its state from rank-averaged losses);
# mgda on the annealed schedule: an absent task is left out of the QP, not taken as a zero gradient
CASES += [(m, 2) for m in ("cagrad", "upgrad", "nash_mtl", "famo", "uw", "dwa", "mgda+annealed")]
CASES += [("pcgrad@options", 1), ("plain@options", 0), ("pcgrad@heads", 2), ("pcgrad@chunk", 2)]
CASES += [("plain@options", 3), ("pcgrad@options", 3)]  # LSTM heads at ZeRO 3 (odd data: a rank's rows of
# one length make its LSTM gradients ready in another order; ZeRO 3 reduces them in parameter order)
DROP_INS = [("pcgrad@lion", 2), ("plain@adafactor", 0), ("pcgrad@sophia", 0)]


@pytest.mark.parametrize("method, stage", CASES)  # plain: DeepSpeed's own accumulation
def test_two_ranks_match_one_rank_with_twice_the_batch(method, stage, run, tiny_no_dropout):
    one = run(method, stage, 1)
    _assert_same_training(run(method, stage, 2), one)
    start = load_file(str(tiny_no_dropout / "model.safetensors"))
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(_best(one)[f"encoder.{query}"], start[query])  # it trained


@pytest.mark.parametrize("method, stage", DROP_INS)
def test_sign_and_normalised_optimisers_match_one_rank_up_to_amplified_rounding(method, stage, run):
    """Lion's update is sign(momentum), AdaFactor's is normalised and SophiaH's momentum / Hessian estimate
    clipped: a coordinate whose gradient is at rounding level (an attention key bias, whose exact gradient
    is 0) moves by a full step either way, and 2 ranks sum in another order than 1. So the first steps'
    losses agree as for AdamW, later ones to 1e-2, and no parameter is further off than the steps could
    take it (2 x lr per step; SophiaH's largest step, lr x sophia_clip, is the same 1e-3)."""
    one, two = run(method, stage, 1), run(method, stage, 2)
    losses_one, losses_two = train_losses(one), train_losses(two)
    assert set(losses_one) == set(losses_two) == {"train/sst/loss", "train/quora/loss", "train/sts/loss"}
    for tag in losses_one:
        got, want = torch.tensor(losses_two[tag]), torch.tensor(losses_one[tag])
        torch.testing.assert_close(got[:1], want[:1], rtol=1e-5, atol=1e-6, msg=tag)
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3, msg=tag)
    p_one, p_two = _best(one), _best(two)
    steps = MICRO_BATCHES // 3
    worst = max(float((p_one[k] - p_two[k]).abs().max()) for k in p_one)
    assert worst <= 2 * 1e-3 * steps, worst


def test_sophia_hessian_estimates_match_one_rank(run):
    """The Hessian moments in SophiaH's state after a PCGrad run (estimates at steps 0, 2, 4): the products
    are summed over ranks and micro-batches like the gradients, so 2 ranks give 1 rank's estimate to rounding
    (measured with plain training: 9e-9 at most, on moments up to 0.1; one rank's products alone would be
    half of it)."""
    states = []
    for processes in (1, 2):
        last = sorted((run("pcgrad@sophia", 0, processes) / "checkpoints").glob("step-*"))[-1]
        saved = torch.load(last / "mp_rank_00_model_states.pt", weights_only=False)
        states.append(saved["optimizer"]["state"])
    one, two = states
    assert one.keys() == two.keys() and len(one) > 20
    for k in one:
        torch.testing.assert_close(two[k]["hessian_moment"], one[k]["hessian_moment"], rtol=1e-4, atol=1e-7)
    assert max(float(s["hessian_moment"].abs().max()) for s in one.values()) > 1e-2


def test_loss_weights_reach_the_gradient(run):
    """FAMO's weights (logged per step, moving away from 1) change the training: not plain training."""
    famo, plain = run("famo", 2, 1), run("plain", 2, 1)
    weights = scalars(famo, "mtl/weight/sts")
    assert len(weights) >= 5 and max(abs(w - 1) for w in weights[1:]) > 1e-3, weights
    assert len(set(scalars(famo, "mtl/famo/logit/sst"))) > 2
    query = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(_best(famo)[query], _best(plain)[query], rtol=1e-6, atol=1e-7)


def _dev_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    return {
        p.name: np.loadtxt(p, delimiter=",", skiprows=1, usecols=1, dtype=np.float64)
        for p in sorted((run_dir / "predictions").glob("*-dev.csv"))
    }


def _assert_same_evaluation(got: Path, want: Path, tol: float) -> None:
    for name in ("metrics.json", "history.json"):
        a, b = (dict(_leaves(json.loads((d / name).read_text()))) for d in (got, want))
        assert a.keys() == b.keys(), name
        np.testing.assert_allclose([a[k] for k in b], list(b.values()), rtol=tol, atol=tol, err_msg=name)
    pa, pb = _dev_predictions(got), _dev_predictions(want)
    assert pa.keys() == pb.keys() == {"quora-dev.csv", "sst-dev.csv", "sts-dev.csv"}
    for name in pa:
        assert len(pa[name]) == 64
        np.testing.assert_allclose(pa[name], pb[name], atol=1e-4 + tol, err_msg=name)  # 4 decimals


def _leaves(tree, path: str = "") -> list[tuple[str, float]]:
    """(path, number) for every number in a JSON tree."""
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in _leaves(v, f"{path}/{k}")]
    if isinstance(tree, list):
        return [x for i, v in enumerate(tree) for x in _leaves(v, f"{path}/{i}")]
    return [(path, float(tree))]


@pytest.mark.parametrize("method", ["plain", "pcgrad"])
def test_sharded_evaluation_scores_every_dev_example_once(method, run, tmp_path):
    """2 ranks evaluate their dev shards during training; the gathered scores equal the 1-rank run's and
    those of a 1-process `bertmt eval` / `bertmt predict --split dev` of the same best weights."""
    two = run(method, 1, 2)
    _assert_same_evaluation(two, run(method, 1, 1), tol=1e-5)
    alone = tmp_path / "alone"
    shutil.copytree(two, alone)
    bertmt("eval", str(alone))
    bertmt("predict", str(alone), "--split", "dev")
    evaluated = json.loads(next((alone / "eval").glob("*/metrics.json")).read_text())["metrics"]
    (alone / "metrics.json").write_text(json.dumps(evaluated))
    (alone / "history.json").write_text((two / "history.json").read_text())
    _assert_same_evaluation(alone, two, tol=1e-6)


def test_rank_0_alone_writes_the_run_directory(run):
    """One TensorBoard event file, each log line once, the world size recorded: rank 1 writes nothing."""
    two = run("plain", 0, 2)
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1
    log = (two / "train.log").read_text()
    assert log.count("epoch 1 dev:") == 1 and log.count("finished in") == 1 and "[rank1]" not in log
    assert json.loads((two / "run_info.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_surgery_with_method_none_is_plain_training(stage, run):
    """The surgery path with weights 1 trains exactly like DeepSpeed's own accumulation, 2 ranks: per-task
    gradients by autograd, Gram matrix and surrogate backward at ZeRO 0/1; captured reduced partitions,
    Gram matrix and written-back combination at ZeRO 2/3."""
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
