"""Small models and fits shared by the ArviZ export tests (fitted once per session)."""

import warnings

import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from pyrovi.errors import ConvergenceWarning

matplotlib.use("Agg")

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    """Non-centred eight schools."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", sigma.shape[0]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def conjugate(x):
    """z ~ N(loc, 1), x_i ~ N(z, 1): an exact Gaussian posterior; ``loc`` a parameter."""
    loc = pyro.param("loc", torch.tensor(0.0))
    z = pyro.sample("z", dist.Normal(loc, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def nested(x):
    """Nested plates (groups x items), an event-shaped site inside them and one outside."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("groups", 3, dim=-2):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 4, dim=-1):
            v = pyro.sample("v", dist.Normal(torch.zeros(5), 1.0).to_event(1))
            loc = g + v.sum(-1) + w.sum(-1)
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)


def fit(model, family, *args, num_steps=200, **kwargs):
    # method="sgd": these fixtures check the export of a stochastic-gradient fit that ran its
    # whole step budget (num_steps == 200); the default would fit by DADVI in fewer steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pyrovi.VI(
            model, family, seed=0, progress=False, num_steps=num_steps, method="sgd"
        ).run(*args, **kwargs)


@pytest.fixture(scope="session")
def meanfield():
    return fit(eight_schools, "meanfield", SIGMA, y=Y)


@pytest.fixture(scope="session")
def fullrank():
    return fit(eight_schools, "fullrank", SIGMA, y=Y)


@pytest.fixture(scope="session")
def conjugate_data():
    return torch.linspace(-0.5, 3.5, 20)


@pytest.fixture(scope="session")
def em_fit(conjugate_data):
    em = pytest.importorskip("pyrovi.em", reason="pyrovi.em is not available yet")
    return em.EM(conjugate, seed=0, progress=False, num_steps=50).run(conjugate_data)


@pytest.fixture(scope="session")
def nested_fit():
    x = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
    return fit(nested, "meanfield", x, num_steps=5)


@pytest.fixture(scope="session")
def schools_data():
    """(sigma, y) of the eight schools."""
    return SIGMA, Y
