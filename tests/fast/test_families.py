"""The Gaussian family math against Pyro's own autoguide distributions."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import autoguide

from pyrovi.families import REGISTRY, Delta, FullRank, LowRank, MeanField, QParams
from pyrovi.fast.params import guide_params
from pyrovi.fast.potential import layout_from_trace
from tests.fast.models import data, linear_regression

GUIDES = {
    "fullrank": lambda m: autoguide.AutoMultivariateNormal(m),
    "lowrank": lambda m: autoguide.AutoLowRankMultivariateNormal(m, rank=2),
}

GAUSSIAN = [MeanField(), FullRank(), LowRank(2)]


def _random_q(family, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(dim, generator=g)
    scale = torch.rand(dim, generator=g) + 0.5
    if isinstance(family, FullRank):
        factor = torch.randn(dim, dim, generator=g).tril(-1) + torch.eye(dim)
    elif isinstance(family, LowRank):
        factor = torch.randn(dim, family.rank, generator=g)
    else:
        factor = None
    return QParams(loc, scale, factor)


@pytest.mark.parametrize("family", GAUSSIAN, ids=lambda f: f.name)
def test_draw_is_affine_with_the_family_covariance(family):
    q = _random_q(family)
    n = family.noise_dim(5)
    rows = family.draw(q, torch.eye(n)) - q.loc  # row i: A e_i
    torch.testing.assert_close(rows.T @ rows, family.covariance(q))
    assert family.draw(q, torch.zeros(3, n)).shape == (3, 5)


@pytest.mark.parametrize("family", GAUSSIAN, ids=lambda f: f.name)
def test_entropy_is_the_gaussian_entropy(family):
    q = _random_q(family)
    mvn = torch.distributions.MultivariateNormal(q.loc, family.covariance(q))
    torch.testing.assert_close(family.entropy(q), mvn.entropy())


def test_delta_draws_the_point_with_zero_entropy():
    q = QParams(torch.arange(3.0))
    family = Delta()
    assert family.noise_dim(3) == 0
    torch.testing.assert_close(family.draw(q, torch.zeros(4, 0)), torch.arange(3.0).expand(4, 3))
    assert float(family.entropy(q)) == 0.0


@pytest.mark.parametrize("family", ["fullrank", "lowrank"])
def test_flat_params_match_the_autoguide_posterior(family):
    """theta read from a live autoguide gives Pyro's own posterior (after random moves)."""
    args = data("linear_regression")
    guide = GUIDES[family](linear_regression)
    with pyro.get_param_store().scope():
        guide(*args)
        layout = layout_from_trace(guide.prototype_trace)
        params = guide_params(REGISTRY[family], guide, layout)
        assert params.family.name == family
        theta = params.read() + 0.3 * torch.randn(params.size)
        params.write(theta)
        q = params.constrained(theta)
        posterior = guide.get_posterior()
        torch.testing.assert_close(q.loc, posterior.loc.detach())
        torch.testing.assert_close(
            params.family.covariance(q),
            posterior.covariance_matrix.detach(),
            rtol=1e-4,
            atol=1e-5,
        )
        torch.testing.assert_close(params.family.entropy(q), posterior.entropy().detach())


def test_lowrank_math_takes_the_guide_rank():
    args = data("linear_regression")
    guide = GUIDES["lowrank"](linear_regression)
    with pyro.get_param_store().scope():
        guide(*args)
        params = guide_params(REGISTRY["lowrank"], guide, layout_from_trace(guide.prototype_trace))
    assert params.family == LowRank(2) and params.rank == 2
    assert params.family.noise_dim(params.layout.dim) == params.layout.dim + 2


def test_guide_params_refuses_a_family_without_flat_parameters():
    args = data("linear_regression")
    guide = autoguide.AutoLaplaceApproximation(linear_regression)
    with pyro.get_param_store().scope():
        guide(*args)
        layout = layout_from_trace(guide.prototype_trace)
        for family in (REGISTRY["laplace"], "laplace", "banana"):
            with pytest.raises(ValueError, match="has no flat parameterization"):
                guide_params(family, guide, layout)
