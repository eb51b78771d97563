"""The compiled path and Pyro's SVI fit the same optimum: same final ELBO within Monte Carlo
error, same posterior moments; and the compiled path matches closed-form posteriors."""

from __future__ import annotations

import math

import pytest
import torch

from tests.fast.models import conjugate_posterior, data

CASES = [
    ("conjugate_normal", "meanfield"),
    ("linear_regression", "lowrank"),
    ("logistic_regression", "meanfield"),
    ("logistic_regression", "fullrank"),
    ("grouped_means", "meanfield"),
    ("linear_regression", "delta"),
]


def _moments(result, n=4000):
    draws = result.sample(n, seed=1)
    return {k: (v.mean(0), v.std(0)) for k, v in draws.items()}


@pytest.mark.parametrize("model_name, family", CASES)
def test_same_final_elbo(fit_pair, model_name, family):
    compiled, svi = fit_pair(model_name, family)
    assert compiled.backend == "compiled"
    assert svi.backend == "svi"
    assert not any("SVI was used" in n for n in compiled.notes)
    tol = 3 * math.hypot(compiled.elbo_se, svi.elbo_se) + 0.05 + 1e-4 * abs(svi.elbo)
    assert abs(compiled.elbo - svi.elbo) < tol, (compiled.elbo, svi.elbo, tol)


@pytest.mark.parametrize("model_name, family", [c for c in CASES if c[1] != "delta"])
def test_same_posterior_moments(fit_pair, model_name, family):
    compiled, svi = fit_pair(model_name, family)
    mc, ms = _moments(compiled), _moments(svi)
    for name in ms:
        mean_c, sd_c = mc[name]
        mean_s, sd_s = ms[name]
        # means within 10% of a posterior sd; sds within 10% (4,000 draws: ~1-2% MC error)
        assert torch.all((mean_c - mean_s).abs() <= 0.1 * sd_s), (name, mean_c, mean_s, sd_s)
        assert torch.all((sd_c / sd_s - 1).abs() <= 0.1), (name, sd_c, sd_s)


def test_delta_same_map(fit_pair):
    compiled, svi = fit_pair("linear_regression", "delta")
    for name, value in svi.median().items():
        torch.testing.assert_close(compiled.median()[name], value, atol=2e-3, rtol=2e-3)


def test_conjugate_posterior_exact(fit_pair):
    """Meanfield is exact here: the compiled fit matches the closed-form posterior."""
    compiled, _ = fit_pair("conjugate_normal", "meanfield")
    mean, sd = conjugate_posterior(*data("conjugate_normal"))
    (m, s), = [(v.mean(), v.std()) for v in compiled.sample(20000, seed=2).values()]
    assert abs(float(m) - mean) < 0.05 * sd + 4 * sd / math.sqrt(20000)
    assert abs(float(s) / sd - 1) < 0.05
    # and the ELBO equals the log evidence of this conjugate model (q is exact)
    x = data("conjugate_normal")[0]
    n = x.shape[0]
    cov = torch.eye(n) + 100.0 * torch.ones(n, n)
    log_evidence = torch.distributions.MultivariateNormal(torch.zeros(n), cov).log_prob(x)
    assert abs(compiled.elbo - float(log_evidence)) < 3 * compiled.elbo_se + 0.05


def test_compiled_results_support_later_methods(fit_pair):
    compiled, _ = fit_pair("logistic_regression", "fullrank")
    params = compiled.params
    assert any(k.endswith("scale_tril") for k in params)
    assert all(torch.isfinite(v).all() for v in params.values())
    draws = compiled.sample(10, seed=0)
    assert draws["w"].shape == (10, 4)
    assert compiled.num_steps == len(compiled.elbo_trace)
