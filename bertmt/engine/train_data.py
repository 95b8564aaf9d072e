"""A run's training data: one TaskSampler per task with training records, the dev sets, the task schedule
and the epoch's length in micro-batches."""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

from bertmt.config import ExperimentConfig
from bertmt.data.batching import TaskSampler
from bertmt.data.schedule import TaskSchedule

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    samplers: dict[str, TaskSampler]  # this rank's batches of each task's training set
    dev: dict  # task -> its dev set (every rank holds all of it; evaluation splits the work)
    schedule: TaskSchedule
    batches_per_epoch: int  # a whole number of optimiser steps


def load_train_data(cfg: ExperimentConfig, tokenizer, rank: int, world: int) -> TrainData:
    samplers: dict[str, TaskSampler] = {}
    dev = {}
    loader = cfg.data.loader(tokenizer)
    for task, resolved in cfg.resolved_tasks().items():
        train = loader.load(resolved, "train")
        if train is not None:
            seed = cfg.run.seed + zlib.crc32(task.encode())
            samplers[task] = TaskSampler(
                train, cfg.tasks[task].batch_size, cfg.data.bucket_pool, seed, rank, world
            )
        dev_set = loader.load(resolved, "dev")
        if dev_set is not None:
            dev[task] = dev_set
    sched = cfg.schedule
    schedule = TaskSchedule(
        sched.kind,
        {t: len(s.enc) for t, s in samplers.items()},
        {t: len(s) for t, s in samplers.items()},
        cfg.train.epochs,
        cfg.run.seed,
        sched.max_repeats,
        {t: cfg.tasks[t].sample_weight for t in samplers},
    )
    accum = cfg.train.grad_accum
    per_epoch = -(-epoch_length(cfg, schedule, samplers, world) // accum) * accum  # whole optimiser steps
    log.info(
        "tasks %s; schedule %s; %d micro-batches per epoch, %d epochs, world size %d",
        list(samplers),
        sched.kind,
        per_epoch,
        cfg.train.epochs,
        world,
    )
    return TrainData(samplers, dev, schedule, per_epoch)


def epoch_length(
    cfg: ExperimentConfig, schedule: TaskSchedule, samplers: dict[str, TaskSampler], world: int
) -> int:
    """Micro-batches per epoch: train.batches_per_epoch, else schedule.samples_per_epoch examples (global
    batches of batch_size x world, at the first epoch's sampling probabilities), else one expected pass over
    schedule.epoch_task, else one pass over every task's data."""
    if cfg.train.batches_per_epoch:
        return cfg.train.batches_per_epoch
    p = dict(zip(schedule.tasks, schedule.probabilities(0)))
    if cfg.schedule.kind == "round_robin":
        p = {t: 1 / len(samplers) for t in samplers}
    if cfg.schedule.samples_per_epoch:
        mean_batch = sum(p[t] * s.batch_size * world for t, s in samplers.items())
        return math.ceil(cfg.schedule.samples_per_epoch / mean_batch)
    if cfg.schedule.epoch_task:
        return math.ceil(len(samplers[cfg.schedule.epoch_task]) / p[cfg.schedule.epoch_task])
    return sum(len(s) for s in samplers.values())
