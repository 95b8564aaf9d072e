"""`bertmt train|eval|predict` end to end on a tiny model and real CS224N records: run-directory contents,
metrics consistent with the predictions, TensorBoard events read back, evaluation on another dev file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertmt.config import load_config
from bertmt.data.readers import read_task_file
from bertmt.data.tasks import TASKS
from bertmt.evaluation.metrics import overall_score, task_metrics
from tests.conftest import slice_file, tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt


@pytest.fixture(scope="module")
def run(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir))
    return run_dir, proc


def _predictions(path):
    with open(path) as fp:
        rows = list(csv.DictReader(fp))
    return [r["id"] for r in rows], np.array([float(r[next(k for k in r if k != "id")]) for r in rows])


def test_run_directory_holds_config_deepspeed_config_and_commit(run):
    run_dir, proc = run
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.run.dir == str(run_dir) and cfg.train.batches_per_epoch == 12
    ds = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert ds["gradient_clipping"] == cfg.optim.grad_clip and ds["zero_optimization"]["stage"] == 0
    info = json.loads((run_dir / "run_info.json").read_text())
    assert len(info["git_commit"].split("-")[0]) == 40 or info["git_commit"] == "unknown"
    log = (run_dir / "train.log").read_text()
    assert "skipping malformed" not in log and "epoch 2 dev:" in log
    assert "bertmt train: best dev metrics" in proc.stdout


def test_metrics_json_matches_the_written_predictions(run, small_data):
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"sst", "quora", "sts", "overall"}
    recomputed = {}
    for task, fname in [("sst", "ids-sst-dev.csv"), ("quora", "quora-small-dev.csv"), ("sts", "sts-dev.csv")]:
        gold = read_task_file(small_data / fname, TASKS[task])
        ids, preds = _predictions(run_dir / "predictions" / f"{task}-dev.csv")
        assert ids == gold.ids
        recomputed[task] = task_metrics(TASKS[task], preds, np.array(gold.labels))
        assert recomputed[task] == pytest.approx(metrics[task], abs=1e-4)
    assert metrics["overall"] == pytest.approx(overall_score(recomputed, TASKS), abs=1e-4)
    assert (preds >= 0).all() and (preds <= 5).all()  # STS predictions clipped to 0-5
    history = json.loads((run_dir / "history.json").read_text())
    assert max(h["overall"] for h in history) == pytest.approx(metrics["overall"])


def test_test_split_predictions_cover_every_id(run, small_data):
    run_dir, _ = run
    gold = read_task_file(small_data / "ids-sst-test-student.csv", TASKS["sst"], labelled=False)
    ids, preds = _predictions(run_dir / "predictions" / "sst-test.csv")
    assert ids == gold.ids and set(preds) <= set(range(5))


def test_tensorboard_events_hold_losses_lr_and_dev_metrics(run):
    run_dir, _ = run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/sst/loss",
        "train/quora/loss",
        "train/sts/loss",
        "train/lr",
        "dev/sst/accuracy",
        "dev/quora/accuracy",
        "dev/sts/pearson",
        "dev/overall",
    } <= tags
    assert [e.step for e in events.Scalars("dev/overall")] == [12, 24]
    history = json.loads((run_dir / "history.json").read_text())
    assert [e.value for e in events.Scalars("dev/overall")] == pytest.approx([h["overall"] for h in history])
    lr = [e.value for e in events.Scalars("train/lr")]
    assert len(lr) == 12 and lr[-1] < max(lr)  # logged every 2 of 24 steps, decaying after warm-up


def test_training_curves_png(run):
    import matplotlib.image

    run_dir, _ = run
    image = matplotlib.image.imread(run_dir / "plots" / "training_curves.png")
    assert image.shape[0] == 450 and image.shape[1] == 1200  # 12 x 4.5 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_eval_reproduces_metrics_and_accepts_another_dev_file(run, data_dir, tmp_path):
    """`bertmt eval` writes eval/<time>/ (metrics and reports) and leaves the run's reports/dev alone."""
    run_dir, _ = run
    own_reports = {p: p.read_bytes() for p in (run_dir / "reports" / "dev").iterdir()}
    proc = bertmt("eval", str(run_dir))
    assert "bertmt eval" in proc.stdout and "best model of epoch 2" in proc.stdout
    (first,) = (run_dir / "eval").iterdir()
    written = json.loads((first / "metrics.json").read_text())
    assert written["metrics"]["sts"]["pearson"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["sts"]["pearson"], abs=1e-5
    )
    assert (first / "summary.json").is_file() and (first / "sts_scatter.png").is_file()
    other = slice_file(data_dir / "sts-dev.csv", tmp_path / "sts-other.csv", 120)
    bertmt("eval", str(run_dir), f"tasks.sts.dev={other}")
    (second,) = set((run_dir / "eval").iterdir()) - {first}
    result = json.loads((second / "metrics.json").read_text())
    assert result["files"]["sts"] == str(other)
    assert result["metrics"]["sts"]["pearson"] != pytest.approx(
        written["metrics"]["sts"]["pearson"], abs=1e-6
    )
    assert {p: p.read_bytes() for p in (run_dir / "reports" / "dev").iterdir()} == own_reports


def test_predict_cli_writes_the_requested_split(run):
    run_dir, _ = run
    target = run_dir / "predictions" / "sst-test.csv"
    target.unlink()
    proc = bertmt("predict", str(run_dir), "--split", "test")
    assert str(target) in proc.stdout and target.is_file()


def test_bad_override_value_fails_before_training(tmp_path):
    proc = bertmt("train", str(QUICKSTART), f"run.dir={tmp_path / 'r'}", "optim.schedule=step", check=False)
    assert proc.returncode == 2
    assert (
        "config key 'optim.schedule': expected one of ['linear', 'cosine', 'constant', 'plateau'], got 'step'"
        in proc.stderr
    )
    assert not (tmp_path / "r").exists()


def test_missing_data_file_is_named(tiny_pretrained, small_data, tmp_path):
    args = tiny_overrides(tiny_pretrained, small_data, tmp_path / "r") + ["tasks.sts.train=no-such.csv"]
    proc = bertmt("train", str(QUICKSTART), *args, check=False)
    assert proc.returncode == 1
    assert f"tasks.sts.train: {small_data / 'no-such.csv'}" in proc.stderr and "do not exist" in proc.stderr
    assert not (tmp_path / "r").exists()  # failed before any work
