"""The flat log-density equals Pyro's log joint (with the Jacobians) in the guide's layout,
and tracing refuses models whose graph is not static."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import autoguide
from torch.distributions import biject_to

from pyrovi.fast.potential import (
    TraceError,
    build_potential,
    layout_from_trace,
    trace_log_density,
)
from tests.fast.models import data, logistic_regression


def _setup(model, args, nesting=1):
    guide = autoguide.AutoMultivariateNormal(model)
    with pyro.get_param_store().scope():
        guide(*args)
    layout = layout_from_trace(guide.prototype_trace)
    return guide, layout, build_potential(model, args, {}, layout, nesting)


def _log_joint(model, args, values, jacobian):
    """Pyro's log joint at constrained values ``T(u)``, plus log|det J_T| if asked."""
    constrained, logdet = {}, 0.0
    trace = poutine.trace(model).get_trace(*args)
    for name, u in values.items():
        t = biject_to(trace.nodes[name]["fn"].support)
        constrained[name] = t(u)
        logdet = logdet + t.log_abs_det_jacobian(u, constrained[name]).sum()
    conditioned = poutine.trace(poutine.condition(model, constrained)).get_trace(*args)
    return conditioned.log_prob_sum() + (logdet if jacobian else 0.0)


def test_layout_is_the_autoguide_latent_layout():
    args = data("logistic_regression")
    guide, layout, _ = _setup(logistic_regression, args)
    latent = torch.randn(layout.dim)
    assert layout.dim == guide.latent_dim == 6
    for site, value in guide._unpack_latent(latent):
        torch.testing.assert_close(layout.unpack(latent)[site["name"]], value)
    torch.testing.assert_close(layout.pack(layout.unpack(latent)), latent)


@pytest.mark.parametrize("jacobian", [True, False])
def test_flat_log_density_is_the_log_joint(jacobian):
    args = data("logistic_regression")
    _, layout, potential = _setup(logistic_regression, args)
    for seed in range(3):
        u = torch.randn(layout.dim, generator=torch.Generator().manual_seed(seed))
        expected = _log_joint(logistic_regression, args, layout.unpack(u), jacobian)
        torch.testing.assert_close(potential.log_density(u, jacobian), expected)
        graph = trace_log_density(potential, u, jacobian=jacobian)
        torch.testing.assert_close(graph(u + 0.1), potential.log_density(u + 0.1, jacobian))


def _branching(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    if mu > 0:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    else:
        pyro.sample("x", dist.Normal(mu, 2.0), obs=x)


def _noisy(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(mu + torch.randn(()), 1.0), obs=x)


@pytest.mark.parametrize("model, match", [(_branching, "control flow"), (_noisy, "randomness")])
def test_dynamic_models_are_refused(model, match):
    args = (torch.tensor(0.3),)
    _, layout, potential = _setup(model, args, nesting=0)
    with pytest.raises(TraceError, match=match):
        trace_log_density(potential, torch.zeros(layout.dim))


def _changing(x, state={"calls": 0}):  # noqa: B006 - the mutable default is the point
    state["calls"] += 1
    n = 1 if state["calls"] % 2 else 2
    pyro.sample("mu", dist.Normal(0.0, 1.0).expand([n]).to_event(1))
    pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def test_structure_change_between_traces_is_refused():
    args = (torch.tensor(0.3),)
    reference = poutine.trace(_changing).get_trace(*args)
    layout = layout_from_trace(reference)
    with pytest.raises(TraceError, match="structure changes"):
        build_potential(_changing, args, {}, layout, 0, reference=reference)
