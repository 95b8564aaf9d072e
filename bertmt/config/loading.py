"""Loading: YAML files and dotted overrides into the dataclass tree, validated on the way; the phases of a
phased run; saving. The only code that parses configuration."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from bertmt.config.errors import ConfigError, check
from bertmt.config.experiment import ExperimentConfig
from bertmt.rundir import RunDir


def _build(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, raising ConfigError with the dotted key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        lists = [a for a in inner if typing.get_origin(a) is list]
        return _build(lists[0] if lists and isinstance(value, list) else inner[0], value, key)
    if origin is Literal:
        # exact types: 1 is not true, nor 0 false
        check(any(type(value) is type(a) and value == a for a in args), key, f"one of {list(args)}", value)
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key)
    if origin is list:
        check(isinstance(value, list), key, "a list", value)
        return [_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        check(isinstance(value, dict), key, "a mapping", value)
        return {k: _build(args[1], v if v is not None else {}, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        check(isinstance(value, bool), key, "true or false", value)
    elif tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
    elif tp is float:
        value = _yaml_float(value)  # YAML 1.1 reads "2e-5" (no dot) as a string
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        value = float(value)
    elif tp is str:
        check(isinstance(value, (str, int, float)) and not isinstance(value, bool), key, "a string", value)
        value = str(value)
    return value


def _build_dataclass(cls: type, value: Any, key: str) -> Any:
    check(isinstance(value, dict), key or "<top>", "a mapping", value)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, v in value.items():
        sub = f"{key}.{name}" if key else name
        check(name in names, sub, f"a known key; valid keys here: {names}", name)
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
            check(
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
        check(isinstance(node, (dict, list)), dotted, f"'{parts[i]}' to be a section", node)


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
    # every phase's resolved config (exclusive: every model's, with its phases) is checked now, not later
    if cfg.train.exclusive:
        task_configs(cfg)
    else:
        phase_configs(cfg)
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
        check(isinstance(phase, dict), key, "a mapping with a name and config sections", phase)
        name = phase.get("name")
        check(isinstance(name, str) and name.isidentifier(), f"{key}.name", "an identifier", name)
        check(name not in names, f"{key}.name", "a name not used by another phase", name)
        names.add(name)
        check(
            "models" not in phase,
            f"{key}.models",
            "absent unless train.exclusive=true (it names the models, tasks.<t>.model, that run the phase)",
            phase.get("models"),
        )
        sections = {k: v for k, v in phase.items() if k != "name"}
        for section, value in sections.items():
            check(section in PHASE_SECTIONS, f"{key}.{section}", f"one of {list(PHASE_SECTIONS)}", section)
            check(isinstance(value, dict), f"{key}.{section}", "a mapping", value)
        for sub in sections.get("model", {}):
            check(sub in PHASE_MODEL_KEYS, f"{key}.model.{sub}", f"one of {list(PHASE_MODEL_KEYS)}", sub)
        tree = _merge(base, sections)
        tree["run"]["dir"] = str(RunDir(cfg.run.dir).phase(i, name).path)
        try:
            out.append((name, _build_dataclass(ExperimentConfig, tree, "")))
        except ConfigError as exc:
            raise ConfigError(f"{key} ('{name}'): {exc}") from exc
        for task, task_cfg in out[-1][1].tasks.items():
            check(
                task not in cfg.tasks or task_cfg.symmetric == cfg.tasks[task].symmetric,
                f"{key}.tasks.{task}.symmetric",
                f"{cfg.tasks[task].symmetric if task in cfg.tasks else None}, the base config's value (the "
                "finished run is evaluated and predicted as the base config reads its pairs)",
                task_cfg.symmetric,
            )
    if out:
        last = len(out) - 1
        check(
            out[-1][1].train.objective == "tasks",
            f"phases[{last}].train.objective",
            "tasks in the last phase (an mlm phase pre-trains the encoder for the task phases after it)",
            out[-1][1].train.objective,
        )
    return out


def task_configs(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """train.exclusive: per model (tasks.<t>.model; by default one per head), the config of that model: its
    datasets, every other setting as configured, in ``<run.dir>/tasks/<model>``, and the phases that name it
    in ``phases[i].models`` (or name no model), their tasks sections cut to its datasets. Errors name the
    model."""
    base = to_dict(cfg)
    base["train"]["exclusive"] = False
    models = list(dict.fromkeys(cfg.model_of(t) for t in cfg.tasks))
    _check_phase_models(cfg.phases, models)
    out = []
    for model in models:
        tree = copy.deepcopy(base)
        # a model's run is the run of its datasets alone: ensembles join the models' outputs afterwards
        mine = {t: v for t, v in base["tasks"].items() if cfg.model_of(t) == model}
        tree["tasks"] = {t: v | {"model": None, "ensemble": []} for t, v in mine.items()}
        if tree["schedule"]["epoch_task"] not in tree["tasks"]:
            tree["schedule"]["epoch_task"] = None
        phases = [p for p in tree["phases"] if _runs(p, model, models)]
        tree["phases"] = [_phase_of_model(p, tree["tasks"]) for p in phases]
        tree["run"]["dir"] = str(RunDir(cfg.run.dir).task_model(model).path)
        try:
            sub = _build_dataclass(ExperimentConfig, tree, "")
            phase_configs(sub)
        except ConfigError as exc:
            tasks = sorted(tree["tasks"])
            raise ConfigError(f"train.exclusive: the model {model!r} of {tasks}: {exc}") from exc
        out.append((model, sub))
    return out


def _check_phase_models(phases: list, models: list[str]) -> None:
    for i, phase in enumerate(phases):
        if isinstance(phase, dict) and "models" in phase:
            names = phase["models"]
            check(
                isinstance(names, list) and names and all(n in models for n in names),
                f"phases[{i}].models",
                f"a non-empty list of this run's models, of {models}",
                names,
            )


def _runs(phase, model: str, models: list[str]) -> bool:
    """Whether ``model`` runs ``phase`` (one that names no model runs in all; a malformed one is kept for
    phase_configs to report)."""
    return not isinstance(phase, dict) or model in phase.get("models", models)


def _phase_of_model(phase, tasks: dict):
    """A phase as one model of an exclusive run runs it: without ``models``, its tasks section cut to the
    model's datasets."""
    if not isinstance(phase, dict):
        return phase
    out = {k: v for k, v in phase.items() if k != "models"}
    if isinstance(out.get("tasks"), dict):
        out["tasks"] = {t: v for t, v in out["tasks"].items() if t in tasks}
    return out


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    with open(path, "w") as fp:
        yaml.safe_dump(to_dict(cfg), fp, sort_keys=False)
