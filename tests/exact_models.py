"""Models whose log joint looks quadratic near the mode but is not (tests/test_security.py,
tests/test_exact_precondition.py): a likelihood through ``abs`` or ``relu`` of a latent."""

import pyro
import pyro.distributions as dist
import torch


def abs_model(y):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(z.abs(), 1.0), obs=y)


def relu_model(y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(torch.relu(z) + 0.1 * w, 1.0), obs=y)


def linear_model(y):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(2.0 * z + 1.0, 1.0), obs=y)


def data(n: int = 3, value: float = 1.0) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float64)
