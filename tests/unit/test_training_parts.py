"""Metrics, the overall score, the learning-rate schedule, the task schedule and the DeepSpeed config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bertmt.config import load_config
from bertmt.data.schedule import make_schedule
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


def test_round_robin_cycles_through_tasks():
    sched = make_schedule("round_robin", ["sst", "quora", "sts"])
    assert [sched.task_at(0, i) for i in range(7)] == ["sst", "quora", "sts", "sst", "quora", "sts", "sst"]


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
