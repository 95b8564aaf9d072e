"""SophiaH (optim.name=sophia): the Hutchinson estimate against the exact Hessian of a small model
(torch.func.hessian), its expectation against the Hessian diagonal, the update against a direct
implementation of the algorithm (Liu et al. 2023, Algorithm 3), and what it is refused with."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, hessian

from bertmt.config import OptimConfig, load_config
from bertmt.config.errors import ConfigError
from bertmt.engine.hessian import HutchinsonDiagonal, SophiaH
from bertmt.engine.optim import build_optimizer
from tests.e2e.helpers import QUICKSTART


class _Toy(torch.nn.Module):
    """Small enough for an exact Hessian, nonlinear enough for it to be dense (tanh, cross-entropy)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def forward(self, x):
        return self.head(torch.tanh(self.encoder(x)))


def _loss(model, x, y, params=None):
    logits = model(x) if params is None else functional_call(model, params, (x,))
    return torch.nn.functional.cross_entropy(logits.double(), y)


def _exact_hessian(model, batches) -> torch.Tensor:
    """The Hessian of the mean of the batches' losses over all parameters, flattened in the optimiser's
    order (one matrix; the model has 23 parameters)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return sum(_loss(model, x, y, params) for x, y in batches) / len(batches)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    return hessian(f)(flat)


def _sophia(model, period=1, **cfg):
    cfg = OptimConfig(name="sophia", sophia_period=period, warmup_ratio=0.0, schedule="constant", **cfg)
    opt, _, _ = build_optimizer(model, cfg, total_steps=10)
    assert isinstance(opt, SophiaH)
    return opt


def _flat_order(opt, model):
    """Positions of the optimiser's parameters (groups: decay first) in model.parameters() order."""
    ids = [id(p) for p in model.parameters()]
    return [ids.index(id(p)) for g in opt.param_groups for p in g["params"]]


def test_the_estimate_is_u_times_the_exact_hessian_vector_product_of_the_step():
    torch.manual_seed(0)
    model = _Toy().double()
    batches = [(torch.randn(5, 4).double(), torch.randint(0, 2, (5,))) for _ in range(2)]
    opt = _sophia(model)
    est = HutchinsonDiagonal(opt, seed=7, world=1, accum=len(batches))
    est.begin(step=0)
    for x, y in batches:  # micro-batch losses, as the trainer hands them (divided by accum later)
        est.add(lambda x=x, y=y: _loss(model, x, y))
    u = [t.clone() for t in est.u]
    est.finish()
    order = _flat_order(opt, model)
    flat_u = torch.cat([u[order.index(i)].reshape(-1) for i in range(len(order))])
    want = flat_u * (_exact_hessian(model, batches) @ flat_u)
    got = torch.cat([opt.estimate[order.index(i)].reshape(-1) for i in range(len(order))])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got.abs().min() > 0  # dense: every parameter has a nonzero product


def test_the_estimate_is_unbiased_for_the_hessian_diagonal():
    torch.manual_seed(1)
    model = _Toy().double()
    batch = (torch.randn(6, 4).double(), torch.randint(0, 2, (6,)))
    opt = _sophia(model)
    est = HutchinsonDiagonal(opt, seed=3, world=1, accum=1)
    order = _flat_order(opt, model)
    draws = []
    for step in range(1500):  # a fresh u every step (period 1), from the seed and the step
        est.begin(step)
        est.add(lambda: _loss(model, *batch))
        est.finish()
        draws.append(torch.cat([opt.estimate[order.index(i)].reshape(-1) for i in range(len(order))]))
    draws = torch.stack(draws)
    exact = _exact_hessian(model, [batch])
    mean, sem = draws.mean(0), draws.std(0) / len(draws) ** 0.5
    assert ((mean - exact.diagonal()).abs() <= 5 * sem + 1e-12).all(), (mean, exact.diagonal(), sem)
    assert (sem < exact.diagonal().abs().max()).all()  # the check above is not vacuous


