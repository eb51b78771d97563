"""Generic EM: enumeration (mixtures, HMMs) and linear-Gaussian latents; errors up front."""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyrovi._model import inspect_model
from pyrovi.em import EM, gaussian_mixture_model
from pyrovi.em.estep import (
    enum_e_step,
    enum_expected_log_joint,
    gaussian_e_step,
    gaussian_expected_log_joint,
    latent_layout,
    make_log_joint,
)
from pyrovi.em.posterior import model_layout, particle_dim
from pyrovi.errors import ModelError, PyroviError


def hmm(ys):
    init = pyro.param("init", torch.tensor([0.6, 0.4]), constraint=constraints.simplex)
    trans = pyro.param("trans", torch.tensor([[0.7, 0.3], [0.4, 0.6]]),
                       constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
    z = pyro.sample("z_0", dist.Categorical(init))
    pyro.sample("y_0", dist.Normal(locs[z], 1.0), obs=ys[0])
    for t in pyro.markov(range(1, ys.shape[0])):
        z = pyro.sample(f"z_{t}", dist.Categorical(trans[z]))
        pyro.sample(f"y_{t}", dist.Normal(locs[z], 1.0), obs=ys[t])


YS = torch.tensor([-2.1, -1.7, -2.4, 1.9, 2.2, 1.5, -1.8, 2.0])


def blr(X, y):
    tau = pyro.param("tau", torch.tensor(1.0), constraint=constraints.positive)
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=constraints.positive)
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), tau).to_event(1))
    with pyro.plate("n", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), sigma), obs=y)


def _blr_data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(40, generator=g)
    return X, y


def _brute_force_hmm_log_evidence(params, ys):
    init, trans, locs = params["init"], params["trans"], params["locs"]
    total = []
    for zs in itertools.product(range(2), repeat=len(ys)):
        lp = init[zs[0]].log() + dist.Normal(locs[zs[0]], 1.0).log_prob(ys[0])
        for t in range(1, len(ys)):
            lp = lp + trans[zs[t - 1], zs[t]].log() + dist.Normal(locs[zs[t]], 1.0).log_prob(ys[t])
        total.append(lp)
    return torch.logsumexp(torch.stack(total), 0)


def test_hmm_monotone_exact_evidence_and_posterior():
    res = EM(hmm, num_steps=15, tol=1e-8, seed=0, progress=False).run(YS)
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert trace[-1] > trace[0] + 1.0
    exact = _brute_force_hmm_log_evidence(res.params, YS)
    assert res.log_evidence == pytest.approx(float(exact), rel=1e-10)
    # exact joint posterior: sums to one over all 2^T paths, and draws follow it
    paths = torch.tensor(list(itertools.product(range(2), repeat=len(YS))))
    samples = {f"z_{t}": paths[:, t] for t in range(len(YS))}
    logp = res.log_posterior(samples)
    assert float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-10)
    draws = res.sample(3000, seed=0)
    assert draws["z_0"].shape == (3000,)
    marg = res.posterior.marginals["z_3"][..., 1]
    freq = draws["z_3"].double().mean()
    assert float(freq) == pytest.approx(float(marg), abs=0.03)
    p_z3 = logp.exp()[paths[:, 3] == 1].sum()
    assert float(p_z3) == pytest.approx(float(marg), abs=1e-8)


