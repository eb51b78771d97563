"""The result protocol (pyrovi._result.FitResult): both kinds implement it, its densities
match closed forms, and ``seed`` means the same for VI and EM."""

import dataclasses
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from pyrovi._draws import Draws
from pyrovi._result import FitResult
from pyrovi.arviz.adapters import ADAPTERS, EMAdapter, VIAdapter, adapter_for
from pyrovi.errors import ConvergenceWarning, FallbackWarning

F64 = torch.float64
X = torch.linspace(-0.5, 3.5, 12, dtype=F64)


def conjugate(x):
    """z ~ N(loc, 1), x_i ~ N(z, 1), ``loc`` a parameter: the posterior is Gaussian."""
    loc = pyro.param("loc", torch.tensor(0.0, dtype=F64))
    z = pyro.sample("z", dist.Normal(loc, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def mixture(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 5.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7], dtype=F64)))
        pyro.sample("obs", dist.Normal(loc[k], 1.0), obs=x)


def _quiet_vi(model, family, *args, num_steps=300):
    with warnings.catch_warnings():  # short fits; the mixture is drawn in a loop
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FallbackWarning)
        return pyrovi.VI(model, family, seed=0, progress=False, num_steps=num_steps).run(*args)


@pytest.fixture(scope="module")
def vi():
    return _quiet_vi(conjugate, "meanfield", X)


@pytest.fixture(scope="module")
def em():
    return pyrovi.EM(conjugate, seed=0, progress=False, num_steps=50).run(X)


@pytest.fixture(scope="module")
def enumerated():
    x = torch.tensor([-2.0, -1.5, 2.0, 2.5, 3.0], dtype=F64)
    return _quiet_vi(mixture, "meanfield", x, num_steps=5), x


@pytest.fixture(scope="module", params=["vi", "em"])
def result(request):
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------ the protocol itself
def test_the_protocol_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        FitResult()
    assert {
        "objective_trace", "exact_posterior", "has_density", "map_trained",
        "posterior_draws", "log_joint", "sample",
    } == set(FitResult.__abstractmethods__)


def test_both_kinds_implement_the_protocol(result):
    assert isinstance(result, FitResult)
    assert result.kind in ("vi", "em") and type(result).kind == result.kind
    for name in ("family", "seed", "max_plate_nesting", "wall_time"):
        assert getattr(result, name) is not None
    assert callable(result.model) and isinstance(result.args, tuple)
    assert isinstance(result.kwargs, dict) and isinstance(result.device, torch.device)
    assert result.latent_sites == ("z",)
    assert "loc" in result.params
    assert isinstance(result.converged, bool)
    assert result.objective_trace.shape == (result.num_steps,)
    assert math.isfinite(result.elbo) and result.elbo_se >= 0
    with result.scope():  # the fitted parameters are back
        assert float(pyro.param("loc")) == pytest.approx(float(result.params["loc"]))


def test_protocol_members_alias_the_kind_specific_fields(vi, em):
    assert vi.objective_trace is vi.elbo_trace and vi.num_steps == len(vi.elbo_trace)
    assert em.objective_trace is em.log_evidence_trace
    assert em.num_steps == len(em.log_evidence_trace)
    assert em.elbo == em.log_evidence and em.elbo_se == 0.0
    assert (vi.exact_posterior, vi.has_density, vi.map_trained) == (False, True, False)
    assert (em.exact_posterior, em.has_density, em.map_trained) == (True, True, False)


def test_point_mass_and_map_trained_are_known_in_one_place(vi):
    delta = dataclasses.replace(vi, family="delta")
    laplace = dataclasses.replace(vi, family="laplace")
    assert not delta.has_density and delta.map_trained
    assert laplace.has_density and laplace.map_trained


# ------------------------------------------------------------------ draws and densities
def test_vi_draws_and_densities_match_closed_forms(vi):
    draws = vi.posterior_draws(300, seed=1)
    assert isinstance(draws, Draws) and set(draws.values) == {"z"}
    z = draws.values["z"]
    assert z.shape == (300,) and draws.log_q.shape == (300,)
    q = dist.Normal(vi.params["AutoNormal.locs.z"], vi.params["AutoNormal.scales.z"])
    torch.testing.assert_close(draws.log_q, q.log_prob(z).to(draws.log_q.dtype))
    loc = vi.params["loc"]
    truth = dist.Normal(loc, 1.0).log_prob(z) + dist.Normal(z[:, None], 1.0).log_prob(X).sum(-1)
    torch.testing.assert_close(vi.log_joint(draws.values), truth.to(z.dtype))


