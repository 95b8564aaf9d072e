"""Config loading: dotted overrides, unknown keys and bad values fail naming the key and the choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertmt.cli import main
from bertmt.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.tasks and cfg.optim.lr > 0


def test_dotted_overrides_reach_nested_fields():
    cfg = load_config(
        CONFIGS[0].parent / "quickstart.yaml",
        [
            "optim.lr=2e-5",
            "tasks.sts.dev=/elsewhere/sts.csv",
            "model.head_hidden=[64, 32]",
            "train.zero_stage=2",
            "tasks.cfimdb.train=cf.csv",
            "tasks.cfimdb.dev=cf-dev.csv",
        ],
    )
    assert cfg.optim.lr == 2e-5 and cfg.train.zero_stage == 2 and cfg.model.head_hidden == [64, 32]
    assert str(cfg.task_path("sts", "dev")) == "/elsewhere/sts.csv"
    assert cfg.task_path("cfimdb", "train") == Path(cfg.data.dir) / "cf.csv"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["optim.lrr=1"],
            "config key 'optim.lrr': expected a known key; valid keys here: ['lr', 'weight_decay'",
        ),
        (
            ["train.precision=fp8"],
            "config key 'train.precision': expected one of ['fp32', 'bf16', 'fp16'], got 'fp8'",
        ),
        (["train.zero_stage=4"], "config key 'train.zero_stage': expected one of [0, 1, 2, 3], got 4"),
        (["optim.lr=-1"], "config key 'optim.lr': expected a positive float, got -1.0"),
        (["train.epochs=two"], "config key 'train.epochs': expected an integer, got 'two'"),
        (
            ["tasks.mnli.train=x.csv"],
            "config key 'tasks.mnli': expected a task name, one of ['cfimdb', 'quora'",
        ),
        (
            ["model.pooling=max"],
            "config key 'model.pooling': expected one of ['mean', 'cls', 'pooler', 'attention']",
        ),
        (["optim.lr"], "override 'optim.lr': expected KEY=VALUE"),
        (
            ["mtl.method=pcgrad", "train.zero_stage=3"],
            "config key 'mtl.method': expected none with train.zero_stage=3",
        ),
        (
            ["schedule.kind=temperature"],
            "config key 'schedule.kind': expected one of ['round_robin', 'random'",
        ),
        (
            ["schedule.epoch_task=cfimdb"],
            "config key 'schedule.epoch_task': expected null or a configured task",
        ),
        (
            ["train.precision=fp16", "train.zero_stage=0"],
            "config key 'train.zero_stage': expected 1, 2 or 3 with fp16",
        ),
    ],
)
def test_bad_config_fails_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS[0].parent / "quickstart.yaml", override)
    assert message in str(err.value)


def test_cli_rejects_unknown_key_before_any_work(tmp_path, capsys):
    code = main(
        ["train", str(CONFIGS[0].parent / "quickstart.yaml"), f"run.dir={tmp_path}/run", "train.epoch=3"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "config key 'train.epoch': expected a known key" in err and "'epochs'" in err
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
