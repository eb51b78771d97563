"""The guide argument: parse_guide's specs, their properties, errors, build and finalize."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import autoguide

from pyrovi.families import FAMILIES, REGISTRY
from pyrovi.guides import GuideSpec, build_guide, parse_guide

X = torch.tensor([0.5, 1.5, 1.0])


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def my_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 1.0))


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_name_gives_its_record(name):
    spec = parse_guide(f"  {name.upper()} ")
    record = REGISTRY[name]
    assert spec.record is record and spec == GuideSpec(record)
    assert spec.family == spec.name == name
    assert not spec.is_custom and not spec.is_user_autoguide and not spec.is_user_guide
    assert spec.is_auto
    assert spec.compiled == record.compiled
    assert spec.has_density == record.has_density
    assert spec.map_trained == record.map_trained
    assert isinstance(build_guide(spec, model), record.autoguide)


def test_flags_of_the_families():
    table = {
        name: (spec.compiled, spec.has_density, spec.map_trained)
        for name in FAMILIES
        for spec in [parse_guide(name)]
    }
    assert table == {
        "meanfield": (True, True, False),
        "lowrank": (True, True, False),
        "fullrank": (True, True, False),
        "delta": (True, False, True),
        "laplace": (False, True, True),
    }


def test_lowrank_takes_a_rank():
    spec = parse_guide("LowRank:3")
    assert spec.record is REGISTRY["lowrank"] and spec.rank == 3
    assert spec.family == "lowrank" and spec.name == "lowrank:3"
    guide = build_guide(spec, model)
    assert isinstance(guide, autoguide.AutoLowRankMultivariateNormal) and guide.rank == 3
    assert parse_guide("lowrank").rank is None


@pytest.mark.parametrize(
    "guide, error, message",
    [
        (
            "banana",
            ValueError,
            "guide='banana' is not a known guide family; expected one of 'meanfield', "
            "'lowrank', 'fullrank', 'delta', 'laplace' (or 'lowrank:K'), a Pyro AutoGuide "
            "class or instance, or a guide function",
        ),
        (
            "lowrank:x",
            ValueError,
            "guide='lowrank:x': the low-rank family is written 'lowrank' or 'lowrank:K' with "
            "a positive integer rank K, e.g. 'lowrank:5'",
        ),
        ("lowrank:0", ValueError, "guide='lowrank:0': the low-rank family is written"),
        ("lowrank5", ValueError, "guide='lowrank5': the low-rank family is written"),
        (
            torch.nn.Linear,
            TypeError,
            "guide=Linear is a class but not a Pyro AutoGuide; pass a family name, an "
            "AutoGuide class or instance, or a guide function",
        ),
        (
            3,
            TypeError,
            "guide must be a family name (meanfield, lowrank, fullrank, delta, laplace), a "
            "Pyro AutoGuide class or instance, or a guide function; got int",
        ),
    ],
)
def test_parse_errors(guide, error, message):
    with pytest.raises(error) as info:
        parse_guide(guide)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("as_instance", [False, True])
def test_a_user_autoguide(as_instance):
    guide = autoguide.AutoNormal(model) if as_instance else autoguide.AutoNormal
    spec = parse_guide(guide)
    assert spec.record is None and spec.obj is guide
    assert spec.family == "autoguide" and spec.name == "AutoNormal"
    assert spec.is_user_autoguide and spec.is_user_guide and spec.is_auto
    assert not spec.is_custom and not spec.compiled
    assert spec.has_density and not spec.map_trained
    built = build_guide(spec, model)
    assert isinstance(built, autoguide.AutoNormal)
    if as_instance:
        # each fit trains its own copy (one instance in two fits must not share state),
        # and the instance keeps its model
        assert built is not guide and built.model is guide.model is not None


@pytest.mark.parametrize("cls", [autoguide.AutoDelta, autoguide.AutoLaplaceApproximation])
def test_a_user_point_mass_autoguide(cls):
    """Given by the user, an AutoLaplaceApproximation is never finalized: a point mass."""
    for guide in (cls, cls(model)):
        spec = parse_guide(guide)
        assert not spec.has_density and spec.map_trained and not spec.compiled


def test_a_guide_function():
    spec = parse_guide(my_guide)
    assert spec.record is None and spec.obj is my_guide
    assert spec.family == "custom" and spec.name == "my_guide"
    assert spec.is_custom and spec.is_user_guide
    assert not spec.is_user_autoguide and not spec.is_auto and not spec.compiled
    assert spec.has_density and not spec.map_trained
    assert build_guide(spec, model) is my_guide


def test_not_compiled_reasons():
    covers = "the compiled path covers meanfield, lowrank, fullrank and delta, not "
    assert parse_guide("meanfield").not_compiled_reason is None
    assert parse_guide("delta").not_compiled_reason is None
    assert parse_guide("laplace").not_compiled_reason == (
        covers + "the 'laplace' family (its Hessian step runs through Pyro)"
    )
    assert parse_guide(autoguide.AutoNormal).not_compiled_reason == (
        covers + "an AutoGuide class or instance given by the user"
    )
    assert parse_guide(my_guide).not_compiled_reason == covers + "a user-written guide function"


def test_finalize_laplace_and_identity():
    spec = parse_guide("laplace")
    guide = build_guide(spec, model)
    guide(X)
    final, extra = spec.finalize(guide, (X,), {})
    assert isinstance(final, autoguide.AutoMultivariateNormal)
    assert set(extra) == {"laplace.loc", "laplace.scale_tril"}
    # the conjugate posterior: precision 1/100 + n
    sd = (1 / 100 + len(X)) ** -0.5
    torch.testing.assert_close(extra["laplace.scale_tril"], torch.tensor([[sd]]))
    for other in (parse_guide("meanfield"), parse_guide(my_guide)):
        g = build_guide(other, model)
        assert other.finalize(g, (X,), {}) == (g, {})


def test_hidden_sites_are_blocked():
    def mixed(x):
        z = pyro.sample("z", dist.Bernoulli(0.5))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(mu + z, 1.0), obs=x)

    guide = build_guide(parse_guide("meanfield"), mixed, hide=["z"])
    trace = pyro.poutine.trace(guide).get_trace(X[0])
    sampled = {n for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert "mu" in sampled and "z" not in sampled
