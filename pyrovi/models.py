"""Ready-made Pyro models used by the demo, the examples and the tests.

Each is an ordinary Pyro model function written to broadcast over a leading particle
dimension, so that pyrovi can vectorize its particles.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["linear_regression", "eight_schools_centered", "eight_schools_noncentered"]


def linear_regression(X: torch.Tensor, y: torch.Tensor | None = None, *, prior_scale: float = 1.0,
                      noise: float = 0.7):
    """Bayesian linear regression with a Gaussian prior and known noise.

    w ~ N(0, prior_scale^2 I), y ~ N(X w, noise^2).  The posterior and the evidence are
    Gaussian and known in closed form.
    """
    w = pyro.sample(
        "w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), prior_scale).to_event(1)
    )
    with pyro.plate("data", X.shape[0]):
        return pyro.sample("y", dist.Normal((X * w).sum(-1), noise), obs=y)


def eight_schools_centered(sigma: torch.Tensor, y: torch.Tensor | None = None):
    """The eight-schools hierarchical model, centred parameterization."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=sigma.dtype), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=sigma.dtype)))
    with pyro.plate("schools", sigma.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        return pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(sigma: torch.Tensor, y: torch.Tensor | None = None):
    """The eight-schools hierarchical model, non-centred parameterization."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=sigma.dtype), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=sigma.dtype)))
    with pyro.plate("schools", sigma.shape[0]):
        eta = pyro.sample("eta", dist.Normal(torch.tensor(0.0, dtype=sigma.dtype), 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        return pyro.sample("obs", dist.Normal(theta, sigma), obs=y)
