"""Models on data of any scale with closed-form posteriors (tests/vi/test_convergence.py)."""

import math

import pyro
import pyro.distributions as dist
import torch


def located_normal(y):
    """y_i ~ N(mu, 1), mu ~ N(0, 1e7): data located at 1e6 with unit spread."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1e7))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def located_posterior(y):
    """Mean and sd of mu | y."""
    prec = 1 / 1e14 + y.shape[0]
    return float(y.sum()) / prec, math.sqrt(1 / prec)


def scale_model(y):
    """y_i ~ N(0, v), v ~ InverseGamma(3, 2): data of any scale."""
    v = pyro.sample("v", dist.InverseGamma(3.0, 2.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, v.sqrt()), obs=y)


def scale_posterior(y):
    """Mean and sd of log v | y (v | y ~ InverseGamma(3 + N/2, 2 + sum y^2 / 2))."""
    a = torch.tensor(3.0 + y.shape[0] / 2, dtype=torch.float64)
    b = 2.0 + float((y * y).sum()) / 2
    return math.log(b) - float(torch.digamma(a)), math.sqrt(float(torch.polygamma(1, a)))
