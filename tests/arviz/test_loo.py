"""``pyrovi.arviz.loo``, the importance-corrected PSIS-LOO of VI draws, on both ArviZ lines.

ArviZ 1.x computes it with arviz-stats' ``loo_approximate_posterior``; ArviZ 0.2x with
pyrovi's own code around ``arviz.psislw``.  Both are checked against one computation by
hand in numpy (PSIS as Vehtari et al. 2024 define it, with Pyro's generalized Pareto fit),
so the two lines agree with each other to the same tolerance.
"""

import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from pyro.ops.stats import fit_generalized_pareto

from pyrovi.arviz import loo as pyrovi_loo
from pyrovi.arviz import to_arviz
from pyrovi.errors import PyroviError

from ._lines import LINE, compare, compare_column, elpd, elpd_i, p_loo, pareto_k, psis_tail_length


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _logsumexp(a, axis=None):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def psis_by_hand(log_ratios, tail_len):
    """Pareto-smoothed, normalized log weights and k-hat of one vector of log ratios.

    The ``tail_len`` largest ratios are replaced by the expected order statistics of the
    generalized Pareto fitted to them (Pyro's fit); no weight exceeds the largest raw one.
    """
    x = np.asarray(log_ratios, dtype=np.float64)
    x = x - x.max()
    cutoff = max(np.sort(x)[-tail_len - 1], np.log(np.finfo(float).tiny))
    tail = np.flatnonzero(x > cutoff)
    tail = tail[np.argsort(x[tail])]
    k, sigma = fit_generalized_pareto(torch.as_tensor(np.exp(x[tail]) - np.exp(cutoff)))
    probs = (np.arange(tail.size) + 0.5) / tail.size
    x = x.copy()
    x[tail] = np.log(sigma * np.expm1(-k * np.log1p(-probs)) / k + np.exp(cutoff))
    x = np.minimum(x, 0.0)
    return x - _logsumexp(x), k


def corrected_loo_by_hand(idata, tail_len, var_name="obs"):
    """(elpd, se, p, elpd_i, pareto_k) of PSIS-LOO with the p/q correction of each draw."""
    ll = idata["log_likelihood"][var_name]
    obs_dims = [d for d in ll.dims if d not in ("chain", "draw")]
    ll = ll.transpose("chain", "draw", *obs_dims).values.astype(np.float64)
    s = ll.shape[0] * ll.shape[1]
    ll = ll.reshape(s, -1)
    stats = idata["sample_stats"]
    log_w = (stats["lp"].values.astype(np.float64) - stats["log_q"].values).reshape(s)
    out_i, ks = [], []
    for i in range(ll.shape[1]):
        smoothed, k = psis_by_hand(log_w - ll[:, i], tail_len)
        out_i.append(_logsumexp(smoothed + ll[:, i]))
        ks.append(k)
    out_i, ks = np.array(out_i), np.array(ks)
    lppd_i = _logsumexp(ll, axis=0) - np.log(s)
    total = out_i.sum()
    return total, math.sqrt(ll.shape[1] * np.var(out_i, ddof=1)), float(np.sum(lppd_i - out_i)), out_i, ks


@pytest.fixture(scope="module")
def exports(meanfield, fullrank):
    # 900 draws: both lines smooth the 90 largest ratios (3 sqrt(900) is whole), so the
    # two lines give the same numbers
    return {
        "meanfield": to_arviz(meanfield, 900, posterior_predictive=False),
        "fullrank": to_arviz(fullrank, 900, posterior_predictive=False),
    }


@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
def test_corrected_loo_is_the_hand_computation(exports, family):
    idata = exports[family]
    result = _quiet(pyrovi_loo, idata)
    assert psis_tail_length(900) == 90
    total, se, p, out_i, ks = corrected_loo_by_hand(idata, 90)
    assert result.n_samples == 900 and result.n_data_points == 8
    # the same numbers on ArviZ 0.2x and 1.x (float32 exports: about 1e-6)
    assert elpd(result) == pytest.approx(total, rel=1e-6, abs=1e-6)
    assert p_loo(result) == pytest.approx(p, rel=1e-5, abs=1e-6)
    assert float(result.se) == pytest.approx(se, rel=1e-5)
    np.testing.assert_allclose(elpd_i(result), out_i, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pareto_k(result), ks, rtol=1e-5, atol=1e-5)
    # the correction matters: plain az.loo (draws taken as the posterior's) differs
    plain = _quiet(az.loo, idata, pointwise=True, reff=1.0)
    assert abs(elpd(plain) - total) > 1e-3


