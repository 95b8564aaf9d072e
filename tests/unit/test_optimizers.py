"""optim.name (AdamW, Lion, AdaFactor) and the plateau schedule against direct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertmt.config import OptimConfig, load_config
from bertmt.config.errors import ConfigError
from bertmt.engine.optim import Plateau, build_optimizer, refresh_lr
from tests.e2e.helpers import QUICKSTART


@pytest.mark.parametrize("seed", range(5))
def test_plateau_replays_torch_reduce_lr_on_plateau(seed):
    rng = np.random.default_rng(seed)
    scores = list(np.round(rng.random(12), 1))  # rounded: ties (no improvement) are common
    for patience in (0, 1, 2):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, "max", factor=0.5, patience=patience, threshold=0
        )
        plateau = Plateau(0.5, patience)
        for n, score in enumerate(scores, 1):
            ref.step(score)
            assert plateau.replay(scores[:n]) == opt.param_groups[0]["lr"], (patience, scores[:n])


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 1)

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def forward(self, x):
        return self.head(self.encoder(x)).sum()


def test_the_plateau_multiplier_reaches_the_very_next_step():
    model = _Toy()
    cfg = OptimConfig(lr=0.1, schedule="plateau", warmup_ratio=0.0, plateau_factor=0.25)
    opt, sched, plateau = build_optimizer(model, cfg, total_steps=10)
    opt.step(), sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1] * len(opt.param_groups)
    plateau.replay([0.5, 0.4])  # the second epoch was worse: reduce
    refresh_lr(sched)
    assert [g["lr"] for g in opt.param_groups] == [0.025] * len(opt.param_groups)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.025] * len(opt.param_groups)


@pytest.mark.parametrize("name", ["lion", "adafactor"])
def test_drop_in_optimisers_step_like_the_library_on_the_same_groups(name):
    import pytorch_optimizer

    torch.manual_seed(0)
    model, twin = _Toy(), _Toy()
    twin.load_state_dict(model.state_dict())
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=0.1, warmup_ratio=0.0, schedule="constant")
    opt, sched, _ = build_optimizer(model, cfg, total_steps=5)
    assert type(opt).__name__ == {"lion": "Lion", "adafactor": "AdaFactor"}[name]
    # the reference: the library class by hand, weight decay on the matrices only
    decay = [p for p in twin.parameters() if p.ndim >= 2]
    rest = [p for p in twin.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    if name == "lion":
        ref = pytorch_optimizer.Lion(groups, lr=1e-2, betas=(0.9, 0.999))
    else:
        ref = pytorch_optimizer.AdaFactor(
            groups, lr=1e-2, relative_step=False, scale_parameter=False, momentum_dtype=torch.float32
        )
    x = torch.randn(8, 4)
    for _ in range(3):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).backward()
            o.step()
        sched.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    assert not torch.equal(model.encoder.weight, _Toy().encoder.weight)


def test_adafactor_is_refused_with_zero_partitions():
    with pytest.raises(ConfigError, match="train.zero_stage.*adafactor"):
        load_config(QUICKSTART, ["optim.name=adafactor", "train.zero_stage=2"])
    load_config(QUICKSTART, ["optim.name=lion", "train.zero_stage=2"])


def test_layer_decay_gives_each_pretrained_layer_its_rate_and_the_new_parameters_the_full_one():
    """optim.layer_decay on the real MiniLM (6 layers) with PALs and 2 experts over the top 2 layers: every
    parameter's group lr against the rule written out by hand. An expert's copy of a layer is found by value
    (it starts equal to the layer it copies), not by name, and must learn at that layer's rate."""
    from bertmt.engine.build import build_model

    overrides = ["model.experts={count: 2, layers: 2}", "model.pals.enabled=true", "optim.layer_decay=0.8"]
    cfg = load_config(QUICKSTART, overrides)
    model = build_model(cfg)
    opt, sched, _ = build_optimizer(model, cfg.optim, total_steps=100)
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before the schedule
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every trainable parameter in exactly one group
    lr = cfg.optim.lr
    want = {}
    for name in named:
        if name.startswith("encoder.embeddings."):
            want[name] = lr * 0.8**7
        elif name.startswith("encoder.encoder.layer."):
            want[name] = lr * 0.8 ** (6 - int(name.split(".")[3]))
    pretrained_layers = {n: p for n, p in named.items() if n.startswith("encoder.encoder.layer.")}
    copies = [n for n in named if n.startswith("experts.copies.")]
    assert len(copies) == len([n for n in pretrained_layers if int(n.split(".")[3]) >= 4])
    for name in copies:
        suffix = name.split(".", 4)[4]
        source = [
            n for n, p in pretrained_layers.items() if n.endswith(suffix) and torch.equal(p, named[name])
        ]
        assert len(source) == 1, name
        want[name] = want[source[0]]
    assert any(n.startswith("pals.") for n in named) and any(n.startswith("heads.") for n in named)
    for name, p in named.items():
        assert lr_of[id(p)] == pytest.approx(want.get(name, lr), rel=1e-12), name
    # the schedule scales every group alike: after warm-up the ratios stay
    for _ in range(50):
        opt.step(), sched.step()
    ratio = {round(g["lr"] / base, 12) for g, base in zip(opt.param_groups, sched.base_lrs)}
    assert len(ratio) == 1 and 0 < ratio.pop() < 1


def test_without_layer_decay_the_groups_are_the_four_of_plain_training():
    from bertmt.engine.build import build_model

    cfg = load_config(QUICKSTART)
    opt, _, _ = build_optimizer(build_model(cfg), cfg.optim, total_steps=10)
    assert [(g["shared"], g["weight_decay"] > 0) for g in opt.param_groups] == [
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    ]
    assert {g["initial_lr"] for g in opt.param_groups} == {cfg.optim.lr}


def test_layer_decay_outside_its_range_names_the_key():
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match=r"optim.layer_decay.*\(0, 1\]"):
            load_config(QUICKSTART, [f"optim.layer_decay={bad}"])
