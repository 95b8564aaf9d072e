"""`bertmt tune --backend local`: real worker processes, a real Optuna journal read back with plain Optuna,
the tiny model on real CS224N records."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

from optuna.trial import TrialState

from bertmt.config import load_config
from bertmt.rundir import RunDir
from tests.conftest import minilm_dir, tiny_overrides
from tests.e2e.helpers import REPO, bertmt, cli_env, load_study, tune_file

STATUS = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned"}


def _trial_dir(study_dir, trial) -> RunDir:
    return RunDir(study_dir / "trials" / str(trial.number))


def _check_trial(study_dir, trial, objective=lambda metrics: metrics["overall"]) -> None:
    """The run directory agrees with the study: status, config, every reported epoch and the value."""
    run = _trial_dir(study_dir, trial)
    assert run.status() == STATUS[trial.state], (trial.number, trial.state, run.status())
    assert load_config(run.config).optim.lr == trial.params["optim.lr"]
    history = run.read_json(run.history)
    assert trial.intermediate_values == {h["epoch"]: objective(h) for h in history}
    if trial.state == TrialState.COMPLETE:
        assert trial.value == objective(run.read_metrics())


def test_two_local_workers_finish_the_study_and_plain_optuna_reads_it(tiny_pretrained, small_data, tmp_path):
    study_dir = tmp_path / "study"
    overrides = tiny_overrides(tiny_pretrained, small_data, tmp_path / "unused", **{"run.reports": False})
    path = tune_file(
        tmp_path / "tune.yaml", study_dir, overrides, trials=4, workers=2, pruner={"kind": "none"}
    )
    out = bertmt("tune", str(path), "--backend", "local", timeout=900).stdout

    study = load_study(study_dir)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert {t.user_attrs["worker"] for t in trials} == {"local-0", "local-1"}  # both workers trained
    assert len({t.params["optim.lr"] for t in trials}) == 4  # the workers' samplers are seeded apart
    for trial in trials:
        _check_trial(study_dir, trial)
        assert len(trial.intermediate_values) == 2  # reported after each of the 2 epochs
        log = _trial_dir(study_dir, trial).train_log.read_text()
        assert log.count("micro-batches per epoch") == 1  # one trainer, started once, per trial

    with open(study_dir / "summary.csv") as fp:
        table = list(csv.DictReader(fp))
    best = max(trials, key=lambda t: t.value)
    assert [int(r["trial"]) for r in table][0] == best.number and len(table) == 4
    assert f"best: trial {best.number}, overall {best.value:.4f}" in out
    for name in ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate"):
        assert (study_dir / "plots" / f"{name}.png").stat().st_size > 10_000, name


def test_absurd_learning_rates_are_pruned_at_the_first_report_on_both_ranks(small_data, tmp_path):
    """One worker of 2 ranks (torchrun): rank 0 asks the pruner, rank 1 stops with it. The real MiniLM, STS
    as the cosine of its mean-pooled sentences (what it was trained for): a sensible learning rate keeps
    that, an absurd one wrecks it. The good trial runs first (enqueued), so ASHA's first rung holds its
    epoch-1 value when the absurd ones report."""
    study_dir = tmp_path / "study"
    extra = {"run.reports": False, "slurm.tasks_per_node": 2, "train.dist_timeout_s": 120}
    extra |= {"tasks.sts.pair_encoding": "siamese", "tasks.sts.pair_features": "cosine"}
    extra |= {"train.batches_per_epoch": 4, "data.max_length": 32}
    overrides = tiny_overrides(minilm_dir(), small_data, tmp_path / "unused", **extra)
    space = {"optim.lr": {"type": "float", "low": 1.0e-5, "high": 100.0, "log": True}}
    enqueue = [{"optim.lr": 5.0e-5}, {"optim.lr": 3.0}, {"optim.lr": 30.0}]
    keys = {"space": space, "enqueue": enqueue, "objective": "sts.pearson"}
    path = tune_file(tmp_path / "tune.yaml", study_dir, overrides, trials=3, workers=1, **keys)
    bertmt("tune", str(path), "--backend", "local", timeout=900)

    trials = load_study(study_dir).get_trials()
    assert [t.params["optim.lr"] for t in trials] == [5.0e-5, 3.0, 30.0]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    for trial in trials:
        _check_trial(study_dir, trial, lambda metrics: metrics["sts"]["pearson"])
    assert [len(t.intermediate_values) for t in trials] == [2, 1, 1]  # pruned at the first report
    pruned = _trial_dir(study_dir, trials[1])
    assert json.loads(pruned.pruned.read_text())["epoch"] == 1 and not pruned.metrics.exists()
    assert "world size 2" in pruned.train_log.read_text()

    out = bertmt("eval", str(pruned.path)).stdout  # an ordinary run directory
    assert "best model of epoch 1 (the run is pruned" in out


def test_a_killed_worker_leaves_a_trial_that_is_retried(tiny_pretrained, small_data, tmp_path):
    study_dir = tmp_path / "study"
    overrides = tiny_overrides(tiny_pretrained, small_data, tmp_path / "unused", **{"run.reports": False})
    path = tune_file(
        tmp_path / "tune.yaml", study_dir, overrides, trials=3, workers=2, pruner={"kind": "none"}
    )
    cmd = [sys.executable, "-m", "bertmt.cli", "tune", str(path), "--backend", "local"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO
    )
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline:  # a trial after its first epoch's checkpoint
        for beat in study_dir.glob("trials/*/heartbeat.json"):
            if (beat.parent / "checkpoints" / "latest").is_file():
                victim = int(beat.parent.name), json.loads(beat.read_text())["pid"]
                break
        time.sleep(0.05)
    assert victim is not None, "no trial reached its first checkpoint"
    os.kill(victim[1], signal.SIGKILL)  # no signal handler, no checkpoint, no heartbeat any more
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]  # the study completed
    assert "workers that did not end cleanly: {'local-" in err and ": -9}" in err

    trials = load_study(study_dir).get_trials()
    killed = trials[victim[0]]
    assert killed.state == TrialState.FAIL and "last heartbeat (running)" in killed.user_attrs["bertmt:stale"]
    assert _trial_dir(study_dir, killed).status() == "unfinished"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and len(trials) == 4, [(t.number, t.state) for t in trials]
    for trial in done:
        _check_trial(study_dir, trial)
    assert f"retry of trial {killed.number}" in (study_dir / "summary.md").read_text()


def test_tune_file_errors_name_the_key(tiny_pretrained, small_data, tmp_path):
    overrides = tiny_overrides(tiny_pretrained, small_data, tmp_path / "unused")
    cases = {
        "space.optim.lrr = 0.0001: ": {"space": {"optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-3}}},
        "'space.optim.lr.high' must be greater than low": {
            "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}
        },
        "space.schedule.kind = 'sideways'": {
            "space": {"schedule.kind": {"type": "categorical", "choices": ["annealed", "sideways"]}}
        },
        "'pruner.kind' must be asha | hyperband | median | none": {"pruner": {"kind": "patient"}},
        "objective 'nli.accuracy': no task 'nli'": {"objective": "nli.accuracy"},
        "unknown key(s) ['trails']": {"trails": 3},
    }
    for expected, keys in cases.items():
        path = tune_file(tmp_path / "tune.yaml", tmp_path / "study", overrides, **keys)
        proc = bertmt("tune", str(path), "--backend", "local", check=False)
        assert proc.returncode == 2 and expected in proc.stderr, (expected, proc.stderr[-2000:])
        assert not (tmp_path / "study").exists()  # refused before anything was created


def test_a_study_directory_refuses_another_search(tiny_pretrained, small_data, tmp_path):
    overrides = tiny_overrides(tiny_pretrained, small_data, tmp_path / "unused")
    first = tune_file(tmp_path / "a.yaml", tmp_path / "study", overrides, trials=1)
    assert bertmt("tune", str(first), "--dry-run", "--backend", "local").returncode == 0
    from launch.tune import prepare
    from launch.tune_spec import load_tune

    prepare(load_tune(first))
    space = {"optim.lr": {"type": "float", "low": 2.0e-4, "high": 3.0e-3, "log": True}}
    second = tune_file(tmp_path / "b.yaml", tmp_path / "study", overrides, trials=8, space=space)
    proc = bertmt("tune", str(second), "--backend", "local", check=False)
    assert proc.returncode == 2 and "holds a study with another search" in proc.stderr
    assert "space: {'optim.lr': {'type': 'float', 'low': 0.0001" in proc.stderr
