"""configs/cpu-recipe-three-phases.yaml (issue 10's recipe) end to end on a tiny model and real records.

Each phase starts from the previous phase's best model, a frozen encoder stays frozen, PALs are added in the
last phase, patience stops a phase early, a run killed inside a phase resumes there and ends as an
uninterrupted run, and reports are written."""

from __future__ import annotations

import json
import re
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.e2e.helpers import REPO, bertmt

RECIPE = REPO / "configs" / "cpu-recipe-three-phases.yaml"
WORKER = "tests.distributed.worker"
SHORT = [  # the recipe's phases cut to a few micro-batches each
    "phases.0.train.batches_per_epoch=6",
    "phases.1.train.batches_per_epoch=12",
    "phases.2.train.batches_per_epoch=12",
    "phases.2.train.epochs=1",
]


def _weights(run_dir, phase):
    return load_file(str(run_dir / "phases" / phase / "best" / "model.safetensors"))


@pytest.fixture(scope="module")
def recipe(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("recipe") / "run"
    # joint phase with a learning rate too small to move fp32 weights: no epoch improves on the first, so
    # patience 1 stops it after 2 of its 3 epochs, and its best model is exactly the heads phase's best (a
    # joint phase that started anywhere else would not be); the kill test below runs it at its real rate
    args = tiny_overrides(tiny_pretrained, small_data, run_dir) + SHORT + ["phases.1.optim.lr=1e-30"]
    proc = bertmt("train", str(RECIPE), *args)
    return run_dir, proc


def test_every_phase_has_its_run_directory_and_the_top_level_summarises_them(recipe):
    run_dir, proc = recipe
    phases = json.loads((run_dir / "phases.json").read_text())
    assert [p["phase"] for p in phases] == ["heads", "joint", "pals"]
    for p in phases:
        d = run_dir / "phases" / f"{phases.index(p) + 1}-{p['phase']}"
        assert json.loads((d / "metrics.json").read_text()) == p["metrics"]
        assert (d / "plots" / "training_curves.png").is_file() and (d / "tensorboard").is_dir()
    assert json.loads((run_dir / "metrics.json").read_text()) == phases[-1]["metrics"]
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["phase"] for h in history] == ["heads", "joint", "joint", "pals"]
    assert "best dev metrics of phase 'pals'" in proc.stdout


def test_frozen_encoder_phase_trains_only_the_heads(recipe, tiny_pretrained):
    run_dir, _ = recipe
    pretrained = load_file(str(tiny_pretrained / "model.safetensors"))
    heads = _weights(run_dir, "1-heads")
    encoder = {k: v for k, v in heads.items() if k.startswith("encoder.")}
    assert encoder
    for name, value in encoder.items():
        hf_name = name.removeprefix("encoder.")
        torch.testing.assert_close(value, pretrained[hf_name], rtol=0, atol=0, msg=name)
    log = (run_dir / "phases" / "1-heads" / "train.log").read_text()
    assert "encoder frozen" in log


def test_each_phase_starts_from_the_previous_best_and_patience_stops_early(recipe):
    run_dir, _ = recipe
    heads, joint, pals = (_weights(run_dir, p) for p in ("1-heads", "2-joint", "3-pals"))
    assert heads.keys() == joint.keys()
    for name in heads:  # lr 1e-30 moves weights by ~1e-30 at most: they are the heads phase's best
        torch.testing.assert_close(joint[name], heads[name], rtol=0, atol=1e-20, msg=name)
    joint_log = (run_dir / "phases" / "2-joint" / "train.log").read_text()
    assert "early stop: no better dev score for 1 epoch(s)" in joint_log
    assert len(json.loads((run_dir / "phases" / "2-joint" / "history.json").read_text())) == 2
    pal_keys = {k for k in pals if k.startswith("pals.")}
    assert {k.split(".")[1] for k in pal_keys} == {"sst", "quora", "sts"}
    assert pals.keys() - pal_keys == heads.keys()
    assert "(PALs added at zero)" in (run_dir / "phases" / "3-pals" / "train.log").read_text()
    assert any(pals[k].abs().sum() > 0 for k in pal_keys if ".decode." in k)  # V_D learned from zero


def test_reports_are_written_for_the_final_model(recipe):
    run_dir, _ = recipe
    summary = json.loads((run_dir / "reports" / "dev" / "summary.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert summary["sst"]["accuracy"] == pytest.approx(metrics["sst"]["accuracy"], abs=1e-6)
    assert summary["sts"]["pearson"] == pytest.approx(metrics["sts"]["pearson"], abs=1e-5)
    for name in ("sst_confusion.png", "quora_roc.png", "sts_scatter.png", "quora_worst_errors.json"):
        assert (run_dir / "reports" / "dev" / name).is_file()


def test_killed_inside_a_phase_resumes_there_and_matches_an_uninterrupted_run(
    tiny_pretrained, small_data, tmp_path
):
    """Killed (SIGKILL, by the run itself at a fixed micro-batch) inside the joint phase: the restart skips
    the finished heads phase without touching it, resumes the joint phase at its checkpoint and ends like an
    uninterrupted run."""
    extra = {"run.checkpoint_every": 2}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    bertmt("train", str(RECIPE), *tiny_overrides(tiny_pretrained, small_data, whole, **extra), *SHORT)

    args = ["train", str(RECIPE), *tiny_overrides(tiny_pretrained, small_data, parts, **extra), *SHORT]
    # heads: micro-batches 0-5; joint (grad_accum 1): its checkpoint at step 2, killed in its step 4
    killed = bertmt(*args, module=WORKER, env={"BERTMT_TEST_KILL": "9"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    heads, joint = parts / "phases" / "1-heads", parts / "phases" / "2-joint"
    assert (heads / "metrics.json").is_file() and not (joint / "metrics.json").exists()
    assert (joint / "checkpoints" / "latest").read_text().strip() == "step-2"
    untouched = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in heads.rglob("*") if p.is_file()}

    restarted = bertmt(*args)
    assert "phase 1/3 'heads' finished before: skipped" in restarted.stderr
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in untouched} == untouched
    resumed = re.search(
        r"resuming at epoch (\d+), micro-batch (\d+), step (\d+)", (joint / "train.log").read_text()
    )
    assert resumed and resumed.groups() == ("1", "2", "2")
    # at the recipe's real learning rate the joint phase trains away from the heads phase's best model
    moved = _weights(parts, "2-joint")["encoder.encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(
        moved, _weights(parts, "1-heads")["encoder.encoder.layer.0.attention.self.query.weight"]
    )
    strip = lambda phases: [{k: v for k, v in p.items() if k != "dir"} for p in phases]  # noqa: E731
    assert strip(json.loads((parts / "phases.json").read_text())) == strip(
        json.loads((whole / "phases.json").read_text())
    )
