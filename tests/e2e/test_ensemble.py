"""Ensembles (tasks.<t>.ensemble) in an exclusive run: Quora scored by the joint model and a siamese Quora
model of its own, STS by its model and a symmetric cross-encoded one; the run's metrics, `bertmt eval` and
`bertmt predict` against each model's outputs averaged by hand."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import pearsonr
from tokenizers import Tokenizer

from bertmt.config import load_config
from bertmt.data.tasks import Task
from bertmt.engine.build import load_trained
from bertmt.evaluation.metrics import overall_score
from bertmt.evaluation.predict import predict
from bertmt.rundir import RunDir
from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt

MEMBERS = {
    "quora_siamese": {"type": "quora", "train": "quora-small-train.csv", "dev": "quora-small-dev.csv",
                      "batch_size": 8, "pair_encoding": "siamese", "pair_features": "both"},
    "sts_cross": {"type": "sts", "train": "sts-train.csv", "dev": "sts-dev.csv", "batch_size": 8,
                  "symmetric": True},
}  # fmt: skip


def train_args(tiny_pretrained, small_data, run_dir, **more) -> list[str]:
    extra = {
        "train.epochs": 1,
        "tasks.sst.model": "joint",
        "tasks.quora.model": "joint",
        "tasks.quora.ensemble": ["quora_siamese"],
        "tasks.sts.pair_encoding": "siamese",
        "tasks.sts.pair_features": "cosine",
        "tasks.sts.ensemble": ["sts_cross"],
        **{f"tasks.{name}": member for name, member in MEMBERS.items()},
        **more,
    }
    return [*tiny_overrides(tiny_pretrained, small_data, run_dir, **extra), "--each-task"]


@pytest.fixture(scope="module")
def run(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ensemble") / "run"
    bertmt("train", str(QUICKSTART), *train_args(tiny_pretrained, small_data, run_dir))
    return run_dir


def outputs_by_hand(run_dir, dataset: str, reads: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs of ``dataset``'s model and head on the ``split`` file of dataset ``reads`` (as the model's
    own config encodes its pairs), and that file's labels."""
    cfg = load_config(run_dir / "config.yaml")
    model_run = RunDir(run_dir / "tasks" / cfg.model_of(dataset))
    model_cfg = load_config(model_run.config)
    model = load_trained(model_cfg, model_run.best_model, model_run.encoder_config)
    loader = cfg.data.loader(Tokenizer.from_file(str(model_run.tokenizer)))
    own = model_cfg.resolved_tasks()[dataset]
    enc = loader.load(Task(own.spec, cfg.resolved_tasks()[reads].files, own.siamese, own.symmetric), split)
    return predict(model, own.spec, enc, 16, torch.device("cpu"), sharded=False), enc.labels


def test_the_runs_metrics_join_each_members_outputs(run):
    top = json.loads((run / "metrics.json").read_text())
    joint, siamese = (outputs_by_hand(run, d, "quora", "dev") for d in ("quora", "quora_siamese"))
    probs = (softmax(joint[0], -1) + softmax(siamese[0], -1)) / 2
    assert top["quora"]["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == joint[1]), abs=1e-12)
    own, member = (outputs_by_hand(run, d, "sts", "dev") for d in ("sts", "sts_cross"))
    by_hand = (own[0][:, 0].clip(0, 5) + member[0][:, 0].clip(0, 5)) / 2
    assert top["sts"]["pearson"] == pytest.approx(pearsonr(by_hand, own[1])[0], abs=1e-6)
    alone = json.loads((run / "tasks" / "sts" / "metrics.json").read_text())["sts"]["pearson"]
    assert abs(top["sts"]["pearson"] - alone) > 1e-4  # the ensemble is not the sts model alone
    for member in MEMBERS:  # a member keeps its own model's metrics, outside the overall score
        assert top[member] == json.loads((run / "tasks" / member / "metrics.json").read_text())[member]
    cfg = load_config(run / "config.yaml")
    scored = {t: top[t] for t in ("sst", "quora", "sts")}
    assert top["overall"] == pytest.approx(overall_score(scored, {t: cfg.task_spec(t) for t in scored}))
    reports = json.loads((run / "reports" / "dev" / "summary.json").read_text())  # the same pass
    assert reports["quora"]["accuracy"] == pytest.approx(top["quora"]["accuracy"], abs=1e-12)


def test_without_reports_a_rerun_joins_the_members_again(run, tiny_pretrained, small_data, tmp_path):
    """Started again with run.reports false, a finished run skips its models and only redoes its end: the same
    metrics.json, no reports, and the run's config saved (models copied into a new run: nothing trains)."""
    again = tmp_path / "run"
    shutil.copytree(run, again, ignore=shutil.ignore_patterns("reports", "eval"))
    (again / "metrics.json").unlink()
    (again / "config.yaml").unlink()
    no_reports = {"run.reports": False}
    out = bertmt("train", str(QUICKSTART), *train_args(tiny_pretrained, small_data, again, **no_reports))
    assert out.stderr.count("finished before: skipped") == len(list((run / "tasks").iterdir())) >= 2
    assert json.loads((again / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    assert not (again / "reports").exists()
    assert load_config(again / "config.yaml").run.reports is False


def test_eval_and_predict_score_with_the_whole_ensemble(run):
    bertmt("eval", str(run))
    (out,) = (run / "eval").iterdir()
    evaluated = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((run / "metrics.json").read_text())
    assert evaluated.keys() == trained.keys()
    for key in trained:
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-9)
    own, member = (outputs_by_hand(run, d, "sts", "test")[0] for d in ("sts", "sts_cross"))
    by_hand = (own[:, 0].clip(0, 5) + member[:, 0].clip(0, 5)) / 2
    with open(run / "predictions" / "sts-test.csv") as fp:  # written after training
        rows = list(csv.reader(fp))[1:]
    np.testing.assert_allclose([float(r[1]) for r in rows], by_hand, atol=5e-5)
    bertmt("predict", str(run), "--split", "dev")
    joint, siamese = (outputs_by_hand(run, d, "quora", "dev")[0] for d in ("quora", "quora_siamese"))
    with open(run / "predictions" / "quora-dev.csv") as fp:
        rows = list(csv.reader(fp))[1:]
    assert [int(r[1]) for r in rows] == list((softmax(joint, -1) + softmax(siamese, -1)).argmax(-1))
