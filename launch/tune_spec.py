"""TUNE.yaml: an Optuna study over bertmt configs (`bertmt tune`). Parsed and checked before anything starts;
every error names the key. Imports no torch (Optuna only where a sampler or pruner is built).

    base: configs/quickstart.yaml        # the config every trial starts from (relative to this file)
    overrides: [train.epochs=3]          # applied to every trial
    dir: runs/tune-lr                    # the study directory (relative to where bertmt runs)
    trials: 24                           # finished trials (complete, pruned or failed) to reach
    workers: 4                           # array tasks (local: processes), each trains one trial at a time
    objective: overall                   # a key of metrics.json ("overall", "sst.accuracy", ...)
    direction: maximize                  # or minimize
    sampler: {kind: tpe, seed: 0}        # tpe | random | grid (grid: every float needs a step)
    pruner: {kind: asha, min_epochs: 1}  # asha | hyperband | median | none (reduction_factor: 3)
    space:                               # any dotted config key
      optim.lr: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
      schedule.kind: {type: categorical, choices: [round_robin, annealed]}
      tasks.sst.batch_size: {type: int, low: 16, high: 64, step: 16}
    enqueue: [{optim.lr: 1.0e-4}]        # trials to run first (e.g. the base config's values)
    heartbeat_s: 30                      # a training worker rewrites its trial's heartbeat this often
    stale_after_s: 300                   # a running trial without a heartbeat this long is retried
    slurm: {time: "04:00:00"}            # overrides of the base config's slurm section for the workers
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bertmt.config import ConfigError, ExperimentConfig, load_config

KEYS = {
    "base", "overrides", "dir", "trials", "workers", "objective", "direction", "sampler", "pruner", "space",
    "enqueue", "heartbeat_s", "stale_after_s", "slurm",
}  # fmt: skip
SAMPLERS = {"tpe": {"seed", "n_startup_trials"}, "random": {"seed"}, "grid": {"seed"}}
PRUNERS = {
    "asha": {"min_epochs", "reduction_factor"},
    "hyperband": {"min_epochs", "reduction_factor"},
    "median": {"min_epochs", "n_startup_trials"},
    "none": set(),
}
PARAM_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}}
PARAM_KEYS["categorical"] = {"choices"}
SPEC_FILE = "tune.json"  # the spec as the workers use it, frozen in the study directory


@dataclass
class Param:
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def values(self) -> list:
        """Every value (grid sampler); a float without a step has none."""
        if self.type == "categorical":
            return list(self.choices)
        n = int(round((self.high - self.low) / self.step))
        grid = [
            float(f"{self.low + i * self.step:.12g}") for i in range(n + 1)
        ]  # 3e-4, not 3.0000000000000003e-4
        return [int(v) for v in grid] if self.type == "int" else grid

    def extremes(self) -> list:
        if self.type == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]

    def suggest(self, trial, name: str):
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class TuneSpec:
    base: str  # absolute path of the base config
    dir: str  # absolute path of the study directory
    trials: int
    workers: int
    objective: str = "overall"
    direction: str = "maximize"
    overrides: list[str] = field(default_factory=list)
    sampler: dict = field(default_factory=lambda: {"kind": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"kind": "asha", "min_epochs": 1})
    space: dict[str, Param] = field(default_factory=dict)
    enqueue: list[dict] = field(default_factory=list)
    heartbeat_s: float = 30.0
    stale_after_s: float = 300.0
    slurm: dict = field(default_factory=dict)

    @property
    def study_name(self) -> str:
        return Path(self.dir).name

    def trial_overrides(self, params: dict, run_dir: Path) -> list[str]:
        """The overrides of one trial: the study's, the workers' slurm ones, its parameters, its run.dir."""
        own = [f"{k}={_value(v)}" for k, v in params.items()]
        return [*self.overrides, *_slurm_overrides(self.slurm), *own, f"run.dir={run_dir}"]

    def config(self, params: dict, run_dir: Path) -> ExperimentConfig:
        return load_config(self.base, self.trial_overrides(params, run_dir))

    def objective_of(self, metrics: dict, where: str) -> float:
        """The objective's value in metrics.json or an epoch's history entry (``where`` names it)."""
        value = metrics
        for part in self.objective.split("."):
            if not isinstance(value, dict) or part not in value:
                keys = [k for k, v in metrics.items() if not isinstance(v, dict)]
                keys += [f"{t}.{m}" for t, v in metrics.items() if isinstance(v, dict) for m in v]
                raise ConfigError(
                    f"objective: {self.objective!r} is not in {where}; its keys: {sorted(keys)}"
                )
            value = value[part]
        return float(value)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, path: Path) -> TuneSpec:
        raw = json.loads(Path(path).read_text())
        raw["space"] = {k: Param(**p) for k, p in raw["space"].items()}
        return cls(**raw)


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _slurm_overrides(slurm: dict) -> list[str]:
    return [f"slurm.{k}={_value(v)}" for k, v in sorted(slurm.items())]


def _need(cond: bool, path: Path, key: str, expected: str, got) -> None:
    if not cond:
        raise ConfigError(f"tune file {path}: '{key}' must be {expected}, got {got!r}")


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_param(path: Path, key: str, raw) -> Param:
    where = f"space.{key}"
    _need(
        isinstance(raw, dict) and raw.get("type") in PARAM_KEYS,
        path,
        f"{where}.type",
        "float|int|categorical",
        raw,
    )
    extra = sorted(set(raw) - PARAM_KEYS[raw["type"]] - {"type"})
    _need(not extra, path, where, f"a mapping with keys {sorted(PARAM_KEYS[raw['type']])}", f"extra {extra}")
    if raw["type"] == "categorical":
        choices = raw.get("choices")
        _need(isinstance(choices, list) and choices, path, f"{where}.choices", "a non-empty list", choices)
        return Param("categorical", choices=choices)
    for bound in ("low", "high"):
        _need(_is_num(raw.get(bound)), path, f"{where}.{bound}", "a number", raw.get(bound))
    _need(raw["low"] < raw["high"], path, f"{where}.high", f"greater than low ({raw['low']})", raw["high"])
    step, log = raw.get("step"), bool(raw.get("log", False))
    _need(step is None or (_is_num(step) and step > 0), path, f"{where}.step", "a positive number", step)
    _need(not (log and step is not None), path, f"{where}.log", "false when a step is given (Optuna)", log)
    _need(not log or raw["low"] > 0, path, f"{where}.low", "positive with log: true", raw["low"])
    if raw["type"] == "int":
        ints = all(isinstance(raw.get(k), int) for k in ("low", "high")) and isinstance(step or 1, int)
        _need(ints, path, where, "integer low, high and step for type int", raw)
    return Param(raw["type"], float(raw["low"]), float(raw["high"]), log, step)


def _options(path: Path, key: str, raw, kinds: dict[str, set], default: dict) -> dict:
    raw = default if raw is None else raw
    _need(isinstance(raw, dict) and raw.get("kind") in kinds, path, f"{key}.kind", " | ".join(kinds), raw)
    extra = sorted(set(raw) - kinds[raw["kind"]] - {"kind"})
    _need(not extra, path, key, f"options of {raw['kind']}: {sorted(kinds[raw['kind']])}", f"extra {extra}")
    for name, value in raw.items():
        if name != "kind":
            _need(isinstance(value, int) and value >= 0, path, f"{key}.{name}", "an integer >= 0", value)
    return dict(raw)


def load_tune(
    path: str | Path,
    overrides: list[str] = (),
    trials: int | None = None,
    workers: int | None = None,
    study_dir: str | None = None,
    pruner: str | None = None,
):
    """Parse TUNE.yaml (and the command line's config overrides, trials, workers, study directory and pruner
    kind) into a TuneSpec; the base config with every extreme of every parameter is validated now."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tune file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    _need(isinstance(raw, dict), path, "(top level)", "a mapping", raw)
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"tune file {path}: unknown key(s) {unknown}; valid keys: {sorted(KEYS)}")
    if study_dir is not None:
        raw["dir"] = study_dir
    if pruner is not None:  # the same search with another pruner (its kind's options kept where they apply)
        raw["pruner"] = {k: v for k, v in (raw.get("pruner") or {}).items() if k in PRUNERS[pruner]}
        raw["pruner"]["kind"] = pruner
    for key in ("base", "dir"):
        _need(isinstance(raw.get(key), str), path, key, "a string", raw.get(key))
    trials = trials if trials is not None else raw.get("trials")
    workers = workers if workers is not None else raw.get("workers", 1)
    _need(isinstance(trials, int) and trials >= 1, path, "trials", "an integer >= 1", trials)
    _need(isinstance(workers, int) and workers >= 1, path, "workers", "an integer >= 1", workers)
    direction = raw.get("direction", "maximize")
    _need(direction in ("maximize", "minimize"), path, "direction", "maximize|minimize", direction)
    space_raw = raw.get("space")
    _need(
        isinstance(space_raw, dict) and space_raw,
        path,
        "space",
        "a non-empty mapping of dotted keys",
        space_raw,
    )
    common = [str(o) for o in raw.get("overrides") or []] + list(overrides)
    spec = TuneSpec(
        base=str((path.parent / raw["base"]).resolve()),
        dir=str(Path(raw["dir"]).resolve()),
        trials=trials,
        workers=workers,
        objective=str(raw.get("objective", "overall")),
        direction=raw.get("direction", "maximize"),
        overrides=common,
        sampler=_options(path, "sampler", raw.get("sampler"), SAMPLERS, {"kind": "tpe", "seed": 0}),
        pruner=_options(path, "pruner", raw.get("pruner"), PRUNERS, {"kind": "asha", "min_epochs": 1}),
        space={k: parse_param(path, k, v) for k, v in space_raw.items()},
        enqueue=list(raw.get("enqueue") or []),
        heartbeat_s=float(raw.get("heartbeat_s", 30)),
        stale_after_s=float(raw.get("stale_after_s", 300)),
        slurm=dict(raw.get("slurm") or {}),
    )
    _need(0 < spec.heartbeat_s < spec.stale_after_s, path, "stale_after_s", "greater than heartbeat_s > 0",
          spec.stale_after_s)  # fmt: skip
    _check_against_configs(path, spec)
    return spec


