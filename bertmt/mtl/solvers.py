"""The small T x T problems of the Gram-matrix methods, solved exactly in float64 on numpy arrays.

Every quadratic programme here is reduced to a non-negative least-squares problem and handed to
``scipy.optimize.nnls`` (Lawson & Hanson's active-set algorithm: finite, exact up to rounding, no
tolerances to tune). A factor ``A`` with ``A^T A = G`` comes from the eigendecomposition, so a singular
(positive semi-definite) Gram matrix needs no regularisation. Each solver also returns the residual of the
problem's optimality conditions, logged as ``mtl/solver_residual``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, nnls


def factor(gram: np.ndarray) -> np.ndarray:
    """A (T, T) with ``A^T A = gram`` (rows scaled eigenvectors; negative rounding eigenvalues dropped)."""
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    return np.sqrt(np.clip(values, 0, None))[:, None] * vectors.T


def trace_normalised(gram: np.ndarray) -> np.ndarray:
    """``gram / trace``: the Gram matrix of the rows scaled to unit Frobenius norm (a zero matrix stays)."""
    trace = float(np.trace(gram))
    return gram / trace if trace > 0 else gram


def min_norm(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """The min-norm point of the convex hull of the rows: ``argmin w^T G w`` over the simplex, and its KKT
    residual. Lawson & Hanson's reduction: ``x = argmin_{x >= 0} ||J^T x||^2 + (1^T x - 1)^2`` is
    ``w* / (1 + q*)`` (q* the optimal value), so ``w* = x / 1^T x``."""
    t = gram.shape[0]
    g = trace_normalised(gram)
    a = np.vstack([factor(g), np.ones((1, t))])
    b = np.zeros(t + 1)
    b[-1] = 1.0
    x, _ = nnls(a, b, maxiter=50 * t)
    w = x / x.sum()
    return w, simplex_kkt_residual(g, w)


def simplex_kkt_residual(gram: np.ndarray, w: np.ndarray) -> float:
    """Optimality of ``w`` for ``min w^T G w`` on the simplex: ``(G w)_i >= w^T G w`` for every i, with
    equality where ``w_i > 0``; the complementarity residual ``max_i |min(w_i, (G w)_i - w^T G w)|``."""
    gw = gram @ w
    return float(np.max(np.abs(np.minimum(w, gw - w @ gw))))


def project_dual_cone(u: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights v of the projection of ``J^T u`` onto the dual cone of the rows of J (Quinton & Rey 2024,
    Prop. 1): ``argmin v^T G v`` subject to ``v >= u``. With ``v = u + x``: ``min_{x >= 0} ||A x + A u||``,
    ``A^T A = G``. Returns v and the KKT residual ``max |min(v - u, G v)|``."""
    a = factor(gram)
    x, _ = nnls(a, -a @ u, maxiter=50 * len(u))
    v = u + x
    return v, float(np.max(np.abs(np.minimum(v - u, gram @ v))))


