"""DADVI as the default optimizer of pyrovi.VI: the answers, the refusals of
method="dadvi", the fallbacks of method="auto" and what they record, linear response."""

from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
import pyrovi.vi.fit as vi_fit
from pyrovi import datasets, models
from pyrovi.errors import ConvergenceWarning, NonFiniteError
from tests.vi import models as small

F64 = torch.float64
QUIET = dict(progress=False, seed=0)


@pytest.fixture(scope="module")
def diabetes():
    X, y = datasets.diabetes()
    exact = pyrovi.log_evidence(models.linear_regression, X, y, method="exact").value
    precision = X.T @ X / 0.7**2 + torch.eye(X.shape[1], dtype=X.dtype)
    return X, y, exact, precision


def test_default_fullrank_fit_is_dadvi_and_reaches_the_exact_evidence(diabetes):
    X, y, exact, precision = diabetes
    fit = pyrovi.VI(models.linear_regression, "fullrank", **QUIET).run(X, y)
    assert fit.backend == "dadvi" and fit.converged
    assert abs(exact - fit.elbo) < 0.01
    assert fit.num_steps == len(fit.elbo_trace) == fit.dadvi.num_iters
    assert fit.elbo_particles == fit.dadvi.num_fresh >= 1000
    assert any("fitted by DADVI with M = " in n and "check passed" in n for n in fit.notes)
    sd = fit.sample(4000, seed=1)["w"].std(0)
    exact_sd = torch.linalg.inv(precision).diagonal().sqrt()
    assert float(((sd - exact_sd).abs() / exact_sd).max()) < 0.06


def test_default_meanfield_fit_reaches_the_family_optimum(diabetes):
    X, y, exact, precision = diabetes
    cov = torch.linalg.inv(precision)
    q_var = 1 / precision.diagonal()
    d = X.shape[1]
    kl = 0.5 * ((precision.diagonal() * q_var).sum() - d + torch.logdet(cov) - q_var.log().sum())
    best = exact - float(kl)
    fit = pyrovi.VI(models.linear_regression, **QUIET).run(X, y)
    assert fit.backend == "dadvi" and fit.converged
    assert abs(best - fit.elbo) < 0.01 + 3 * fit.elbo_se
    scales = fit.params["AutoNormal.scales.w"].double()
    torch.testing.assert_close(scales**2, q_var, rtol=1e-5, atol=0)


def test_linear_response_covariance_is_the_exact_posterior_covariance():
    X, y = small.regression_data()
    _, cov = small.regression_posterior(X, y)
    fit = pyrovi.VI(small.regression, "meanfield", **QUIET).run(X, y)
    lr = fit.linear_response_covariance()
    torch.testing.assert_close(lr, cov, atol=1e-8, rtol=1e-6)
    # while the meanfield variances themselves are too small on this correlated posterior
    assert (fit.params["AutoNormal.scales.w"].double() ** 2 < 0.5 * cov.diagonal()).all()
    sgd = pyrovi.VI(small.regression, "meanfield", method="sgd", num_steps=100,
                    **QUIET).run(X, y)
    with pytest.raises(ValueError, match="needs a fit by DADVI.*backend='compiled'"):
        sgd.linear_response_covariance()


def mixture(data):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def with_param(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    s = pyro.param("s", torch.tensor(2.0), constraint=dist.constraints.positive)
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, s), obs=y)


