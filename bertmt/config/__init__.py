"""Experiment configuration: a tree of dataclasses, loaded from YAML with dotted overrides.

This package is the only code that parses configuration: ``sections.py`` and ``mtl.py`` (one dataclass per
section, every field documented by its comment and checked in ``__post_init__``), ``experiment.py`` (the
whole tree and its cross-section checks), ``loading.py`` (YAML, overrides, phases, saving), ``keys.py``
(``bertmt keys``). An unknown key or a bad value raises :class:`ConfigError` naming the dotted key and what
was expected, before any work starts.
"""

from bertmt.config.errors import ConfigError
from bertmt.config.experiment import ExperimentConfig
from bertmt.config.loading import (
    apply_overrides,
    load_config,
    phase_configs,
    read_yaml,
    save_config,
    task_configs,
    to_dict,
)
from bertmt.config.mtl import MtlConfig, SmartConfig
from bertmt.config.sections import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PalConfig,
    RunConfig,
    ScheduleConfig,
    SlurmConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "MtlConfig",
    "OptimConfig",
    "PalConfig",
    "RunConfig",
    "ScheduleConfig",
    "SlurmConfig",
    "SmartConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "phase_configs",
    "task_configs",
    "read_yaml",
    "save_config",
    "to_dict",
]
