"""Metrics, the overall score, the learning-rate schedule, the task schedule and the DeepSpeed config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bertmt.config import load_config
from bertmt.data.schedule import TaskSchedule
from bertmt.data.tasks import TASKS
from bertmt.engine.deepspeed_config import build_deepspeed_config
from bertmt.engine.optim import lr_factor
from bertmt.evaluation.metrics import overall_score, pearson


def test_overall_score_is_the_cs224n_formula():
    results = {"sst": {"accuracy": 0.5}, "quora": {"accuracy": 0.8}, "sts": {"pearson": 0.6}}
    assert overall_score(results, TASKS) == pytest.approx((0.5 + 0.8 + (0.6 + 1) / 2) / 3)
    assert overall_score({"sts": {"pearson": -1.0}}, TASKS) == 0.0


def test_pearson_against_numpy_and_constant_predictions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson(np.ones(5), y[:5]) == 0.0


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_warms_up_linearly_then_decays(schedule):
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, schedule) for s in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / (warmup + 1) for s in range(warmup)])
    assert factors[warmup] == 1.0
    tail = {"linear": 1 - 89 / 90, "cosine": 0.5 * (1 + math.cos(math.pi * 89 / 90)), "constant": 1.0}
    assert factors[-1] == pytest.approx(tail[schedule])
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))


SIZES = {"sst": 8544, "quora": 14283, "sts": 6040}
PASSES = {"sst": 267, "quora": 447, "sts": 189}


def test_round_robin_cycles_through_tasks():
    sched = TaskSchedule("round_robin", SIZES, PASSES, epochs=1)
    assert [sched.task_at(0, i, 7) for i in range(7)] == ["sst", "quora", "sts", "sst", "quora", "sts", "sst"]


@pytest.mark.parametrize("kind, power", [("random", 0.0), ("proportional", 1.0), ("sqrt", 0.5)])
def test_sampling_probabilities_and_empirical_frequencies(kind, power):
    sched = TaskSchedule(kind, SIZES, PASSES, epochs=3, seed=5)
    n = np.array(list(SIZES.values()), dtype=float)
    want = n**power / (n**power).sum()
    np.testing.assert_allclose(sched.probabilities(2), want)
    counts = sched.counts(0, 6000)
    freq = np.array([counts[t] for t in SIZES]) / 6000
    np.testing.assert_allclose(freq, want, atol=0.025)


def test_annealed_alpha_goes_from_1_to_0_2():
    sched = TaskSchedule("annealed", SIZES, PASSES, epochs=5)
    assert [sched.alpha(e) for e in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    n = np.array(list(SIZES.values()), dtype=float)
    np.testing.assert_allclose(sched.probabilities(3), n**0.4 / (n**0.4).sum())
    assert TaskSchedule("annealed", SIZES, PASSES, epochs=1).alpha(0) == 1.0


def test_schedule_is_a_pure_function_of_seed_epoch_and_index():
    a = TaskSchedule("proportional", SIZES, PASSES, epochs=2, seed=1)
    b = TaskSchedule("proportional", SIZES, PASSES, epochs=2, seed=1)
    seq = [a.task_at(1, i, 50) for i in range(50)]
    assert [b.task_at(1, i, 50) for i in reversed(range(50))][::-1] == seq  # any access order, same tasks
    assert seq != [a.task_at(0, i, 50) for i in range(50)]  # another epoch, another draw


def test_max_repeats_caps_a_small_task():
    sched = TaskSchedule(
        "random", {"big": 1000, "small": 10}, {"big": 100, "small": 1}, epochs=1, max_repeats=2
    )
    counts = sched.counts(0, 60)
    assert counts == {"big": 58, "small": 2}


def test_deepspeed_config_from_dataclasses(tmp_path):
    cfg = load_config("configs/bert-base-multitask.yaml", ["train.grad_accum=4", "optim.grad_clip=0"])
    ds = build_deepspeed_config(cfg, world_size=8)
    assert ds["fp16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert ds["gradient_clipping"] == 0.0  # written even when off: DeepSpeed would default to 1.0
    micro = ds["train_micro_batch_size_per_gpu"]
    assert ds["train_batch_size"] == micro * 4 * 8 and ds["gradient_accumulation_steps"] == 4
    assert "bf16" not in ds and "fp16" not in build_deepspeed_config(
        load_config("configs/quickstart.yaml"), 1
    )


def test_sample_weights_scale_the_sampling_probabilities():
    sizes = {"a": 100, "b": 400, "c": 100}
    sched = TaskSchedule("proportional", sizes, {t: 10 for t in sizes}, 1, weights={"b": 0.25, "c": 2.0})
    np.testing.assert_allclose(sched.probabilities(0), np.array([100, 100, 200]) / 400)


def _sampler(rows: int, batch_size: int, world: int):
    from bertmt.data.batching import Encoded, TaskSampler

    offsets = np.arange(rows + 1, dtype=np.int64) * 3
    enc = Encoded(
        [str(i) for i in range(rows)],
        np.ones(3 * rows, np.int32),
        np.zeros(3 * rows, np.int8),
        offsets,
        np.zeros(rows, np.float32),
    )
    return TaskSampler(enc, batch_size, 50, seed=0, rank=0, world=world)


@pytest.mark.parametrize("world", [1, 2])
def test_epoch_length_follows_the_documented_precedence(world):
    """README: the epoch is train.batches_per_epoch micro-batches, else schedule.samples_per_epoch examples,
    else one pass over schedule.epoch_task, else one pass over every task (global batches: x world)."""
    from bertmt.engine.train_data import epoch_length

    sizes = {"sst": 400, "quora": 1200, "sts": 200}
    samplers = {t: _sampler(n, 8, world) for t, n in sizes.items()}
    passes = {t: math.ceil(n / (8 * world)) for t, n in sizes.items()}  # batches in one pass over a task
    assert {t: len(s) for t, s in samplers.items()} == passes
    schedule = TaskSchedule("proportional", sizes, passes, 1)
    p = {t: n / 1800 for t, n in sizes.items()}

    def length(*overrides: str) -> int:
        tasks = [f"tasks.{t}={{train: {t}.csv, dev: {t}-dev.csv, batch_size: 8}}" for t in sizes]
        cfg = load_config(None, [*tasks, "schedule.kind=proportional", *overrides])
        return epoch_length(cfg, schedule, samplers, world)

    assert length("train.batches_per_epoch=7", "schedule.samples_per_epoch=999") == 7
    assert length("schedule.samples_per_epoch=1000") == math.ceil(1000 / (8 * world))  # every batch 8 x world
    assert length("schedule.epoch_task=sts") == math.ceil(passes["sts"] / p["sts"])
    assert length() == sum(passes.values())
