"""Evaluation reports against direct computations: confusion matrix, classification report, ROC AUC (equal to
the Mann-Whitney statistic), worst errors; the written PNGs open and have the expected content."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertmt.data.readers import TaskData
from bertmt.data.tasks import TASKS
from bertmt.evaluation.task_reports import (
    classification_report,
    confusion_matrix,
    roc_curve,
    worst_errors,
    write_task_report,
)


def test_confusion_matrix_and_report_match_loops():
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    counts = confusion_matrix(gold, pred, 5)
    for g in range(5):
        for p in range(5):
            assert counts[g, p] == sum(1 for a, b in zip(gold, pred) if a == g and b == p)
    report = classification_report(counts)
    for c in range(5):
        tp = sum((gold == c) & (pred == c))
        precision, recall = tp / sum(pred == c), tp / sum(gold == c)
        assert report[str(c)]["precision"] == pytest.approx(precision)
        assert report[str(c)]["recall"] == pytest.approx(recall)
        assert report[str(c)]["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert report["accuracy"] == pytest.approx((gold == pred).mean())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=60))
def test_roc_auc_equals_the_mann_whitney_statistic(pairs):
    gold = np.array([g for g, _ in pairs])
    score = np.array([s for _, s in pairs], dtype=float)  # few distinct values: many ties
    if gold.all() or not gold.any():
        return
    pos, neg = score[gold], score[~gold]
    mann_whitney = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    fpr, tpr, auc = roc_curve(gold, score)
    assert auc == pytest.approx(mann_whitney)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and (np.diff(fpr) >= 0).all()


def _data(task, labels, texts):
    return TaskData(
        task=task, path="x", ids=[f"id{i}" for i in range(len(labels))], texts=texts, labels=labels
    )


def test_worst_errors_are_the_most_confident_mistakes_and_largest_errors():
    spec = TASKS["quora"]
    data = _data("quora", [1, 0, 1, 0], [("a", "b")] * 4)
    outputs = np.array([[0.0, 3.0], [0.0, 2.0], [0.0, -4.0], [1.0, 0.0]])  # rows 1 and 2 wrong, 2 worst
    errors = worst_errors(spec, data, outputs)
    assert [e["id"] for e in errors] == ["id2", "id1"]
    assert errors[0]["p_gold"] == pytest.approx(1 / (1 + np.exp(4)))
    sts = worst_errors(
        TASKS["sts"], _data("sts", [1.0, 4.0, 2.0], [("a", "b")] * 3), np.array([[1.2], [0.5], [2.0]])
    )
    assert [e["id"] for e in sts] == ["id1", "id0", "id2"] and sts[0]["abs_error"] == pytest.approx(3.5)


def test_written_reports_open_and_hold_what_their_names_say(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80).tolist()
    outputs = rng.normal(size=(80, 2)) + np.eye(2)[labels]  # better than chance
    summary = write_task_report(
        TASKS["quora"], _data("quora", labels, [("q1", "q2")] * 80), outputs, tmp_path, "dev"
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        f"quora_{n}"
        for n in [
            "confusion.json",
            "confusion.png",
            "classification_report.json",
            "roc.json",
            "roc.png",
            "worst_errors.json",
        ]
    )
    counts = np.array(json.loads((tmp_path / "quora_confusion.json").read_text())["counts"])
    assert counts.sum() == 80 and np.trace(counts) / 80 == pytest.approx(summary["accuracy"])
    assert 0.5 < summary["auc"] <= 1
    for png in tmp_path.glob("*.png"):
        with Image.open(png) as img:
            assert img.size[0] > 300 and img.size[1] > 300
            assert len(np.unique(np.asarray(img.convert("L")))) > 10  # drawn on, not blank
    gold = rng.uniform(0, 4.5, 50)  # + 0.3 stays inside the clipping range
    sts = write_task_report(
        TASKS["sts"], _data("sts", gold.tolist(), [("a", "b")] * 50), (gold + 0.3)[:, None], tmp_path, "dev"
    )
    assert sts["pearson"] == pytest.approx(1.0) and (tmp_path / "sts_scatter.png").is_file()
