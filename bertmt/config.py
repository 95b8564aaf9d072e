"""Experiment configuration: a tree of dataclasses, loaded from YAML with dotted overrides.

This is the only module that parses configuration. Every field has a comment, checks live in
``__post_init__``, and an unknown key or a bad value raises :class:`ConfigError` naming the dotted key and
what was expected, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


@dataclass
class RunConfig:
    dir: str = "runs/quickstart"  # run directory: config, logs, events, checkpoints, predictions
    seed: int = 1234  # seeds data order, dropout and head initialisation
    log_every: int = 20  # optimiser steps between scalar logs
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints (0: only at epoch ends)
    reports: bool = True  # after training: training curves and dev reports (false: `bertmt eval` writes them)

    def __post_init__(self) -> None:
        _check(self.log_every >= 1, "run.log_every", "an integer >= 1", self.log_every)
        _check(self.checkpoint_every >= 0, "run.checkpoint_every", "an integer >= 0", self.checkpoint_every)


@dataclass
class PalConfig:
    """Projected attention layers (Stickland & Murray 2019): a low-rank attention per task in every layer."""

    enabled: bool = False  # add PALs (zero-initialised output: the encoder's output is unchanged at first)
    size: int = 204  # width of the low-rank space (V_E: hidden -> size, V_D: size -> hidden)
    heads: int = 12  # attention heads inside the low-rank space
    shared: bool = True  # one V_E / V_D per task shared by all layers (False: one per layer)

    def __post_init__(self) -> None:
        _check(self.size >= 1, "model.pals.size", "an integer >= 1", self.size)
        _check(
            self.heads >= 1 and self.size % self.heads == 0,
            "model.pals.heads",
            f"a divisor of model.pals.size ({self.size})",
            self.heads,
        )


@dataclass
class ModelConfig:
    pretrained: str = (
        "minilm"  # directory with config.json + weights, a hub name in the HF cache, or "minilm"
    )
    attention: Literal["auto", "sdpa", "eager"] = "auto"  # auto: sdpa (measured faster, bench/)
    pooling: Literal["mean", "cls", "pooler", "attention"] = "mean"  # sentence vector of each head
    # (attention: learned multiplicative attention over the tokens, per task)
    head_hidden: list[int] = field(default_factory=list)  # hidden layer widths of each task head's MLP
    dropout: float = 0.1  # dropout before every head layer
    pair_encoding: Literal["cross", "siamese"] = "cross"  # default for pair tasks (see TaskConfig)
    pals: PalConfig = field(default_factory=PalConfig)

    def __post_init__(self) -> None:
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "a float in [0, 1)", self.dropout)
        _check(all(w > 0 for w in self.head_hidden), "model.head_hidden", "positive widths", self.head_hidden)


@dataclass
class TaskConfig:
    train: str | None = None  # training file (relative to data.dir unless absolute); None: not trained
    dev: str | None = None  # dev file, evaluated after every epoch
    test: str | None = None  # test file (no labels), used by `bertmt predict --split test`
    batch_size: int = 32  # training micro-batch size of this task, per rank
    weight: float = 1.0  # multiplier on this task's loss
    type: str | None = None  # registry task whose format and head this dataset has (default: the key)
    head: str | None = None  # share the head (and PALs) of this other configured task (same label space)
    sample_weight: float = 1.0  # multiplier on this dataset's sampling probability (not for round_robin)
    pair_encoding: Literal["cross", "siamese"] | None = None  # pair tasks (default model.pair_encoding):
    # cross: one "[CLS] a [SEP] b [SEP]" sequence; siamese: each sentence alone through the encoder
    pair_features: Literal["concat", "cosine", "both"] = "concat"  # siamese head input: [u, v, |u-v|, u*v],
    # the cosine similarity with a learnable scale (regression: clipped to the label range), or both


@dataclass
class DataConfig:
    dir: str = field(default_factory=lambda: os.environ.get("BERTMT_DATA_DIR", "data"))  # task files root
    max_length: int = 128  # tokens per sequence (pairs truncated longest-first)
    bucket_pool: int = 50  # length bucketing: sort inside pools of bucket_pool * batch_size examples
    strict: bool = False  # raise on the first malformed record instead of reporting and skipping it
    cache_dir: str | None = None  # tokenised-data cache (default: $XDG_CACHE_HOME/bertmt or ~/.cache/bertmt)
    eval_batch_size: int = 128  # batch size for evaluation and prediction

    @property
    def resolved_cache_dir(self) -> Path:
        """cache_dir, else $XDG_CACHE_HOME/bertmt, else ~/.cache/bertmt."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bertmt"

    def loader(self, tokenizer):
        """A :class:`bertmt.data.loading.Loader` with these settings."""
        from bertmt.data.loading import Loader

        return Loader(tokenizer, self.max_length, self.resolved_cache_dir, self.strict)

    def __post_init__(self) -> None:
        _check(8 <= self.max_length <= 512, "data.max_length", "an integer in [8, 512]", self.max_length)
        _check(self.bucket_pool >= 1, "data.bucket_pool", "an integer >= 1", self.bucket_pool)
        _check(self.eval_batch_size >= 1, "data.eval_batch_size", "an integer >= 1", self.eval_batch_size)