def fair_weights(gram: np.ndarray, alpha: float, start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The w > 0 with ``(G w)_i = w_i^(-1/alpha)`` for every row i (alpha-fair allocation; alpha = 1 is the
    Nash bargaining solution ``w_i (G w)_i = 1``), and the relative residual
    ``max_i |w_i^(1/alpha) (G w)_i - 1|``. It is the minimiser of the strictly convex
    ``f(w) = w^T G w / 2 - sum_i h(w_i)`` with ``h'(w) = w^(-1/alpha)``, found by damped Newton steps that
    keep w > 0 (a handful of iterations; ``start`` warm-starts them).

    Rows with zero gradient have no solution (their ``(G w)_i`` is 0) and get weight 0, as they add nothing.
    ``f`` is unbounded (no solution) exactly when 0 is in the convex hull of the other rows (a
    Pareto-stationary point: no direction improves every task); the weights are then 0, the residual inf.
    Measured on 1500 random Gram matrices with an opposed pair of tasks and gradient norms spread over up to
    1e6: alpha = 1 and 2 solved to a backward error of 2e-13; at alpha = 0.5 and 5, 10 and 17 of them were
    not solved (a weight driven to ~0 by the damped phase; the residual, logged, says so; a review found
    one such case at alpha = 2). Nash-MTL (alpha = 1) never failed."""
    w = np.zeros(gram.shape[0])
    live = np.flatnonzero(np.diag(gram) > 0)
    if len(live) == 0:
        return w, 0.0
    # in u = d * w with d the gradient norms: (C u)_i = c_i u_i^(-1/alpha) on the correlation matrix C,
    # c = d^(1/alpha - 1) (all 1 for Nash): unit diagonal whatever the sizes of the task gradients
    d = np.sqrt(np.diag(gram)[live])
    corr = gram[np.ix_(live, live)] / np.outer(d, d)
    hull, _ = min_norm(corr)
    if hull @ corr @ hull <= 1e-12:
        return w, float("inf")
    c = d ** (1 / alpha - 1)
    u = c ** (alpha / (1 + alpha))  # the solution when the tasks are orthogonal
    if start is not None and (start[live] > 0).all():
        u = start[live] * d

    def objective(v: np.ndarray) -> float:
        h = np.log(v) if alpha == 1 else v ** (1 - 1 / alpha) / (1 - 1 / alpha)
        return 0.5 * v @ corr @ v - c @ h

    def residual(v: np.ndarray) -> float:  # max_i |w_i^(1/alpha) (G w)_i - 1|, relative per task
        return float(np.max(np.abs(v ** (1 / alpha) * (corr @ v) / c - 1)))

    best, stalled = (residual(u), u), 0
    for _ in range(100):
        if best[0] <= 1e-13 or stalled >= 5:  # converged, or at the rounding floor
            break
        grad = corr @ u - c * u ** (-1 / alpha)
        step = -np.linalg.solve(corr + np.diag(c * u ** (-1 / alpha - 1) / alpha), grad)
        decrement = float(-grad @ step)  # Newton decrement^2
        ratio = np.where(step < 0, -u / np.where(step < 0, step, -1.0), np.inf).min()
        size = min(1.0, 0.99 * ratio)
        if decrement > 0.1:  # damped phase: backtrack (Armijo); near the solution, full steps (quadratic)
            f0 = objective(u)
            while objective(u + size * step) > f0 - 0.25 * size * decrement and size > 1e-12:
                size /= 2
        u = u + size * step
        stalled = stalled + 1 if decrement <= 0.1 and residual(u) >= best[0] else 0
        best = min(best, (residual(u), u), key=lambda pair: pair[0])
    u = best[1]  # the iterate closest to the conditions (rounding can make the last ones wander)
    w[live] = u / d
    return w, best[0]


def cagrad_direction(gram: np.ndarray, c: float) -> tuple[np.ndarray, float, float]:
    """CAGrad's inner problem (Liu et al. 2021, eq. 5 in its dual form): ``w = argmin_{w in simplex}
    g_0^T g_w + c ||g_0|| ||g_w||`` with ``g_0`` the mean gradient and ``g_w = sum_i w_i g_i``. Returns w,
    ``||g_w||`` and the residual of the fixed point below.

    Exact through ``sqrt(q) = min_mu (q / mu + mu) / 2``: for a fixed mu the problem is the min-norm point of
    the rows shifted by ``(mu / (c ||g_0||)) g_0`` (a simplex QP, ``min_norm``), and the optimal mu is the
    root of ``mu = ||g_w(mu)||`` (the derivative in mu vanishes there; the objective is convex in mu, so the
    root is unique), found by Brent's method to machine precision."""
    t = gram.shape[0]
    a = gram.sum(1) / t  # (J g_0)_i = g_i . g_0
    g0_sq = float(gram.sum()) / t**2
    s = c * np.sqrt(max(g0_sq, 0.0))

    def inner(mu: float) -> tuple[np.ndarray, float]:
        k = mu / s
        shifted = gram + k * (a[:, None] + a[None, :]) + k * k * g0_sq
        w, _ = min_norm(shifted)
        return w, float(np.sqrt(max(w @ gram @ w, 0.0)))

    hi = float(np.sqrt(np.max(np.diag(gram))))
    lo = hi * 1e-12
    w, norm = inner(lo)
    if norm <= lo:  # the optimum has g_w = 0
        return w, norm, 0.0
    mu = brentq(lambda m: m - inner(m)[1], lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=200)
    w, norm = inner(mu)
    return w, norm, abs(mu - norm) / hi
