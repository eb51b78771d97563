"""``pyrovi._draws``: draws from a guide with their log densities."""

import pyro
import pyro.distributions as dist
import torch

from pyrovi._draws import guide_draws, seeded_draws
from pyrovi._plates import site_shapes


def guide(x):
    loc = pyro.param("loc", torch.tensor([0.5, -1.0]))
    pyro.sample("w", dist.Normal(loc, 2.0).to_event(1))
    pyro.sample("s", dist.LogNormal(0.0, 0.5))


def test_guide_draws_carry_the_guides_log_density_vectorized_or_not():
    trace = pyro.poutine.trace(guide).get_trace(None)
    shapes = site_shapes(trace)
    for vectorized in (True, False):
        with seeded_draws(0):
            draws = guide_draws(guide, (None,), {}, 50, sites=("w", "s"), shapes=shapes,
                                max_plate_nesting=0, vectorized=vectorized)
        assert draws.values["w"].shape == (50, 2) and draws.values["s"].shape == (50,)
        expected = (dist.Normal(torch.tensor([0.5, -1.0]), 2.0).log_prob(draws.values["w"]).sum(-1)
                    + dist.LogNormal(0.0, 0.5).log_prob(draws.values["s"]))
        torch.testing.assert_close(draws.log_q, expected)


def test_vectorized_and_looped_draws_agree_in_distribution():
    trace = pyro.poutine.trace(guide).get_trace(None)
    shapes = site_shapes(trace)
    means = []
    for vectorized in (True, False):
        with seeded_draws(1):
            d = guide_draws(guide, (None,), {}, 4000, sites=("w",), shapes=shapes,
                            max_plate_nesting=0, vectorized=vectorized)
        means.append(d.values["w"].mean(0))
    for m in means:  # both estimate the guide's mean within 4 standard errors
        assert torch.all((m - torch.tensor([0.5, -1.0])).abs() < 4 * 2.0 / 4000**0.5)
