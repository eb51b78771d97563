"""The family registry: every record builds its autoguide, its flags agree with what that
autoguide does, and the compiled families' math is a Gaussian's."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import autoguide

import pyrovi
from pyrovi import families
from pyrovi.families import COMPILED, FAMILIES, REGISTRY, Family, lookup
from pyrovi.fast.params import guide_params
from pyrovi.fast.potential import layout_from_trace
from pyrovi.guides import GuideSpec, build_guide

X = torch.tensor([0.3, -1.2, 0.8, 2.0, 1.1])


def model(x):
    """Three unconstrained coordinates and one positive one; the log joint is strictly
    concave in the unconstrained space, so the Laplace Hessian is definite anywhere."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(1.0))
    pyro.sample("y", dist.Normal(0.0, s), obs=torch.tensor(1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(w.sum(-1), 1.0), obs=x)


def _point_mass(fn) -> bool:
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def _q_sites(guide) -> list:
    """The distributions the guide draws from: the latent of an AutoContinuous guide (the
    per-site Deltas only unpack it), else every sample site."""
    trace = pyro.poutine.trace(guide).get_trace(X)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    aux = [s for s in sites if s["infer"].get("is_auxiliary")]
    return [s["fn"] for s in (aux or sites)]


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_the_names_derive_from_the_registry():
    assert FAMILIES == tuple(REGISTRY) == ("meanfield", "lowrank", "fullrank", "delta", "laplace")
    assert pyrovi.FAMILIES == FAMILIES
    assert COMPILED == tuple(n for n in FAMILIES if REGISTRY[n].compiled)
    assert COMPILED == ("meanfield", "lowrank", "fullrank", "delta")
    assert all(name == record.name for name, record in REGISTRY.items())
    with pytest.raises(TypeError):
        REGISTRY["new"] = REGISTRY["meanfield"]  # read-only


@pytest.mark.parametrize("name", FAMILIES)
def test_each_record_builds_its_autoguide_and_its_flags_agree(name):
    record = REGISTRY[name]
    guide = record.build(model)
    assert type(guide) is record.autoguide
    guide(X)
    # trained as a MAP: before finalize the guide is a point mass
    assert all(_point_mass(fn) for fn in _q_sites(guide)) == record.map_trained
    final, extra = record.finalize(guide, (X,), {})
    assert (final is guide) == (not extra)
    # has a density: after finalize some draw is not a point mass
    assert any(not _point_mass(fn) for fn in _q_sites(final)) == record.has_density
    if record.compiled and record.has_density and not record.takes_rank:
        # the initial q has the record's init_scale as every marginal sd
        params = guide_params(record, guide, layout_from_trace(guide.prototype_trace))
        sd = params.family.covariance(params.constrained(params.read())).diagonal().sqrt()
        torch.testing.assert_close(sd, torch.full_like(sd, record.init_scale))


def test_a_family_that_takes_a_rank_passes_it_to_the_autoguide():
    ranked = [r for r in REGISTRY.values() if r.takes_rank]
    assert [r.name for r in ranked] == ["lowrank"]
    guide = ranked[0].build(model, rank=2)
    guide(X)
    assert guide.rank == 2 and guide.cov_factor.shape == (4, 2)
    assert ranked[0].math_for(guide).rank == 2
    assert ranked[0].display_name(2) == "lowrank:2" and ranked[0].display_name() == "lowrank"
    assert REGISTRY["fullrank"].display_name(2) == "fullrank"


def test_laplace_finalize_is_the_gaussian_at_the_map():
    record = REGISTRY["laplace"]
    guide = record.build(model)
    guide(X)
    final, extra = record.finalize(guide, (X,), {})
    assert isinstance(final, autoguide.AutoMultivariateNormal)
    assert set(extra) == {"laplace.loc", "laplace.scale_tril"}
    torch.testing.assert_close(extra["laplace.loc"], guide.loc.detach())
    cov = extra["laplace.scale_tril"] @ extra["laplace.scale_tril"].T
    torch.testing.assert_close(cov, final.get_posterior().covariance_matrix.detach())


@pytest.mark.parametrize("name", FAMILIES)
def test_compiled_flag_is_having_math(name):
    record = REGISTRY[name]
    assert record.compiled == (record.math is not None) == (record.not_compiled == "")
    guide = record.build(model)
    guide(X)
    if record.compiled:
        math = record.math_for(guide)
        assert math.name == name
        assert math.jacobian == record.has_density  # a MAP point lives in constrained space
    else:
        with pytest.raises(ValueError, match="has no flat parameterization"):
            record.math_for(guide)


COMPILED_DENSITIES = [n for n in COMPILED if REGISTRY[n].has_density]


@pytest.mark.parametrize("name", COMPILED_DENSITIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_math_is_a_gaussian_at_random_parameters(name, seed):
    """Covariance PSD, entropy that of the MultivariateNormal, draws with that covariance."""
    guide = REGISTRY[name].build(model)
    guide(X)
    params = guide_params(REGISTRY[name], guide, layout_from_trace(guide.prototype_trace))
    g = torch.Generator().manual_seed(seed)
    theta = params.read() + 0.7 * torch.randn(params.size, generator=g)
    q = params.constrained(theta)
    math = params.family
    cov = math.covariance(q)
    assert cov.shape == (4, 4)
    torch.testing.assert_close(cov, cov.T)
    assert float(torch.linalg.eigvalsh(cov).min()) > 0
    mvn = torch.distributions.MultivariateNormal(q.loc, cov)
    torch.testing.assert_close(math.entropy(q), mvn.entropy())
    n = math.noise_dim(4)
    rows = math.draw(q, torch.eye(n)) - q.loc
    torch.testing.assert_close(rows.T @ rows, cov)


def test_delta_math_is_a_point_mass():
    guide = REGISTRY["delta"].build(model)
    guide(X)
    params = guide_params(REGISTRY["delta"], guide, layout_from_trace(guide.prototype_trace))
    q = params.constrained(params.read())
    # the point, in the potential's unconstrained space: log for the HalfNormal scale
    torch.testing.assert_close(q.loc[:3], guide.w.detach())
    torch.testing.assert_close(q.loc[3], guide.s.detach().log())
    assert params.family.noise_dim(4) == 0
    assert float(params.family.entropy(q)) == 0.0
    assert not params.family.covariance(q).any()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("meanfield", "meanfield"),
        (" LowRank:3 ", "lowrank"),
        ("lowrank", "lowrank"),
        ("delta", "delta"),
        ("lowrank:x", None),
        ("fullrank:3", None),
        ("AutoNormal", None),
        ("good_guide", None),
        ("em", None),
    ],
)
def test_lookup_reads_reported_names(name, expected):
    record = lookup(name)
    assert (record.name if record else None) == expected


def test_a_new_family_is_one_record():
    """A record that is not one of the five still builds, names and reports itself."""
    diagonal = Family("diagonal", "diagonal", autoguide.AutoDiagonalNormal)
    spec = GuideSpec(diagonal)
    assert spec.family == spec.name == "diagonal"
    guide = build_guide(spec, model)
    assert isinstance(guide, autoguide.AutoDiagonalNormal)
    guide(X)
    torch.testing.assert_close(guide.scale.detach(), torch.full((4,), families.INIT_SCALE))
    assert not spec.compiled and spec.has_density and not spec.map_trained
    assert spec.not_compiled_reason.endswith("not the 'diagonal' family")
