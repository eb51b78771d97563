"""The exact evidence proves its premise: a log joint that looks quadratic near the mode
but is not (a likelihood through abs or relu of a latent) is refused by method="exact"
and makes evidence="auto" fall back to an estimate (issue 16)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pyrovi
from pyrovi.errors import IntractableError
from tests import exact_models as m


@pytest.mark.parametrize(
    "model, site", [(m.abs_model, "z"), (m.relu_model, "z")]
)
@pytest.mark.parametrize("n, value", [(3, 1.0), (1, 0.8), (5, 2.0)])
def test_exact_refuses_a_kinked_log_joint_naming_the_site(model, site, n, value):
    with pytest.raises(IntractableError, match=rf"site '{site}' enters log p\(x, z\) "
                                               r"non-quadratically .*standard deviations"):
        pyrovi.log_evidence(model, m.data(n, value), method="exact")


def test_exact_still_takes_a_linear_gaussian_model_and_matches_the_closed_form():
    y = m.data(3, 1.0)
    est = pyrovi.log_evidence(m.linear_model, y, method="exact")
    # y ~ N(1, I + 4 11^T)
    cov = torch.eye(3, dtype=torch.float64) + 4.0
    expected = torch.distributions.MultivariateNormal(
        torch.ones(3, dtype=torch.float64), cov).log_prob(y)
    assert math.isclose(est.value, float(expected), abs_tol=1e-5)  # float32 latents


def test_exact_leaves_the_callers_random_state_alone():
    from pyrovi.diagnostics.exact import exact_log_evidence

    state = torch.get_rng_state()
    exact_log_evidence(m.linear_model, (m.data(3, 1.0),))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
def test_diagnose_auto_falls_back_to_an_estimate_for_a_kinked_model():
    y = m.data(3, 1.0)
    fit = pyrovi.VI(m.abs_model, "fullrank", seed=0, num_steps=300, progress=False).run(y)
    diag = pyrovi.diagnose(fit, num_particles=500, seed=0, evidence="auto")
    assert diag.log_evidence_method != "exact"
    assert "not exact" in diag.log_evidence_estimate.info["why"]  # says why it fell back
    with pytest.raises(IntractableError, match=r"site 'z'"):
        pyrovi.diagnose(fit, num_particles=100, seed=0, evidence="exact")


@pytest.mark.parametrize("seed", range(8))
def test_the_refusal_does_not_depend_on_the_prototype_draw(seed):
    # the expansion point is a prior draw: from z > 0 the mode sits where relu(z) = z and
    # the kink lies ~4 posterior sds below it, which the probes must reach from any start
    pyro.set_rng_seed(seed)
    with pytest.raises(IntractableError, match=r"site 'z' enters log p\(x, z\)"):
        pyrovi.log_evidence(m.relu_model, m.data(5, 2.0), method="exact")
