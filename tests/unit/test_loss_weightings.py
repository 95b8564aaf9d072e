"""Loss weightings (uw, dwa, famo) against direct implementations of the papers' updates with torch's own
Adam, over sequences of losses with absent tasks; their state round-trips exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertmt.mtl import WEIGHTINGS, make_weighting

TASKS = ["sst", "para", "sts"]


def loss_sequence(steps: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decreasing noisy losses per task; every fourth step one task is absent."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(steps):
        losses = np.array([1.6, 0.6, 2.5]) * np.exp(-0.05 * k * np.array([1.0, 2.0, 0.5]))
        losses *= rng.uniform(0.9, 1.1, 3)
        present = np.ones(3, dtype=bool)
        if k % 4 == 3:
            present[k % 3] = False
            losses[k % 3] = 0.0
        out.append((losses, present))
    return out


def test_uw_is_adam_on_the_joint_objective_in_the_log_variances():
    """Reference: s as a torch parameter, loss sum_k exp(-s_k) L_k + s_k over the present tasks,
    torch.optim.Adam (absent tasks: no gradient and no step for their s_k, as bertmt's masked Adam)."""
    uw = make_weighting("uw", TASKS, lr=0.05)
    s = [torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in TASKS]
    opts = [torch.optim.Adam([p], lr=0.05) for p in s]
    for losses, present in loss_sequence(30):
        np.testing.assert_allclose(uw.weights(), [float(torch.exp(-p)) for p in s], rtol=1e-12)
        uw.update(losses, present)
        for k, p in enumerate(s):
            if present[k]:
                opts[k].zero_grad()
                (torch.exp(-p) * float(losses[k]) + p).backward()
                opts[k].step()
    np.testing.assert_allclose(uw.log_var, [float(p) for p in s], rtol=1e-12)
    assert (np.abs(uw.log_var) > 0.1).all()  # they moved


def test_uw_log_variances_reach_the_log_of_a_constant_loss():
    uw = make_weighting("uw", TASKS, lr=0.05)
    for _ in range(2000):
        uw.update(np.array([0.5, 2.0, 4.0]), np.ones(3, dtype=bool))
    np.testing.assert_allclose(uw.log_var, np.log([0.5, 2.0, 4.0]), atol=1e-3)


class PaperFAMO:
    """The authors' FAMO (Liu et al. 2023, github.com/Cranial-XIX/FAMO): logits w, Adam with weight decay,
    update along the softmax's vector-Jacobian product with the change in log losses."""

    def __init__(self, n: int, lr: float, weight_decay: float) -> None:
        self.w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
        self.opt = torch.optim.Adam([self.w], lr=lr, weight_decay=weight_decay)
        self.min_losses = torch.zeros(n, dtype=torch.float64)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """The gradient weights of ``sum_k z_k log(L_k - min_k) / c``: z_k / (c D_k)."""
        z = F.softmax(self.w, -1).detach()
        d = losses - self.min_losses + 1e-8
        c = (z / d).sum()
        return z / d / c

    def update(self, prev: torch.Tensor, curr: torch.Tensor) -> None:
        delta = (prev - self.min_losses + 1e-8).log() - (curr - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.opt.zero_grad()
        self.w.grad = d
        self.opt.step()


def test_famo_follows_the_authors_update_on_consecutive_step_losses():
    """bertmt's FAMO at step t uses the previous step's losses for the weights and the change from the
    previous step's losses for the logits (no extra forward); fed the same, the authors' code agrees."""
    famo = make_weighting("famo", TASKS, lr=0.025, weight_decay=0.001)
    ref = PaperFAMO(3, 0.025, 0.001)
    sequence = [(losses, present) for losses, present in loss_sequence(40) if present.all()]
    np.testing.assert_allclose(famo.weights(), np.ones(3))  # nothing known yet: plain training
    previous = None
    for losses, present in sequence:
        if previous is not None:
            want = ref.weights(torch.from_numpy(previous)).numpy() * 3  # bertmt: sum scale
            np.testing.assert_allclose(famo.weights(), want, rtol=1e-12)
            ref.update(torch.from_numpy(previous), torch.from_numpy(losses))
        famo.update(losses, present)
        previous = losses
    np.testing.assert_allclose(famo.logits, ref.w.detach().numpy(), rtol=1e-10, atol=1e-14)
    assert np.ptp(famo.logits) > 0.01  # the logits moved apart


def test_dwa_is_the_softmax_of_the_window_loss_ratios():
    dwa = make_weighting("dwa", TASKS, temperature=2.0, window=3)
    sequence = loss_sequence(12)
    windows = []
    for k, (losses, present) in enumerate(sequence):
        if k < 6:
            np.testing.assert_array_equal(dwa.weights(), np.ones(3))  # two windows needed first
        dwa.update(losses, present)
        if k % 3 == 2:
            chunk = sequence[k - 2 : k + 1]
            sums = sum(np.where(p, x, 0.0) for x, p in chunk)
            counts = sum(p.astype(float) for _, p in chunk)
            windows.append(sums / counts)
    ratio = windows[-1] / windows[-2]
    want = 3 * np.exp(ratio / 2.0) / np.exp(ratio / 2.0).sum()
    np.testing.assert_allclose(dwa.weights(), want, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_state_round_trips_exactly_through_plain_python(name):
    import pickle

    a, b = make_weighting(name, TASKS), make_weighting(name, TASKS)
    sequence = loss_sequence(14)
    for losses, present in sequence[:9]:
        a.update(losses, present)
    state = a.state_dict()
    assert pickle.loads(pickle.dumps(state)) == state  # lists and numbers: torch.load(weights_only) safe
    b.load_state_dict(state)
    for losses, present in sequence[9:]:
        a.update(losses, present)
        b.update(losses, present)
        np.testing.assert_array_equal(a.weights(), b.weights())
    assert not np.array_equal(a.weights(), np.ones(3)) or name == "dwa"


def test_every_weighting_has_its_config_section_with_the_same_options():
    import dataclasses
    import inspect

    from bertmt.config import MtlConfig
    from bertmt.config.mtl import LOSS_WEIGHTINGS

    assert set(LOSS_WEIGHTINGS) == set(WEIGHTINGS)
    cfg = MtlConfig()
    for name, cls in WEIGHTINGS.items():
        params = inspect.signature(cls.__init__).parameters
        options = {k: p.default for k, p in params.items() if k not in ("self", "tasks")}
        section = dataclasses.asdict(getattr(cfg, name))
        if name == "dwa":  # mtl.dwa.window 0 is an epoch, resolved by weighting_from_config
            section["window"] = options["window"]
        assert section == options, name
