"""Pure math on log-weights: log-mean-exp, IWAE bounds, ESS, gap, PSIS k-hat."""

import math

import pytest
import torch

from pyrovi.diagnostics.bounds import ess, gap_from_weights, iwae_bounds, log_mean_exp, mean_se
from pyrovi.diagnostics.psis import khat_threshold, psis_diagnostic


def normal_log_w(n, sigma, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return sigma * torch.randn(n, generator=gen, dtype=torch.float64)


def test_log_mean_exp_matches_lognormal_mean():
    # w = exp(sigma * eps): E[w] = exp(sigma^2 / 2), so log Z = sigma^2 / 2 exactly
    sigma = 0.8
    value, se = log_mean_exp(normal_log_w(200_000, sigma))
    assert abs(value - sigma**2 / 2) < 3 * se
    assert 0 < se < 0.01


def test_log_mean_exp_is_shift_invariant_and_exact_on_constants():
    log_w = normal_log_w(1000, 1.0)
    a, _ = log_mean_exp(log_w)
    b, _ = log_mean_exp(log_w + 1000.0)  # would overflow without the max shift
    assert b - a == pytest.approx(1000.0, abs=1e-9)
    value, se = log_mean_exp(torch.full((10,), -3.5, dtype=torch.float64))
    assert value == pytest.approx(-3.5, abs=1e-12) and se == 0.0


def test_iwae_bounds_rise_with_k_toward_log_z():
    sigma = 1.0
    log_w = normal_log_w(400_000, sigma, seed=1)
    bounds = iwae_bounds(log_w, (1, 10, 100, 1000))
    assert [b.k for b in bounds] == [1, 10, 100, 1000]
    assert [b.num_groups for b in bounds] == [400_000, 40_000, 4_000, 400]
    assert bounds[0].value == pytest.approx(mean_se(log_w)[0])
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        assert hi.value > lo.value - 3 * math.hypot(lo.se, hi.se)  # non-decreasing
    for lo, hi in zip(bounds[:3], bounds[1:3], strict=False):
        # here E[L_K] rises by many SEs from K = 1 to 10 to 100
        assert hi.value - lo.value > 3 * math.hypot(lo.se, hi.se)
    assert bounds[-1].value < sigma**2 / 2 + 3 * bounds[-1].se


def test_iwae_skips_k_larger_than_draws():
    assert [b.k for b in iwae_bounds(normal_log_w(50, 1.0), (1, 10, 100))] == [1, 10]


def test_ess_limits():
    assert ess(torch.zeros(100, dtype=torch.float64)) == pytest.approx(100.0)
    spike = torch.full((100,), -50.0, dtype=torch.float64)
    spike[3] = 0.0
    assert ess(spike) == pytest.approx(1.0, abs=1e-6)


def test_gap_from_weights_is_log_mean_exp_minus_mean():
    log_w = normal_log_w(5000, 0.5)
    gap, se = gap_from_weights(log_w)
    assert gap == pytest.approx(log_mean_exp(log_w)[0] - float(log_w.mean()))
    assert gap > 0 and 0 < se < gap


def test_khat_threshold():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(10_000) == pytest.approx(0.7)


def test_khat_light_and_heavy_tails():
    good = psis_diagnostic(normal_log_w(4000, 0.3))
    assert good.khat < 0.5 and good.reliable and good.verdict.startswith("good")
    # w ~ Pareto(alpha = 0.8): tail shape 1 / alpha = 1.25
    gen = torch.Generator().manual_seed(2)
    u = torch.rand(4000, generator=gen, dtype=torch.float64)
    bad = psis_diagnostic(-torch.log(u) / 0.8)
    assert bad.khat > 0.7 and not bad.reliable and bad.verdict.startswith("bad")


def test_too_few_weights():
    with pytest.raises(ValueError, match="at least 2 log-weights"):
        log_mean_exp(torch.zeros(1))