def test_enum_gap_zero_after_e_step(blobs):
    """Q(theta_t | theta_t) + H(q_t) == log p(x | theta_t): the ELBO at the exact posterior."""
    model = gaussian_mixture_model(3)
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(0)
        for _ in range(3):  # a few iterations of the generic path, checking each E-step
            estep = enum_e_step(model, 1, (blobs,), {})
            q = enum_expected_log_joint(model, 1, (blobs,), {}, estep)
            elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
            marg = elbo.compute_marginals(pyro.infer.config_enumerate(model), lambda d: None,
                                          blobs)["assignment"].probs
            entropy = -(marg * marg.clamp_min(1e-300).log()).sum()
            log_z = -elbo.loss(pyro.infer.config_enumerate(model), lambda d: None, blobs)
            assert float((q + entropy).detach()) == pytest.approx(log_z, rel=1e-10)
            assert float(estep.log_evidence) == pytest.approx(log_z, rel=1e-12)
            from pyrovi.em.mstep import maximize_q

            params = [p for _, p in pyro.get_param_store().named_parameters()]
            before, after = maximize_q(
                lambda e=estep: enum_expected_log_joint(model, 1, (blobs,), {}, e), params,
                scale=300)
            assert after >= before


def test_blr_exact_evidence_and_gap_zero():
    X, y = _blr_data()
    res = EM(blr, num_steps=100, tol=1e-10, seed=0, progress=False).run(X, y)
    assert res.converged
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    tau, sigma = res.params["tau"], res.params["sigma"]
    cov = tau**2 * X @ X.T + sigma**2 * torch.eye(40)
    exact = dist.MultivariateNormal(torch.zeros(40), cov).log_prob(y)
    assert res.log_evidence == pytest.approx(float(exact), rel=1e-10)
    # evidence maximum: the gradient of the exact marginal likelihood vanishes
    t, s = tau.clone().requires_grad_(), sigma.clone().requires_grad_()
    ll = dist.MultivariateNormal(torch.zeros(40), t**2 * X @ X.T + s**2 * torch.eye(40)).log_prob(y)
    grads = torch.autograd.grad(ll, (t, s))
    assert max(abs(float(g)) for g in grads) < 1e-3
    # posterior moments: the conjugate formula
    prec = X.T @ X / sigma**2 + torch.eye(3) / tau**2
    mean = torch.linalg.solve(prec, X.T @ y / sigma**2)
    np.testing.assert_allclose(res.posterior.flat_mean, mean, rtol=1e-8)
    np.testing.assert_allclose(res.posterior.dense_covariance(), torch.linalg.inv(prec),
                               rtol=1e-8)
    draws = res.sample(5, seed=0)
    assert draws["w"].shape == (5, 3)
    gap = res.log_joint(draws) - res.log_posterior(draws)
    np.testing.assert_allclose(gap.numpy(), res.log_evidence, rtol=1e-10)


def test_gaussian_gap_zero_after_e_step():
    """E_q[log p(x, z)] (sigma points) + H(q) == log p(x) (Laplace identity), each E-step."""
    X, y = _blr_data()
    with pyro.get_param_store().scope():
        info = inspect_model(blr, (X, y), {})
        sites, z0 = latent_layout(info)
        f = make_log_joint(blr, (X, y), {}, sites, particle_dim(info.trace, 1),
                           model_layout(info.trace, info.latent))
        for tau in (0.5, 1.0, 3.0):
            pyro.get_param_store()["tau"] = torch.tensor(tau)
            estep = gaussian_e_step(f, torch.zeros_like(z0), sites)
            q = gaussian_expected_log_joint(f, estep)
            entropy = 0.5 * torch.logdet(2 * math.pi * math.e * estep.covariance)
            assert float((q + entropy).detach()) == pytest.approx(float(estep.log_evidence),
                                                          rel=1e-10)


def test_ready_model_generic_m_step_is_forced(blobs):
    res = EM(gaussian_mixture_model(3, reg_covar=0.0), m_step="generic", num_steps=3, tol=0,
             seed=0, progress=False).run(blobs)
    assert res.m_step == "generic"
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))


