"""The sections of an experiment config (``run:``, ``model:``, ``data:``, ``tasks.<name>:``, ``optim:``,
``train:``, ``schedule:``, ``slurm:``; ``mtl:`` is in mtl.py): one dataclass each. Every field carries its
documentation as the comment beside it (``bertmt keys`` lists them), and its checks live in
``__post_init__``."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertmt.config.errors import check


@dataclass
class RunConfig:
    dir: str = "runs/quickstart"  # run directory: config, logs, events, checkpoints, predictions
    seed: int = 1234  # seeds data order, dropout and head initialisation
    log_every: int = 20  # optimiser steps between scalar logs
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints (0: only at epoch ends)
    reports: bool = True  # after training: training curves and dev reports (false: `bertmt eval` writes them)

    def __post_init__(self) -> None:
        check(self.log_every >= 1, "run.log_every", "an integer >= 1", self.log_every)
        check(self.checkpoint_every >= 0, "run.checkpoint_every", "an integer >= 0", self.checkpoint_every)


@dataclass
class PalConfig:
    """Projected attention layers (Stickland & Murray 2019): a low-rank attention per task in every layer."""

    enabled: bool = False  # add PALs (zero-initialised output: the encoder's output is unchanged at first)
    size: int = 204  # width of the low-rank space (V_E: hidden -> size, V_D: size -> hidden)
    heads: int = 12  # attention heads inside the low-rank space
    shared: bool = True  # one V_E / V_D per task shared by all layers (False: one per layer)

    def __post_init__(self) -> None:
        check(self.size >= 1, "model.pals.size", "an integer >= 1", self.size)
        check(
            self.heads >= 1 and self.size % self.heads == 0,
            "model.pals.heads",
            f"a divisor of model.pals.size ({self.size})",
            self.heads,
        )


@dataclass
class ExpertsConfig:
    """Combined experts (MMoE): the top encoder layers duplicated, mixed per task by a softmax gate."""

    count: int = 0  # experts (0: off; >= 2: the top `layers` layers exist this many times, all pretrained)
    layers: int = 2  # top encoder layers that each expert has (the layers below stay shared)

    def __post_init__(self) -> None:
        check(self.count == 0 or self.count >= 2, "model.experts.count", "0 (off) or >= 2", self.count)
        check(self.layers >= 1, "model.experts.layers", "an integer >= 1", self.layers)


@dataclass
class ModelConfig:
    pretrained: str = (
        "minilm"  # directory with config.json + weights, a hub name in the HF cache, or "minilm"
    )
    attention: Literal["auto", "sdpa", "eager"] = "auto"  # auto: sdpa (measured faster, bench/)
    pooling: Literal["mean", "max", "cls", "pooler", "attention"] = "mean"  # sentence vector of each head
    # (max: elementwise max over the tokens; attention: learned multiplicative attention, per task)
    head_arch: Literal["mlp", "lstm", "cnn"] = "mlp"  # every head (tasks.<name>.head_arch overrides): mlp
    # on the pooled vector; lstm: a BiLSTM over the token states, pooled by model.pooling, then the MLP;
    # cnn: 1-D convolutions of widths cnn_kernels over the tokens, max-pooled over time, then the MLP
    lstm_size: int = 128  # lstm heads: units per direction (the head reads 2 * lstm_size)
    cnn_kernels: list[int] = field(default_factory=lambda: [2, 3, 4])  # cnn heads: window widths
    cnn_channels: int = 64  # cnn heads: filters per window width
    segment_pooling: Literal["mean", "max", "attention"] = "mean"  # data.long_inputs=chunk: one vector per
    # record from its segments' vectors (attention: a learned query per head)
    head_hidden: list[int] = field(default_factory=list)  # hidden layer widths of each task head's MLP
    dropout: float = 0.1  # dropout before every head layer
    pair_encoding: Literal["cross", "siamese"] = "cross"  # default for pair tasks (see TaskConfig)
    pals: PalConfig = field(default_factory=PalConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)

    def __post_init__(self) -> None:
        check(0.0 <= self.dropout < 1.0, "model.dropout", "a float in [0, 1)", self.dropout)
        check(all(w > 0 for w in self.head_hidden), "model.head_hidden", "positive widths", self.head_hidden)
        check(self.lstm_size >= 1, "model.lstm_size", "an integer >= 1", self.lstm_size)
        check(
            bool(self.cnn_kernels) and all(k >= 1 for k in self.cnn_kernels),
            "model.cnn_kernels",
            "a non-empty list of window widths >= 1",
            self.cnn_kernels,
        )
        check(self.cnn_channels >= 1, "model.cnn_channels", "an integer >= 1", self.cnn_channels)


@dataclass
class TaskConfig:
    train: str | list[str] | None = None  # training file (relative to data.dir unless absolute), or a list of
    # files read as one training set in that order (e.g. quora-small-train.csv plus quora-train-first998.csv);
    # None: not trained
    dev: str | None = None  # dev file, evaluated after every epoch
    test: str | None = None  # test file (no labels), used by `bertmt predict --split test`
    batch_size: int = 32  # training micro-batch size of this task, per rank
    weight: float = 1.0  # multiplier on this task's loss
    type: str | None = None  # registry task whose format and head this dataset has (default: the key)
    head: str | None = None  # share the head (and PALs) of this other configured task (same label space)
    sample_weight: float = 1.0  # multiplier on this dataset's sampling probability (not for round_robin)
    head_arch: Literal["mlp", "lstm", "cnn"] | None = (
        None  # this head's architecture (default model.head_arch)
    )
    pair_encoding: Literal["cross", "siamese"] | None = None  # pair tasks (default model.pair_encoding):
    # cross: one "[CLS] a [SEP] b [SEP]" sequence; siamese: each sentence alone through the encoder
    pair_features: Literal["concat", "cosine", "both"] = "concat"  # siamese head input: [u, v, |u-v|, u*v],
    # the cosine similarity with a learnable scale (regression: clipped to the label range), or both
    cross_features: Literal["pooled", "segments"] = "pooled"  # cross-encoded pair head input: the pooled
    # pair, or (segments) [p, a, b, |a-b|, a*b] where a and b pool the tokens of each sentence's segment
    # (token types 0 and 1) of the same cross-encoded states: explicit comparison at no extra encoder cost
    symmetric: Literal[False, True, "eval"] = False  # a cross-encoded pair task whose two sentences are
    # unordered (paraphrase, similarity). true: each training pass reads every pair in a random order
    # (seeded by run.seed, the pass and the record), and evaluation and prediction average the outputs of
    # both orders (twice the forward passes); eval: training reads the file's order, scoring both orders
    model: str | None = None  # train.exclusive: the model this dataset trains in; datasets naming the same
    # model train together, as one multitask model (default: its head's task's name, one model per head)
    ensemble: list[str] = field(default_factory=list)  # train.exclusive: datasets of this one's type with
    # heads of their own (usually each in a model of its own) whose outputs join this dataset's: evaluation
    # and prediction score this dataset's files with every member's model too and average them (classes: the
    # probabilities; regression: the clipped values); a member keeps its own dev file (its model's best
    # epoch) and its own metrics, outside the overall score


@dataclass
class TagsConfig:
    """POS / NER tag embeddings ("BERT's Buddies"; bertmt/data/tags.py): needs `pip install bertmt[tags]`."""

    pipeline: str | None = None  # a spaCy pipeline: package name (en_core_web_sm) or directory; None: off
    kinds: list[str] = field(default_factory=lambda: ["pos", "ner"])  # pos (tagger's tag_), ner (BIO)

    def __post_init__(self) -> None:
        check(
            bool(self.kinds)
            and set(self.kinds) <= {"pos", "ner"}
            and len(set(self.kinds)) == len(self.kinds),
            "data.tags.kinds",
            "a non-empty list of distinct kinds from ['pos', 'ner']",
            self.kinds,
        )


@dataclass
class DataConfig:
    dir: str = field(default_factory=lambda: os.environ.get("BERTMT_DATA_DIR", "data"))  # task files root
    max_length: int = 128  # tokens per sequence (pairs truncated longest-first)
    bucket_pool: int = 50  # length bucketing: sort inside pools of bucket_pool * batch_size examples
    strict: bool = False  # raise on the first malformed record instead of reporting and skipping it
    cache_dir: str | None = None  # tokenised-data cache (default: $XDG_CACHE_HOME/bertmt or ~/.cache/bertmt)
    eval_batch_size: int = 128  # batch size for evaluation and prediction
    long_inputs: Literal["truncate", "chunk"] = "truncate"  # single-sentence tasks longer than max_length:
    # truncate, or chunk ("Hierarchical BERT"): overlapping segments encoded as one batch, their vectors
    # pooled by model.segment_pooling (pair tasks are always truncated)
    chunk_overlap: int = 32  # chunk: word pieces shared by consecutive segments
    max_segments: int = 8  # chunk: segments per record at most (the rest is dropped, and logged)
    tags: TagsConfig = field(default_factory=TagsConfig)  # POS / NER tags of every word piece

    @property
    def resolved_cache_dir(self) -> Path:
        """cache_dir, else $XDG_CACHE_HOME/bertmt, else ~/.cache/bertmt."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bertmt"

    def loader(self, tokenizer):
        """A :class:`bertmt.data.loading.Loader` with these settings."""
        from bertmt.data.batching import Chunking
        from bertmt.data.loading import Loader

        chunking = None
        if self.long_inputs == "chunk":
            chunking = Chunking(self.max_length, self.chunk_overlap, self.max_segments)
        return Loader(tokenizer, self.max_length, self.resolved_cache_dir, self.strict, chunking, self.tagger)

    @property
    def tagger(self):
        """The :class:`bertmt.data.tags.Tagger` of data.tags, or None."""
        if self.tags.pipeline is None:
            return None
        from bertmt.data.tags import Tagger

        return Tagger(self.tags.pipeline, tuple(self.tags.kinds))

    def __post_init__(self) -> None:
        check(8 <= self.max_length <= 512, "data.max_length", "an integer in [8, 512]", self.max_length)
        check(self.bucket_pool >= 1, "data.bucket_pool", "an integer >= 1", self.bucket_pool)
        check(self.eval_batch_size >= 1, "data.eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(
            self.long_inputs != "chunk" or 0 <= self.chunk_overlap <= (self.max_length - 2) // 2,
            "data.chunk_overlap",
            f"an integer in [0, {(self.max_length - 2) // 2}] (at most half a segment's word pieces)",
            self.chunk_overlap,
        )
        check(self.max_segments >= 1, "data.max_segments", "an integer >= 1", self.max_segments)
        check(
            self.tags.pipeline is None or self.long_inputs == "truncate",
            "data.tags.pipeline",
            "null with data.long_inputs=chunk (tags of segments: not supported yet)",
            self.tags.pipeline,
        )


