"""Arguments refused before any work, with a message that names them (issue 16)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import pyrovi
from pyrovi.em import gaussian_mixture_model
from pyrovi.errors import ModelError
from tests.vi import models


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": math.inf}, ValueError, r"lr must be a positive number, got inf; it must be finite"),
        ({"tol": math.inf}, ValueError, r"tol must be a positive number, got inf; it must be finite"),
        ({"progress": "no"}, TypeError, r"progress must be True or False, got str 'no'"),
        ({"seed": 2**63}, ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
        ({"seed": 2**70}, ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
        ({"num_inits": 0}, ValueError, r"num_inits must be a positive int, got 0"),
        ({"seed": 2**63 - 1, "num_inits": 2}, ValueError, r"seed must leave room for"),
        ({"optim": lambda params: 3}, TypeError, r"optim\(\[param\]\) returned int 3, not a"),
        ({"optim": lambda params: torch.optim.Adam}, TypeError, r"returned type .*not a"),
        ({"optim": dict}, TypeError, r"optim must be None .*got the class dict"),
        ({"device": "tpu"}, ValueError, r"device='tpu' is not a device torch knows"),
        ({"device": "mps"}, ValueError, r"device='mps': pyrovi fits on 'cpu' or 'cuda' only"),
        ({"device": "meta"}, ValueError, r"device='meta': pyrovi fits on 'cpu' or 'cuda'"),
    ],
)
def test_vi_refuses_bad_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        pyrovi.VI(models.regression, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tol": math.inf}, ValueError, r"tol must be a finite non-negative number"),
        ({"progress": "no"}, TypeError, r"progress must be True or False, got str 'no'"),
        ({"seed": 2**63}, ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
        ({"seed": 2**63 - 1, "num_inits": 2}, ValueError, r"seed must leave room for"),
        ({"device": "tpu"}, ValueError, r"device='tpu' is not a device torch knows"),
        ({"device": "meta"}, ValueError, r"device='meta': pyrovi fits on 'cpu' or 'cuda'"),
    ],
)
def test_em_refuses_bad_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        pyrovi.EM(gaussian_mixture_model(2), **kwargs)


def test_a_large_valid_seed_works():
    X, y = models.regression_data()
    pyrovi.VI(models.regression, seed=2**63 - 1, num_steps=5, progress=False).run(X, y)


# ------------------------------------------------------------------ the Gaussian mixture
def test_gmm_refuses_zero_features_and_bad_initial_values():
    X = torch.randn(20, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"zero features"):
        pyrovi.EM(gaussian_mixture_model(2), progress=False).run(torch.empty(20, 0))
    with pytest.raises(ValueError, match=r"init\['means'\] has shape \(3,\); expected \(2, 2\)"):
        pyrovi.EM(gaussian_mixture_model(2, init={"means": torch.zeros(3)}),
                  progress=False).run(X)
    with pytest.raises(ValueError, match=r"init\['weights'\] must be non-negative"):
        pyrovi.EM(gaussian_mixture_model(2, init={"weights": torch.tensor([1.5, -0.5])}),
                  progress=False).run(X)
    with pytest.raises(ValueError, match=r"init\['covariances'\] must be positive"):
        bad = -torch.eye(2).expand(2, 2, 2)
        pyrovi.EM(gaussian_mixture_model(2, init={"covariances": bad}), progress=False).run(X)


def test_em_refuses_empty_data_naming_the_site():
    with pytest.raises(ModelError, match=r"observed site 'obs' holds no values"):
        pyrovi.EM(gaussian_mixture_model(2), progress=False).run(torch.empty(0, 2))


def scale_model(x):
    s = pyro.param("s", torch.tensor(-1.0), constraint=constraints.positive)
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, s), obs=x)


def mean_model(x):
    m = pyro.param("m", torch.tensor(0.0))
    z = pyro.sample("z", dist.Normal(m, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z + float(x.sum()) / x.shape[0], 1.0), obs=x)


def test_em_refuses_an_initial_param_outside_its_constraint_naming_it():
    with pytest.raises(ModelError, match=r"pyro.param 's' has an initial value .* outside"):
        pyrovi.EM(scale_model, progress=False).run(torch.randn(5))


def test_em_refuses_empty_data_before_the_model_divides_by_zero():
    with pytest.raises(ModelError, match=r"argument 0, which holds no values \(shape \(0,\)\)"):
        pyrovi.EM(mean_model, progress=False).run(torch.empty(0))
