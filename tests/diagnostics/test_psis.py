"""PSIS k-hat without ``arviz.psislw``: the same number as ArviZ 0.2x computes, on both
ArviZ lines (ArviZ 1.x has no ``psislw``)."""

import math
import warnings

import numpy as np
import pytest
import torch

from pyrovi.arviz.backend import arviz_line
from pyrovi.diagnostics.psis import pareto_khat, psis_diagnostic


def _weights():
    """(name, log-weights): light and heavy tails, shifted, and sizes around the point
    where the tail (``ceil(min(S/5, 3 sqrt(S)))`` weights) first exceeds 4."""
    rng = np.random.default_rng(0)
    out = []
    for s in (11, 20, 21, 26, 100, 1000, 4000, 20000):
        out.append((f"normal-0.3-{s}", rng.normal(0.0, 0.3, s)))
        out.append((f"normal-2-{s}", rng.normal(0.0, 2.0, s)))
        out.append((f"pareto-{s}", -np.log(rng.uniform(size=s)) / 0.8))
        out.append((f"shifted-{s}", 100.0 + 3.0 * rng.normal(size=s)))
    out.append(("round-off", 1e-14 * rng.normal(size=200)))
    return out


WEIGHTS = _weights()


@pytest.mark.skipif(arviz_line() == 1, reason="arviz.psislw exists on ArviZ 0.2x only")
@pytest.mark.parametrize("name, log_w", WEIGHTS, ids=[name for name, _ in WEIGHTS])
def test_khat_is_arviz_psislw_khat(name, log_w):
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = az.psislw(log_w - log_w.max())
    expected = float(np.asarray(expected))
    khat = pareto_khat(log_w)
    if math.isinf(expected):
        assert khat == expected
    else:
        assert khat == pytest.approx(expected, abs=1e-6)


@pytest.mark.skipif(arviz_line() == 0, reason="arviz_stats exists on ArviZ 1.x only")
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
def test_khat_is_close_to_arviz_stats_psislw(scale):
    # arviz-stats takes floor(3 sqrt(S)) tail draws where ArviZ 0.2x takes the ceiling, so
    # the two agree closely but not exactly
    from arviz_stats.base import array_stats

    log_w = np.random.default_rng(1).normal(0.0, scale, 4000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = array_stats.psislw(-log_w)  # arviz-stats smooths -ary
    assert pareto_khat(log_w) == pytest.approx(float(expected), abs=0.02)


def test_equal_weights_have_khat_minus_inf():
    d = psis_diagnostic(torch.full((500,), -3.25))
    assert d.khat == -math.inf and d.reliable and d.verdict.startswith("good")


def test_a_tail_too_short_for_a_fit_is_plus_inf():
    d = psis_diagnostic(torch.arange(20.0))  # tail of ceil(20 / 5) = 4 weights
    assert d.khat == math.inf and not d.reliable and d.verdict.startswith("bad")


def test_khat_needs_two_weights():
    with pytest.raises(ValueError, match="at least 2 log-weights"):
        psis_diagnostic(torch.zeros(1))
