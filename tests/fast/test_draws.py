"""DADVI's draws (pyrovi.fast.draws): the quadratic control variate and the fresh-draw check."""

from __future__ import annotations

import math

import pytest
import torch

from pyrovi.families import QParams, gaussian_math
from pyrovi.fast.draws import _log_ratios, check, control_variate, fixed_draws, raw_normals
from tests.fast.models import gaussian_target

F64 = torch.float64


def _some_q(family, dim, rank, seed=2):
    """A q that is not the target's optimum (so log p - log q varies from draw to draw)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(dim, generator=g, dtype=F64)
    scale = 0.2 + torch.rand(dim, generator=g, dtype=F64)
    if family == "meanfield":
        return QParams(loc, scale)
    if family == "lowrank":
        return QParams(loc, scale, torch.randn(dim, rank, generator=g, dtype=F64))
    lower = torch.tril(torch.randn(dim, dim, generator=g, dtype=F64), -1)
    return QParams(loc, scale, lower + torch.eye(dim, dtype=F64))


@pytest.mark.parametrize("family", ["meanfield", "lowrank", "fullrank"])
def test_the_control_variate_makes_a_gaussian_targets_elbo_exact(family):
    # log p - log q is a quadratic in the noise: the Stein estimate from whitened
    # antithetic draws is its Hessian exactly, so every fresh draw gives the closed-form ELBO
    dim, rank = 6, 2
    fam = gaussian_math(family, rank)
    log_density, mean, precision = gaussian_target(dim)
    q = _some_q(family, dim, rank)
    gen = torch.Generator().manual_seed(0)
    n = fam.noise_dim(dim)
    fixed = fixed_draws(raw_normals(2 * n, n, gen, F64))
    control = control_variate(log_density, fam, q, fixed, F64)
    fresh = raw_normals(500, n, gen, F64)
    residual = _log_ratios(log_density, fam, q, fresh, 200, F64, control)
    cov = fam.covariance(q)
    d = q.loc - mean
    exact = float(-0.5 * (d @ precision @ d + (precision * cov).sum()) + fam.entropy(q))
    assert float(residual.std()) < 1e-9
    assert float(residual.mean()) + control.mean == pytest.approx(exact, abs=1e-9)
    plain = _log_ratios(log_density, fam, q, fresh, 200, F64)
    assert float(plain.std()) > 1.0  # without it, the same draws spread by nats


def _wiggly(u):
    """log N(u; 0, I_2) + 8 cos(3 u_0): against q = N(0, I), log p - log q = 8 cos(3 u_0),
    whose mean is 8 exp(-4.5) and whose spread (5.7 nats) no quadratic takes out."""
    return -0.5 * (u * u).sum(-1) - math.log(2 * math.pi) + 8.0 * torch.cos(3.0 * u[:, 0])


def test_a_point_estimate_within_tolerance_does_not_pass_while_its_error_is_larger():
    fam = gaussian_math("meanfield")
    q = QParams(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    truth = 8.0 * math.exp(-4.5)
    # an objective equal to the mean over the first 1,000 fresh draws (500 antithetic
    # pairs; cos is even, so a pair is no better than one draw): the gap there is about 0,
    # which alone used to pass, with a standard error of 0.25 nats
    first = raw_normals(500, 2, torch.Generator().manual_seed(5), F64)
    elbo = float(_log_ratios(_wiggly, fam, q, torch.cat([first, -first]), 1000, F64).mean())
    fixed = fixed_draws(raw_normals(64, 2, torch.Generator().manual_seed(9), F64))
    control = control_variate(_wiggly, fam, q, fixed, F64)
    fresh, se, passed, allowed, used = check(
        _wiggly, fam, q, elbo, 1000, 16000, 0.05, torch.Generator().manual_seed(5), F64,
        control,
    )
    assert used > 1000  # the draws were doubled: 3 se > 0.05 at 1,000
    assert 3 * se <= 0.05 or used == 16000
    assert abs(fresh - truth) < 3 * se  # the control variate leaves the estimate unbiased
    assert allowed == max(0.05, 3 * se)
    assert passed == (abs(elbo - fresh) <= allowed)


def test_the_fresh_draws_grow_to_the_count_their_standard_error_projects():
    # against q = N(0, I), log p - log q = 0.5 cos(3 u_0) - its mean: even (a pair is no
    # better than one draw), no quadratic takes it out; spread 0.35 nats per pair, so
    # 3 se <= 0.05 needs about 450 pairs.  From 100 pairs the projection (a quarter more)
    # goes to about 560 at once; doubling took 200, 400 and then 800 pairs.
    fam = gaussian_math("meanfield")
    q = QParams(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    mean = 0.5 * math.exp(-4.5)

    def wiggle(u):
        return (-0.5 * (u * u).sum(-1) - math.log(2 * math.pi)
                + 0.5 * torch.cos(3.0 * u[:, 0]) - mean)

    fresh, se, passed, allowed, used = check(
        wiggle, fam, q, 0.0, 200, 16000, 0.05, torch.Generator().manual_seed(0), F64
    )
    assert passed and 3 * se <= 0.05
    assert 900 <= used <= 1400  # one growth, where doubling went to 1,600 draws
    assert abs(fresh) < 3 * se


def test_a_resolved_check_stops_at_the_first_batch():
    # q is the target itself: log p - log q is constant, the check is settled at once
    fam = gaussian_math("meanfield")
    q = QParams(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))

    def standard_normal(u):
        return -0.5 * (u * u).sum(-1) - math.log(2 * math.pi)

    fresh, se, passed, allowed, used = check(
        standard_normal, fam, q, 0.0, 1000, 16000, 0.05, torch.Generator().manual_seed(0), F64
    )
    assert used == 1000 and passed and fresh == pytest.approx(0.0, abs=1e-12)
    # and an objective 0.5 nats above it fails at once
    fresh, se, passed, allowed, used = check(
        standard_normal, fam, q, 0.5, 1000, 16000, 0.05, torch.Generator().manual_seed(0), F64
    )
    assert used == 1000 and not passed and allowed == 0.05


def test_antithetic_pairs_take_out_the_odd_part_no_quadratic_control_can():
    # against q = N(0, I), log p - log q = u_0^3: odd in the noise, mean 0, spread
    # sqrt(15) = 3.9 nats per draw; each antithetic pair (eps, -eps) averages to 0 exactly
    fam = gaussian_math("meanfield")
    q = QParams(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))

    def skewed(u):
        return -0.5 * (u * u).sum(-1) - math.log(2 * math.pi) + u[:, 0] ** 3

    one_sided = _log_ratios(skewed, fam, q, raw_normals(1000, 2, torch.Generator(), F64), 500,
                            F64)
    assert float(one_sided.std()) > 3.0
    fresh, se, passed, allowed, used = check(
        skewed, fam, q, 0.0, 1000, 16000, 0.05, torch.Generator().manual_seed(0), F64
    )
    assert used == 1000 and passed
    assert fresh == pytest.approx(0.0, abs=1e-12) and se < 1e-12
