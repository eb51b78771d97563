"""Shared models and fits for the diagnostics tests (float64 tensors built explicitly; fits
are session-scoped because a fit takes seconds on the CI's shared cores)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi

F64 = torch.float64
NOISE = 0.5


def make_regression(n=20, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=F64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=F64)[:d]
    y = X @ w + NOISE * torch.randn(n, generator=gen, dtype=F64)
    return X, y


def linreg(X, y):
    """Bayesian linear regression with known noise: linear-Gaussian, closed-form evidence."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=F64), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), NOISE), obs=y)


def closed_form_evidence(X, y) -> float:
    """y ~ N(0, X X^T + noise^2 I) after integrating w ~ N(0, I) out."""
    cov = X @ X.T + NOISE**2 * torch.eye(X.shape[0], dtype=F64)
    return float(dist.MultivariateNormal(torch.zeros(X.shape[0], dtype=F64), cov).log_prob(y))


def fit(family, **kw):
    X, y = make_regression()
    options = dict(seed=0, progress=False, tol=1e-3, window=50)
    options.update(kw)
    return pyrovi.VI(linreg, family, **options).run(X, y)


@pytest.fixture(scope="module")
def data():
    return make_regression()


@pytest.fixture(scope="module")
def exact(data):
    return closed_form_evidence(*data)


@pytest.fixture(scope="session")
def fullrank():
    # method="sgd": the suite's checks (e.g. test_accuracy's error bounds against a
    # 5,000-draw estimate of q's mean) assume a fit with a visible KL; DADVI's fullrank fit
    # of this linear-Gaussian model is exact to 1e-9, its bounds ~3e-6, below the draws' own
    # Monte Carlo error
    return fit("fullrank", method="sgd")


@pytest.fixture(scope="session")
def meanfield():
    return fit("meanfield")


def gmm_data(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64)
    labels = torch.arange(n) % 2
    return centers[labels] + 0.7 * torch.randn(n, 2, generator=gen, dtype=F64)


@pytest.fixture(scope="session")
def em_result():
    em = pytest.importorskip("pyrovi.em")
    return em.EM(em.gaussian_mixture_model(2), seed=0, progress=False).run(gmm_data())
