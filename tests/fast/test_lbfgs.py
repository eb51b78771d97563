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
