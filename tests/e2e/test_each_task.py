"""Exclusive training (`bertmt train CONFIG --each-task`): one model per task, each the same as a run of
that task alone; `bertmt eval` and `bertmt predict` route each task to its own model."""

from __future__ import annotations

import csv
import json

import pytest
from safetensors.torch import load_file

from bertmt.config import load_config
from bertmt.evaluation.metrics import overall_score
from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt

TASKS = ("sst", "quora", "sts")


@pytest.fixture(scope="module")
def run(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("each-task") / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir, **{"train.epochs": 1})
    proc = bertmt("train", str(QUICKSTART), *args, "--each-task")
    return run_dir, args, proc


def test_each_task_has_its_own_model_and_the_top_level_combines_them(run):
    run_dir, _, proc = run
    top = json.loads((run_dir / "metrics.json").read_text())
    for task in TASKS:
        sub = run_dir / "tasks" / task
        weights = load_file(str(sub / "best" / "model.safetensors"))
        assert {k.split(".")[1] for k in weights if k.startswith("heads.")} == {task}  # trained alone
        assert top[task] == json.loads((sub / "metrics.json").read_text())[task]
    specs = {t: load_config(run_dir / "config.yaml").task_spec(t) for t in TASKS}
    assert top["overall"] == pytest.approx(overall_score({t: top[t] for t in TASKS}, specs))
    models = json.loads((run_dir / "tasks.json").read_text())
    assert [(m["model"], m["tasks"]) for m in models] == [(t, [t]) for t in TASKS]
    assert "every task's own model" in proc.stdout
    # the reports come from the same pass over the dev files: each task's by its own model
    reports = json.loads((run_dir / "reports" / "dev" / "summary.json").read_text())
    assert reports.keys() == set(TASKS)
    assert reports["sst"]["accuracy"] == pytest.approx(top["sst"]["accuracy"], abs=1e-6)
    assert (run_dir / "reports" / "dev" / "sst_confusion.png").is_file()


def test_a_tasks_model_is_the_run_of_that_task_alone(run, tiny_pretrained, small_data, tmp_path):
    run_dir, _, _ = run
    alone = tmp_path / "sst-alone"
    args = tiny_overrides(tiny_pretrained, small_data, alone, **{"train.epochs": 1})
    only_sst = [f"tasks.{t}.{split}=null" for t in ("quora", "sts") for split in ("train", "dev", "test")]
    bertmt("train", str(QUICKSTART), *args, *only_sst)
    got = json.loads((run_dir / "tasks" / "sst" / "metrics.json").read_text())
    assert got["sst"] == json.loads((alone / "metrics.json").read_text())["sst"]


def test_eval_and_predict_route_each_task_to_its_model(run):
    run_dir, _, _ = run
    proc = bertmt("eval", str(run_dir))
    (out,) = (run_dir / "eval").iterdir()
    evaluated = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert evaluated.keys() == trained.keys()
    for task in TASKS:
        assert evaluated[task] == pytest.approx(trained[task], abs=1e-6)
    assert evaluated["overall"] == pytest.approx(trained["overall"], abs=1e-6)
    assert "each task's own model: sst epoch 1, quora epoch 1, sts epoch 1" in proc.stdout
    bertmt("predict", str(run_dir), "--split", "dev")
    for task in TASKS:
        with (
            open(run_dir / "predictions" / f"{task}-dev.csv") as a,
            open(run_dir / "tasks" / task / "predictions" / f"{task}-dev.csv") as b,
        ):
            assert list(csv.reader(a)) == list(csv.reader(b))  # the task's own model wrote the same


def test_tasks_naming_one_model_train_together_and_are_routed_to_it(tiny_pretrained, small_data, tmp_path):
    """tasks.<t>.model: SST and Quora in one multitask model, trained in two phases (a heads phase on the
    frozen encoder, then all of it), STS alone without phases; eval routes each task to its final model."""
    run_dir = tmp_path / "run"
    groups = {"train.epochs": 1, "tasks.sst.model": "joint", "tasks.quora.model": "joint"}
    heads = {"name": "heads", "models": ["joint"], "train": {"freeze_encoder": True, "batches_per_epoch": 4}}
    groups["phases"] = [heads, {"name": "all", "models": ["joint"], "optim": {"lr": 1.0e-3}}]
    bertmt(
        "train",
        str(QUICKSTART),
        *tiny_overrides(tiny_pretrained, small_data, run_dir, **groups),
        "--each-task",
    )
    assert sorted(p.name for p in (run_dir / "tasks").iterdir()) == ["joint", "sts"]
    joint_dir, sts_dir = run_dir / "tasks" / "joint", run_dir / "tasks" / "sts"
    assert sorted(p.name for p in (joint_dir / "phases").iterdir()) == ["1-heads", "2-all"]
    assert not (sts_dir / "phases").exists() and not (joint_dir / "best").exists()
    models = {m["model"]: m for m in json.loads((run_dir / "tasks.json").read_text())}
    assert models["joint"]["tasks"] == ["sst", "quora"] and models["sts"]["tasks"] == ["sts"]
    assert models["joint"]["phase"] == "2-all" and "phase" not in models["sts"]
    final = joint_dir / "phases" / "2-all"
    weights = {d: load_file(str(d / "best" / "model.safetensors")) for d in (final, sts_dir)}
    for d, tasks in ((final, {"sst", "quora"}), (sts_dir, {"sts"})):
        assert {k.split(".")[1] for k in weights[d] if k.startswith("heads.")} == tasks
    after_heads = load_file(str(joint_dir / "phases" / "1-heads" / "best" / "model.safetensors"))
    encoder = [k for k in after_heads if not k.startswith("heads.")]
    assert any(not after_heads[k].equal(weights[final][k]) for k in encoder)  # phase 2 trained the encoder
    top = json.loads((run_dir / "metrics.json").read_text())
    joint = json.loads((final / "metrics.json").read_text())
    assert top["sst"] == joint["sst"] and top["quora"] == joint["quora"]
    assert top["sts"] == json.loads((sts_dir / "metrics.json").read_text())["sts"]
    proc = bertmt("eval", str(run_dir))
    assert "each task's own model: joint epoch 1, sts epoch 1" in proc.stdout
    (out,) = (run_dir / "eval").iterdir()
    evaluated = json.loads((out / "metrics.json").read_text())["metrics"]
    for task in ("sst", "quora", "sts"):
        assert evaluated[task] == pytest.approx(top[task], abs=1e-6)
