"""Closed-form Gaussian-mixture EM: scikit-learn parity, monotonicity, errors, restarts."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture

from pyrovi.em import EM, gaussian_mixture_model
from pyrovi.errors import NonFiniteError


def _init(X, K=3):
    idx = [0, 150, 250]
    return {
        "weights": torch.full((K,), 1.0 / K),
        "means": X[idx].clone(),
        "covariances": torch.eye(X.shape[1]).expand(K, -1, -1).clone(),
    }


def _sklearn(X, init, cov_type, iters):
    cov = init["covariances"].numpy()
    prec = np.linalg.inv(cov) if cov_type == "full" else 1.0 / cov
    gm = GaussianMixture(
        3, covariance_type=cov_type, tol=0.0, max_iter=iters, reg_covar=1e-6,
        weights_init=init["weights"].numpy(), means_init=init["means"].numpy(),
        precisions_init=prec, init_params="random_from_data", random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        gm.fit(X.numpy())
    return gm


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_sklearn_parity(blobs, cov_type):
    init = _init(blobs)
    if cov_type == "diag":
        init["covariances"] = torch.ones(3, 2)
    iters = 25
    res = EM(gaussian_mixture_model(3, cov_type, init=init), num_steps=iters, tol=0,
             seed=0, progress=False).run(blobs)
    gm = _sklearn(blobs, init, cov_type, iters)
    n = blobs.shape[0]
    assert res.num_steps == gm.n_iter_ == iters
    # lower_bound_ is the E-step value of the last iteration; score() is at the final params
    assert res.log_evidence_trace[-1] / n == pytest.approx(gm.lower_bound_, rel=1e-6)
    assert res.log_evidence / n == pytest.approx(gm.score(blobs.numpy()), rel=1e-6)
    np.testing.assert_allclose(res.params["weights"].numpy(), gm.weights_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.params["means"].numpy(), gm.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res.params["covariances"].numpy(), gm.covariances_, rtol=1e-6,
                               atol=1e-8)
    resp = res.posterior.marginals["assignment"].numpy()
    np.testing.assert_allclose(resp, gm.predict_proba(blobs.numpy()), atol=1e-7)


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_monotone_and_result_fields(blobs, cov_type):
    res = EM(gaussian_mixture_model(4, cov_type), num_steps=300, tol=1e-9, seed=3,
             progress=False).run(blobs)
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert res.family == "em" and res.m_step == "closed_form"
    assert res.elbo == res.log_evidence
    assert res.latent_sites == ("assignment",)
    assert res.params["covariances"].shape == ((4, 2, 2) if cov_type == "full" else (4, 2))
    with res.scope():
        np.testing.assert_allclose(pyro.param("means").detach(), res.params["means"])


def test_gap_zero_and_exact_posterior_draws(blobs):
    res = EM(gaussian_mixture_model(3), num_steps=20, tol=0, seed=0, progress=False).run(blobs)
    draws = res.sample(7, seed=1)
    assert draws["assignment"].shape == (7, 300)
    # log p(x, z) - log q(z) is the same (= log p(x)) for every draw when q is exact
    gap = res.log_joint(draws) - res.log_posterior(draws)
    np.testing.assert_allclose(gap.numpy(), res.log_evidence, rtol=1e-10)
    # and the closed-form log evidence is Pyro's enumerated one (TraceEnum_ELBO)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    with res.scope():
        loss = elbo.loss(pyro.infer.config_enumerate(res.model), lambda d: None, blobs)
    assert -loss == pytest.approx(res.log_evidence, rel=1e-10)


def test_user_gmm_generic_m_step_reaches_closed_form_optimum(blobs):
    init = _init(blobs)

    def gmm(data):
        w = pyro.param("w", init["weights"].clone(), constraint=constraints.simplex)
        mu = pyro.param("mu", init["means"].clone())
        cov = pyro.param("cov", init["covariances"].clone(),
                         constraint=constraints.positive_definite)
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.MultivariateNormal(mu[z], covariance_matrix=cov[z]), obs=data)

    generic = EM(gmm, num_steps=100, tol=1e-9, seed=0, progress=False).run(blobs)
    closed = EM(gaussian_mixture_model(3, reg_covar=0.0, init=init), num_steps=100, tol=1e-9,
                seed=0, progress=False).run(blobs)
    assert generic.m_step == "generic" and closed.m_step == "closed_form"
    assert generic.converged and closed.converged
    trace = generic.log_evidence_trace
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert generic.log_evidence == pytest.approx(closed.log_evidence, rel=1e-7)
    np.testing.assert_allclose(generic.params["mu"], closed.params["means"], atol=1e-4)
    np.testing.assert_allclose(generic.params["w"], closed.params["weights"], atol=1e-5)
    np.testing.assert_allclose(generic.params["cov"], closed.params["covariances"], atol=1e-4)
    np.testing.assert_allclose(generic.posterior.marginals["z"],
                               closed.posterior.marginals["assignment"], atol=1e-4)


def test_n_init_keeps_best(blobs):
    res = EM(gaussian_mixture_model(3), num_steps=50, tol=1e-8, num_inits=4, seed=11,
             progress=False).run(blobs)
    assert len(res.log_evidence_inits) == 4
    assert res.log_evidence == max(res.log_evidence_inits)
    assert res.best_init == int(np.argmax(res.log_evidence_inits))
    assert res.seed == 11 + res.best_init
    single = EM(gaussian_mixture_model(3), num_steps=50, tol=1e-8, seed=11 + res.best_init,
                progress=False).run(blobs)
    assert single.log_evidence == pytest.approx(res.log_evidence, rel=1e-12)


def test_float32_matches_float64(blobs):
    init = _init(blobs)
    r64 = EM(gaussian_mixture_model(3, init=init), num_steps=30, tol=0, seed=0,
             progress=False).run(blobs)
    r32 = EM(gaussian_mixture_model(3, init=init, dtype=torch.float32), num_steps=30, tol=0,
             seed=0, progress=False).run(blobs)
    assert r32.params["means"].dtype == torch.float32
    assert r32.log_evidence == pytest.approx(r64.log_evidence, rel=1e-5)


def test_singular_covariance_names_component_and_remedies():
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(50, 2, generator=g), torch.full((5, 2), 1000.0)])
    init = {"means": torch.stack([X[:50].mean(0), torch.tensor([1000.0, 1000.0])]),
            "covariances": torch.eye(2).expand(2, 2, 2).clone(), "weights": torch.ones(2) / 2}
    model = gaussian_mixture_model(2, reg_covar=0.0, init=init)
    with pytest.raises(NonFiniteError, match=r"covariance of mixture component 1 .*singular.*"
                       r"Raise the floor reg_covar \(now 0\), use fewer components "
                       r"\(n_components=2\), or scale the data") as info:
        EM(model, num_steps=10, tol=0, seed=0, progress=False).run(X)
    assert info.value.site == "covariances"
    assert info.value.result is not None and "means" in info.value.result.params


def test_convergence_warning_names_knobs(blobs):
    from pyrovi.errors import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match=r"num_steps=2 .*tol=1e-12.*Increase num_steps"):
        res = EM(gaussian_mixture_model(3), num_steps=2, tol=1e-12, seed=0,
                 progress=False).run(blobs)
    assert not res.converged and res.num_steps == 2