def test_only_every_period_th_step_estimates_and_the_draw_depends_on_seed_and_step():
    model = _Toy()
    opt = _sophia(model, period=3)
    est = HutchinsonDiagonal(opt, seed=5, world=1, accum=1)
    draws = {}
    for step in range(7):
        est.begin(step)
        if est.u is not None:
            draws[step] = torch.cat([u.reshape(-1) for u in est.u])
    assert sorted(draws) == [0, 3, 6]
    est.begin(3)
    assert torch.equal(torch.cat([u.reshape(-1) for u in est.u]), draws[3])  # again after a resume
    assert not torch.equal(draws[0], draws[3])
    other = HutchinsonDiagonal(opt, seed=6, world=1, accum=1)
    other.begin(3)
    assert not torch.equal(torch.cat([u.reshape(-1) for u in other.u]), draws[3])


def test_sophia_steps_as_the_algorithm_with_the_given_estimates():
    """Liu et al. (2023), Algorithm 3 in pytorch-optimizer's parametrisation: decoupled weight decay
    theta *= 1 - lr wd; m = b1 m + (1 - b1) g; every k steps h = b2 h + (1 - b2) h_hat;
    theta -= lr clip(m / max(h, eps), -p, p)."""
    torch.manual_seed(2)
    model = _Toy()
    lr, wd, (b1, b2), p, k, eps = 0.05, 0.1, (0.9, 0.99), 0.3, 2, 1e-12
    opt = _sophia(model, period=k, lr=lr, weight_decay=wd, betas=[b1, b2], sophia_clip=p)
    params = [q for g in opt.param_groups for q in g["params"]]
    decays = [g["weight_decay"] for g in opt.param_groups for _ in g["params"]]
    theta = [q.detach().clone() for q in params]
    m = [torch.zeros_like(q) for q in params]
    h = [torch.zeros_like(q) for q in params]
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for step in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads = [q.grad.clone() for q in params]
        if step % k == 0:  # some estimates negative: clamped to eps, the clip bounds the step
            h_hat = [torch.randn_like(q) for q in params]
            opt.estimate = h_hat
            h = [b2 * a + (1 - b2) * e for a, e in zip(h, h_hat)]
        opt.step()
        for i, g in enumerate(grads):
            theta[i] = theta[i] * (1 - lr * decays[i])
            m[i] = b1 * m[i] + (1 - b1) * g
            theta[i] = theta[i] - lr * (m[i] / h[i].clamp(min=eps)).clamp(-p, p)
        for q, t in zip(params, theta):
            torch.testing.assert_close(q.detach(), t, rtol=1e-6, atol=1e-7)
    clipped = sum(int(((mm / hh.clamp(min=eps)).abs() > p).sum()) for mm, hh in zip(m, h))
    assert 0 < clipped < sum(q.numel() for q in params)  # both regimes of the clip occurred


def test_a_step_that_needs_an_estimate_and_has_none_is_an_error():
    model = _Toy()
    opt = _sophia(model, period=2)
    model(torch.randn(2, 4)).sum().backward()
    with pytest.raises(RuntimeError, match="SophiaH step 1 .* given none"):
        opt.step()
    opt.estimate = [torch.ones_like(q) for g in opt.param_groups for q in g["params"]]
    opt.step()
    opt.step()  # step 2 keeps the estimate of step 1
    with pytest.raises(RuntimeError, match="SophiaH step 3"):
        opt.step()


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.zero_stage=1", "train.zero_stage"),
        ("train.precision=bf16", "train.precision"),
        ("mtl.smart.enabled=true", "mtl.smart.enabled"),
        ("optim.sophia_period=0", "optim.sophia_period"),
    ],
)
def test_sophia_is_refused_where_its_estimate_cannot_be_made(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(QUICKSTART, ["optim.name=sophia", override])
    load_config(QUICKSTART, ["optim.name=sophia", "mtl.method=pcgrad", "train.grad_accum=3"])
