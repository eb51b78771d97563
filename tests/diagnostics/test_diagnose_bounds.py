"""diagnose() with the error bounds, the bracket and the verdict: the numbers it adds, that
they hold against the exact posterior of a conjugate regression, and how they are printed
and labelled (bound or estimate)."""

import pytest
import torch

import pyrovi
from pyrovi.diagnostics import AIS, Bracket, diagnose

from .conftest import F64, NOISE


def exact_posterior(X, y):
    """w ~ N(0, I), y ~ N(X w, NOISE^2 I): the posterior mean and sds of w."""
    precision = torch.eye(X.shape[1], dtype=F64) + X.T @ X / NOISE**2
    cov = torch.linalg.inv(precision)
    return cov @ X.T @ y / NOISE**2, cov.diagonal().sqrt()


@pytest.fixture(scope="module")
def diag_mean(meanfield):
    return diagnose(meanfield, num_particles=4000, seed=0)


@pytest.fixture(scope="module")
def diag_bracket(meanfield):
    return diagnose(meanfield, num_particles=4000, seed=0,
                    bracket=AIS(num_temperatures=40, num_runs=4))


def test_default_diagnose_bounds_hold_against_the_exact_posterior(diag_mean, data):
    d = diag_mean
    eb = d.error_bounds
    assert eb is not None and eb.reliable and eb.lower_source == "exact"
    assert d.bracket is None and d.bounds_note == ""
    # CUBO_2 of the same draws: at or above the exact evidence for this good q
    assert d.cubo.num_particles == 4000 and d.cubo.value > d.log_evidence - 3 * d.cubo.se
    mean, sd = exact_posterior(*data)
    w = eb.sites["w"]
    assert w.gaussian
    assert bool(((w.q_mean - mean).abs() <= w.mean_error).all())
    assert bool(((w.q_sd - sd).abs() <= w.sd_error).all())
    # meanfield on correlated regression weights: a visible error, which the verdict names
    v = d.verdict
    assert v.max_mean_error == pytest.approx(eb.max_relative_mean_error())
    assert v.gap_lower == v.gap_upper == pytest.approx(d.gap)
    assert v.means is False and "fullrank" in v.next_step


def test_printed_numbers_say_bound_or_estimate(diag_mean, diag_bracket):
    text = str(diag_mean)
    assert "ELBO" in text and "[lower bound]" in text.splitlines()[1]
    assert "(exact)  [exact]" in text
    assert "gap (KL)" in text and "[estimate]" in text
    assert "[estimate of an upper bound, biased low]" in text
    assert "error bounds, from CUBO_2 and the exact log p(x)" in text
    assert "[bounds; reliable: k-hat < 0.5]" in text
    assert "|mean err| <=" in text and "|sd err| <=" in text
    assert f"Verdict: {diag_mean.verdict.sentence}" in text
    text = str(diag_bracket)
    assert "bracket lower" in text and "[lower bound]" in text
    # real data: reverse AIS from resampled draws, so the upper side is an estimate
    assert "[upper estimate]" in text and "[upper bound]" not in text


def test_bracket_option_contains_the_exact_evidence(diag_bracket, exact):
    b = diag_bracket.bracket
    assert isinstance(b, Bracket) and b.num_temperatures == 40 and b.lower_is_bound
    assert not b.upper_is_bound
    assert b.contains(exact)
    v = diag_bracket.verdict
    # the exact evidence locates the gap; the bracket is only printed beside it
    assert v.gap_lower == v.gap_upper == pytest.approx(exact - diag_bracket.elbo)


def test_a_given_bracket_is_used_as_given_and_feeds_the_bounds(meanfield, diag_bracket):
    b = diag_bracket.bracket
    d = diagnose(meanfield, num_particles=2000, seed=1, evidence="importance", bracket=b)
    assert d.bracket is b
    # the verdict's gap comes from the bracket when the evidence is not exact
    assert d.verdict.gap_upper == pytest.approx(b.upper - d.elbo)
    assert d.verdict.gap_lower == pytest.approx(max(0.0, b.lower - d.elbo))
    assert d.error_bounds.lower_source in ("bracket", "estimate", "elbo")


def test_bounds_off_and_exact_posterior(meanfield, em_result):
    d = diagnose(meanfield, num_particles=500, seed=0, bounds=False)
    assert d.error_bounds is None and d.bounds_note == "bounds=False"
    assert "error bounds: not computed (bounds=False)" in str(d)
    assert d.verdict is not None and d.verdict.max_mean_error is None
    d = diagnose(em_result, num_particles=200, seed=0)
    assert d.error_bounds is None and d.cubo is None
    assert d.bounds_note == "q is the exact posterior: every error is 0"
    assert d.verdict.means and d.verdict.sds and d.verdict.tails
    assert "exact posterior given the fitted parameters" in d.verdict.sentence
    with pytest.raises(ValueError, match=r"bracket= asks for bidirectional AIS, but this "
                                         r"fit's q is the exact posterior"):
        diagnose(em_result, num_particles=200, bracket=True)


def test_bad_bounds_and_bracket_arguments(meanfield):
    with pytest.raises(ValueError, match=r"bounds='yes' is not known; expected 'auto', True"):
        diagnose(meanfield, bounds="yes")
    with pytest.raises(TypeError, match=r"bracket=3 is not known; expected False, True"):
        diagnose(meanfield, bracket=3)


def test_auto_bounds_skip_when_the_draws_are_too_many(meanfield, monkeypatch):
    import importlib

    module = importlib.import_module("pyrovi.diagnostics.diagnose")

    monkeypatch.setattr(module, "AUTO_BOUNDS_MAX_VALUES", 100)
    d = pyrovi.diagnose(meanfield, num_particles=500, seed=0)
    assert d.error_bounds is None
    assert d.bounds_note == ("500 draws x 3 latent values exceed 100; pass bounds=True to "
                             "keep them")
    d = pyrovi.diagnose(meanfield, num_particles=500, seed=0, bounds=True)
    assert d.error_bounds is not None
