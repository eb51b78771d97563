"""The convergence rule is scale-free: shifting every ELBO by a constant (what rescaling
the data does) changes none of its decisions, improvements within the Monte Carlo noise do
not count, and fits on data of scale 1e-6 and 1e6 either reach the closed-form posterior
or say that they did not (issue 16)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi._steps import PlateauRule, PlateauState, WindowMean, window_mean
from pyrovi.errors import ConvergenceWarning
from tests.vi import scale_models


def _decisions(trace, offset, window=100):
    rule, state, out = PlateauRule(), PlateauState(), []
    for start in range(0, len(trace), window):
        state = rule.update(state, window_mean(trace[start : start + window] + offset))
        out.append((state.stalls, state.reductions, state.converged))
    return out


def test_the_rule_ignores_a_constant_shift_of_the_elbo():
    rng = np.random.default_rng(0)
    steps = np.arange(6000)
    trace = -50 * np.exp(-steps / 700) + rng.normal(0, 0.5, steps.size)
    base = _decisions(trace, 0.0)
    assert base[-1][2]  # it converges
    for offset in (-1e12, -1e6, 1e6, 1e12):
        assert _decisions(trace, offset) == base, offset


def test_huge_steady_improvements_are_progress_whatever_the_size_of_the_elbo():
    # the old rule, relative to |ELBO|, called +2.5e8 nats per window a stall at -2.5e13
    rule, state = PlateauRule(), PlateauState()
    value = -2.5e13
    for _ in range(20):
        state = rule.update(state, WindowMean(value, 1.0))
        value += 2.5e8
    assert state.stalls == 0 and state.reductions == 0 and not state.converged


def test_improvements_within_the_noise_do_not_count():
    rule = PlateauRule()
    state = rule.update(PlateauState(), WindowMean(-100.0, 0.5))
    state = rule.update(state, WindowMean(-99.5, 0.5))  # +0.5 < 2 * 0.71
    assert state.stalls == 1
    state = rule.update(state, WindowMean(-97.0, 0.5))  # +3 > 2 * 0.71
    assert state.stalls == 0 and state.best == -97.0


def test_window_mean_carries_its_standard_error():
    values = [1.0, 2.0, 3.0, float("nan")]
    mean = window_mean(values)
    assert float(mean) == 2.0 and math.isclose(mean.se, 1.0 / math.sqrt(3))
    assert float(window_mean([float("nan")])) == -math.inf


def _fit(model, y, num_steps):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pyrovi.VI(model, seed=0, num_steps=num_steps, progress=False,
                           method="sgd").run(y)  # the SGD loop's rule is under test
    return result, [w.category for w in caught]


def test_data_located_at_1e6_do_not_converge_to_a_wrong_answer():
    g = torch.Generator().manual_seed(0)
    y = 1e6 + torch.randn(50, generator=g, dtype=torch.float64)
    mean, sd = scale_models.located_posterior(y)
    result, warned = _fit(scale_models.located_normal, y, 2000)
    median = float(result.median()["mu"])
    # Adam at lr 0.05 cannot travel 1e6: the fit must say so, not claim convergence
    assert not result.converged and ConvergenceWarning in warned
    assert abs(median - mean) > 100 * sd


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_fits_on_data_of_scale_1e_minus_6_and_1e6_match_the_closed_form(scale):
    g = torch.Generator().manual_seed(0)
    y = scale * torch.randn(100, generator=g, dtype=torch.float64)
    mean, sd = scale_models.scale_posterior(y)
    result, warned = _fit(scale_models.scale_model, y, 8000)
    loc = float(result.params["AutoNormal.locs.v"])  # the mean of log v under q
    assert result.converged and ConvergenceWarning not in warned
    assert abs(loc - mean) < 0.3 * sd, (loc, mean, sd)
