"""What each group holds: the guide's moments, lp / log_q / log_weight, pointwise
log-likelihoods, predictive and prior draws, the optimization trace and attributes."""

import dataclasses
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from pyrovi.arviz import decode_attrs, to_arviz

from ._lines import group_names


def _np(x):
    return np.asarray(x, dtype=np.float64)


def test_groups_and_attributes(meanfield, schools_data):
    SIGMA, Y = schools_data
    idata = meanfield.to_arviz(48)
    assert set(group_names(idata)) == {
        "posterior", "sample_stats", "log_likelihood", "posterior_predictive",
        "observed_data", "constant_data", "vi_trace",
    }
    attrs = decode_attrs(idata.posterior.attrs)
    assert attrs["inference_method"] == "variational"
    assert attrs["guide_family"] == "meanfield"
    assert attrs["num_steps"] == meanfield.num_steps == 200
    assert attrs["seed"] == 0 and attrs["converged"] is meanfield.converged
    assert attrs["pyrovi_version"] == pyrovi.__version__
    assert attrs["pyro_version"] == pyro.__version__
    assert attrs["torch_version"] == torch.__version__
    np.testing.assert_array_equal(idata.observed_data["obs"], Y.numpy())
    np.testing.assert_array_equal(idata.constant_data["sigma"], SIGMA.numpy())
    assert "y" not in idata.constant_data  # the observed data are observed_data only


def test_vi_trace_holds_the_elbo_per_step(meanfield):
    trace = meanfield.to_arviz(40).vi_trace
    assert trace["elbo"].dims == ("chain", "step")  # the fit behind each chain
    np.testing.assert_allclose(trace["elbo"].sel(chain=0), meanfield.elbo_trace)
    attrs = decode_attrs(trace.attrs)
    assert attrs["elbo"] == pytest.approx(meanfield.elbo)
    assert attrs["elbo_se"] == pytest.approx(meanfield.elbo_se)


def test_draws_have_the_meanfield_guide_moments(meanfield):
    post = to_arviz(
        meanfield, 4000, num_chains=1, posterior_predictive=False, log_likelihood=False
    ).posterior
    n = 4000
    for site, transform in (("mu", lambda x: x), ("tau", np.log), ("theta_tilde", lambda x: x)):
        loc = meanfield.params[f"AutoNormal.locs.{site}"].numpy()
        scale = meanfield.params[f"AutoNormal.scales.{site}"].numpy()
        draws = transform(_np(post[site].values[0]))  # unconstrained, where q is Normal
        np.testing.assert_allclose(draws.mean(0), loc, atol=5 * scale.max() / math.sqrt(n))
        np.testing.assert_allclose(draws.std(0), scale, rtol=5 / math.sqrt(2 * n))


def test_log_densities_match_the_model_and_guide(meanfield, schools_data):
    SIGMA, Y = schools_data
    idata = to_arviz(meanfield, 200, num_chains=1, posterior_predictive=False)
    post, stats = idata.posterior, idata.sample_stats
    mu = torch.as_tensor(post["mu"].values[0])
    tau = torch.as_tensor(post["tau"].values[0])
    theta = torch.as_tensor(post["theta_tilde"].values[0])
    log_lik = dist.Normal(mu[:, None] + tau[:, None] * theta, SIGMA).log_prob(Y)
    lp = (
        dist.Normal(0.0, 5.0).log_prob(mu)
        + dist.HalfCauchy(5.0).log_prob(tau)
        + dist.Normal(0.0, 1.0).log_prob(theta).sum(-1)
        + log_lik.sum(-1)
    )
    p = meanfield.params
    log_q = (
        dist.Normal(p["AutoNormal.locs.mu"], p["AutoNormal.scales.mu"]).log_prob(mu)
        + dist.Normal(p["AutoNormal.locs.tau"], p["AutoNormal.scales.tau"]).log_prob(tau.log())
        - tau.log()  # Jacobian of tau = exp(u)
        + dist.Normal(p["AutoNormal.locs.theta_tilde"], p["AutoNormal.scales.theta_tilde"])
        .log_prob(theta)
        .sum(-1)
    )
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], log_lik, rtol=1e-5)
    np.testing.assert_allclose(stats["lp"].values[0], lp, rtol=1e-5)
    np.testing.assert_allclose(stats["log_q"].values[0], log_q, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        stats["log_weight"], stats["lp"] - stats["log_q"], rtol=1e-6, atol=1e-6
    )


def test_fullrank_log_weight_is_lp_minus_log_q(fullrank):
    stats = to_arviz(fullrank, 100, num_chains=1).sample_stats
    np.testing.assert_allclose(stats["log_weight"], stats["lp"] - stats["log_q"], atol=1e-5)
    # the mean log weight is an ELBO estimate: it agrees with the fit's own
    w = _np(stats["log_weight"].values[0])
    assert abs(w.mean() - fullrank.elbo) < 5 * (w.std() / 10 + fullrank.elbo_se)