def wide(y):
    """Fifty latents: fullrank DADVI is not used above 200 dimensions; here the limit is
    lowered for the test."""
    w = pyro.sample("w", dist.Normal(torch.zeros(50, dtype=y.dtype), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(w.sum(-1), 1.0), obs=y)


def _refusals(tmp_path):
    y = small.normal_normal_data()
    data = torch.cat([torch.randn(10) - 4, torch.randn(10) + 4])
    return [
        (small.normal_normal, (y,), dict(guide="laplace"), r"not guide='laplace'"),
        (small.normal_normal, (y,), dict(guide="delta"), r"not guide='delta'"),
        (small.normal_normal, (y,), dict(optim=torch.optim.SGD), r"custom optimizer"),
        (small.normal_normal, (y,), dict(backend="svi"), r"backend='svi'"),
        (small.normal_normal, (y,), dict(checkpoint=tmp_path / "f.ckpt"), r"checkpoints"),
        (mixture, (data,), dict(), r"discrete latent sites \['z'\]"),
        (with_param, (y.float(),), dict(), r"pyro.param sites \['s'\]"),
        (wide, (torch.tensor(1.0, dtype=F64),), dict(guide="fullrank"),
         r"fullrank with 50 > 20 unconstrained dimensions"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_method_dadvi_refuses_naming_why(case, tmp_path, monkeypatch):
    monkeypatch.setattr(vi_fit, "DADVI_MAX_FULLRANK_DIM", 20)
    model, args, kwargs, match = _refusals(tmp_path)[case]
    vi = pyrovi.VI(model, method="dadvi", num_steps=50, **QUIET, **kwargs)
    with pytest.raises(ValueError, match=r"method='dadvi' cannot fit this model/guide: .*"
                       + match):
        vi.run(*args)


@pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::pyrovi.errors.FallbackWarning")
@pytest.mark.parametrize("case", range(8))
def test_auto_falls_back_to_sgd_and_records_why(case, tmp_path, monkeypatch):
    monkeypatch.setattr(vi_fit, "DADVI_MAX_FULLRANK_DIM", 20)
    model, args, kwargs, match = _refusals(tmp_path)[case]
    fit = pyrovi.VI(model, num_steps=200, **QUIET, **kwargs).run(*args)
    assert fit.backend in ("compiled", "svi") and fit.dadvi is None
    notes = [n for n in fit.notes if n.startswith("DADVI was not used")]
    assert len(notes) == 1 and __import__("re").search(match, notes[0]), fit.notes


def test_method_is_checked_when_configured():
    with pytest.raises(ValueError, match=r"method must be 'auto', 'dadvi' or 'sgd', got 'lbfgs'"):
        pyrovi.VI(small.normal_normal, method="lbfgs")


def test_sgd_is_todays_loop():
    y = small.normal_normal_data()
    fit = pyrovi.VI(small.normal_normal, method="sgd", num_steps=300, **QUIET).run(y)
    assert fit.backend == "compiled" and fit.dadvi is None
    assert not any("DADVI" in n for n in fit.notes)
    assert fit.num_particles == 8 and fit.elbo_particles == 1000


def test_num_steps_caps_dadvi_iterations():
    X, y = small.regression_data()
    with pytest.warns(ConvergenceWarning, match=r"DADVI stopped at num_steps=3"):
        fit = pyrovi.VI(small.regression, "fullrank", num_steps=3, **QUIET).run(X, y)
    assert fit.backend == "dadvi" and not fit.converged
    assert fit.num_steps == len(fit.elbo_trace) == 3


def walled(y):
    """The log density is -inf wherever |mu| < 1, and the fit starts at mu = 0."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 3.0))
    pyro.factor("wall", torch.where(mu.abs() < 1.0, -math.inf, 0.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 2.0), obs=y)


@pytest.mark.parametrize("method", ["auto", "dadvi", "sgd"])
def test_a_non_finite_start_raises_what_sgd_raises(method):
    y = small.normal_normal_data()
    with pytest.raises(NonFiniteError, match=r"became non-finite at step 0") as info:
        pyrovi.VI(walled, method=method, max_skips=3, **QUIET).run(y)
    if method == "auto":
        assert any("DADVI could not start" in n for n in info.value.result.notes)


def test_auto_falls_back_when_dadvi_itself_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(vi_fit.dadvi, "fit_dadvi", broken)
    y = small.normal_normal_data()
    fit = pyrovi.VI(small.normal_normal, window=50, tol=1e-3, **QUIET).run(y)
    assert fit.backend == "compiled"
    assert any("DADVI failed (RuntimeError): no batching rule" in n for n in fit.notes)
    with pytest.raises(RuntimeError, match="no batching rule"):
        pyrovi.VI(small.normal_normal, method="dadvi", **QUIET).run(y)


def scale_model(y):
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=y.dtype)))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, sigma), obs=y)


@pytest.fixture
def two_draws(monkeypatch):
    """DADVI with M = 2 and no room to grow: its fresh-draw check fails at the cap on a
    non-Gaussian posterior."""
    fit_dadvi = vi_fit.dadvi.fit_dadvi
    monkeypatch.setattr(vi_fit.dadvi, "fit_dadvi", functools.partial(
        fit_dadvi, num_draws=2, max_draws=2, check_tol=1e-4))


def test_auto_warm_starts_sgd_when_the_check_fails_at_the_cap(two_draws):
    y = torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=F64)
    fit = pyrovi.VI(scale_model, window=50, tol=1e-3, **QUIET).run(y)
    assert fit.backend == "compiled" and fit.dadvi is None and fit.converged
    note = [n for n in fit.notes if "DADVI did not reach a verified optimum" in n]
    assert len(note) == 1 and "fresh-draw check failed at the cap M = 2" in note[0]
    assert "warm start" in note[0]


def test_method_dadvi_warns_when_the_check_fails_at_the_cap(two_draws):
    y = torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(ConvergenceWarning, match=r"DADVI did not reach a verified optimum"):
        fit = pyrovi.VI(scale_model, method="dadvi", **QUIET).run(y)
    assert fit.backend == "dadvi" and not fit.converged
    assert not fit.dadvi.check_passed and fit.dadvi.num_draws == 2
