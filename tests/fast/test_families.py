"""The Gaussian family math against Pyro's own autoguide distributions."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import autoguide

from pyrovi.fast.families import QParams, covariance, draw, entropy, noise_dim
from pyrovi.fast.params import guide_params
from pyrovi.fast.potential import layout_from_trace
from tests.fast.models import data, linear_regression

GUIDES = {
    "fullrank": lambda m: autoguide.AutoMultivariateNormal(m),
    "lowrank": lambda m: autoguide.AutoLowRankMultivariateNormal(m, rank=2),
}


def _random_q(family, dim=5, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(dim, generator=g)
    scale = torch.rand(dim, generator=g) + 0.5
    if family == "fullrank":
        factor = torch.randn(dim, dim, generator=g).tril(-1) + torch.eye(dim)
    elif family == "lowrank":
        factor = torch.randn(dim, rank, generator=g)
    else:
        factor = None
    return QParams(loc, scale, factor)


@pytest.mark.parametrize("family", ["meanfield", "fullrank", "lowrank"])
def test_draw_is_affine_with_the_family_covariance(family):
    q = _random_q(family)
    n = noise_dim(family, 5, 2)
    rows = draw(family, q, torch.eye(n)) - q.loc  # row i: A e_i
    torch.testing.assert_close(rows.T @ rows, covariance(family, q))
    assert draw(family, q, torch.zeros(3, n)).shape == (3, 5)


@pytest.mark.parametrize("family", ["meanfield", "fullrank", "lowrank"])
def test_entropy_is_the_gaussian_entropy(family):
    q = _random_q(family)
    mvn = torch.distributions.MultivariateNormal(q.loc, covariance(family, q))
    torch.testing.assert_close(entropy(family, q), mvn.entropy())


def test_delta_draws_the_point_with_zero_entropy():
    q = QParams(torch.arange(3.0))
    assert noise_dim("delta", 3) == 0
    torch.testing.assert_close(draw("delta", q, torch.zeros(4, 0)), torch.arange(3.0).expand(4, 3))
    assert float(entropy("delta", q)) == 0.0


@pytest.mark.parametrize("family", ["fullrank", "lowrank"])
def test_flat_params_match_the_autoguide_posterior(family):
    """theta read from a live autoguide gives Pyro's own posterior (after random moves)."""
    args = data("linear_regression")
    guide = GUIDES[family](linear_regression)
    with pyro.get_param_store().scope():
        guide(*args)
        layout = layout_from_trace(guide.prototype_trace)
        params = guide_params(family, guide, layout)
        theta = params.read() + 0.3 * torch.randn(params.size)
        params.write(theta)
        q = params.constrained(theta)
        posterior = guide.get_posterior()
        torch.testing.assert_close(q.loc, posterior.loc.detach())
        torch.testing.assert_close(
            covariance(family, q), posterior.covariance_matrix.detach(), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(entropy(family, q), posterior.entropy().detach())