def test_non_broadcasting_model_falls_back_with_warning():
    from pyrovi.errors import FallbackWarning

    def blr_matmul(X, y):
        tau = pyro.param("tau", torch.tensor(1.0), constraint=constraints.positive)
        w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), tau).to_event(1))
        with pyro.plate("n", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, 0.3), obs=y)

    X, y = _blr_data()
    with pytest.warns(FallbackWarning, match=r"blr_matmul' does not broadcast over an extra"):
        res = EM(blr_matmul, num_steps=20, tol=1e-9, seed=0, progress=False).run(X, y)
    cov = res.params["tau"] ** 2 * X @ X.T + 0.09 * torch.eye(40)
    exact = dist.MultivariateNormal(torch.zeros(40), cov).log_prob(y)
    assert res.log_evidence == pytest.approx(float(exact), rel=1e-10)


# ------------------------------------------------------------------------------ refusals


def test_infinite_support_latent_refused():
    def model(x):
        rate = pyro.param("rate", torch.tensor(2.0), constraint=constraints.positive)
        k = pyro.sample("k", dist.Poisson(rate))
        pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    with pytest.raises(ModelError, match=r"site 'k' is discrete with infinite support "
                       r"\(Poisson\).*use pyrovi.VI") as info:
        EM(model, progress=False).run(torch.tensor(1.0))
    assert info.value.site == "k"


def test_constrained_continuous_latent_refused():
    def model(x):
        a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
        s = pyro.sample("s", dist.Gamma(a, 1.0))
        pyro.sample("x", dist.Normal(0.0, s), obs=x)

    with pytest.raises(ModelError, match=r"site 's' is a continuous latent with support "
                       r"GreaterThan.*use pyrovi.VI"):
        EM(model, progress=False).run(torch.tensor(1.0))


def test_non_quadratic_latent_refused():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        with pyro.plate("n", x.shape[0]):
            pyro.sample("x", dist.Poisson(z.exp()), obs=x)

    with pytest.raises(ModelError, match=r"site 'z' is a continuous latent whose log joint is "
                       r"not quadratic.*use pyrovi.VI"):
        EM(model, progress=False).run(torch.tensor([1.0, 3.0, 2.0]))


def test_mixed_latents_and_no_latent_refused(blobs):
    def mixed(x):
        w = pyro.param("w", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        c = pyro.sample("c", dist.Categorical(w))
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + c, 1.0), obs=x)

    with pytest.raises(ModelError, match=r"mixes discrete latents \['c'\] with continuous "
                       r"latents \['z'\]"):
        EM(mixed, progress=False).run(torch.tensor(0.3))

    def no_latent(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    with pytest.raises(ModelError, match=r"has no latent \(unobserved\) sample site"):
        EM(no_latent, progress=False).run(torch.tensor(0.3))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"num_steps": 0}, ValueError, r"num_steps must be a positive int, got 0"),
        ({"num_steps": 2.5}, TypeError, r"num_steps must be a positive int, got float 2.5"),
        ({"tol": -1.0}, ValueError, r"tol must be a finite non-negative number .*got -1.0"),
        ({"num_inits": 0}, ValueError, r"num_inits must be a positive int, got 0"),
        ({"m_step": "newton"}, ValueError, r"m_step must be one of \('auto', 'generic', "
                                           r"'closed_form'\), got 'newton'"),
        ({"m_step": "closed_form"}, ValueError, r"m_step='closed_form' but model 'hmm' has no "
                                                r"closed-form M-step"),
    ],
)
def test_bad_arguments_refused(kwargs, err, match):
    with pytest.raises(err, match=match):
        EM(hmm, **kwargs)


def test_not_concave_latent_refused():
    def model(x):
        s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.factor("convex", 0.6 * b**2)  # log joint convex in b: no Gaussian posterior
        pyro.sample("x", dist.Normal(a, s), obs=x)

    with pytest.raises(PyroviError, match=r"precision -H of the latents \['a', 'b'\] is not "
                       r"positive definite.*proper Gaussian prior"):
        EM(model, progress=False).run(torch.tensor(0.5))


