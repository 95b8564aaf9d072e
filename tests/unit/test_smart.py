"""SMART: the adversarial term is zero for a constant model and positive otherwise, the divergences are the
textbook ones, the ascent stays inside the epsilon ball and raises the divergence, the teacher is an EMA."""

from __future__ import annotations

import pytest
import torch

from bertmt.config import SmartConfig
from bertmt.data.tasks import TASKS
from bertmt.mtl.smart import EmbeddingNoise, Smart, divergence
from tests.unit.model_fixtures import batch, tiny_model

SST, STS = TASKS["sst"], TASKS["sts"]


def test_symmetric_kl_and_mse_match_direct_formulas():
    torch.manual_seed(0)
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    p, q = a.softmax(-1), b.softmax(-1)
    direct = ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    torch.testing.assert_close(divergence(SST, a, b), direct)
    torch.testing.assert_close(divergence(SST, a, b), divergence(SST, b, a))
    assert divergence(SST, a, a) == 0
    torch.testing.assert_close(divergence(STS, a[:, :1], b[:, :1]), ((a[:, 0] - b[:, 0]) ** 2).mean())


def _adversarial(model, task, cfg: SmartConfig):
    ids, mask, types = batch()
    torch.manual_seed(0)
    smart = Smart(model, cfg)
    clean = model(task, ids, mask, types)
    return smart.adversarial(TASKS[task], lambda: model(task, ids, mask, types), clean)


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_adversarial_term_is_zero_for_a_constant_model_and_positive_otherwise(task):
    cfg = SmartConfig(weight=1.0, noise=1e-2, step_size=1e-1, epsilon=1e-1)
    model = tiny_model()
    assert _adversarial(model, task, cfg) > 0
    with torch.no_grad():  # a head whose output ignores its input: constant model
        model.heads[task].mlp[-1].weight.zero_()
    assert _adversarial(model, task, cfg) == 0


def test_ascent_stays_in_the_epsilon_ball_and_increases_the_divergence():
    model = tiny_model()
    ids, mask, types = batch()
    clean = model("sst", ids, mask, types).detach()
    forward = lambda: model("sst", ids, mask, types)  # noqa: E731
    torch.manual_seed(0)
    noise = EmbeddingNoise(model.encoder.embeddings, 1e-3)
    before = divergence(SST, noise(forward), clean)
    for _ in range(3):
        loss = divergence(SST, noise(forward), clean)
        noise.ascend(list(torch.autograd.grad(loss, noise.deltas)), step_size=0.05, epsilon=0.05)
        assert noise.deltas[0].abs().max() <= 0.05 + 1e-7
    after = divergence(SST, noise(forward), clean)
    assert after > 10 * before
    assert len(noise.deltas) == 1  # one embedding call per forward: one perturbation, reused across steps


def test_adversarial_gradient_reaches_the_encoder():
    model = tiny_model().train()
    ids, mask, types = batch()
    smart = Smart(model, SmartConfig(weight=1.0, noise=1e-2, step_size=1e-1, epsilon=1e-1))
    clean = model("quora", ids, mask, types)
    loss, parts = smart.loss(TASKS["quora"], lambda: model("quora", ids, mask, types), {}, "quora", clean)
    loss.backward()
    assert parts["smart_adv"] > 0
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in model.heads["sst"].parameters())


def test_bregman_teacher_is_a_momentum_average():
    model = tiny_model()
    smart = Smart(model, SmartConfig(bregman_weight=1.0, teacher_beta=0.9))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    smart.update_teacher()
    for name, t in smart.teacher.named_parameters():
        torch.testing.assert_close(t, 0.9 * start[name] + 0.1 * (start[name] + 1.0))
    ids, mask, types = batch()
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    clean = model("sts", **inputs)
    assert smart.proximal(TASKS["sts"], inputs, "sts", clean) > 0  # the model moved away from its teacher


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bregman_teacher_follows_a_low_precision_model(dtype):
    """The EMA runs in fp32, so the teacher of a bf16/fp16 model follows its drift (in the module dtype the
    (1 - beta) increments round away: bf16 followed 36% of it), and it survives a checkpoint round trip."""
    model = tiny_model().to(dtype)
    spacing = float(torch.finfo(dtype).eps)  # between representable numbers in [1, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    smart = Smart(model, SmartConfig(bregman_weight=1.0, teacher_beta=0.99))
    steps, beta = 50, 0.99
    for _ in range(steps):  # the model moves by one representable step per optimiser step
        with torch.no_grad():
            for p in model.parameters():
                p.add_(spacing)
        smart.update_teacher()
    assert float(next(model.parameters()).detach().flatten()[0]) == 1 + steps * spacing
    # the EMA of x_k = 1 + k * spacing: x_n - spacing * beta / (1 - beta) * (1 - beta**n)
    want = 1 + spacing * (steps - beta / (1 - beta) * (1 - beta**steps))
    for t in smart.teacher.parameters():  # the fp32 average, rounded once to the module dtype
        assert float((t.double() - want).abs().max()) <= spacing / 2
    restored = Smart(tiny_model().to(dtype), SmartConfig(bregman_weight=1.0, teacher_beta=0.99))
    restored.load_state_dict(smart.state_dict())
    for a, b in zip(restored.teacher.parameters(), smart.teacher.parameters()):
        assert torch.equal(a, b)