def test_the_lines_tail_length_is_the_only_difference(meanfield):
    # 1000 draws: ArviZ 0.2x smooths the 95 largest ratios, arviz-stats the 94 largest;
    # each line is the hand computation with its own tail
    idata = to_arviz(meanfield, 1000, posterior_predictive=False)
    result = _quiet(pyrovi_loo, idata)
    assert psis_tail_length(1000) == (95 if LINE == 0 else 94)
    total, _, p, out_i, ks = corrected_loo_by_hand(idata, psis_tail_length(1000))
    assert elpd(result) == pytest.approx(total, rel=1e-6, abs=1e-6)
    assert p_loo(result) == pytest.approx(p, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(pareto_k(result), ks, rtol=1e-5, atol=1e-5)
    other, _, _, _, _ = corrected_loo_by_hand(idata, 94 if LINE == 0 else 95)
    assert abs(other - total) < 1e-2  # far below se (about 1): the lines agree in practice


def test_corrected_loo_without_pointwise_values(exports):
    idata = exports["meanfield"]
    full = _quiet(pyrovi_loo, idata)
    short = _quiet(pyrovi_loo, idata, pointwise=False)
    assert elpd(short) == pytest.approx(elpd(full), rel=1e-12)
    assert p_loo(short) == pytest.approx(p_loo(full), rel=1e-12)


def test_compare_two_guide_families_by_corrected_loo(exports):
    loos = {name: _quiet(pyrovi_loo, idata) for name, idata in exports.items()}
    table = _quiet(compare, loos)
    column = compare_column("elpd_loo")
    assert set(table.index) == {"meanfield", "fullrank"}
    for name, result in loos.items():
        assert table.loc[name, column] == pytest.approx(elpd(result), rel=1e-12)
        assert table.loc[name, compare_column("p_loo")] == pytest.approx(p_loo(result),
                                                                         rel=1e-12)
    best = max(loos, key=lambda n: elpd(loos[n]))
    assert table.index[0] == best and table.loc[best, "rank"] == 0
    other = ({"meanfield", "fullrank"} - {best}).pop()
    # ArviZ 0.2x reports best - other, ArviZ 1.x other - best
    assert abs(table.loc[other, "elpd_diff"]) == pytest.approx(
        elpd(loos[best]) - elpd(loos[other]), rel=1e-9)
    assert table["weight"].sum() == pytest.approx(1.0, abs=1e-9)


def test_reff_on_each_line(exports):
    idata = exports["meanfield"]
    if LINE == 1:
        with pytest.raises(PyroviError, match=r"reff=0.5: ArviZ 1.x's loo_approximate"):
            pyrovi_loo(idata, reff=0.5)
    else:  # a longer tail: a different estimate, still finite
        assert elpd(_quiet(pyrovi_loo, idata, reff=0.5)) != elpd(_quiet(pyrovi_loo, idata))
    assert elpd(_quiet(pyrovi_loo, idata, reff=1.0)) == elpd(_quiet(pyrovi_loo, idata))


def test_corrected_loo_of_a_fit_is_that_of_its_export(meanfield):
    # a result goes through to_arviz (with its fixed default seed): the same draws
    from_fit = _quiet(pyrovi_loo, meanfield)
    from_export = _quiet(pyrovi_loo, to_arviz(meanfield, posterior_predictive=False))
    assert elpd(from_fit) == pytest.approx(elpd(from_export), rel=1e-12)


def test_missing_groups_and_variables_are_named(exports, em_fit):
    idata = to_arviz(em_fit, 40, log_likelihood=False, posterior_predictive=False)
    with pytest.raises(PyroviError, match=r"lack the group\(s\) \['log_likelihood'\]"):
        pyrovi_loo(idata)
    with pytest.raises(PyroviError, match=r"no log_likelihood variable 'y'; the variables "
                                          r"are \['obs'\]"):
        pyrovi_loo(exports["meanfield"], var_name="y")


def test_pyrovi_compare_tabulates_the_corrected_loo(meanfield, fullrank):
    import pyrovi

    fits = {"meanfield": meanfield, "fullrank": fullrank}
    table = _quiet(pyrovi.compare, fits, loo=True, seed=0, num_particles=200, bounds=False)
    for row in table.rows:
        # the same export (same seed) through pyrovi.arviz.loo
        ref = _quiet(pyrovi_loo, to_arviz(fits[row["name"]], posterior_predictive=False,
                                          seed=0))
        assert row["elpd_loo"] == pytest.approx(elpd(ref), rel=1e-12)
        assert row["elpd_loo_se"] == pytest.approx(float(ref.se), rel=1e-12)
        threshold = min(1 - 1 / math.log10(1000), 0.7)
        assert row["loo_bad_k"] == int(np.sum(pareto_k(ref) > threshold))
    assert "elpd_loo" in table.columns and "elpd_loo" in str(table)
    plain = _quiet(pyrovi.compare, fits, seed=0, num_particles=200, bounds=False)
    assert "elpd_loo" not in plain.columns
    with pytest.raises(TypeError, match=r"loo must be True or False, got 'yes'"):
        pyrovi.compare(fits, loo="yes", num_particles=200, bounds=False)