def test_old_keyword_and_attribute_names_still_work_with_a_deprecation_warning():
    from pyrovi.em import gaussian_mixture_model

    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    new = EM(gaussian_mixture_model(2), num_steps=5, num_inits=2, tol=0, seed=0,
             progress=False).run(x)
    with pytest.warns(DeprecationWarning, match=r"EM: the keyword num_iters= is now num_steps="):
        old = EM(gaussian_mixture_model(2), num_iters=5, num_inits=2, tol=0, seed=0,
                 progress=False).run(x)
    np.testing.assert_array_equal(old.log_evidence_trace, new.log_evidence_trace)
    with pytest.warns(DeprecationWarning, match=r"the keyword n_init= is now num_inits="):
        EM(gaussian_mixture_model(2), n_init=2, progress=False)
    with pytest.raises(TypeError, match=r"EM got both num_steps= and its old name num_iters="):
        EM(gaussian_mixture_model(2), num_steps=7, num_iters=5)
    with pytest.warns(DeprecationWarning, match=r"EMResult.n_iter is now EMResult.num_steps"):
        assert new.n_iter == new.num_steps == 5
    with pytest.warns(DeprecationWarning, match=r"EMResult.n_obs is now EMResult.num_obs"):
        assert new.n_obs == new.num_obs == 60


@pytest.mark.parametrize("link", ["abs", "relu"])
def test_kinked_latent_that_looks_quadratic_near_the_mode_is_refused(link):
    """abs/relu of a latent: the Hessian is the same at every point off the kink, so only
    the quadratic's prediction far from the mode (the check the exact evidence makes,
    shared: pyrovi.em.estep.prove_quadratic) shows that the E-step would not be exact."""
    fn = torch.abs if link == "abs" else torch.relu

    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0, dtype=torch.float64))
        z = pyro.sample("z", dist.Normal(torch.tensor(1.0, dtype=torch.float64), 1.0))
        with pyro.plate("n", x.shape[0]):
            # the kink at z = -0.5: the start (z = 0) and the mode (z ~ 2) are on one side
            pyro.sample("x", dist.Normal(fn(z + 0.5) + loc, 1.0), obs=x)

    x = torch.tensor([2.5, 3.0, 3.5], dtype=torch.float64)
    with pytest.raises(ModelError, match=r"site 'z' is a continuous latent whose log joint is "
                       r"not quadratic \(the quadratic at the mode does not predict log p\(x, "
                       r"z\) \d+ posterior standard deviations away.*use pyrovi.VI"):
        EM(model, progress=False).run(x)


def test_kink_in_one_of_two_latents_is_named():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0, dtype=torch.float64))
        a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        b = pyro.sample("b", dist.Normal(torch.tensor(1.0, dtype=torch.float64), 1.0))
        with pyro.plate("n", x.shape[0]):
            pyro.sample("x", dist.Normal(a + torch.abs(b + 0.5) + loc, 1.0), obs=x)

    x = torch.tensor([2.5, 3.0, 3.5], dtype=torch.float64)
    with pytest.raises(ModelError, match=r"site 'b' is a continuous latent whose log joint") as info:
        EM(model, progress=False).run(x)
    assert info.value.site == "b"


def test_linear_gaussian_model_still_passes_the_proof():
    """The exact check passes a truly linear-Gaussian model, and the E-step is exact: EM's
    log evidence equals the closed form p(x | loc) = N(x; loc + 1, I + 11^T)."""
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0, dtype=torch.float64))
        z = pyro.sample("z", dist.Normal(torch.tensor(1.0, dtype=torch.float64), 1.0))
        with pyro.plate("n", x.shape[0]):
            pyro.sample("x", dist.Normal(z + loc, 1.0), obs=x)

    x = torch.tensor([2.5, 3.0, 3.5], dtype=torch.float64)
    res = EM(model, progress=False, num_steps=1, tol=0, seed=0).run(x)
    cov = torch.eye(3, dtype=torch.float64) + 1.0
    exact = dist.MultivariateNormal(torch.ones(3, dtype=torch.float64), cov).log_prob(x)
    assert res.log_evidence_trace[0] == pytest.approx(float(exact), abs=1e-8)
