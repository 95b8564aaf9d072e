"""Ensembles (tasks.<t>.ensemble): the combination of several models' outputs against direct references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from bertmt.data.tasks import get_task
from bertmt.evaluation.ensemble import check_same_records, combine
from bertmt.evaluation.predict import to_predictions


def test_classes_are_a_soft_vote_of_the_models_probabilities():
    rng = np.random.default_rng(0)
    outputs = [rng.normal(scale=3.0, size=(50, 5)) for _ in range(3)]
    joined = combine(get_task("sst"), outputs)
    reference = np.mean([softmax(out, axis=-1) for out in outputs], axis=0)
    np.testing.assert_allclose(softmax(joined, axis=-1), reference, rtol=1e-12)
    np.testing.assert_array_equal(to_predictions(get_task("sst"), joined), reference.argmax(-1))
    quora = get_task("quora")
    # not a majority vote: one confident model outvotes two unsure ones
    unsure = [np.array([[0.0, 0.2]]), np.array([[0.0, 0.2]]), np.array([[3.0, 0.0]])]
    assert to_predictions(quora, combine(quora, unsure)) == [0]
    # not the mean of the logits (that says class 0 here: mean logits 0.83 against 0.67)
    probs = [np.array([[0.0, 1.0]]), np.array([[0.0, 1.0]]), np.array([[2.5, 0.0]])]
    assert to_predictions(quora, combine(quora, probs)) == [1] and np.mean(probs, axis=0).argmax() == 0


def test_regression_averages_each_models_clipped_prediction():
    outputs = [np.array([[6.0], [-1.0], [2.0]]), np.array([[4.0], [1.0], [3.0]])]
    joined = combine(get_task("sts"), outputs)
    assert joined.shape == (3, 1)
    np.testing.assert_allclose(joined[:, 0], [4.5, 0.5, 2.5])  # 6 counts as 5, -1 as 0


def test_members_must_have_read_the_same_records():
    check_same_records("quora", "quora2", ["a", "b"], ["a", "b"])
    with pytest.raises(RuntimeError, match="quora2 read 1 records of quora's file where quora read 2"):
        check_same_records("quora", "quora2", ["a", "b"], ["a"])
