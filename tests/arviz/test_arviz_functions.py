"""ArviZ's own tools on the export: summaries, plots, LOO, model comparison, netCDF."""

import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

import pyrovi
from pyrovi.arviz import decode_attrs, to_arviz

from ._lines import (
    LINE,
    compare,
    compare_column,
    elpd,
    elpd_i,
    forest_labels,
    group_names,
    p_loo,
    posterior_plot_titles,
)

FITS = ["meanfield", "fullrank", "em_fit"]


@pytest.fixture(params=FITS)
def exported(request):
    result = request.getfixturevalue(request.param)
    return result, to_arviz(result, 400, posterior_predictive=False)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_summary(exported):
    _, idata = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(idata)
    post = idata.posterior
    expected_rows = sum(int(np.prod(post[v].shape[2:])) for v in post.data_vars)
    assert len(summary) == expected_rows
    first = list(post.data_vars)[0]
    row = first if post[first].ndim == 2 else f"{first}[0]"
    values = post[first].values.reshape(400, -1)[:, 0]
    assert summary.loc[row, "mean"] == pytest.approx(values.mean(), abs=1e-3)
    assert summary.loc[row, "sd"] == pytest.approx(values.std(ddof=1), rel=0.02, abs=1e-3)
    assert (summary["ess_bulk"] > 50).all()


def test_plot_posterior_and_trace(exported):
    _, idata = exported
    post = idata.posterior
    n_panels = sum(int(np.prod(post[v].shape[2:])) for v in post.data_vars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # az.plot_posterior (0.2x) or az.plot_dist (1.x): one panel per scalar, in order
        titles = posterior_plot_titles(idata)
        assert len(titles) == n_panels
        assert titles[0] == list(post.data_vars)[0]
        if LINE == 0:
            axes = az.plot_trace(idata)
            assert np.shape(axes) == (len(post.data_vars), 2)
        else:  # arviz-plots: the trace and the density of each variable side by side
            viz = az.plot_trace_dist(idata).viz
            assert set(viz["trace"].data_vars) == set(post.data_vars)
            assert set(viz["dist"].data_vars) == set(post.data_vars)


def test_plot_forest(exported):
    _, idata = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = forest_labels(idata)
    for var in idata.posterior.data_vars:
        assert var in labels


def test_loo_and_compare_across_guide_families(meanfield, fullrank):
    data = {
        "meanfield": to_arviz(meanfield, 1000, posterior_predictive=False),
        "fullrank": to_arviz(fullrank, 1000, posterior_predictive=False),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(data["meanfield"], pointwise=True)
        comparison = compare(data)
    assert loo.n_data_points == 8
    log_lik = data["meanfield"].log_likelihood["obs"].values.reshape(-1, 8)  # all chains
    lppd = np.sum(np.log(np.mean(np.exp(log_lik), axis=0)))
    assert np.isfinite(elpd(loo)) and elpd(loo) <= lppd + 1e-6
    assert p_loo(loo) == pytest.approx(lppd - elpd(loo), rel=1e-4)
    assert np.sum(elpd_i(loo)) == pytest.approx(elpd(loo), rel=1e-9)
    assert set(comparison.index) == {"meanfield", "fullrank"}
    assert comparison["rank"].min() == 0
    assert comparison.loc["meanfield", compare_column("elpd_loo")] == pytest.approx(
        elpd(loo), rel=1e-9)


@pytest.mark.parametrize("name", ["meanfield", "em_fit", "nested_fit"])
def test_netcdf_round_trip_loses_nothing(name, request, tmp_path):
    result = request.getfixturevalue(name)
    idata = to_arviz(result, 32, prior=True, coords=None)
    path = tmp_path / "export.nc"
    # attributes are plain values in memory; save_netcdf encodes them, load_netcdf decodes
    pyrovi.save_netcdf(idata, path)
    back = pyrovi.load_netcdf(path)
    assert group_names(back) == group_names(idata)
    assert {"posterior", "sample_stats", "observed_data", "prior"} <= set(group_names(idata))
    for group in group_names(idata):
        before, after = idata[group], back[group]
        xr.testing.assert_identical(before, after)  # values, dims, coords, dtypes, attrs
        assert decode_attrs(after.attrs) == decode_attrs(before.attrs)
        for var in before.variables:
            assert after[var].dtype == before[var].dtype
            assert decode_attrs(after[var].attrs) == decode_attrs(before[var].attrs)
    attrs = decode_attrs(back.posterior.attrs)
    assert attrs["converged"] is result.converged  # a bool again, not an int or a string