@dataclass
class OptimConfig:
    lr: float = 5e-5  # peak learning rate of AdamW
    weight_decay: float = 0.01  # decoupled weight decay (not on biases and LayerNorm)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clipping (0: off)
    warmup_ratio: float = 0.1  # fraction of all optimiser steps with linear warm-up
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warm-up

    def __post_init__(self) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", "a finite positive float", self.lr)
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            "two floats in [0, 1)",
            self.betas,
        )
        _check(self.grad_clip >= 0, "optim.grad_clip", "a float >= 0", self.grad_clip)
        _check(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "a float in [0, 1)", self.warmup_ratio)


@dataclass
class TrainConfig:
    epochs: int = 3  # passes of the task schedule
    batches_per_epoch: int | None = None  # micro-batches per epoch over all tasks (None: sum of task sizes)
    grad_accum: int = 1  # micro-batches per optimiser step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 needs a GPU; fp32 is the CPU default
    zero_stage: Literal[0, 1, 2, 3] = 0  # DeepSpeed ZeRO stage
    loss_scale_window: int = 1000  # fp16 dynamic loss scaling window
    initial_scale_power: int = 16  # fp16 initial loss scale 2**power
    loss_scale_hysteresis: int = 2  # fp16: overflows in a row before the loss scale is lowered
    dist_timeout_s: int = 600  # a collective waiting longer than this fails (a crashed rank ends the run)
    freeze_encoder: bool = False  # train only task-specific parameters (heads, PALs)
    patience: int | None = None  # stop after this many epochs without a better dev overall score

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        _check(
            self.dist_timeout_s > 0,
            "train.dist_timeout_s",
            "a positive number of seconds",
            self.dist_timeout_s,
        )
        _check(self.grad_accum >= 1, "train.grad_accum", "an integer >= 1", self.grad_accum)
        _check(self.patience is None or self.patience >= 1, "train.patience", "null or >= 1", self.patience)
        _check(
            self.batches_per_epoch is None or self.batches_per_epoch >= 1,
            "train.batches_per_epoch",
            "null or an integer >= 1",
            self.batches_per_epoch,
        )
        # DeepSpeed 0.19.8 applies no loss scale in backward at stage 0 with fp16 (upstream PR #8393)
        _check(
            self.precision != "fp16" or self.zero_stage > 0,
            "train.zero_stage",
            "1, 2 or 3 with fp16 (stage 0 + fp16 has a loss-scaling bug in DeepSpeed 0.19)",
            self.zero_stage,
        )


@dataclass
class ScheduleConfig:
    kind: Literal["round_robin", "random", "proportional", "sqrt", "annealed"] = (
        "round_robin"  # task sampling
    )
    samples_per_epoch: int | None = None  # epoch length in training examples (when batches_per_epoch is null)
    epoch_task: str | None = None  # or: an epoch is one pass over this task's data
    max_repeats: float | None = None  # cap on passes over one task's data per epoch (small tasks)

    def __post_init__(self) -> None:
        _check(
            self.samples_per_epoch is None or self.samples_per_epoch >= 1,
            "schedule.samples_per_epoch",
            "null or an integer >= 1",
            self.samples_per_epoch,
        )
        _check(
            self.max_repeats is None or self.max_repeats > 0,
            "schedule.max_repeats",
            "null or > 0",
            self.max_repeats,
        )


