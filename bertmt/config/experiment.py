"""The whole experiment: its sections, the tasks it trains and the checks across sections."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertmt.config.errors import check
from bertmt.config.mtl import MtlConfig
from bertmt.config.sections import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    SlurmConfig,
    TaskConfig,
    TrainConfig,
)


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)  # task name (see bertmt.data.tasks) -> files
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mtl: MtlConfig = field(default_factory=MtlConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    # training phases, run in order, each a name plus overrides of the sections above (see engine/phases.py);
    # train.exclusive: each model runs the phases whose models list names it (all without one)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, task in self.tasks.items():
            self._check_task(name, task)
        check(bool(self.tasks), "tasks", "at least one task", self.tasks)
        check(
            any(t.train for t in self.tasks.values()),
            "tasks",
            "at least one task with a train file",
            {k: v.train for k, v in self.tasks.items()},
        )
        check(
            any(t.dev for t in self.tasks.values()),
            "tasks",
            "at least one task with a dev file (it picks the best checkpoint)",
            {k: v.dev for k, v in self.tasks.items()},
        )
        check(
            self.schedule.epoch_task is None or self.schedule.epoch_task in self.tasks,
            "schedule.epoch_task",
            f"null or a configured task, one of {sorted(self.tasks)}",
            self.schedule.epoch_task,
        )
        check(
            not (self.mtl.per_task and self.train.freeze_encoder),
            "mtl.method",
            "none with train.freeze_encoder=true (surgery acts on the encoder's gradient)",
            self.mtl.method,
        )
        check(
            not self.mtl.per_task or self.train.grad_accum >= 2,
            "train.grad_accum",
            f"at least 2 with gradient surgery (mtl.method={self.mtl.method}): it combines the task "
            "gradients of one optimiser step's micro-batches, and a step of one micro-batch has one task",
            self.train.grad_accum,
        )
        if self.train.objective == "mlm":
            self._check_mlm()
        check(
            self.optim.name != "adafactor" or self.train.zero_stage == 0,
            "train.zero_stage",
            "0 with optim.name=adafactor (ZeRO hands the optimiser flat 1-D partitions, whose second moments "
            "AdaFactor cannot factor by rows and columns)",
            self.train.zero_stage,
        )
        if self.optim.name == "sophia":
            self._check_sophia()
        check(
            self.schedule.kind != "round_robin" or all(t.sample_weight == 1 for t in self.tasks.values()),
            "schedule.kind",
            "a sampling schedule (random, proportional, sqrt, annealed) when tasks have a sample_weight",
            self.schedule.kind,
        )

    def _check_sophia(self) -> None:
        """SophiaH's Hessian estimate (engine/hessian.py) needs whole parameters, no loss scale and a loss
        it can differentiate twice."""
        cfg = self.train
        for ok, key, expected, value in [
            (
                cfg.zero_stage == 0,
                "train.zero_stage",
                "0 (ZeRO hands the optimiser partitions)",
                cfg.zero_stage,
            ),
            (
                cfg.precision == "fp32",
                "train.precision",
                "fp32 (no loss scale in the Hessian products)",
                cfg.precision,
            ),
            (
                not self.mtl.smart.enabled,
                "mtl.smart.enabled",
                "false (SMART's adversarial term is not differentiated twice)",
                self.mtl.smart.enabled,
            ),
        ]:
            check(ok, key, f"{expected} with optim.name=sophia", value)

    def _check_mlm(self) -> None:
        """What masked-language modelling (train.objective=mlm) trains with: the encoder alone."""
        for ok, key, expected, value in [
            (not self.mtl.per_task and self.mtl.method == "none", "mtl.method", "none", self.mtl.method),
            (not self.mtl.smart.enabled, "mtl.smart.weight", "0 (SMART regularises task heads)", None),
            (self.train.zero_stage != 3, "train.zero_stage", "0, 1 or 2 (the decoder is tied)", 3),
            (self.model.experts.count == 0, "model.experts.count", "0 (experts are gated per task)", None),
            (not self.train.exclusive, "train.exclusive", "false", True),
            (not self.train.freeze_encoder, "train.freeze_encoder", "false (MLM trains it)", True),
        ]:
            check(ok, key, f"{expected} with train.objective=mlm", value)

    def _check_task(self, name: str, task: TaskConfig) -> None:
        from bertmt.data.tasks import TASKS

        check(task.batch_size >= 1, f"tasks.{name}.batch_size", "an integer >= 1", task.batch_size)
        check(
            math.isfinite(task.weight) and task.weight >= 0,
            f"tasks.{name}.weight",
            "a finite float >= 0",
            task.weight,
        )
        check(task.sample_weight > 0, f"tasks.{name}.sample_weight", "a positive float", task.sample_weight)
        check(
            not isinstance(task.train, list) or 0 < len(task.train) == len(set(task.train)),
            f"tasks.{name}.train",
            "a file, or a non-empty list of distinct files",
            task.train,
        )
        kind = task.type or name
        check(
            kind in TASKS,
            f"tasks.{name}.type" if task.type else f"tasks.{name}",
            f"a task name, one of {sorted(TASKS)} (an extra dataset names its format with 'type')",
            kind,
        )
        spec = TASKS[kind]
        if task.head is not None:
            other = self.tasks.get(task.head)
            check(
                other is not None and other.head is None and task.head != name,
                f"tasks.{name}.head",
                f"another configured task that has its own head, one of {sorted(self.tasks)}",
                task.head,
            )
            other_spec = TASKS[other.type or task.head]
            check(
                (other_spec.kind, other_spec.output_size) == (spec.kind, spec.output_size),
                f"tasks.{name}.head",
                f"a task with the same label space ({spec.kind}, {spec.output_size} outputs)",
                task.head,
            )
        check(
            not (self.head_arch(name) == "lstm" and self.model.pooling == "pooler"),
            f"tasks.{name}.head_arch" if task.head_arch else "model.head_arch",
            "mlp or cnn with model.pooling=pooler (an LSTM head pools its own states: mean, max, cls or "
            "attention)",
            self.head_arch(name),
        )
        check(
            not (self.head_arch(name) == "lstm" and self.train.zero_stage == 2),
            "train.zero_stage",
            f"0, 1 or 3 with an LSTM head (tasks.{name}): ZeRO 2 reduces gradients in the order they "
            "become ready, which for a packed LSTM depends on each rank's lengths, so its ranks would sum "
            "mismatched gradients (tests/distributed/test_deepspeed_gradient_order.py)",
            self.train.zero_stage,
        )
        check(
            task.head is None or task.head_arch is None,
            f"tasks.{name}.head_arch",
            f"null for a dataset sharing the head of {task.head}",
            task.head_arch,
        )
        check(
            task.model is None or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", task.model) is not None,
            f"tasks.{name}.model",
            "a name of letters, digits, '_', '.' and '-' (it names the directory <run.dir>/tasks/<model>)",
            task.model,
        )
        check(
            task.model is None or self.train.exclusive,
            f"tasks.{name}.model",
            "null unless train.exclusive=true (a joint run trains one model)",
            task.model,
        )
        if task.head is not None:
            check(
                task.model in (None, self.model_of(task.head)),
                f"tasks.{name}.model",
                f"null or {self.model_of(task.head)!r}: a dataset sharing the head of {task.head} trains in "
                "that task's model",
                task.model,
            )
        check(
            spec.is_pair or task.pair_encoding is None,
            f"tasks.{name}.pair_encoding",
            "cross for a single-sentence task",
            task.pair_encoding,
        )
        check(
            not task.symmetric or self.pair_encoding(name) == "cross",
            f"tasks.{name}.symmetric",
            "false unless the task is a cross-encoded pair task (siamese pairs and single sentences have no "
            "order to swap)",
            task.symmetric,
        )
        if task.ensemble:
            self._check_ensemble(name, task)
        if task.cross_features == "segments":
            self._check_segment_features(name, task)
        if self.pair_encoding(name) == "siamese":
            check(
                task.pair_features == "concat" or spec.output_size <= 2,
                f"tasks.{name}.pair_features",
                "concat for a task with more than 2 outputs",
                task.pair_features,
            )

    def _check_segment_features(self, name: str, task: TaskConfig) -> None:
        key = f"tasks.{name}.cross_features"
        check(
            task.head is None,
            key,
            f"pooled on a dataset sharing the head of {task.head} (set it on {task.head})",
            task.cross_features,
        )
        check(
            self.pair_encoding(name) == "cross",
            key,
            "pooled unless the task is a cross-encoded pair task (segments pools each sentence's tokens of "
            "one [CLS] a [SEP] b [SEP] sequence)",
            task.cross_features,
        )
        check(
            self.head_arch(name) == "mlp" and self.model.pooling in ("mean", "max", "attention"),
            key,
            "pooled unless the head is an mlp over mean, max or attention pooling (the segments are pooled "
            f"like the pair; head_arch {self.head_arch(name)!r}, model.pooling {self.model.pooling!r})",
            task.cross_features,
        )

    def _check_ensemble(self, name: str, task: TaskConfig) -> None:
        key, kind = f"tasks.{name}.ensemble", task.type or name
        check(
            self.train.exclusive,
            key,
            "[] unless train.exclusive=true (the members' models are trained and scored on their own)",
            task.ensemble,
        )
        check(len(set(task.ensemble)) == len(task.ensemble), key, "a list without repeats", task.ensemble)
        for member in task.ensemble:
            other = self.tasks.get(member)
            check(
                other is not None and member != name,
                key,
                f"other configured datasets, of {sorted(set(self.tasks) - {name})}",
                member,
            )
            check(
                (other.type or member) == kind,
                key,
                f"datasets of type {kind!r} (members score {name}'s files with their heads; {member} is of "
                f"type {other.type or member!r})",
                member,
            )
            check(
                self.head_of(member) != self.head_of(name),
                key,
                f"datasets with a head other than {self.head_of(name)}'s (one head would count twice)",
                member,
            )
            check(
                not other.ensemble,
                f"tasks.{member}.ensemble",
                f"[] for a member of {name}'s ensemble (ensembles do not nest)",
                other.ensemble,
            )

    @property
    def ensemble_members(self) -> set[str]:
        """The datasets whose outputs join another's (tasks.<t>.ensemble): outside the overall score."""
        return {m for task in self.tasks.values() for m in task.ensemble}

    def task_spec(self, name: str):
        """The TaskSpec of configured dataset ``name`` (its registry type's format, under its own name)."""
        from bertmt.data.tasks import TASKS

        return dataclasses.replace(TASKS[self.tasks[name].type or name], name=name)

    def head_of(self, name: str) -> str:
        """The head (and PALs) dataset ``name`` trains: its own, or the one named by tasks.<name>.head."""
        return self.tasks[name].head or name

    def model_of(self, name: str) -> str:
        """train.exclusive: the model dataset ``name`` trains in: its head's (a dataset sharing a head trains
        with it), named by tasks.<head>.model or else after the head's task."""
        head = self.head_of(name)
        return self.tasks[head].model or head

    def head_arch(self, name: str) -> str:
        """mlp, lstm or cnn: the architecture of dataset ``name``'s head."""
        return self.tasks[self.head_of(name)].head_arch or self.model.head_arch

    def pair_encoding(self, name: str) -> str | None:
        """cross or siamese for a pair task, None for a single-sentence task."""
        from bertmt.data.tasks import TASKS

        if not TASKS[self.tasks[name].type or name].is_pair:
            return None
        return self.tasks[name].pair_encoding or self.model.pair_encoding

    def resolved_tasks(self):
        """name -> :class:`bertmt.data.tasks.Task`: what data/ needs of each configured dataset."""
        from bertmt.data.tasks import Task

        return {
            name: Task(
                self.task_spec(name),
                {split: tuple(self.task_paths(name, split)) for split in ("train", "dev", "test")},
                self.pair_encoding(name) == "siamese",
                self.tasks[name].symmetric,
            )
            for name in self.tasks
        }

    def task_path(self, task: str, split: str) -> Path | None:
        """The file of a task's split, resolved against data.dir (None if the split is not configured; a
        training set of several files: the first)."""
        paths = self.task_paths(task, split)
        return paths[0] if paths else None

    def task_paths(self, task: str, split: str) -> list[Path]:
        """The files of a task's split (tasks.<t>.train may list several), resolved against data.dir."""
        names = getattr(self.tasks[task], split)
        names = [] if names is None else [names] if isinstance(names, str) else names
        paths = [Path(os.path.expandvars(os.path.expanduser(name))) for name in names]
        return [path if path.is_absolute() else Path(self.data.dir) / path for path in paths]