def _check_against_configs(path: Path, spec: TuneSpec) -> None:
    """Every extreme of every parameter (every choice) gives a valid config; the objective names a task."""
    run_dir = Path(spec.dir) / "trials" / "check"
    try:
        cfg = load_config(spec.base, spec.trial_overrides({}, run_dir))
    except ConfigError as exc:
        raise ConfigError(f"tune file {path}: base + overrides: {exc}") from exc
    if cfg.phases:
        raise ConfigError(f"tune file {path}: base: a phased config cannot report to the study every epoch")
    for key, param in spec.space.items():
        for value in param.extremes():
            try:
                load_config(spec.base, spec.trial_overrides({key: value}, run_dir))
            except ConfigError as exc:
                raise ConfigError(f"tune file {path}: space.{key} = {value!r}: {exc}") from exc
    task = spec.objective.split(".")[0]
    tasks = list(cfg.resolved_tasks())
    if spec.objective != "overall" and task not in tasks:
        raise ConfigError(
            f"tune file {path}: objective {spec.objective!r}: no task {task!r} (tasks: {tasks})"
        )
    for i, params in enumerate(spec.enqueue):
        _need(isinstance(params, dict) and set(params) <= set(spec.space), path, f"enqueue[{i}]",
              f"a mapping of space keys {sorted(spec.space)}", params)  # fmt: skip
    if spec.sampler["kind"] == "grid":
        for key, param in spec.space.items():
            _need(param.type != "float" or param.step, path, f"space.{key}.step", "set (grid sampler)", None)
    min_epochs = spec.pruner.get("min_epochs", 1)
    _need(min_epochs <= cfg.train.epochs, path, "pruner.min_epochs", f"<= train.epochs ({cfg.train.epochs})",
          min_epochs)  # fmt: skip


def grid(spec: TuneSpec) -> dict[str, list]:
    return {k: p.values() for k, p in spec.space.items()}


def make_sampler(spec: TuneSpec, seed: int):
    import optuna

    kind = spec.sampler["kind"]
    if kind == "tpe":
        startup = spec.sampler.get("n_startup_trials", 10)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(grid(spec), seed=seed)


def make_pruner(spec: TuneSpec, epochs: int):
    """Reports are made after every epoch, step = the epoch number (1-based)."""
    import optuna

    p = spec.pruner
    min_epochs, factor = p.get("min_epochs", 1), p.get("reduction_factor", 3)
    if p["kind"] == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=factor)
    if p["kind"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_epochs, max_resource=epochs, reduction_factor=factor
        )
    if p["kind"] == "median":
        startup = p.get("n_startup_trials", 2)
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=min_epochs)
    return optuna.pruners.NopPruner()
