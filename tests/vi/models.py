"""Small models with closed-form posteriors and evidence, shared by the VI tests."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch


def normal_normal_data(n: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.5 + 2.0 * torch.randn(n, generator=g, dtype=torch.float64)


PRIOR_LOC, PRIOR_SCALE, NOISE = 0.0, 3.0, 2.0


def normal_normal(y):
    """mu ~ N(0, 3^2), y_i ~ N(mu, 2^2)."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(PRIOR_LOC, dtype=y.dtype), PRIOR_SCALE))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, NOISE), obs=y)


def normal_normal_posterior(y) -> tuple[float, float]:
    prec = 1 / PRIOR_SCALE**2 + len(y) / NOISE**2
    mean = (PRIOR_LOC / PRIOR_SCALE**2 + float(y.sum()) / NOISE**2) / prec
    return mean, math.sqrt(1 / prec)


def normal_normal_evidence(y) -> float:
    n = len(y)
    cov = NOISE**2 * torch.eye(n, dtype=torch.float64) + PRIOR_SCALE**2 * torch.ones(
        n, n, dtype=torch.float64
    )
    loc = torch.full((n,), PRIOR_LOC, dtype=torch.float64)
    return float(dist.MultivariateNormal(loc, cov).log_prob(y.double()))


def regression_data(n: int = 30, rho: float = 0.9, seed: int = 1):
    """Two strongly correlated features, so the coefficient posterior is correlated."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    X = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], -1)
    y = X @ torch.tensor([1.0, -0.5], dtype=torch.float64) + 0.5 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    return X, y


REG_PRIOR, REG_NOISE = 1.0, 0.5


def regression(X, y):
    """w ~ N(0, I), y ~ N(X w, 0.5^2), written to broadcast over particles."""
    w = pyro.sample(
        "w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), REG_PRIOR).to_event(1)
    )
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), REG_NOISE), obs=y)


def regression_posterior(X, y):
    prec = torch.eye(X.shape[1], dtype=X.dtype) / REG_PRIOR**2 + X.T @ X / REG_NOISE**2
    cov = torch.linalg.inv(prec)
    return cov @ X.T @ y / REG_NOISE**2, cov


def regression_evidence(X, y) -> float:
    n = X.shape[0]
    cov = REG_NOISE**2 * torch.eye(n, dtype=X.dtype) + REG_PRIOR**2 * X @ X.T
    return float(dist.MultivariateNormal(torch.zeros(n, dtype=X.dtype), cov).log_prob(y))