@dataclass
class SmartConfig:
    """SMART (Jiang et al. 2020): adversarial smoothness on the embedding output + Bregman proximal point."""

    weight: float = 0.0  # lambda_s on the adversarial term (0: off)
    steps: int = 1  # K projected ascent steps on the perturbation
    noise: float = 1e-5  # sigma of the initial Gaussian perturbation
    step_size: float = 1e-3  # eta of each ascent step (along g / ||g||_inf per token)
    epsilon: float = 1e-5  # the perturbation is projected onto ||delta||_inf <= epsilon
    bregman_weight: float = 0.0  # mu on the proximal term against the momentum teacher (0: off)
    teacher_beta: float = 0.99  # teacher <- beta * teacher + (1 - beta) * model after each optimiser step

    def __post_init__(self) -> None:
        for key in ("weight", "bregman_weight"):
            _check(getattr(self, key) >= 0, f"mtl.smart.{key}", "a float >= 0", getattr(self, key))
        for key in ("noise", "step_size", "epsilon"):
            _check(getattr(self, key) > 0, f"mtl.smart.{key}", "a positive float", getattr(self, key))
        _check(self.steps >= 1, "mtl.smart.steps", "an integer >= 1", self.steps)
        _check(0 <= self.teacher_beta < 1, "mtl.smart.teacher_beta", "a float in [0, 1)", self.teacher_beta)

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.bregman_weight > 0


@dataclass
class MtlConfig:
    method: Literal["none", "pcgrad", "gradvac"] = "none"  # gradient surgery on the shared encoder
    surgery: bool = False  # per-task gradients even for method none (weights = sum/mean); implied by a method
    # sum: tasks weighted as plain training weights them (by their micro-batches in the step); mean: every
    # task present in the step once, with its mean micro-batch gradient (bertmt.mtl.gram.task_scales)
    reduction: Literal["sum", "mean"] = "sum"
    beta: float = 0.01  # gradvac: EMA rate of the target cosine similarities
    smart: SmartConfig = field(default_factory=SmartConfig)

    def __post_init__(self) -> None:
        _check(0 < self.beta <= 1, "mtl.beta", "a float in (0, 1]", self.beta)

    @property
    def per_task(self) -> bool:
        """Whether per-task gradients are taken (gradient surgery path)."""
        return self.surgery or self.method != "none"


