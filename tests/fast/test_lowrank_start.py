"""The lowrank Gaussian nearest in KL to a given Gaussian (DADVI's lowrank start)."""

from __future__ import annotations

import pytest
import torch

from pyrovi import datasets
from pyrovi.families import QParams
from pyrovi.fast.lowrank_start import SCALE_FLOOR, gaussian_kl_lowrank, nearest_lowrank

F64 = torch.float64


def _lowrank_cov(q: QParams) -> torch.Tensor:
    w = q.scale[:, None] * q.factor
    return w @ w.T + torch.diag(q.scale**2)


def test_kl_is_torchs_for_any_q():
    g = torch.Generator().manual_seed(0)
    dim, rank = 7, 3
    q = QParams(torch.randn(dim, generator=g, dtype=F64),
                0.3 + torch.rand(dim, generator=g, dtype=F64),
                torch.randn(dim, rank, generator=g, dtype=F64))
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    loc, cov = torch.randn(dim, generator=g, dtype=F64), a @ a.T + torch.eye(dim, dtype=F64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.LowRankMultivariateNormal(q.loc, q.scale[:, None] * q.factor,
                                                      q.scale**2),
        torch.distributions.MultivariateNormal(loc, cov),
    )
    assert gaussian_kl_lowrank(q, loc, cov) == pytest.approx(float(expected), abs=1e-10)


def test_a_lowrank_plus_diagonal_target_is_found_exactly():
    g = torch.Generator().manual_seed(3)
    dim, rank = 6, 2
    f = torch.randn(dim, rank, generator=g, dtype=F64)
    cov = f @ f.T + torch.diag(0.5 + torch.rand(dim, generator=g, dtype=F64))
    loc = torch.randn(dim, generator=g, dtype=F64)
    q = nearest_lowrank(loc, cov, rank)
    assert torch.equal(q.loc, loc)
    # to the batched L-BFGS's stopping rule (a relative change under 1e-8)
    assert gaussian_kl_lowrank(q, loc, cov) < 1e-8
    torch.testing.assert_close(_lowrank_cov(q), cov, atol=1e-4, rtol=0)


def test_an_optimum_on_the_boundary_is_reached():
    # coordinate 0 is covered by the factor alone (d_0 = 0): the signed coordinate t_0
    # goes to 0 (from 0.7 at the starts), down to about the floor, where Pyro's
    # parameterization (whose scale cannot be 0) takes over
    f = torch.tensor([[1.0], [0.8], [0.6]], dtype=F64)
    cov = f @ f.T + torch.diag(torch.tensor([0.0, 0.5, 0.5], dtype=F64))
    q = nearest_lowrank(torch.zeros(3, dtype=F64), cov, 1)
    assert SCALE_FLOOR <= q.scale[0] < 2 * SCALE_FLOOR  # the marginal sd is 1
    torch.testing.assert_close(q.scale[1:], torch.full((2,), 0.5**0.5, dtype=F64),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close((q.scale[:, None] * q.factor).abs(), f, atol=1e-3, rtol=0)
    assert gaussian_kl_lowrank(q, torch.zeros(3, dtype=F64), cov) < 1e-6


def test_the_best_optimum_of_the_diabetes_posterior():
    # exact posterior of w ~ N(0, I), y ~ N(X w, 0.7^2); the lowrank KL has local optima
    # (40 random starts of DADVI end at 0.557, 0.602, 0.609, 0.611 or 0.706 nats)
    X, y = datasets.diabetes()
    cov = torch.linalg.inv(X.T @ X / 0.7**2 + torch.eye(X.shape[1], dtype=F64))
    mean = cov @ X.T @ y / 0.7**2
    for seed in range(3):
        q = nearest_lowrank(mean, cov, 3, generator=torch.Generator().manual_seed(seed))
        assert 0.557 < gaussian_kl_lowrank(q, mean, cov) < 0.5575


def test_arguments_are_checked():
    cov = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match=r"^rank must be from 1 to D = 3, got 4$"):
        nearest_lowrank(torch.zeros(3, dtype=F64), cov, 4)
    with pytest.raises(ValueError, match=r"^rank must be from 1 to D = 3, got 0$"):
        nearest_lowrank(torch.zeros(3, dtype=F64), cov, 0)
    with pytest.raises(ValueError, match=r"^cov must be \(3, 3\) for loc of shape \(3,\), got "
                                         r"\(2, 2\)$"):
        nearest_lowrank(torch.zeros(3, dtype=F64), torch.eye(2, dtype=F64), 1)
