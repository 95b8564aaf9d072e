"""Task-adaptive pre-training: a phase with train.objective=mlm before the task phase, end to end on the
tiny model and real records; killed inside the MLM phase, it resumes there and ends as an uninterrupted
run."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt, scalars

PHASES = (
    "phases=[{name: tapt, train: {objective: mlm, epochs: 2, batches_per_epoch: 4, mlm_batch_size: 16}},"
    " {name: joint, train: {epochs: 1, batches_per_epoch: 6}}]"
)


@pytest.fixture(scope="module")
def tapt(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tapt") / "run"
    args = [*tiny_overrides(tiny_pretrained, small_data, run_dir, **{"optim.lr": 1e-3}), PHASES]
    bertmt("train", str(QUICKSTART), *args)
    return run_dir, args


def test_the_mlm_phase_trains_the_encoder_on_the_tasks_sentences(tapt, tiny_pretrained):
    run_dir, _ = tapt
    phase = run_dir / "phases" / "1-tapt"
    metrics = json.loads((phase / "metrics.json").read_text())
    assert set(metrics) == {"mlm", "overall"} and metrics["overall"] == metrics["mlm"]["accuracy"]
    log = (phase / "train.log").read_text()
    assert "masked-language modelling of" in log and "MLM head: new (the checkpoint has none)" in log
    losses = scalars(phase, "train/mlm/loss")
    assert len(losses) >= 2 and all(0 < v < 20 for v in losses)
    assert len(scalars(phase, "dev/mlm/accuracy")) == 2
    tapt_best = load_file(str(phase / "best" / "model.safetensors"))
    pretrained = load_file(str(tiny_pretrained / "model.safetensors"))
    moved = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(tapt_best[f"encoder.{moved}"], pretrained[moved])  # the encoder trained
    assert "mlm.dense.weight" in tapt_best and "mlm.bias" in tapt_best
    # the task heads are not trained by the MLM phase: they are where the joint phase's seed puts them
    joint_log = (run_dir / "phases" / "2-joint" / "train.log").read_text()
    assert f"weights from {phase / 'best' / 'model.safetensors'}" in joint_log
    joint_best = load_file(str(run_dir / "phases" / "2-joint" / "best" / "model.safetensors"))
    assert not any(k.startswith("mlm.") for k in joint_best)  # the MLM head stays behind


def test_killed_inside_the_mlm_phase_resumes_there_exactly(tapt, tmp_path):
    run_dir, args = tapt
    killed = tmp_path / "run"
    args = [a.replace(str(run_dir), str(killed)) if a.startswith("run.dir=") else a for a in args]
    env = {"BERTMT_TEST_KILL": "5"}  # the second epoch of the MLM phase (checkpoint at the first's end)
    proc = bertmt("train", str(QUICKSTART), *args, module="tests.distributed.worker", env=env, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "phases" / "1-tapt" / "metrics.json").exists()
    bertmt("train", str(QUICKSTART), *args)
    assert "resuming at epoch 2, micro-batch 0" in (killed / "phases" / "1-tapt" / "train.log").read_text()
    for name in ("metrics.json", "history.json"):
        assert json.loads((killed / name).read_text()) == json.loads((run_dir / name).read_text()), name


def test_mlm_outside_phases_or_last_is_refused(tiny_pretrained, small_data, tmp_path):
    args = tiny_overrides(tiny_pretrained, small_data, tmp_path / "run")
    proc = bertmt("train", str(QUICKSTART), *args, "train.objective=mlm", check=False)
    assert proc.returncode == 2 and "train.objective': expected tasks outside phases" in proc.stderr
    last = "phases=[{name: a}, {name: tapt, train: {objective: mlm}}]"
    proc = bertmt("train", str(QUICKSTART), *args, last, check=False)
    assert proc.returncode == 2
    assert "phases[1].train.objective': expected tasks in the last phase" in proc.stderr
