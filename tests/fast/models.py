"""Small models (and their data) on which the compiled path and Pyro's SVI are compared."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


def conjugate_normal(x):
    """mu ~ N(0, 10^2), x_i ~ N(mu, 1): the posterior is Normal in closed form."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def conjugate_posterior(x) -> tuple[float, float]:
    """Posterior mean and sd of ``mu`` in :func:`conjugate_normal`."""
    precision = 1.0 / 100.0 + x.shape[0]
    return float(x.sum()) / precision, precision**-0.5


def linear_regression(X, y):
    """w ~ N(0, I), sigma ~ HalfNormal(1), y ~ N(X w, sigma^2)."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), sigma), obs=y)


def logistic_regression(X, y):
    """A HalfNormal prior scale (a constrained site: the Jacobian matters) over the weights."""
    s = pyro.sample("s", dist.HalfNormal(1.0))
    w = pyro.sample(
        "w", dist.Normal(torch.zeros(X.shape[-1]), s.unsqueeze(-1)).to_event(1)
    )
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=(X * w).sum(-1) + b), obs=y)


def grouped_means(group, y, num_groups):
    """A plate of latents: theta_g ~ N(mu, 1), y_i ~ N(theta_{g(i)}, 0.5^2)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", num_groups):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(theta[..., group], 0.5), obs=y)


def data(name: str, seed: int = 0) -> tuple:
    """Arguments of the model ``name``, drawn with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    if name == "conjugate_normal":
        return (3.0 + torch.randn(20, generator=g),)
    if name == "linear_regression":
        X = torch.randn(50, 3, generator=g)
        y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.7 * torch.randn(50, generator=g)
        return X, y
    if name == "logistic_regression":
        X = torch.randn(200, 4, generator=g)
        logits = X @ torch.tensor([1.5, -1.0, 0.5, 0.0]) + 0.3
        return X, torch.bernoulli(torch.sigmoid(logits), generator=g)
    if name == "grouped_means":
        group = torch.arange(40) % 4
        y = torch.tensor([-1.0, 0.0, 1.0, 2.0])[group] + 0.5 * torch.randn(40, generator=g)
        return group, y, 4
    raise KeyError(name)


MODELS = {
    "conjugate_normal": conjugate_normal,
    "linear_regression": linear_regression,
    "logistic_regression": logistic_regression,
    "grouped_means": grouped_means,
}


def gaussian_target(dim=5, seed=1):
    """An unnormalized Gaussian log density ``u (P, D) -> (P,)`` with a random mean and a
    well-conditioned precision: ``(log_density, mean, precision)``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    precision = a @ a.T + dim * torch.eye(dim, dtype=torch.float64)
    mean = torch.randn(dim, generator=g, dtype=torch.float64)

    def log_density(u):
        d = u - mean
        return -0.5 * ((d @ precision) * d).sum(-1)

    return log_density, mean, precision
