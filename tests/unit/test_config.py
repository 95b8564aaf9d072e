"""Config loading: dotted overrides, unknown keys and bad values fail naming the key and the choices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bertmt.cli import main
from bertmt.config import ConfigError, load_config, phase_configs, task_configs

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


def test_the_plateau_recipe_is_heads_then_joint_on_a_plateau_schedule():
    phases = dict(phase_configs(load_config(RECIPE.parent / "cpu-recipe-plateau.yaml")))
    assert list(phases) == ["heads", "joint"]
    joint = phases["joint"]
    assert joint.optim.schedule == "plateau" and joint.train.epochs == 8 and joint.train.patience == 2
    assert phases["heads"].train.freeze_encoder and not joint.train.freeze_encoder


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["optim.lrr=1"],
            "config key 'optim.lrr': expected a known key; valid keys here: ['name', 'lr', 'weight_decay'",
        ),
        (
            ["train.precision=fp8"],
            "config key 'train.precision': expected one of ['fp32', 'bf16', 'fp16'], got 'fp8'",
        ),
        (["train.zero_stage=4"], "config key 'train.zero_stage': expected one of [0, 1, 2, 3], got 4"),
        (["optim.lr=-1"], "config key 'optim.lr': expected a finite positive float, got -1.0"),
        (["train.epochs=two"], "config key 'train.epochs': expected an integer, got 'two'"),
        (
            ["tasks.mnli.train=x.csv"],
            "config key 'tasks.mnli': expected a task name, one of ['cfimdb', 'quora'",
        ),
        (
            ["model.pooling=median"],
            "config key 'model.pooling': expected one of ['mean', 'max', 'cls', 'pooler', 'attention']",
        ),
        (["optim.lr"], "override 'optim.lr': expected KEY=VALUE"),
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
        (["optim.lr=.inf"], "config key 'optim.lr': expected a finite positive float, got inf"),
        (["optim.lr=.nan"], "config key 'optim.lr': expected a finite positive float, got nan"),
        (["train.dist_timeout_s=0"], "config key 'train.dist_timeout_s': expected a positive number"),
        (["tasks.sst.weight=-1"], "config key 'tasks.sst.weight': expected a finite float >= 0, got -1.0"),
        (["tasks.sst.weight=.nan"], "config key 'tasks.sst.weight': expected a finite float >= 0, got nan"),
        (
            ["mtl.method=pcgrad", "train.grad_accum=1"],
            "config key 'train.grad_accum': expected at least 2 with gradient surgery (mtl.method=pcgrad)",
        ),
        (["optim.lr=[1,"], "override 'optim.lr=[1,': the value is not valid YAML (line 1, column 4"),
        (
            ["tasks.sst.head_arch=lstm", "train.zero_stage=2"],
            "config key 'train.zero_stage': expected 0, 1 or 3 with an LSTM head (tasks.sst)",
        ),
        (
            ["phases=[{name: a, models: [sst]}]"],
            "config key 'phases[0].models': expected absent unless train.exclusive=true",
        ),
        (
            ["train.exclusive=true", "phases=[{name: a, models: [joint]}]"],
            "config key 'phases[0].models': expected a non-empty list of this run's models, of ['sst', 'q",
        ),
        (
            ["train.exclusive=true", "phases=[{name: a, models: [sts], optim: {lr: -1}}]"],
            "the model 'sts' of ['sts']: phases[0] ('a'): config key 'optim.lr'",
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


RECIPE = CONFIGS[0].parent / "cpu-recipe-three-phases.yaml"


def test_phases_resolve_to_full_configs_with_their_own_run_directories():
    cfg = load_config(RECIPE, ["phases.1.train.epochs=5", "optim.weight_decay=0.05"])
    phases = dict(phase_configs(cfg))
    assert list(phases) == ["heads", "joint", "pals"]
    assert phases["heads"].train.freeze_encoder and phases["heads"].optim.lr == 1e-3
    assert phases["joint"].train.epochs == 5 and phases["joint"].schedule.kind == "annealed"
    assert phases["pals"].model.pals.enabled and phases["pals"].mtl.method == "gradvac"
    assert not phases["joint"].model.pals.enabled and phases["pals"].optim.lr == 2e-5
    assert all(p.optim.weight_decay == 0.05 for p in phases.values())  # base overrides reach every phase
    assert phases["pals"].run.dir == str(Path(cfg.run.dir) / "phases" / "3-pals")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["phases.1.optim.lr=-1"],
            "phases[1] ('joint'): config key 'optim.lr': expected a finite positive float",
        ),
        (["phases.0.schedul={kind: random}"], "config key 'phases[0].schedul': expected one of ['model'"),
        (["phases.2.model.pooling=cls"], "config key 'phases[2].model.pooling': expected one of ['pals'"),
        (["phases.5.optim.lr=1"], "config key 'phases.5.optim.lr': expected an index below 3"),
        (["phases.1.name=heads"], "config key 'phases[1].name': expected a name not used by another phase"),
        (
            ["phases.1.tasks={sts: {symmetric: true}}"],
            "config key 'phases[1].tasks.sts.symmetric': expected False, the base config's value",
        ),
        (
            ["phases.0.mtl={method: pcgrad}"],
            "config key 'mtl.method': expected none with train.freeze_encoder=true",
        ),
    ],
)
def test_bad_phase_fails_naming_the_phase_and_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPE, override)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["tasks.more.type=sst", "tasks.more.head=sts"],
            "config key 'tasks.more.head': expected a task with the same",
        ),
        (
            ["tasks.more.type=sst", "tasks.more.head=nope"],
            "config key 'tasks.more.head': expected another configured",
        ),
        (
            ["tasks.sst.pair_encoding=siamese"],
            "config key 'tasks.sst.pair_encoding': expected cross for a single",
        ),
        (["tasks.sst.symmetric=true"], "config key 'tasks.sst.symmetric': expected false unless the task"),
        (["tasks.sst.symmetric=eval"], "config key 'tasks.sst.symmetric': expected false unless the task"),
        (
            ["tasks.quora.symmetric=1"],
            "config key 'tasks.quora.symmetric': expected one of [False, True, 'eval']",
        ),
        (
            ["tasks.sts.pair_encoding=siamese", "tasks.sts.symmetric=true"],
            "config key 'tasks.sts.symmetric': expected false unless the task is a cross-encoded pair task",
        ),
        (
            ["tasks.sst.cross_features=segments"],
            "config key 'tasks.sst.cross_features': expected pooled unless the task is a cross-encoded pair",
        ),
        (
            ["tasks.sts.pair_encoding=siamese", "tasks.sts.cross_features=segments"],
            "config key 'tasks.sts.cross_features': expected pooled unless the task is a cross-encoded pair",
        ),
        (
            ["tasks.quora.cross_features=segments", "tasks.quora.head_arch=cnn"],
            "config key 'tasks.quora.cross_features': expected pooled unless the head is an mlp over mean, "
            "max or attention pooling (the segments are pooled like the pair; head_arch 'cnn', "
            "model.pooling 'mean')",
        ),
        (
            ["tasks.quora.cross_features=segments", "model.pooling=cls"],
            "head_arch 'mlp', model.pooling 'cls'",
        ),
        (
            ["tasks.more={type: quora, head: quora, cross_features: segments}"],
            "config key 'tasks.more.cross_features': expected pooled on a dataset sharing the head of quora",
        ),
        (["tasks.sst.sample_weight=2"], "config key 'schedule.kind': expected a sampling schedule"),
        (["tasks.sst.batch_size=0"], "config key 'tasks.sst.batch_size': expected an integer >= 1"),
        (
            ["model.pals.heads=5"],
            "config key 'model.pals.heads': expected a divisor of model.pals.size (204)",
        ),
        (["mtl.smart.steps=0"], "config key 'mtl.smart.steps': expected an integer >= 1"),
        (["tasks.sst.model=joint"], "config key 'tasks.sst.model': expected null unless train.exclusive"),
        (
            ["train.exclusive=true", "tasks.sst.model=../x"],
            "config key 'tasks.sst.model': expected a name of letters, digits",
        ),
        (
            ["train.exclusive=true", "tasks.sts.model=joint", "tasks.more={type: sts, head: sts, model: x}"],
            "config key 'tasks.more.model': expected null or 'joint': a dataset sharing the head of sts",
        ),
    ],
)
def test_bad_extra_dataset_pair_or_technique_settings_fail(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS[0].parent / "quickstart.yaml", override)
    assert message in str(err.value)


ENSEMBLE = ["train.exclusive=true", "tasks.quora2={type: quora, train: q.csv, dev: q.csv}"]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["tasks.quora.ensemble=[quora2]", "tasks.quora2={type: quora, train: q.csv}"],
            "config key 'tasks.quora.ensemble': expected [] unless train.exclusive=true",
        ),
        (
            [*ENSEMBLE, "tasks.quora.ensemble=[sts]"],
            "config key 'tasks.quora.ensemble': expected datasets of type 'quora' (members score quora's "
            "files with their heads; sts is of type 'sts'), got 'sts'",
        ),
        (
            [*ENSEMBLE, "tasks.quora.ensemble=[quora3]"],
            "config key 'tasks.quora.ensemble': expected other configured datasets, of ['quora2', 'sst', "
            "'sts'], got 'quora3'",
        ),
        ([*ENSEMBLE, "tasks.quora.ensemble=[quora]"], "expected other configured datasets"),
        ([*ENSEMBLE, "tasks.quora.ensemble=[quora2, quora2]"], "expected a list without repeats"),
        (
            [*ENSEMBLE, "tasks.quora.ensemble=[quora2]", "tasks.quora2.head=quora"],
            "config key 'tasks.quora.ensemble': expected datasets with a head other than quora's",
        ),
        (
            [*ENSEMBLE, "tasks.quora.ensemble=[quora2]", "tasks.quora2.ensemble=[quora]"],
            "config key 'tasks.quora2.ensemble': expected [] for a member of quora's ensemble",
        ),
    ],
)
def test_bad_ensembles_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS[0].parent / "quickstart.yaml", override)
    assert message in str(err.value)


def test_an_ensembles_models_train_without_it_and_its_members_leave_the_overall_score():
    cfg = load_config(
        CONFIGS[0].parent / "quickstart.yaml",
        [*ENSEMBLE, "tasks.quora.ensemble=[quora2]", "tasks.quora2.pair_encoding=siamese"],
    )
    assert cfg.ensemble_members == {"quora2"}
    models = dict(task_configs(cfg))
    assert list(models) == ["sst", "quora", "sts", "quora2"]
    assert not any(t.ensemble for c in models.values() for t in c.tasks.values())
    assert models["quora2"].pair_encoding("quora2") == "siamese"


def test_extra_dataset_takes_its_type_format_and_can_share_a_head():
    cfg = load_config(
        CONFIGS[0].parent / "quickstart.yaml",
        [
            "tasks.sst2={type: sst, train: more.csv, head: sst, sample_weight: 0.5}",
            "schedule.kind=proportional",
        ],
    )
    spec = cfg.task_spec("sst2")
    assert spec.name == "sst2" and spec.num_labels == 5 and spec.label_column == "sentiment"
    assert cfg.head_of("sst2") == "sst" and cfg.head_of("sst") == "sst"


def test_exclusive_training_trains_one_model_per_head_or_per_named_model():
    quickstart = CONFIGS[0].parent / "quickstart.yaml"
    per_head = task_configs(
        load_config(quickstart, ["train.exclusive=true", "tasks.sst2={type: sst, head: sst}"])
    )
    assert [(m, list(c.tasks)) for m, c in per_head] == [
        ("sst", ["sst", "sst2"]),
        ("quora", ["quora"]),
        ("sts", ["sts"]),
    ]
    grouped = [
        "train.exclusive=true",
        "tasks.sst.model=joint",
        "tasks.quora.model=joint",
        "tasks.sts2={type: sts, train: sts-train.csv, model: joint}",  # STS trained in both models
        "tasks.sst2={type: sst, train: more.csv, head: sst}",  # with its head, in the head's model
        "tasks.sts.pair_encoding=siamese",
        "run.dir=runs/x",
    ]
    models = dict(task_configs(load_config(quickstart, grouped)))
    assert {m: list(c.tasks) for m, c in models.items()} == {
        "joint": ["sst", "quora", "sts2", "sst2"],
        "sts": ["sts"],
    }
    assert models["joint"].run.dir == "runs/x/tasks/joint" and models["sts"].run.dir == "runs/x/tasks/sts"
    assert (
        models["sts"].pair_encoding("sts") == "siamese" and models["joint"].pair_encoding("sts2") == "cross"
    )
    assert not any(c.train.exclusive or any(t.model for t in c.tasks.values()) for c in models.values())


def test_exclusive_phases_run_in_the_models_they_name_with_their_tasks_only():
    joint = ["train.exclusive=true", "tasks.sst.model=joint", "tasks.quora.model=joint", "run.dir=runs/x"]
    phases = [
        "phases=[{name: heads, models: [joint], train: {freeze_encoder: true}, "
        "tasks: {sst: {batch_size: 4}}}, "
        "{name: all, optim: {lr: 1.0e-5}, tasks: {sst: {batch_size: 5}, sts: {batch_size: 6}}}]"
    ]
    models = dict(task_configs(load_config(CONFIGS[0].parent / "quickstart.yaml", joint + phases)))
    got = {m: [name for name, _ in phase_configs(c)] for m, c in models.items()}
    assert got == {"joint": ["heads", "all"], "sts": ["all"]}
    heads, all_joint = (c for _, c in phase_configs(models["joint"]))
    (all_sts,) = (c for _, c in phase_configs(models["sts"]))
    assert heads.train.freeze_encoder and not all_joint.train.freeze_encoder
    assert list(heads.tasks) == ["sst", "quora"] and heads.tasks["sst"].batch_size == 4
    assert list(all_joint.tasks) == ["sst", "quora"] and all_joint.tasks["sst"].batch_size == 5
    assert list(all_sts.tasks) == ["sts"] and all_sts.tasks["sts"].batch_size == 6
    assert all_sts.optim.lr == 1e-5 and all_sts.run.dir == "runs/x/tasks/sts/phases/1-all"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"run:\n  dir: x\n  seed: [1, 2\n", "bad.yaml: YAML syntax error at line 4, column 1: expected ','"),
        (b"run:\n  dir: x\noptim: {lr: 1e-5\n", "bad.yaml: YAML syntax error at line 4, column 1"),
        (b"run:\n  dir: caf\xe9\n", "bad.yaml, line 2: not UTF-8 text (byte 0xe9)"),
        (b"- run\n- optim\n", "bad.yaml: expected a mapping of config sections, got list"),
    ],
    ids=["unclosed-list", "unclosed-mapping", "latin-1", "not-a-mapping"],
)
def test_unreadable_config_file_names_file_line_and_column(content, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


def _choices(section: type, name: str) -> set:
    import dataclasses
    import typing

    (f,) = [f for f in dataclasses.fields(section) if f.name == name]
    hints = typing.get_type_hints(section)
    return {a for a in typing.get_args(hints[f.name]) if a is not type(None)}


def _registries():
    import typing

    from bertmt import config
    from bertmt.data.schedule import KINDS
    from bertmt.engine.optim import DECAYS
    from bertmt.model.bert import AttentionImpl
    from bertmt.model.heads import Pooling
    from bertmt.mtl import METHODS, WEIGHTINGS

    return [
        ("optim.schedule", _choices(config.OptimConfig, "schedule"), set(DECAYS)),
        ("schedule.kind", _choices(config.ScheduleConfig, "kind"), set(KINDS)),
        ("mtl.method", _choices(config.MtlConfig, "method"), set(METHODS) | set(WEIGHTINGS)),
        ("model.pooling", _choices(config.ModelConfig, "pooling"), set(typing.get_args(Pooling))),
        (
            "model.attention",
            _choices(config.ModelConfig, "attention"),
            {"auto", *typing.get_args(AttentionImpl)},
        ),
    ]


@pytest.mark.parametrize(
    "key, config_choices, registry", _registries(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_config_choice_has_an_implementation_and_back(key, config_choices, registry):
    """The config's Literal is the one list users see; the code that implements the choices has exactly
    those (an unknown optim.schedule used to fall through to linear decay)."""
    assert config_choices == registry, key


def test_an_unknown_lr_schedule_is_an_error_not_linear_decay():
    from bertmt.engine.optim import lr_factor

    with pytest.raises(ValueError, match="unknown optim.schedule 'step'"):
        lr_factor(5, 10, 0, "step")
    assert lr_factor(5, 10, 0, "constant") == 1.0 and lr_factor(5, 10, 0, "linear") == 0.5


def test_every_config_key_is_listed_with_type_default_and_doc(capsys):
    from bertmt.config import to_dict
    from bertmt.config.keys import keys

    listed = {k: (t, d, doc) for k, t, d, doc in keys()}
    assert all(doc for _, _, doc in listed.values()), [k for k, v in listed.items() if not v[2]]

    def leaves(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict) and k != "tasks":
                yield from leaves(v, f"{prefix}{k}.")
            elif k != "tasks":
                yield f"{prefix}{k}"

    assert set(leaves(to_dict(load_config(tree={"tasks": {"sst": {"train": "x", "dev": "y"}}})))) | {
        f"tasks.<name>.{f}" for f in ("train", "dev", "test", "batch_size", "weight", "type", "head")
    } <= set(listed)
    assert listed["optim.lr"] == ("float", "5e-05", "peak learning rate")
    assert main(["keys", "train.zero"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train.zero_stage  0 | 1 | 2 | 3  (default 0)\n") and "DeepSpeed ZeRO stage" in out


def _trained_configs(path: Path, overrides=()) -> dict:
    """{(model, phase or None): the config that trains it, without its run directory} of an exclusive run
    (seed 2, as the recipe's docs)."""
    out = {}
    for model, sub in task_configs(load_config(path, ["run.seed=2", *overrides])):
        for phase, cfg in phase_configs(sub) or [(None, sub)]:
            tree = dataclasses.asdict(cfg)
            tree["run"].pop("dir")
            out[model, phase] = tree
    return out


@pytest.mark.parametrize(
    "probe, model", [("probe-quora-siamese", "quora_siamese"), ("probe-sst-cnn", "sst_cnn")]
)
def test_a_member_probe_is_the_recipe_s_member_alone(probe, model):
    """configs/probe-*.yaml stand for cpu-recipe.yaml's ensemble members in docs/results.md: the same
    exclusive sub-config but for its run directory."""
    configs = CONFIGS[0].parent
    recipe = _trained_configs(configs / "cpu-recipe.yaml")
    assert _trained_configs(configs / f"{probe}.yaml")[model, None] == recipe[model, None]


def test_the_llrd_revision_is_the_recipe_with_the_decay_where_it_says():
    """configs/cpu-recipe-llrd.yaml is cpu-recipe.yaml but for layer-wise decay at lr 1.5e-4 in the joint
    model's joint phase and the quora_siamese member; its member trains as its probe does with those two
    overrides (docs/results.md compares them)."""
    configs = CONFIGS[0].parent
    decay = {"lr": 1.5e-4, "layer_decay": 0.85}
    recipe = _trained_configs(configs / "cpu-recipe.yaml")
    llrd = _trained_configs(configs / "cpu-recipe-llrd.yaml")
    changed = {("joint", "joint"), ("quora_siamese", "llrd")}
    assert set(llrd) == set(recipe) - {("quora_siamese", None)} | {("quora_siamese", "llrd")}
    for key in set(llrd) - changed:
        assert llrd[key] == recipe[key], key
    expected = recipe["joint", "joint"]
    expected["optim"] |= decay
    assert llrd["joint", "joint"] == expected
    overrides = [f"optim.{k}={v}" for k, v in decay.items()]
    probe = _trained_configs(configs / "probe-quora-siamese.yaml", overrides)
    assert llrd["quora_siamese", "llrd"] == probe["quora_siamese", None]