def test_em_log_weights_equal_the_log_evidence(em):
    draws = em.posterior_draws(500, seed=2)
    assert set(draws.values) == set(em.latent_sites) and draws.log_q.shape == (500,)
    log_w = em.log_joint(draws.values) - draws.log_q
    np.testing.assert_allclose(log_w.numpy(), em.log_evidence, rtol=1e-9, atol=1e-7)
    # the same draws as sample() with the same seed
    torch.testing.assert_close(draws.values["z"], em.sample(500, seed=2)["z"])


def test_enumerated_sites_are_summed_out_of_log_joint(enumerated):
    result, x = enumerated
    assert result.enumerated_sites == ("k",)
    draws = result.posterior_draws(6, seed=0)
    assert set(draws.values) == {"loc"}  # q covers the continuous latents only
    loc = draws.values["loc"]
    comp = torch.log(torch.tensor([0.3, 0.7], dtype=F64)) + dist.Normal(
        loc[:, None, :], 1.0
    ).log_prob(x[None, :, None])
    marginal = dist.Normal(0.0, 5.0).log_prob(loc).sum(-1) + comp.logsumexp(-1).sum(-1)
    torch.testing.assert_close(result.log_joint(draws.values), marginal)
    # with the discrete draws given, the joint is conditional on them
    k = result.sample_enumerated(draws.values, seed=0)["k"]
    assert k.shape == (6, 5)
    full = dist.Normal(0.0, 5.0).log_prob(loc).sum(-1) + (
        torch.log(torch.tensor([0.3, 0.7], dtype=F64))[k]
        + dist.Normal(loc.gather(1, k), 1.0).log_prob(x)
    ).sum(-1)
    torch.testing.assert_close(result.log_joint({"loc": loc, "k": k}), full)
    assert set(result.sample(4, seed=0)) == {"loc", "k"}
    with pytest.raises(ValueError, match=r"lacks the latent site\(s\) \['loc'\]"):
        result.log_joint({"k": k})


# ---------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("method", ["sample", "posterior_draws"])
def test_explicit_seed_leaves_the_caller_rng_alone_and_repeats(result, method):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = getattr(result, method)(50, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = getattr(result, method)(50, seed=7)
    c = getattr(result, method)(50, seed=8)
    values = (lambda d: d) if method == "sample" else (lambda d: d.values)
    assert torch.equal(values(a)["z"], values(b)["z"])
    assert not torch.equal(values(a)["z"], values(c)["z"])


@pytest.mark.parametrize("method", ["sample", "posterior_draws"])
def test_seed_none_draws_from_the_global_state(result, method):
    values = (lambda d: d) if method == "sample" else (lambda d: d.values)
    torch.manual_seed(5)
    a = values(getattr(result, method)(50))["z"]
    after = torch.get_rng_state()
    torch.manual_seed(5)
    assert not torch.equal(after, torch.get_rng_state())  # the caller's state advanced
    b = values(getattr(result, method)(50))["z"]
    c = values(getattr(result, method)(50))["z"]
    assert torch.equal(a, b)  # follows torch.manual_seed
    assert not torch.equal(b, c)  # and consecutive calls differ


def test_seed_of_the_wrong_type_is_refused(vi):
    with pytest.raises(TypeError, match="seed must be an int or None"):
        vi.sample(5, seed=1.5)
    with pytest.raises(TypeError, match="seed must be an int or None"):
        vi.posterior_draws(5, seed="1")


# ---------------------------------------------------------------------------- adapters
def test_adapter_is_chosen_by_kind(vi, em):
    assert ADAPTERS == {"vi": VIAdapter, "em": EMAdapter}
    assert type(adapter_for(vi)) is VIAdapter and type(adapter_for(em)) is EMAdapter
    assert adapter_for(em).trace_group == "em_trace"
    assert adapter_for(vi).trace_group == "vi_trace"
    with pytest.raises(TypeError, match=r"expects a pyrovi VIResult or EMResult .*got dict"):
        adapter_for({})

    class Other(type(vi)):
        kind = "mcmc"

    other = Other(**{f.name: getattr(vi, f.name) for f in dataclasses.fields(vi)})
    with pytest.raises(TypeError, match=r"no ArviZ adapter for results of kind 'mcmc'"):
        adapter_for(other)


def test_adapter_attrs_come_from_the_protocol(vi, em):
    for r in (vi, em):
        attrs = adapter_for(r).attrs()
        assert attrs["num_steps"] == r.num_steps and attrs["guide_family"] == r.family
        np.testing.assert_array_equal(adapter_for(r).trace(), r.objective_trace)
