"""``pyrovi._model``: what one prototype trace says about a model."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovi._model import check_observed_finite, inspect_model, model_name
from pyrovi.errors import ModelError


def model(x):
    pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    rate = pyro.sample("rate", dist.Poisson(3.0))  # discrete, infinite support
    with pyro.plate("groups", 3, dim=-2):
        z = pyro.sample("z", dist.Bernoulli(0.5))  # discrete, finite support
        with pyro.plate("data", x.shape[-1], subsample_size=4, dim=-1):
            pyro.deterministic("shifted", mu + z)
            pyro.factor("penalty", -0.5 * mu**2)
            pyro.sample("x", dist.Normal(mu + z + 0 * rate, 1.0), obs=x[..., :4])


def test_inspect_model_sorts_the_sites():
    x = torch.randn(3, 10)
    info = inspect_model(model, (x,))
    assert info.latent == ("mu", "rate", "z")
    assert info.observed == ("x",)  # the deterministic site and the factor are not data
    assert info.discrete == ("z",) and info.infinite_discrete == ("rate",)
    assert info.continuous == ("mu",)
    assert info.max_plate_nesting == 2
    assert info.plates == {"groups": (3, 3, -2), "data": (10, 4, -1)}
    assert info.subsampled
    assert info.site_plates["x"] == ("groups", "data") and info.site_plates["mu"] == ()


def test_inspect_model_names_the_model_when_it_raises():
    def broken(x):
        raise RuntimeError("no")

    with pytest.raises(ModelError, match=r"model '.*broken' raised RuntimeError when run with "
                                         r"the given arguments: no"):
        inspect_model(broken, (1,))
    with pytest.raises(TypeError, match="model must be a callable Pyro model, got int"):
        inspect_model(3)
    assert model_name(model) == "model"


def test_non_finite_data_is_refused_naming_the_site_and_index():
    def simple(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.1, float("nan"), 0.3, float("inf")])
    info = inspect_model(simple, (y,))
    with pytest.raises(ModelError, match=r"observed site 'y' holds 2 non-finite value\(s\) "
                                         r"\(first at index \(1,\): nan\)"):
        check_observed_finite(info)