@dataclass
class OptimConfig:
    name: Literal["adamw", "lion", "adafactor", "sophia"] = "adamw"  # torch AdamW, or pytorch-optimizer's
    # Lion (sign of an interpolated momentum; use ~3-10x smaller lr), AdaFactor (factored second moments,
    # lr as given: no relative step; ZeRO 0 only, ZeRO's flat partitions cannot be factored) or SophiaH
    # (momentum over a Hutchinson estimate of the Hessian diagonal, clipped; ZeRO 0, fp32; see
    # engine/hessian.py). SophiaH's lr is pytorch-optimizer's: no coordinate moves more than
    # lr x sophia_clip a step (lr 1e-2 with the default clip: AdamW's 1e-4), and weight decay shrinks
    # by lr x weight_decay a step
    lr: float = 5e-5  # peak learning rate
    weight_decay: float = 0.01  # decoupled weight decay (not on biases and LayerNorm)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW / Lion / AdaFactor betas
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clipping (0: off)
    warmup_ratio: float = 0.1  # fraction of all optimiser steps with linear warm-up
    schedule: Literal["linear", "cosine", "constant", "plateau"] = "linear"  # decay after warm-up
    # (plateau: constant, times plateau_factor whenever the dev overall score has not improved for more
    # than plateau_patience epochs: torch's ReduceLROnPlateau, mode max, threshold 0, judged every epoch)
    plateau_factor: float = 0.5  # plateau: multiplier of the learning rate at each reduction
    plateau_patience: int = 0  # plateau: epochs without a better dev score tolerated before a reduction
    sophia_period: int = 10  # sophia: optimiser steps per Hessian estimate (one more forward and a double
    # backward per micro-batch of the estimating step)
    sophia_clip: float = 0.01  # sophia: largest |momentum / Hessian estimate| applied, per coordinate
    layer_decay: float = 1.0  # layer-wise lr decay: encoder layer i of L at lr x layer_decay ** (L - i),
    # the embeddings at lr x layer_decay ** (L + 1); heads, PALs, gates at lr (1: off; engine/optim.py)

    def __post_init__(self) -> None:
        check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", "a finite positive float", self.lr)
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            "two floats in [0, 1)",
            self.betas,
        )
        check(self.grad_clip >= 0, "optim.grad_clip", "a float >= 0", self.grad_clip)
        check(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "a float in [0, 1)", self.warmup_ratio)
        check(0 < self.plateau_factor < 1, "optim.plateau_factor", "a float in (0, 1)", self.plateau_factor)
        check(self.plateau_patience >= 0, "optim.plateau_patience", "an integer >= 0", self.plateau_patience)
        check(self.sophia_period >= 1, "optim.sophia_period", "an integer >= 1", self.sophia_period)
        check(self.sophia_clip > 0, "optim.sophia_clip", "a float > 0", self.sophia_clip)
        check(0 < self.layer_decay <= 1, "optim.layer_decay", "a float in (0, 1]", self.layer_decay)


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
    objective: Literal["tasks", "mlm"] = "tasks"  # mlm: task-adaptive pre-training, masked-language modelling
    # of the configured tasks' training sentences (a phase before the task phases; see engine/mlm.py)
    mlm_probability: float = 0.15  # mlm: share of the ordinary tokens predicted (80% [MASK], 10% random)
    mlm_batch_size: int = 32  # mlm: sentences per micro-batch, per rank
    exclusive: bool = False  # one model per task (with the datasets sharing its head), each trained alone
    # with these settings in <run.dir>/tasks/<task>; eval and predict route each task to its model
    # (`bertmt train CONFIG --each-task`). Compare with joint training on equal budgets via batches_per_epoch

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        check(
            self.dist_timeout_s > 0,
            "train.dist_timeout_s",
            "a positive number of seconds",
            self.dist_timeout_s,
        )
        check(self.grad_accum >= 1, "train.grad_accum", "an integer >= 1", self.grad_accum)
        check(self.patience is None or self.patience >= 1, "train.patience", "null or >= 1", self.patience)
        check(
            0 < self.mlm_probability < 1, "train.mlm_probability", "a float in (0, 1)", self.mlm_probability
        )
        check(self.mlm_batch_size >= 1, "train.mlm_batch_size", "an integer >= 1", self.mlm_batch_size)
        check(
            self.batches_per_epoch is None or self.batches_per_epoch >= 1,
            "train.batches_per_epoch",
            "null or an integer >= 1",
            self.batches_per_epoch,
        )
        # DeepSpeed 0.19.8 applies no loss scale in backward at stage 0 with fp16 (upstream PR #8393)
        check(
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
        check(
            self.samples_per_epoch is None or self.samples_per_epoch >= 1,
            "schedule.samples_per_epoch",
            "null or an integer >= 1",
            self.samples_per_epoch,
        )
        check(
            self.max_repeats is None or self.max_repeats > 0,
            "schedule.max_repeats",
            "null or > 0",
            self.max_repeats,
        )


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
        check(self.nodes >= 1, "slurm.nodes", "an integer >= 1", self.nodes)
        check(self.gpus_per_node >= 0, "slurm.gpus_per_node", "an integer >= 0", self.gpus_per_node)
        check(
            self.tasks_per_node is None or self.tasks_per_node >= 1,
            "slurm.tasks_per_node",
            "null or an integer >= 1",
            self.tasks_per_node,
        )
        check(self.signal_seconds >= 30, "slurm.signal_seconds", "an integer >= 30", self.signal_seconds)
        check(
            bool(re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", self.time)),
            "slurm.time",
            "a SLURM time such as 04:00:00 or 1-00:00:00",
            self.time,
        )

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)
