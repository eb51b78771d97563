"""Closed-form factor analysis / PPCA: scikit-learn parity, monotonicity, generic agreement."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import FactorAnalysis

from pyrovi.em import EM, factor_analysis_model, ppca_model
from pyrovi.em.result import GaussianPosterior


def _fa_data(n=400, d=6, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g)
    psi = 0.2 + torch.rand(d, generator=g)
    z = torch.randn(n, k, generator=g)
    return z @ W.T + 1.5 + psi.sqrt() * torch.randn(n, d, generator=g)


def test_fa_matches_sklearn_log_likelihood():
    X = _fa_data()
    res = EM(factor_analysis_model(2), num_steps=5000, tol=1e-9, seed=0,
             progress=False).run(X)
    assert res.converged
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    fa = FactorAnalysis(2, tol=1e-10, max_iter=10000).fit(X.numpy())
    sk_total = fa.score(X.numpy()) * X.shape[0]
    assert res.log_evidence == pytest.approx(sk_total, rel=1e-4)
    cov = res.params["loading"] @ res.params["loading"].T + torch.diag(
        res.params["noise_variance"])
    np.testing.assert_allclose(cov.numpy(), fa.get_covariance(), rtol=1e-2, atol=1e-3)
    post = res.posterior
    assert isinstance(post, GaussianPosterior) and post.mean.shape == (400, 2)
    draws = res.sample(3, seed=0)
    assert draws["z"].shape == (3, 400, 2)
    gap = res.log_joint(draws) - res.log_posterior(draws)
    np.testing.assert_allclose(gap.numpy(), res.log_evidence, rtol=1e-9)


def test_ppca_isotropic_noise_and_monotone():
    X = _fa_data(seed=1)
    res = EM(ppca_model(2), num_steps=500, tol=1e-8, seed=0, progress=False).run(X)
    assert res.params["noise_variance"].shape == ()
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    # Tipping & Bishop: the ML noise variance is the mean of the discarded eigenvalues
    Xc = X - X.mean(0)
    eig = torch.linalg.eigvalsh(Xc.T @ Xc / X.shape[0]).flip(0)
    assert float(res.params["noise_variance"]) == pytest.approx(float(eig[2:].mean()), rel=1e-3)


def test_fa_generic_m_step_follows_closed_form():
    X = _fa_data(n=60, d=4, k=1, seed=2)
    closed = EM(factor_analysis_model(1), num_steps=8, tol=0, seed=0, progress=False).run(X)
    generic = EM(factor_analysis_model(1), m_step="generic", num_steps=8, tol=0, seed=0,
                 progress=False).run(X)
    np.testing.assert_allclose(generic.log_evidence_trace, closed.log_evidence_trace, rtol=1e-6)
    assert generic.log_evidence == pytest.approx(closed.log_evidence, rel=1e-6)
