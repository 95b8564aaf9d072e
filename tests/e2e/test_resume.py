"""A run killed (SIGKILL) in the middle of the optimiser step after its first checkpoint and started again
ends with the same metrics.json and history.json as an uninterrupted run with the same seed (fp32, CPU), for
plain training, surgery, SMART, the loss weightings and SophiaH; so does a run stopped by SIGTERM and then
SIGINT, and one whose latest checkpoint is truncated or whose `latest` marker is empty. The kill or signal
comes from the run itself at a fixed micro-batch (tests/distributed/worker.py), not from a race."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess

import pytest

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, train_many

WORKER = "tests.distributed.worker"


def _kill_after_first_checkpoint(args: list[str], run_dir, accum: int) -> None:
    """Checkpoint every 2 steps: the run kills itself in the second micro-batch of step 3."""
    env = {"BERTMT_TEST_KILL": str(2 * accum + 1)}
    proc = bertmt("train", str(QUICKSTART), *args, module=WORKER, env=env, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (run_dir / "metrics.json").exists()


PLAIN = {"run.checkpoint_every": 2, "train.grad_accum": 2, "train.epochs": 3}
TWO = {"train.epochs": 2}


@pytest.fixture(scope="module")
def uninterrupted_plain(tiny_pretrained, small_data, tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole") / "run"
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, whole, **PLAIN))
    return whole


def _assert_same_result(got, want) -> None:
    for name in ("metrics.json", "history.json"):
        assert json.loads((got / name).read_text()) == json.loads((want / name).read_text()), name


def test_sigterm_then_sigint_stop_at_checkpoints_and_resume_exactly(
    uninterrupted_plain, tiny_pretrained, small_data, tmp_path
):
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir, **PLAIN)
    for name, call, step in [("TERM", 5, 3), ("INT", 9, 8)]:  # the signal in step 3 (then 8): stop after it
        env = {"BERTMT_TEST_SIGNAL": f"{name}:{call}"}
        proc = bertmt("train", str(QUICKSTART), *args, module=WORKER, env=env, check=False)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert f"stopped by SIG{name} at step {step}; checkpoint saved, start the same command" in proc.stderr
        assert (run_dir / "checkpoints" / "latest").read_text() == f"step-{step}"
        assert not (run_dir / "metrics.json").exists()
    bertmt("train", str(QUICKSTART), *args)
    _assert_same_result(run_dir, uninterrupted_plain)


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(
    uninterrupted_plain, tiny_pretrained, small_data, tmp_path
):
    """Killed after its step-4 checkpoint (step-2 kept too): a truncated step-4 resumes from step-2, an
    empty ``latest`` from the newest complete checkpoint; both end as the uninterrupted run."""
    killed = tmp_path / "killed"
    args = tiny_overrides(tiny_pretrained, small_data, killed, **PLAIN)
    env = {"BERTMT_TEST_KILL": str(4 * 2 + 1)}  # inside step 5
    proc = bertmt("train", str(QUICKSTART), *args, module=WORKER, env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-2", "step-4"]
    for case in ("truncated", "empty-latest"):
        run_dir = tmp_path / case
        shutil.copytree(killed, run_dir)
        if case == "truncated":
            (states,) = (run_dir / "checkpoints" / "step-4").glob("*model_states.pt")
            states.write_bytes(states.read_bytes()[:4096])
        else:
            (run_dir / "checkpoints" / "latest").write_text("")
        proc = bertmt(
            "train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir, **PLAIN)
        )
        log = (run_dir / "train.log").read_text()
        if case == "truncated":
            assert "step-4 cannot be loaded" in log and "resumed from the older checkpoint" in log
            assert "resuming at epoch 1, micro-batch 4, step 2" in log
        else:
            assert "latest names '', which is not a checkpoint: using the newest one, step-4" in log
            assert "resuming at epoch 1, micro-batch 8, step 4" in log
        _assert_same_result(run_dir, uninterrupted_plain)


VARIANTS = {
    "plain": {},
    # surgery state (GradVac's EMA targets, the seeded task orders) and a sampled schedule resume too
    "gradvac-annealed": {
        "mtl.method": "gradvac",
        "mtl.gradvac.beta": 0.5,
        "schedule.kind": "annealed",
        "train.grad_accum": 3,
    },
    # SMART's momentum teacher lives in the checkpoint, its noise draws from the saved RNG state
    "smart": {"mtl.smart.weight": 1.0, "mtl.smart.bregman_weight": 1.0, "mtl.smart.epsilon": 1e-2},
    # Nash-MTL's warm start and step count (weights reused every other step); 2 epochs (CI time)
    "nash_mtl": {"mtl.method": "nash_mtl", "mtl.nash_mtl.update_weights_every": 2, "train.grad_accum": 3}
    | TWO,
    # the loss weightings' state: FAMO's logits, Adam moments and last losses; UW's log-variances and
    # Adam moments; DWA's running window and window means (windows of 1 step: it changes every step)
    "famo": {"mtl.method": "famo", "mtl.famo.lr": 0.5} | TWO,
    "uw": {"mtl.method": "uw", "mtl.uw.lr": 0.5} | TWO,
    "dwa": {"mtl.method": "dwa", "mtl.dwa.window": 1} | TWO,
    # SophiaH's momentum and Hessian moments; the killed step (the third) estimates the Hessian again, with
    # the draw of its step; its products go through the encoder (attention differentiated twice)
    "sophia": {"optim.name": "sophia", "optim.lr": 3e-2, "optim.sophia_period": 2} | TWO,
}


@pytest.fixture(scope="module")
def uninterrupted_variants(uninterrupted_plain, tiny_pretrained, small_data, tmp_path_factory):
    """The uninterrupted run of every variant, trained in one process (tests/distributed/worker.py: torch
    and DeepSpeed start once); plain's is the module's plain run."""
    root = tmp_path_factory.mktemp("whole-variants")
    dirs = {name: root / name for name, variant in VARIANTS.items() if variant}
    runs = [
        [
            "train",
            str(QUICKSTART),
            *tiny_overrides(tiny_pretrained, small_data, d, **(PLAIN | VARIANTS[name])),
        ]
        for name, d in dirs.items()
    ]
    train_many(1, runs, root / "runs.json")
    return dirs | {"plain": uninterrupted_plain}


@pytest.fixture(scope="module")
def resumed_variants(tiny_pretrained, small_data, tmp_path_factory):
    """Every variant killed inside step 3 (a process each), then all started again in one process."""
    root = tmp_path_factory.mktemp("resumed-variants")
    restarts = []
    for name, variant in VARIANTS.items():
        extra = PLAIN | variant
        args = tiny_overrides(tiny_pretrained, small_data, root / name / "parts", **extra)
        _kill_after_first_checkpoint(args, root / name / "parts", extra["train.grad_accum"])
        harmless = [] if variant else ["run.log_every=1"]  # a restart may change what does not alter training
        restarts.append(["train", str(QUICKSTART), *args, *harmless])
    train_many(1, restarts, root / "restarts.json")
    return {name: root / name / "parts" for name in VARIANTS}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_killed_and_resumed_run_matches_uninterrupted(name, uninterrupted_variants, resumed_variants):
    accum = (PLAIN | VARIANTS[name])["train.grad_accum"]
    parts = resumed_variants[name]
    resumed = re.search(
        r"resuming at epoch (\d+), micro-batch (\d+), step (\d+)", (parts / "train.log").read_text()
    )
    assert resumed and resumed.groups() == ("1", str(2 * accum), "2")  # step 3 again from its start
    _assert_same_result(parts, uninterrupted_variants[name])


def test_a_full_disk_ends_the_run_with_one_message_and_the_previous_checkpoint_intact(
    uninterrupted_plain, tiny_pretrained, small_data, tmp_path
):
    """The run directory on a 20 MiB tmpfs: step-2's checkpoint (11.5 MiB) fits, step-4's does not. The run
    stops with one message; step-2 stays `latest` and complete; resuming from it (on a larger disk) =
    uninterrupted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        run_dir = mount / "run"
        extra = PLAIN | {"data.cache_dir": str(tmp_path / "cache")}
        args = tiny_overrides(tiny_pretrained, small_data, run_dir, **extra)
        proc = bertmt("train", str(QUICKSTART), *args, check=False)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert f"could not save checkpoint {run_dir / 'checkpoints' / 'step-4'}" in proc.stderr
        assert f"the previous checkpoint {run_dir / 'checkpoints' / 'step-2'} is intact" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert (run_dir / "checkpoints" / "latest").read_text() == "step-2"
        assert not (run_dir / "checkpoints" / ".partial").exists()
        moved = tmp_path / "run"
        shutil.copytree(run_dir, moved)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, moved, **extra))
    assert "resuming at epoch 1, micro-batch 4, step 2" in (moved / "train.log").read_text()
    _assert_same_result(moved, uninterrupted_plain)
