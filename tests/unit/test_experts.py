"""Combined experts (MMoE over the top encoder layers) against the plain encoder."""

from __future__ import annotations

import copy

import pytest
import torch

from bertmt.model.multitask import ExpertSpec, PalSpec
from tests.unit.model_fixtures import batch, tiny_model


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_fresh_experts_compute_what_the_plain_encoder_computes():
    plain = tiny_model(layers=3)
    mixed = tiny_model(layers=3, experts=ExpertSpec(count=3, layers=2))
    mixed.load_state_dict(plain.state_dict(), strict=False)  # the copies were made from the same weights
    ids, mask, types = batch()
    for task in ("sst", "quora"):
        torch.testing.assert_close(mixed(task, ids, mask, types), plain(task, ids, mask, types))
    assert len(mixed.experts.copies) == 2 and len(mixed.experts.copies[0]) == 2


@pytest.mark.parametrize("chosen", [0, 1, 2])
def test_a_gate_forced_to_one_expert_equals_that_expert(chosen):
    model = tiny_model(layers=3, experts=ExpertSpec(count=3, layers=2), pals=PalSpec(8, 2, True))
    for e, copy_layers in enumerate(model.experts.copies):
        _perturb(copy_layers, seed=e)  # experts that differ
    _perturb(model.pals, seed=9)  # PALs reach every expert's layers too
    with torch.no_grad():
        model.experts.gates["sst"].bias.copy_(torch.full((3,), -1e4).index_fill(0, torch.tensor(chosen), 1e4))
        model.experts.gates["sst"].weight.normal_()
    # the reference: the plain encoder with expert `chosen`'s layers as its top layers
    reference = copy.deepcopy(model)
    layers = model.experts.expert_layers(model.encoder)[chosen]
    for i, layer in enumerate(layers, 1):
        reference.encoder.encoder.layer[i] = copy.deepcopy(layer)
    reference.experts = None
    ids, mask, types = batch()
    torch.testing.assert_close(model("sst", ids, mask, types), reference("sst", ids, mask, types))


def test_every_expert_and_only_its_tasks_gate_get_gradients():
    model = tiny_model(layers=3, experts=ExpertSpec(count=2, layers=1))
    with torch.no_grad():
        model.experts.gates["sst"].weight.normal_()
    ids, mask, types = batch()
    model("sst", ids, mask, types).sum().backward()
    assert all(p.grad is not None for p in model.experts.copies.parameters())
    assert model.encoder.encoder.layer[2].output.dense.weight.grad.abs().sum() > 0  # expert 0
    assert model.experts.gates["sst"].weight.grad.abs().sum() > 0
    assert model.experts.gates["quora"].weight.grad is None
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in model.experts.copies.parameters())
    assert not any(id(p) in shared for p in model.experts.gates.parameters())
    assert {id(p) for p in model.experts.gates["sst"].parameters()} <= {
        id(p) for p in model.task_parameters("sst")
    }
