"""TUNE.yaml parsing and the search space against plain Optuna (an in-memory study, no training)."""

from __future__ import annotations

import itertools

import optuna
import pytest

from bertmt.config import ConfigError
from launch.tune_spec import load_tune, make_pruner, make_sampler
from tests.e2e.helpers import REPO, tune_file

SPACE = {
    "optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-4, "step": 1.0e-4},
    "tasks.sst.batch_size": {"type": "int", "low": 16, "high": 48, "step": 16},
    "schedule.kind": {"type": "categorical", "choices": ["round_robin", "annealed"]},
}


def test_a_grid_search_visits_every_point_once_and_each_becomes_its_config(
    tmp_path, small_data, tiny_pretrained
):
    path = tune_file(
        tmp_path / "t.yaml", tmp_path / "study", [], space=SPACE, sampler={"kind": "grid", "seed": 3}
    )
    overrides = [f"model.pretrained={tiny_pretrained}", f"data.dir={small_data}"]
    spec = load_tune(path, overrides)
    study = optuna.create_study(sampler=make_sampler(spec, 3), pruner=make_pruner(spec, 3))
    seen = []

    def objective(trial):
        params = {k: p.suggest(trial, k) for k, p in spec.space.items()}
        cfg = spec.config(params, tmp_path / "trials" / str(trial.number))
        seen.append((cfg.optim.lr, cfg.tasks["sst"].batch_size, cfg.schedule.kind))
        assert cfg.run.dir == str(tmp_path / "trials" / str(trial.number))
        return 0.0

    study.optimize(objective, n_trials=3 * 3 * 2)
    grid = itertools.product([1.0e-4, 2.0e-4, 3.0e-4], [16, 32, 48], ["round_robin", "annealed"])
    assert sorted(seen) == sorted(grid)
    assert len(set(seen)) == 18


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("asha", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("median", optuna.pruners.MedianPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruners_take_epochs_as_steps(kind, cls, tmp_path, small_data, tiny_pretrained):
    path = tune_file(tmp_path / "t.yaml", tmp_path / "study", [f"model.pretrained={tiny_pretrained}"])
    spec = load_tune(path, [f"data.dir={small_data}"], pruner=kind)
    pruner = make_pruner(spec, epochs=3)
    assert type(pruner) is cls
    if kind == "asha":
        assert pruner._min_resource == 1 and pruner._reduction_factor == 3


def test_grid_needs_a_step_for_floats(tmp_path, small_data, tiny_pretrained):
    space = {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-4}}
    path = tune_file(tmp_path / "t.yaml", tmp_path / "s", [], space=space, sampler={"kind": "grid"})
    with pytest.raises(ConfigError, match=r"'space.optim.lr.step' must be set \(grid sampler\)"):
        load_tune(path, [f"model.pretrained={tiny_pretrained}", f"data.dir={small_data}"])


def test_the_shipped_tune_files_validate(data_dir):
    """configs/tune/*.yaml: every parameter extreme of each is a valid config (with the real data dir)."""
    files = sorted((REPO / "configs" / "tune").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_tune(path, [f"data.dir={data_dir}"])
        assert spec.trials >= 1 and spec.space
