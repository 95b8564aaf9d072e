"""Hyperparameter sweeps: a sweep file names a base config and a grid and/or a list of override sets; every
combination is one run with its own run directory, all submitted as one SLURM job array.

    base: quickstart.yaml            # relative to the sweep file
    dir: runs/sweep-lr               # sweep directory: sweep.json, args/, slurm logs, summary
    overrides: [train.epochs=1]      # for every run
    grid: {optim.lr: [1.0e-4, 5.0e-5]}   # cartesian product of these values
    runs: [[mtl.method=pcgrad, train.grad_accum=3]]   # and/or explicit override sets
    max_parallel: 8                  # array tasks running at once
    slurm: {time: "02:00:00"}        # overrides of the base config's slurm section
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from bertmt.config import ConfigError, load_config
from launch.render import common, fill, load_template

KEYS = {"base", "dir", "overrides", "grid", "runs", "max_parallel", "slurm"}


@dataclass
class Run:
    index: int
    name: str
    run_dir: str
    overrides: list[str]  # the run's own overrides, run.dir last


@dataclass
class Sweep:
    file: Path
    base: Path
    dir: Path
    runs: list[Run]
    max_parallel: int
    slurm: dict


def _slug(overrides: list[str]) -> str:
    parts = [o.split("=", 1) for o in overrides]
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in parts) or "base"
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", text)[:80]


def _value(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def load_sweep(path: str | Path) -> Sweep:
    """Parse and expand a sweep file; every run's config is validated before anything is submitted."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {unknown}; valid keys: {sorted(KEYS)}")
    for key in ("base", "dir"):
        if not isinstance(raw.get(key), str):
            raise ConfigError(f"sweep file {path}: '{key}' must be a string, got {raw.get(key)!r}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"sweep file {path}: 'grid' must map dotted keys to non-empty lists, got {grid!r}")
    sets = [[f"{k}={_value(v)}" for k, v in zip(grid, combo)] for combo in itertools.product(*grid.values())]
    sets = sets if grid else []
    for i, extra in enumerate(raw.get("runs") or []):
        if not isinstance(extra, list) or not all(isinstance(o, str) and "=" in o for o in extra):
            raise ConfigError(
                f"sweep file {path}: runs[{i}] must be a list of KEY=VALUE strings, got {extra!r}"
            )
        sets.append(list(extra))
    if not sets:
        raise ConfigError(f"sweep file {path}: no runs (give 'grid' and/or 'runs')")
    base = (path.parent / raw["base"]).resolve()
    sweep_dir = Path(raw["dir"]).resolve()
    common_overrides = [str(o) for o in raw.get("overrides") or []]
    slurm = {f"slurm.{k}={_value(v)}" for k, v in (raw.get("slurm") or {}).items()}
    runs = []
    for i, own in enumerate(sets):
        name = f"{i:03d}-{_slug(own)}"
        run = Run(i, name, str(sweep_dir / name), [*common_overrides, *sorted(slurm), *own])
        run.overrides.append(f"run.dir={run.run_dir}")
        try:
            load_config(base, run.overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep run {i} ({' '.join(own)}): {exc}") from exc
        runs.append(run)
    return Sweep(path, base, sweep_dir, runs, int(raw.get("max_parallel", len(runs))), raw.get("slurm") or {})


def write_sweep_files(sweep: Sweep) -> None:
    """sweep.json (what `bertmt sweep-summary` reads) and args/<i>.txt (what each array task trains with)."""
    (sweep.dir / "args").mkdir(parents=True, exist_ok=True)
    for run in sweep.runs:
        (sweep.dir / "args" / f"{run.index}.txt").write_text("\n".join(run.overrides) + "\n")
    info = {"sweep_file": str(sweep.file), "base": str(sweep.base), "runs": [r.__dict__ for r in sweep.runs]}
    (sweep.dir / "sweep.json").write_text(json.dumps(info, indent=2))


def render_array(sweep: Sweep) -> str:
    cfg = load_config(sweep.base, sweep.runs[0].overrides)
    values = common(cfg, str(sweep.base), job_name=f"bertmt-sweep-{sweep.dir.name}")
    values |= {
        "runs": len(sweep.runs),
        "last": len(sweep.runs) - 1,
        "max_parallel": sweep.max_parallel,
        "sweep_dir": shlex.quote(str(sweep.dir)),
        "sweep_file": sweep.file,
    }
    return fill(load_template("array"), values)
