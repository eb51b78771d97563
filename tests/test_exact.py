"""The exact Gaussian evidence (Laplace identity) and its checks, against closed forms."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import constraints

from pyrovi._exact import (
    NotConcaveError,
    conditioned_log_joint,
    flat_sites,
    is_real_support,
    laplace_gaussian,
    nonquadratic_site,
    site_of,
    unflatten,
)

F64 = torch.float64


@pytest.mark.parametrize(
    "support, real",
    [
        (constraints.real, True),
        (constraints.real_vector, True),
        (constraints.independent(constraints.real, 2), True),
        (constraints.positive, False),
        (constraints.interval(0.0, 1.0), False),
        (constraints.independent(constraints.positive, 1), False),
        (constraints.simplex, False),
    ],
)
def test_is_real_support(support, real):
    assert is_real_support(support) is real


def _quadratic(mean, precision, const):
    """f(z) = const - (z - mean)^T P (z - mean) / 2, batched over rows of z."""

    def f(z):
        diff = z - mean
        return const - 0.5 * ((diff @ precision) * diff).sum(-1)

    return f


def _spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return a @ a.T + d * torch.eye(d, dtype=F64)


def test_laplace_identity_is_exact_for_a_quadratic_from_any_point():
    d = 4
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    precision = _spd(d, 0)
    f = _quadratic(mean, precision, const=-7.0)
    # the integral of exp(f): const + d/2 log 2 pi - 1/2 log det P
    truth = -7.0 + 0.5 * d * math.log(2 * math.pi) - 0.5 * float(torch.logdet(precision))
    for z0 in (torch.zeros(d, dtype=F64), torch.full((d,), 5.0, dtype=F64)):
        fit = laplace_gaussian(f, z0)
        assert float(fit.log_evidence) == pytest.approx(truth, rel=1e-12)
        torch.testing.assert_close(fit.mean, mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fit.covariance, torch.linalg.inv(precision), rtol=1e-10,
                                   atol=1e-12)
        torch.testing.assert_close(fit.precision, precision, rtol=1e-12, atol=1e-12)
        assert float(fit.log_joint_at_mean) == pytest.approx(-7.0, rel=1e-12)


def test_not_concave_names_the_weakest_direction():
    precision = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=F64))
    f = _quadratic(torch.zeros(3, dtype=F64), precision, const=0.0)
    with pytest.raises(NotConcaveError, match="not positive definite") as info:
        laplace_gaussian(f, torch.zeros(3, dtype=F64))
    assert info.value.index == 1
    assert site_of(1, (("a", (1,)), ("b", (2,)))) == "b"


def test_nonquadratic_site_names_the_site_whose_hessian_changes():
    sites = (("a", (2,)), ("b", ()))

    def f(z):  # quadratic in a, quartic in b
        return -0.5 * z[:, :2].square().sum(-1) - z[:, 2] ** 4

    z0 = torch.zeros(3, dtype=F64)
    z1 = torch.ones(3, dtype=F64)
    assert nonquadratic_site(f, z0, z1, sites, rtol=1e-6) == ("b", "its Hessian changes with z")
    g = _quadratic(torch.zeros(3, dtype=F64), _spd(3, 1), const=1.0)
    fit = laplace_gaussian(g, z0)
    assert nonquadratic_site(g, z0, z1, sites, rtol=1e-6, fit=fit) is None


def test_prediction_check_catches_what_two_hessians_miss():
    sites = (("a", ()), ("b", ()))

    def f(z):  # Hessian -I everywhere but on b = 0: not quadratic in b
        return -0.5 * z.square().sum(-1) - z[:, 1].abs()

    z0 = torch.tensor([0.3, 0.5], dtype=F64)
    fit = laplace_gaussian(f, z0)
    bad = nonquadratic_site(f, z0, fit.mean, sites, rtol=1e-6, fit=fit, predict_rtol=1e-5)
    assert bad is not None and bad[0] == "b" and "does not predict" in bad[1]


def test_conditioned_log_joint_is_the_trace_log_prob():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 2.0))
        with pyro.plate("j", 3):
            theta = pyro.sample("theta", dist.Normal(mu, 0.7))
            pyro.sample("y", dist.Normal(theta, 0.5), obs=y)

    y = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    trace = poutine.trace(model).get_trace(y)
    sites, z0 = flat_sites(trace, ("mu", "theta"))
    assert sites == (("mu", ()), ("theta", (3,))) and z0.shape == (4,)
    z = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    values = unflatten(z, sites)
    assert values["mu"].shape == (5,) and values["theta"].shape == (5, 3)
    f = conditioned_log_joint(model, (y,), {}, sites)
    expected = torch.stack([
        poutine.trace(poutine.condition(model, data={k: v[i] for k, v in values.items()}))
        .get_trace(y).log_prob_sum()
        for i in range(5)
    ])
    torch.testing.assert_close(f(z), expected, rtol=0, atol=0)
    # linear-Gaussian: the Laplace identity gives y's marginal N(0, 4 11^T + (0.49 + 0.25) I)
    cov = 4.0 * torch.ones(3, 3, dtype=F64) + 0.74 * torch.eye(3, dtype=F64)
    truth = float(dist.MultivariateNormal(torch.zeros(3, dtype=F64), cov).log_prob(y))
    assert float(laplace_gaussian(f, z0).log_evidence) == pytest.approx(truth, rel=1e-10)
