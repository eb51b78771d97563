"""CUBO_2 (Dieng et al. 2017): log p(x) + D_2(posterior || q) / 2 >= log p(x)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal

import pyrovi
from pyrovi.diagnostics.cubo import CUBO, cubo, renyi_bound
from pyrovi.diagnostics.weights import importance_log_weights

F64 = torch.float64


def renyi2_gaussians(mp, Sp, mq, Sq) -> float:
    """D_2(N(mp, Sp) || N(mq, Sq)) in closed form (finite when 2 Sq - Sp is positive
    definite)."""
    S2 = 2 * Sq - Sp
    delta = mp - mq
    quad = float(delta @ torch.linalg.solve(S2, delta))
    logdet = (torch.linalg.slogdet(S2)[1] + torch.linalg.slogdet(Sp)[1]
              - 2 * torch.linalg.slogdet(Sq)[1])
    return quad - 0.5 * float(logdet)


def test_cubo_matches_the_closed_form_for_gaussians():
    torch.manual_seed(0)
    mp, Sp = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([[1.0, 0.5], [0.5, 2.0]],
                                                                  dtype=F64)
    mq, Sq = torch.tensor([0.2, 0.8], dtype=F64), 1.5 * torch.eye(2, dtype=F64) * 1.5
    log_z = -3.0
    q = MultivariateNormal(mq, Sq)
    z = q.sample((40_000,))
    log_w = MultivariateNormal(mp, Sp).log_prob(z) + log_z - q.log_prob(z)
    c = cubo(log_w)
    assert isinstance(c, CUBO) and c.order == 2.0 and c.num_particles == 40_000
    expected = log_z + 0.5 * renyi2_gaussians(mp, Sp, mq, Sq)
    assert abs(c.value - expected) < 4 * c.se + 1e-3
    assert c.value > log_z
    assert "biased low" in str(c)
    # D_2 <= 2 (CUBO - L) with the exact log evidence as L: equal up to Monte Carlo error
    assert renyi_bound(c.value, log_z) == pytest.approx(
        renyi2_gaussians(mp, Sp, mq, Sq), abs=8 * c.se + 2e-3)


def test_cubo_checks_its_order_and_clips_the_divergence():
    with pytest.raises(ValueError, match="order must be > 1"):
        cubo(torch.zeros(5), order=1.0)
    with pytest.raises(ValueError, match="order must be > 1"):
        renyi_bound(0.0, 0.0, order=0.5)
    assert renyi_bound(-1.0, 0.0) == 0.0
    # order n: n / (n - 1) (CUBO_n - L)
    assert renyi_bound(1.0, 0.0, order=3.0) == pytest.approx(1.5)


def normal_normal(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 2.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_cubo_is_above_the_exact_evidence_on_average_for_a_wide_guide():
    y = torch.tensor([0.3, 1.2, -0.4, 0.9, 1.7], dtype=F64)
    exact = pyrovi.log_evidence(normal_normal, y).value
    prec = 1 / 4 + y.numel()
    m, s = float(y.sum() / prec), math.sqrt(1 / prec)

    def wide_guide(y):  # wider than the posterior (and a little off): weights are bounded
        pyro.sample("mu", dist.Normal(torch.tensor(m + 0.3 * s, dtype=F64), 1.6 * s))

    values = []
    for seed in range(20):
        pyro.set_rng_seed(seed)
        lw = importance_log_weights(normal_normal, wide_guide, (y,), num_particles=500)
        c = cubo(lw.log_w)
        values.append(c.value)
        assert c.value > exact - 4 * c.se  # never far below: the weights are bounded
    mean = sum(values) / len(values)
    spread = torch.tensor(values).std().item() / math.sqrt(len(values))
    assert mean >= exact
    # and close to the closed form log p(x) + D_2 / 2
    d2 = renyi2_gaussians(torch.tensor([m], dtype=F64), torch.tensor([[s * s]], dtype=F64),
                          torch.tensor([m + 0.3 * s], dtype=F64),
                          torch.tensor([[(1.6 * s) ** 2]], dtype=F64))
    assert mean == pytest.approx(exact + d2 / 2, abs=4 * spread + 1e-3)
