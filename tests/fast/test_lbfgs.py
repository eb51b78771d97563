"""The optimizers behind DADVI (``pyrovi.fast.lbfgs``)."""

import math

import torch

from pyrovi.fast.lbfgs import lbfgs

F64 = torch.float64


def _rounded_quadratic(theta):
    # 0.5 |theta - 1|^2 under a constant that float32 resolves only to ~1e-3: near the
    # optimum the objective's rounding hides every decrease, while the gradient does not
    scales = torch.linspace(0.5, 2.0, theta.shape[0], dtype=F64)
    value = 1e4 + 0.5 * (scales * (theta - 1.0) ** 2).sum()
    return value.float()


def test_lbfgs_converges_at_the_objectives_precision_only_within_gain_tol():
    theta0 = torch.zeros(6, dtype=F64)
    stalled = lbfgs(_rounded_quadratic, theta0, tol=1e-8, max_iters=200, history=10, ftol=0)
    assert not stalled.converged
    assert "line search stalled" in stalled.message
    # the true gain left (the float64 quadratic) is what the gain tolerance bounds
    scales = torch.linspace(0.5, 2.0, 6, dtype=F64)
    left = float(0.5 * (scales * (stalled.theta - 1.0) ** 2).sum())
    assert 0 < left < 0.05

    tight = lbfgs(_rounded_quadratic, theta0, tol=1e-8, max_iters=200, history=10, ftol=0,
                  gain_tol=left / 100)
    assert not tight.converged  # the model's gain is above gain_tol: a stall, not an optimum

    loose = lbfgs(_rounded_quadratic, theta0, tol=1e-8, max_iters=200, history=10, ftol=0,
                  gain_tol=0.05)
    assert loose.converged and loose.grad_norm > 1e-8
    assert loose.message.startswith("converged at the objective's precision")
    torch.testing.assert_close(loose.theta, stalled.theta, rtol=0, atol=0)


def test_lbfgs_gain_tol_leaves_a_broken_objective_unconverged():
    # the objective is finite only for theta < 0.5 (as a log density at the edge of its
    # support): a stall against that edge is not a matter of precision
    def f(theta):
        return torch.where(theta < 0.5, (theta - 1.0) ** 2, torch.full_like(theta, math.nan)).sum()

    run = lbfgs(f, torch.zeros(3, dtype=F64), tol=1e-8, max_iters=100, history=10, ftol=0,
                ftol_window=10**6, gain_tol=0.01)  # the stall alone, not the change rule
    assert not run.converged
    assert (run.theta < 0.5).all()


def test_batched_lbfgs_minimizes_each_row_on_its_own():
    # rows: quadratics of condition 1 to 1e4 with their own minima, and a Rosenbrock row;
    # each must reach its own minimum, whatever the others do
    from pyrovi.fast.lbfgs import batched_lbfgs

    g = torch.Generator().manual_seed(0)
    dim = 6
    scales = torch.logspace(0, 4, 4, dtype=torch.float64)[:, None] ** torch.linspace(
        0, 1, dim, dtype=torch.float64)
    centres = torch.randn(4, dim, generator=g, dtype=torch.float64)

    def value_and_grad(x):
        quad = x[:4] - centres
        v = 0.5 * (scales * quad**2).sum(-1)
        gq = scales * quad
        r = x[4]
        vr = ((1 - r[:-1]) ** 2 + 100 * (r[1:] - r[:-1] ** 2) ** 2).sum()
        gr = torch.zeros_like(r)
        gr[:-1] = -2 * (1 - r[:-1]) - 400 * r[:-1] * (r[1:] - r[:-1] ** 2)
        gr[1:] += 200 * (r[1:] - r[:-1] ** 2)
        return torch.cat([v, vr[None]]), torch.cat([gq, gr[None]])

    x, values, iters = batched_lbfgs(value_and_grad, torch.zeros(5, dim, dtype=torch.float64),
                                     2000, tol=1e-9, ftol=0.0)
    torch.testing.assert_close(x[:4], centres, atol=1e-8, rtol=0)
    torch.testing.assert_close(x[4], torch.ones(dim, dtype=torch.float64), atol=1e-6, rtol=0)
    assert values.max() < 1e-12 and 0 < iters < 2000


def test_batched_lbfgs_backs_off_an_infeasible_region():
    # +inf beyond |x| < 1 (as a non-positive-definite covariance): the line search halves
    # the step until it is feasible, and the row still reaches its minimum at 0.9
    from pyrovi.fast.lbfgs import batched_lbfgs

    def value_and_grad(x):
        v = 0.5 * ((x - 0.9) ** 2).sum(-1)
        inside = x.abs().amax(-1) < 1
        return (torch.where(inside, v, torch.full_like(v, math.inf)),
                torch.where(inside[:, None], x - 0.9, torch.zeros_like(x)))

    x, values, _ = batched_lbfgs(value_and_grad, torch.full((2, 3), -0.5, dtype=torch.float64),
                                 100, tol=1e-10, ftol=0.0)
    torch.testing.assert_close(x, torch.full((2, 3), 0.9, dtype=torch.float64), atol=1e-9,
                               rtol=0)
