"""The engines' value-passing steps and the model info the driver gets before any work."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyrovi._model import inspect_model
from pyrovi.em import LBFGSMStep, gaussian_mixture_model
from pyrovi.em.engines import (
    ClosedFormEngine,
    EMModelInfo,
    EnumEngine,
    EStep,
    GaussianEngine,
    count_observations,
)
from pyrovi.em.estep import EnumEStep, GaussianEStep


def mixture(x):
    w = pyro.param("w", torch.tensor([0.4, 0.6]), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def blr(X, y):
    tau = pyro.param("tau", torch.tensor(1.0), constraint=constraints.positive)
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), tau).to_event(1))
    with pyro.plate("n", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


X_MIX = torch.tensor([-1.5, -0.7, 0.9, 1.4, 2.0])


def _blr_data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 2, generator=g)
    return X, X @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(30, generator=g)


def test_model_info_of_a_generic_and_a_ready_model(blobs):
    info = inspect_model(mixture, (X_MIX,), {})
    assert count_observations(info) == 5
    meta = EMModelInfo.of_model(info, "discrete", {"sites": 2})
    assert meta == EMModelInfo(num_obs=5, max_plate_nesting=1, latent_sites=("z",),
                               kind="discrete", fingerprint={"sites": 2})
    assert meta.m_step == "generic"
    model = gaussian_mixture_model(3)
    ready = EMModelInfo.of_closed_form(model, model.prepare(blobs), blobs)
    assert (ready.num_obs, ready.latent_sites, ready.kind, ready.m_step) == (
        300, ("assignment",), "closed_form", "closed_form")
    assert ready.fingerprint == {"data": (300, 2)}
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'generic'"):
        EMModelInfo(1, 0, ("z",), "generic", {})


def test_closed_form_steps_pass_values(blobs):
    model = gaussian_mixture_model(3)
    data = model.prepare(blobs)
    with pyro.get_param_store().scope():
        torch.manual_seed(0)
        engine = ClosedFormEngine(model, data)
        start = dict(engine.params)
        estep = engine.expectation()
        assert isinstance(estep, EStep)
        ll, stats = model.e_step(data, start)
        assert estep.log_evidence == ll
        torch.testing.assert_close(estep.statistics, stats)
        engine.maximization(estep)
        expected = model.m_step(data, stats)
        for name, value in expected.items():
            torch.testing.assert_close(engine.params[name], value)
        assert engine.expectation().log_evidence >= estep.log_evidence
        post = engine.posterior(estep)
        torch.testing.assert_close(post.marginals["assignment"], stats.exp())


@pytest.mark.parametrize("generic", ["enum", "gaussian"])
def test_value_steps_raise_the_evidence_and_carry_their_statistics(generic):
    """expectation() returns the E-step as a value; maximization(estep) takes it."""
    with pyro.get_param_store().scope():
        if generic == "enum":
            args = (X_MIX,)
            info = inspect_model(mixture, args, {})
            engine = EnumEngine(mixture, info, args, {}, 5, LBFGSMStep())
        else:
            args = _blr_data()
            info = inspect_model(blr, args, {})
            engine = GaussianEngine(blr, info, args, {}, 30, LBFGSMStep(), check=True)
        values = []
        for _ in range(3):
            estep = engine.expectation()
            values.append(estep.log_evidence)
            engine.maximization(estep)
        assert all(b >= a - 1e-9 * abs(a) for a, b in zip(values, values[1:], strict=False))
        estep = engine.expectation()
        again = engine.expectation()  # no hidden state: the same parameters, the same E-step
    assert again.log_evidence == estep.log_evidence
    kind = EnumEStep if generic == "enum" else GaussianEStep
    assert isinstance(estep.statistics, kind)
    assert float(estep.statistics.log_evidence) == estep.log_evidence
