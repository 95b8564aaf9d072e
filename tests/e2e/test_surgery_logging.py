"""Gradient surgery inside a real run (1 process; ZeRO 0 and 2, the two surgery paths): TensorBoard holds each
task pair's cosine, the conflict count, the weights, the gradient norms and the sampled task fractions, and
they agree with each other; a task absent from a step has no gradient in it (no row left from an earlier
step)."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt

PAIRS = ["quora-sts", "sst-quora", "sst-sts"]


@pytest.fixture(scope="module", params=[0, 2], ids=lambda s: f"zero{s}")
def events(request, tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("surgery") / "run"
    extra = {
        "train.zero_stage": request.param,
        "mtl.method": "pcgrad",
        "train.grad_accum": 3,
        "run.log_every": 1,
        "train.epochs": 2,
        "schedule.kind": "annealed",
        "tasks.sst.test": None,
        "tasks.sts.test": None,
    }
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir, **extra))
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_pairwise_cosines_conflicts_and_weights_are_logged(events):
    tasks = ("sst", "quora", "sts")
    assert sorted(events["mtl/conflicts"]) == list(range(1, 9))  # 2 epochs x 12 micro-batches / grad_accum 3
    projected = absent = False
    for step, conflicts in events["mtl/conflicts"].items():
        # a pair's cosine is logged when both tasks had a batch in the step (the schedule samples tasks)
        cosines = [events[f"mtl/cos/{p}"][step] for p in PAIRS if step in events.get(f"mtl/cos/{p}", {})]
        assert all(-1.0 <= v <= 1.0 for v in cosines)
        assert conflicts == sum(v < 0 for v in cosines)
        weights = [events[f"mtl/weight/{t}"][step] for t in tasks]
        if conflicts == 0:
            assert weights == pytest.approx([1.0, 1.0, 1.0])  # PCGrad leaves agreeing gradients alone
        else:
            projected |= any(w != pytest.approx(1.0) for w in weights)
        for t in tasks:  # a task in the step has a gradient, an absent one none (its loss is not logged)
            present = step in events[f"train/{t}/loss"]
            assert (events[f"mtl/grad_norm/{t}"][step] > 0) == present, (step, t)
        absent |= not all(step in events[f"train/{t}/loss"] for t in tasks)
    assert projected, "no step had a conflict that PCGrad projected"
    assert absent, "the sampled schedule left no task out of a step: the check above saw only one case"


def test_sampled_task_fractions_are_logged_per_epoch(events):
    """The fractions agree with the steps each task trained in (a task drawn k times in an epoch of 4 steps
    of 3 micro-batches trains in between ceil(k / 3) and k of them)."""
    for t in ("sst", "quora", "sts"):
        fractions = events[f"schedule/{t}/fraction"]
        assert sorted(fractions) == [4, 8]  # logged at the end of each epoch
        for first, last in ((1, 4), (5, 8)):
            drawn = round(fractions[last] * 12)
            assert drawn == pytest.approx(fractions[last] * 12, abs=1e-6)
            steps = sum(first <= s <= last for s in events[f"train/{t}/loss"])
            assert -(-drawn // 3) <= steps <= drawn, (t, last, drawn, steps)