@dataclass
class SlurmConfig:
    """Cluster resources and preemption handling (``bertmt submit``; templates in slurm/)."""

    partition: str | None = None  # --partition (None: the cluster's default)
    account: str | None = None  # --account
    nodes: int = 1  # --nodes
    gpus_per_node: int = 0  # --gpus-per-node (0: CPU-only jobs)
    tasks_per_node: int | None = None  # ranks per node (default: gpus_per_node, or 1 without GPUs)
    cpus_per_task: int = 2  # --cpus-per-task (also OMP_NUM_THREADS of each rank)
    mem: str | None = None  # --mem per node, e.g. "64G"
    time: str = "01:00:00"  # --time limit
    signal: Literal["USR1", "USR2"] = "USR1"  # sent before the time limit and on preemption: checkpoint
    signal_seconds: int = 120  # how long before the time limit the signal comes (SLURM fires on a 30 s tick)
    requeue: bool = True  # after the checkpoint, requeue the job (it resumes from the checkpoint)
    launcher: Literal["srun", "torchrun", "deepspeed"] = "srun"  # multi-node: one task per rank (srun), or
    # one torchrun per node through srun, or the deepspeed launcher with a hostfile from the node list
    setup: list[str] = field(default_factory=list)  # shell lines before the launch (module load, venv ...)
    sbatch: list[str] = field(default_factory=list)  # extra #SBATCH options, e.g. ["--constraint=a100"]
    python: str = "python"  # interpreter on the compute nodes

    def __post_init__(self) -> None:
        _check(self.nodes >= 1, "slurm.nodes", "an integer >= 1", self.nodes)
        _check(self.gpus_per_node >= 0, "slurm.gpus_per_node", "an integer >= 0", self.gpus_per_node)
        _check(
            self.tasks_per_node is None or self.tasks_per_node >= 1,
            "slurm.tasks_per_node",
            "null or an integer >= 1",
            self.tasks_per_node,
        )
        _check(self.signal_seconds >= 30, "slurm.signal_seconds", "an integer >= 30", self.signal_seconds)
        _check(
            bool(re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", self.time)),
            "slurm.time",
            "a SLURM time such as 04:00:00 or 1-00:00:00",
            self.time,
        )

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


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
    # training phases, run in order, each a name plus overrides of the sections above (see engine/phases.py)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, task in self.tasks.items():
            self._check_task(name, task)
        _check(bool(self.tasks), "tasks", "at least one task", self.tasks)
        _check(
            any(t.train for t in self.tasks.values()),
            "tasks",
            "at least one task with a train file",
            {k: v.train for k, v in self.tasks.items()},
        )
        _check(
            any(t.dev for t in self.tasks.values()),
            "tasks",
            "at least one task with a dev file (it picks the best checkpoint)",
            {k: v.dev for k, v in self.tasks.items()},
        )
        _check(
            self.schedule.epoch_task is None or self.schedule.epoch_task in self.tasks,
            "schedule.epoch_task",
            f"null or a configured task, one of {sorted(self.tasks)}",
            self.schedule.epoch_task,
        )
        _check(
            not (self.mtl.per_task and self.train.freeze_encoder),
            "mtl.method",
            "none with train.freeze_encoder=true (surgery acts on the encoder's gradient)",
            self.mtl.method,
        )
        _check(
            not self.mtl.per_task or self.train.grad_accum >= 2,
            "train.grad_accum",
            f"at least 2 with gradient surgery (mtl.method={self.mtl.method}): it combines the task "
            "gradients of one optimiser step's micro-batches, and a step of one micro-batch has one task",
            self.train.grad_accum,
        )
        _check(
            self.schedule.kind != "round_robin" or all(t.sample_weight == 1 for t in self.tasks.values()),
            "schedule.kind",
            "a sampling schedule (random, proportional, sqrt, annealed) when tasks have a sample_weight",
            self.schedule.kind,
        )

    def _check_task(self, name: str, task: TaskConfig) -> None:
        from bertmt.data.tasks import TASKS

        _check(task.batch_size >= 1, f"tasks.{name}.batch_size", "an integer >= 1", task.batch_size)
        _check(
            math.isfinite(task.weight) and task.weight >= 0,
            f"tasks.{name}.weight",
            "a finite float >= 0",
            task.weight,
        )
        _check(task.sample_weight > 0, f"tasks.{name}.sample_weight", "a positive float", task.sample_weight)
        kind = task.type or name
        _check(
            kind in TASKS,
            f"tasks.{name}.type" if task.type else f"tasks.{name}",
            f"a task name, one of {sorted(TASKS)} (an extra dataset names its format with 'type')",
            kind,
        )
        spec = TASKS[kind]
        if task.head is not None:
            other = self.tasks.get(task.head)
            _check(
                other is not None and other.head is None and task.head != name,
                f"tasks.{name}.head",
                f"another configured task that has its own head, one of {sorted(self.tasks)}",
                task.head,
            )
            other_spec = TASKS[other.type or task.head]
            _check(
                (other_spec.kind, other_spec.output_size) == (spec.kind, spec.output_size),
                f"tasks.{name}.head",
                f"a task with the same label space ({spec.kind}, {spec.output_size} outputs)",
                task.head,
            )
        _check(
            spec.is_pair or task.pair_encoding is None,
            f"tasks.{name}.pair_encoding",
            "cross for a single-sentence task",
            task.pair_encoding,
        )
        if self.pair_encoding(name) == "siamese":
            _check(
                task.pair_features == "concat" or spec.output_size <= 2,
                f"tasks.{name}.pair_features",
                "concat for a task with more than 2 outputs",
                task.pair_features,
            )

    def task_spec(self, name: str):
        """The TaskSpec of configured dataset ``name`` (its registry type's format, under its own name)."""
        from bertmt.data.tasks import TASKS

        return dataclasses.replace(TASKS[self.tasks[name].type or name], name=name)

    def head_of(self, name: str) -> str:
        """The head (and PALs) dataset ``name`` trains: its own, or the one named by tasks.<name>.head."""
        return self.tasks[name].head or name

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
                {split: self.task_path(name, split) for split in ("train", "dev", "test")},
                self.pair_encoding(name) == "siamese",
            )
            for name in self.tasks
        }

    def task_path(self, task: str, split: str) -> Path | None:
        """The file of a task's split, resolved against data.dir (None if the split is not configured)."""
        name = getattr(self.tasks[task], split)
        if name is None:
            return None
        path = Path(os.path.expandvars(os.path.expanduser(name)))
        return path if path.is_absolute() else Path(self.data.dir) / path


