"""Issue 17, done when: on data simulated from eight schools (non-centred) and from a
logistic regression (N=100, D=3), the bidirectional-AIS bracket, started from the latents
that simulated the data (exact posterior draws, so both sides are bounds), contains the log
evidence computed by quadrature, and the error bounds on the fit's means and sds hold
against the exact posterior moments (quadrature, themselves checked against Pyro's NUTS in
``test_quadrature_agrees_with_nuts``)."""

import json
import math
import os

import pyro.poutine as poutine
import pytest
import torch

import pyrovi
from pyrovi.diagnostics import AIS, diagnose, evidence_bracket, simulate
from pyrovi.models import eight_schools_noncentered

from .references import (
    F64,
    SIGMA,
    logistic,
    logistic_design,
    logistic_reference,
    schools_reference,
)

NUM_PARTICLES = 4000


def _schools(seed):
    _, data = simulate(eight_schools_noncentered, SIGMA, torch.zeros(8, dtype=F64), seed=seed)
    log_z, moments = schools_reference(data["obs"])
    # the quadrature has converged: half the nodes give the same value
    assert schools_reference(data["obs"], n=4001)[0] == pytest.approx(log_z, abs=1e-8)
    return eight_schools_noncentered, (SIGMA,), log_z, moments


def _logistic(seed):
    X = logistic_design()
    _, data = simulate(logistic, X, torch.zeros(100, dtype=F64), seed=seed)
    log_z, mean, sd = logistic_reference(X, data["y"])
    assert logistic_reference(X, data["y"], h=0.25)[0] == pytest.approx(log_z, abs=1e-6)
    return logistic, (X,), log_z, {"w": (mean, sd)}


CASES = {  # name -> (reference builder, guide family)
    "eight_schools": (_schools, "fullrank"),
    "logistic": (_logistic, "meanfield"),
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_bracket_contains_the_evidence_and_error_bounds_hold(case, seed):
    build, family = CASES[case]
    model, args, log_z, moments = build(seed)
    latents, data = simulate(model, *args, torch.zeros(len(args[0]), dtype=F64), seed=seed)
    sim = poutine.condition(model, data=data)
    result = pyrovi.VI(sim, family, seed=seed, progress=False).run(*args)
    # the latents that simulated the data are an exact posterior draw: both sides are bounds
    bracket = evidence_bracket(result, posterior_draws={k: v.unsqueeze(0)
                                                        for k, v in latents.items()},
                               options=AIS(num_temperatures=100), cubo=False, seed=seed)
    assert bracket.lower_is_bound and bracket.upper_is_bound
    assert bracket.contains(log_z), (bracket, log_z)  # at the documented z = 2.5
    assert bracket.width < 0.1
    d = diagnose(result, num_particles=NUM_PARTICLES, seed=seed, bracket=bracket)
    assert d.bracket is bracket
    assert d.elbo <= bracket.upper + 2.5 * bracket.upper_se
    assert f"gap in [{max(0.0, bracket.lower - d.elbo):.3g}" in d.verdict.sentence
    eb = d.error_bounds
    assert eb.lower_source in ("bracket", "estimate", "elbo")
    assert eb.log_evidence_lower - 2.5 * eb.log_evidence_lower_se <= log_z
    for site, (mean, sd) in moments.items():
        s = eb.sites[site]
        # q's mean and sd are themselves estimated from the draws: a slack of 3 of their
        # standard errors (about sd / sqrt(S)) beside the bound
        slack = 3 * s.q_sd / math.sqrt(NUM_PARTICLES)
        assert bool(((s.q_mean - mean).abs() <= s.mean_error + slack).all()), site
        assert bool(((s.q_sd - sd).abs() <= s.sd_error + slack).all()), site


def test_quadrature_agrees_with_nuts():
    """The references are right: Pyro's NUTS moments (``references_nuts.py``, stored in
    ``references_nuts.json``) agree with the quadrature within 4 Monte Carlo errors."""
    path = os.path.join(os.path.dirname(__file__), "references_nuts.json")
    with open(path) as fh:
        nuts = json.load(fh)["cases"]
    refs = {"eight_schools/1": _schools(1)[3], "logistic/1": _logistic(1)[3]}
    assert set(nuts) == set(refs)
    for key, moments in refs.items():
        for site, (mean, sd) in moments.items():
            got = nuts[key][site]
            m, s, ess = (torch.tensor(got[k], dtype=F64) for k in ("mean", "std", "n_eff"))
            assert bool(((m - mean.reshape(-1)).abs() <= 4 * sd.reshape(-1)
                         / ess.sqrt()).all()), (key, site, m, mean)
            # an sd's Monte Carlo error is about sd / sqrt(2 ESS) for near-Gaussian draws;
            # tau's heavy right tail needs more: 4 of sd / sqrt(ESS / 2)
            assert bool(((s - sd.reshape(-1)).abs() <= 4 * sd.reshape(-1)
                         / (ess / 2).sqrt()).all()), (key, site, s, sd)
