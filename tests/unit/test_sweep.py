"""Sweep files expand to validated runs; the summary sorts finished runs by the dev overall score and marks
failed, unfinished and unstarted ones."""

from __future__ import annotations

import json

import pytest
import yaml

from bertmt.config import ConfigError
from launch.summary import collect, over_seeds, write_summary
from launch.sweep import load_sweep, write_sweep_files
from tests.e2e.helpers import QUICKSTART


def _sweep(tmp_path, **spec):
    spec = {"base": str(QUICKSTART), "dir": str(tmp_path / "sweep")} | spec
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_and_listed_runs_expand_with_their_own_run_directories(tmp_path):
    path = _sweep(
        tmp_path,
        grid={"optim.lr": [1e-4, 2e-5], "train.epochs": [1, 2]},
        runs=[["mtl.method=pcgrad", "train.grad_accum=3"]],
    )
    sweep = load_sweep(path)
    assert len(sweep.runs) == 5
    assert [r.overrides[-1] for r in sweep.runs] == [f"run.dir={r.run_dir}" for r in sweep.runs]
    assert len({r.run_dir for r in sweep.runs}) == 5
    assert sweep.runs[3].overrides[:2] == ["optim.lr=2e-05", "train.epochs=2"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"optim.lr": [-1.0]}}, "sweep run 0 (optim.lr=-1.0): config key 'optim.lr'"),
        ({"grid": {"optim.lr": []}}, "'grid' must map dotted keys to non-empty lists"),
        ({"runs": [["optim.lr"]]}, "runs[0] must be a list of KEY=VALUE strings"),
        ({"gird": {}}, "unknown key(s) ['gird']"),
        ({}, "no runs (give 'grid' and/or 'runs')"),
    ],
)
def test_bad_sweep_files_fail_naming_the_problem(tmp_path, spec, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(_sweep(tmp_path, **spec))
    assert message in str(err.value)


def test_summary_sorts_by_overall_and_marks_runs_that_did_not_finish(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, grid={"optim.lr": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]}))
    write_sweep_files(sweep)
    dirs = [tmp_path / "sweep" / r.name for r in sweep.runs]
    for d, overall in [(dirs[0], 0.61), (dirs[2], 0.72)]:
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"sst": {"accuracy": overall}, "overall": overall}))
    dirs[1].mkdir()
    (dirs[1] / "failed.json").write_text("{}")
    (dirs[3] / "checkpoints").mkdir(parents=True)
    (dirs[3] / "checkpoints" / "latest").write_text("step-4")
    markdown, md, csv_path = write_summary(tmp_path / "sweep")
    rows = [line.split(" | ") for line in markdown.splitlines()[2:]]
    assert [r[1] for r in rows] == [sweep.runs[i].name for i in (2, 0, 1, 3, 4)]
    assert [r[2] for r in rows] == ["finished", "finished", "**failed**", "**unfinished**", "**not started**"]
    assert rows[0][0] == "| 1" and rows[0][3] == "0.7200" and rows[2][0] == "| -"
    assert csv_path.read_text().splitlines()[3].split(",")[2] == "failed"
    assert md.read_text() == markdown


def test_summary_gives_mean_and_sample_std_over_seeds_per_setting(tmp_path):
    """Runs that differ only in run.seed form one row of mean +- std; a setting with one finished run and
    unfinished runs are left out of that table."""
    grid = {"run.seed": [1, 2, 3], "optim.lr": [1e-4, 1e-5]}
    sweep = load_sweep(_sweep(tmp_path, grid=grid))
    write_sweep_files(sweep)
    scores = {0: 0.70, 1: 0.72, 2: 0.74, 4: 0.60}  # lr 1e-4: seeds 1-3; lr 1e-5: seed 2 only
    for i, overall in scores.items():
        d = tmp_path / "sweep" / sweep.runs[i].name
        d.mkdir()
        metrics = {"sts": {"pearson": overall / 2}, "overall": overall}
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "train.log").write_text(f"x INFO finished in {100 + i} s; best epoch 1\n")
    groups = over_seeds(collect(tmp_path / "sweep"))
    assert len(groups) == 1 and groups[0]["seeds"] == 3 and "seed" not in groups[0]["overrides"]
    mean, std = groups[0]["overall"]
    assert mean == pytest.approx(0.72) and std == pytest.approx(0.02)  # sample std (n - 1)
    assert groups[0]["sts/pearson"] == pytest.approx((0.36, 0.01))
    assert groups[0]["train_s"] == pytest.approx((101.0, 1.0))
    markdown, _, _ = write_summary(tmp_path / "sweep")
    assert "## Over seeds (mean +- sample std)" in markdown and "0.7200 +- 0.0200" in markdown


SHIPPED = sorted((QUICKSTART.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_sweep_files_expand_to_valid_runs_with_distinct_directories(path):
    sweep = load_sweep(path)
    assert sweep.runs
    assert len({run.run_dir for run in sweep.runs}) == len(sweep.runs)