def test_posterior_predictive_uses_the_posterior_draws(meanfield, schools_data):
    SIGMA, _ = schools_data
    idata = to_arviz(meanfield, 2000, num_chains=1, log_likelihood=False)
    post = idata.posterior
    loc = post["mu"] + post["tau"] * post["theta_tilde"]
    resid = (idata.posterior_predictive["obs"] - loc).values[0]
    # obs = loc + sigma * eps exactly when the predictive reuses each posterior draw
    np.testing.assert_allclose(resid.std(0), SIGMA.numpy(), rtol=0.1)
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=4 * SIGMA.numpy().max() / math.sqrt(2000))


def test_prior_groups_have_the_prior_moments(meanfield):
    idata = to_arviz(meanfield, 2000, num_chains=1, prior=True, log_likelihood=False)
    mu = _np(idata.prior["mu"].values[0])
    assert abs(mu.mean()) < 4 * 5.0 / math.sqrt(2000)
    assert mu.std() == pytest.approx(5.0, rel=0.08)
    theta = _np(idata.prior["theta_tilde"].values[0])
    assert theta.std() == pytest.approx(1.0, rel=0.05)
    assert idata.prior_predictive["obs"].dims == ("chain", "draw", "schools")


def test_same_seed_same_draws_and_default_is_the_fit_seed(meanfield):
    a = to_arviz(meanfield, 20, posterior_predictive=False)
    b = to_arviz(meanfield, 20, posterior_predictive=False, seed=meanfield.seed)
    c = to_arviz(meanfield, 20, posterior_predictive=False, seed=123)
    np.testing.assert_array_equal(a.posterior["mu"], b.posterior["mu"])
    assert not np.array_equal(a.posterior["mu"], c.posterior["mu"])
    assert decode_attrs(c.posterior.attrs)["export_seed"] == 123


@dataclasses.dataclass(frozen=True)
class FakeDiagnostics:
    """Stands in for pyrovi.diagnostics.Diagnostics (only its dataclass-ness is used)."""

    elbo: float
    log_evidence: float
    log_evidence_method: str
    khat: float
    samples: tuple = (1, 2)  # not scalar: left out


def test_diagnostics_become_trace_attributes(meanfield):
    diag = FakeDiagnostics(elbo=-31.0, log_evidence=-30.5, log_evidence_method="is", khat=0.4)
    attrs = decode_attrs(to_arviz(meanfield, 40, diagnostics=diag).vi_trace.attrs)
    assert attrs["diagnostics_log_evidence"] == -30.5
    assert attrs["diagnostics_log_evidence_method"] == "is"
    assert attrs["diagnostics_khat"] == 0.4
    assert "diagnostics_samples" not in attrs
    with pytest.raises(TypeError, match="diagnostics must be a dataclass"):
        to_arviz(meanfield, 40, diagnostics=3.0)


# ---------------------------------------------------------------------------- EM
def test_em_export_is_exact(em_fit, conjugate_data):
    idata = em_fit.to_arviz(4000, num_chains=1)
    assert decode_attrs(idata.posterior.attrs)["inference_method"] == "expectation_maximization"
    # exact posterior draws: log_weight = log p(x, z) - log p(z | x) = log p(x) everywhere
    np.testing.assert_allclose(idata.sample_stats["log_weight"], em_fit.log_evidence, atol=1e-3)
    # moments of the exact Gaussian posterior N(m, 1 / (n + 1)), m = (loc + sum x) / (n + 1)
    n = conjugate_data.shape[0]
    loc = float(em_fit.params["loc"])
    mean, sd = (loc + float(conjugate_data.sum())) / (n + 1), 1 / math.sqrt(n + 1)
    z = _np(idata.posterior["z"].values[0])
    assert abs(z.mean() - mean) < 5 * sd / math.sqrt(4000)
    assert z.std() == pytest.approx(sd, rel=0.06)
    trace = idata.em_trace
    assert trace["log_evidence"].dims == ("chain", "iteration")  # the fit behind each chain
    np.testing.assert_allclose(trace["log_evidence"].sel(chain=0), em_fit.log_evidence_trace)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "data")


# ------------------------------------------------------------- enumerated discrete latents
def mixture(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7])))
        pyro.sample("obs", dist.Normal(loc[k], 1.0), obs=x)


def test_enumerated_model_exports_marginal_lp_and_discrete_draws():
    import warnings

    x = torch.tensor([-2.0, -1.5, 2.0, 2.5, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pyrovi.VI(mixture, "meanfield", seed=0, progress=False, num_steps=5).run(x)
    assert result.enumerated_sites == ("k",)
    idata = to_arviz(result, 15, num_chains=1, log_likelihood="conditional")
    loc = torch.as_tensor(idata.posterior["loc"].values[0])  # (15, 2)
    k = torch.as_tensor(idata.posterior["k"].values[0])  # (15, 5)
    assert idata.posterior["k"].dims == ("chain", "draw", "data")
    assert set(k.unique().tolist()) <= {0, 1}
    comp = torch.log(torch.tensor([0.3, 0.7])) + dist.Normal(loc[:, None, :], 1.0).log_prob(
        x[None, :, None]
    )
    lp = dist.Normal(0.0, 5.0).log_prob(loc).sum(-1) + comp.logsumexp(-1).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], lp, rtol=1e-5)
    log_lik = dist.Normal(loc.gather(1, k), 1.0).log_prob(x)  # conditional on the drawn k
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], log_lik, rtol=1e-5)