# ----------------------------------------------------------------------------------------------- loading


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {got!r}")


def _build(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, raising ConfigError with the dotted key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, key)
    if origin is Literal:
        _check(value in args, key, f"one of {list(args)}", value)
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key)
    if origin is list:
        _check(isinstance(value, list), key, "a list", value)
        return [_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _check(isinstance(value, dict), key, "a mapping", value)
        return {k: _build(args[1], v if v is not None else {}, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        _check(isinstance(value, bool), key, "true or false", value)
    elif tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
    elif tp is float:
        value = _yaml_float(value)  # YAML 1.1 reads "2e-5" (no dot) as a string
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        value = float(value)
    elif tp is str:
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), key, "a string", value)
        value = str(value)
    return value


def _build_dataclass(cls: type, value: Any, key: str) -> Any:
    _check(isinstance(value, dict), key or "<top>", "a mapping", value)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, v in value.items():
        sub = f"{key}.{name}" if key else name
        _check(name in names, sub, f"a known key; valid keys here: {names}", name)
        kwargs[name] = _build(hints[name], v, sub)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key '{key or '<top>'}': {exc}") from exc


def _yaml_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``a.b.c`` sets tree[a][b][c]; a number indexes a list (``phases.1.optim.lr``)."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            _check(
                part.isdigit() and int(part) < len(node),
                dotted,
                f"an index below {len(node)} at '{part}'",
                part,
            )
            part = int(part)
        elif node.get(part) is None and not last:
            node[part] = {}
        if last:
            node[part] = value
            return
        node = node[part]
        _check(isinstance(node, (dict, list)), dotted, f"'{parts[i]}' to be a section", node)


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config tree."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=2e-5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = _yaml_problem(exc)
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(exc, "problem", None) or str(exc)).strip()


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file; ConfigError naming the file, line and column of what is wrong."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte {raw[exc.start]:#04x})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error at {_yaml_problem(exc)}") from None
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(tree).__name__}")
    return tree or {}


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), tree: dict | None = None
) -> ExperimentConfig:
    """Load a YAML file (or a raw tree), apply dotted overrides, and validate everything."""
    if tree is None:
        tree = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            tree = read_yaml(path)
    apply_overrides(tree, list(overrides))
    cfg = _build_dataclass(ExperimentConfig, tree, "")
    phase_configs(cfg)  # every phase's resolved config is checked now, not when the phase starts
    return cfg


# ----------------------------------------------------------------------------------------------- phases

PHASE_SECTIONS = ("model", "data", "tasks", "optim", "train", "schedule", "mtl")
PHASE_MODEL_KEYS = ("pals", "dropout")  # the rest of the architecture is fixed across phases


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def phase_configs(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """The resolved config of every phase: the base config with the phase's sections merged over it.

    Phase ``i`` runs in ``<run.dir>/phases/<i+1>-<name>``. Errors name ``phases[i]`` and the key.
    """
    base = to_dict(cfg)
    base.pop("phases")
    out, names = [], set()
    for i, phase in enumerate(cfg.phases):
        key = f"phases[{i}]"
        _check(isinstance(phase, dict), key, "a mapping with a name and config sections", phase)
        name = phase.get("name")
        _check(isinstance(name, str) and name.isidentifier(), f"{key}.name", "an identifier", name)
        _check(name not in names, f"{key}.name", "a name not used by another phase", name)
        names.add(name)
        sections = {k: v for k, v in phase.items() if k != "name"}
        for section, value in sections.items():
            _check(section in PHASE_SECTIONS, f"{key}.{section}", f"one of {list(PHASE_SECTIONS)}", section)
            _check(isinstance(value, dict), f"{key}.{section}", "a mapping", value)
        for sub in sections.get("model", {}):
            _check(sub in PHASE_MODEL_KEYS, f"{key}.model.{sub}", f"one of {list(PHASE_MODEL_KEYS)}", sub)
        tree = _merge(base, sections)
        tree["run"]["dir"] = str(Path(cfg.run.dir) / "phases" / f"{i + 1}-{name}")
        try:
            out.append((name, _build_dataclass(ExperimentConfig, tree, "")))
        except ConfigError as exc:
            raise ConfigError(f"{key} ('{name}'): {exc}") from exc
    return out


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    with open(path, "w") as fp:
        yaml.safe_dump(to_dict(cfg), fp, sort_keys=False)
