"""Every result prints as a short summary: one or a few lines, its key numbers, never a
tensor or array dump (issue 14, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.calibration.result import CalibrationResult
from pyrovi.diagnostics import Bracket, Estimate, compare, diagnose
from pyrovi.diagnostics.accuracy import ErrorBounds, SiteErrorBounds
from pyrovi.diagnostics.cubo import CUBO
from pyrovi.diagnostics.simcheck import EvidenceCheck, SimulationRow
from pyrovi.diagnostics.weights import LogWeights
from pyrovi.em import EM, gaussian_mixture_model
from pyrovi.em.posterior import GaussianPosterior
from tests.vi import models


def _short(text: str, max_lines: int = 1, max_chars: int = 400) -> None:
    assert "tensor(" not in text and "array(" not in text, text
    assert len(text.splitlines()) <= max_lines, text
    assert len(text) <= max_chars, text


@pytest.fixture(scope="module")
def fits():
    y = models.normal_normal_data(n=200)
    dadvi = pyrovi.VI(models.normal_normal, seed=0, progress=False).run(y)
    sgd = pyrovi.VI(models.normal_normal, method="sgd", tol=0, num_steps=200, seed=0,
                    progress=False).run(y)
    return y, dadvi, sgd


def test_vi_result_and_dadvi_outcome(fits):
    _, dadvi, sgd = fits
    text = repr(sgd)
    _short(text)
    assert text.startswith("VIResult(family='meanfield', elbo=")
    assert f"num_steps={sgd.num_steps}" in text and "backend='compiled'" in text
    text = repr(sgd.posterior_draws(7, seed=0))
    _short(text)
    assert text == "Draws(n=7, values of shape {'mu': (7,)})"
    text = repr(dadvi.dadvi)
    _short(text)
    assert text.startswith("DadviOutcome(family='meanfield', elbo=")
    assert f"M={dadvi.dadvi.num_draws}, num_iters={dadvi.dadvi.num_iters}" in text


def test_em_result_and_posteriors():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(60, 2, generator=g), torch.randn(60, 2, generator=g) + 4])
    res = EM(gaussian_mixture_model(2), seed=0, num_inits=2, progress=False).run(x)
    text = repr(res)
    _short(text)
    assert text.startswith(f"EMResult(log_evidence={res.log_evidence:.6g}, "
                           f"num_steps={res.num_steps}, converged=True, best_init=")
    assert "of 2" in text and "m_step='closed_form'" in text
    text = repr(res.posterior)
    _short(text)
    assert text.startswith("DiscretePosterior(marginals of shape {")
    post = GaussianPosterior(mean=torch.zeros(5, 2), covariance=torch.eye(2).expand(5, 2, 2),
                             sites=(("z", torch.Size([5, 2])),))
    assert repr(post) == "GaussianPosterior(sites=['z'], 5 block(s) of 2 dimension(s))"


def test_diagnostics_and_comparison_table(fits):
    y, dadvi, sgd = fits
    diag = diagnose(dadvi, num_particles=500, seed=0)
    text = repr(diag)
    _short(text)
    assert text.startswith(f"Diagnostics(family='meanfield', elbo={diag.elbo:.4f} ± ")
    assert "(exact)" in text and "khat=" in text and "num_particles=500" in text
    table = compare({"dadvi": dadvi, "sgd": sgd}, num_particles=500, seed=0)
    text = repr(table)
    _short(text)
    assert text == "ComparisonTable(2 fits: ['dadvi', 'sgd']; print() it for the table)"
    assert len(str(table).splitlines()) >= 4  # the table itself is still there


def test_estimates_brackets_and_bounds():
    est = Estimate(-12.345678, 0.0123, "importance", 1000, {"log_w": torch.randn(1000)})
    assert repr(est) == ("Estimate(value=-12.3457, se=0.0123, method='importance', "
                         "num_particles=1000)")
    br = Bracket(lower=-12.5, lower_se=0.01, upper=-12.2, upper_se=0.02, lower_is_bound=True,
                 upper_is_bound=True, method="ais", num_temperatures=100, num_chains=8,
                 acceptance=0.8, info={"log_w": torch.randn(100)})
    text = repr(br)
    _short(text)
    assert text.startswith("Bracket(log p(x) in [-12.5000 ± 0.0100 (bound), -12.2000 ± 0.0200")
    site = SiteErrorBounds(q_mean=torch.zeros(3), q_sd=torch.ones(3),
                           mean_error=torch.tensor([0.1, 0.2, 0.05]), sd_error=torch.full((3,), 0.1),
                           w2=torch.tensor(0.3), gaussian=True)
    assert repr(site) == ("SiteErrorBounds(shape=(3,), max |mean err| <= 0.2 (0.20 sd), "
                          "max |sd err| <= 0.1, gaussian=True)")
    bounds = ErrorBounds(d2=0.01, chi2=0.01005, cubo=CUBO(-12.0, 0.01, 2.0, 1000),
                         log_evidence_lower=-12.2, log_evidence_lower_se=0.0,
                         lower_source="exact", w2=0.3, sites={"z": site}, khat=0.12,
                         reliable=True, num_particles=1000, z=2.0)
    text = repr(bounds)
    _short(text)
    assert text == ("ErrorBounds(d2 <= 0.01, w2 <= 0.3, sites=['z'], lower='exact', "
                    "khat=0.12, reliable=True)")
    lw = LogWeights(log_w=torch.tensor([-1.0, -2.0, float("-inf")]), log_p=torch.zeros(3),
                    log_q=torch.zeros(3), num_particles=3, vectorized=True)
    assert repr(lw) == "LogWeights(num_particles=3, log_w in [-2, -1], vectorized=True)"
    rows = tuple(SimulationRow(seed=s, bracket=br, elbo=-12.4, elbo_se=0.01, importance=-12.3,
                               importance_se=0.01, exact=-12.3) for s in range(3))
    check = EvidenceCheck(rows=rows, method="meanfield")
    text = repr(check)
    _short(text)
    assert text == ("EvidenceCheck(method='meanfield', 3 simulations, coverage=1.00, "
                    "mean_width=0.3)")


def test_calibration_result():
    rng = np.random.default_rng(0)
    res = CalibrationResult(
        probabilities={"mu": rng.uniform(size=50), "w": rng.uniform(size=(50, 3))},
        truth={"mu": rng.normal(size=50), "w": rng.normal(size=(50, 3))},
        statistic={"mu": np.array(0.1), "w": np.array([0.1, 0.5, 0.1])},
        pvalue={"mu": np.array(0.6), "w": np.array([0.5, 0.001, 0.4])},
        dims={"mu": [], "w": ["w_dim_0"]},
        converged=np.ones(50, dtype=bool), num_simulations=50, num_draws=200,
        guide="meanfield", seed=0, wall_time=1.0,
    )
    text = repr(res)
    _short(text)
    assert text == ("CalibrationResult(guide='meanfield', 50 simulations x 200 draws, "
                    "50 converged, sites passed at 0.05: 1 of 2, failed: ['w']; summary() "
                    "for the table)")
