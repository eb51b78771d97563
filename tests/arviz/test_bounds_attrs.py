"""The bracket, the error bounds and the verdict of a diagnosis in the ArviZ export: plain
values in memory, the same after a netCDF round trip, per-site bounds as a group."""

import numpy as np
import pytest

import pyrovi
from pyrovi.arviz import decode_attrs, to_arviz
from pyrovi.arviz.attrs import bounds_attrs, encode_attrs


@pytest.fixture(scope="module")
def diag(meanfield):
    return pyrovi.diagnose(meanfield, num_particles=1000, seed=0,
                           bracket=pyrovi.AIS(num_temperatures=20, num_runs=4))


@pytest.fixture(scope="module")
def idata(meanfield, diag):
    return to_arviz(meanfield, 40, diagnostics=diag)


def test_attrs_carry_the_bracket_bounds_and_verdict(idata, diag):
    attrs = idata.vi_trace.attrs  # plain values in memory: no decoding needed
    b = attrs["diagnostics_bracket"]
    assert b["lower"] == diag.bracket.lower and b["upper"] == diag.bracket.upper
    assert b["lower_is"] == "bound" and b["upper_is"] == "estimate"
    assert b["num_temperatures"] == 20
    c = attrs["diagnostics_cubo"]
    assert c["value"] == diag.cubo.value and c["is"].startswith("estimate of an upper bound")
    e = attrs["diagnostics_error_bounds"]
    assert e["d2"] == diag.error_bounds.d2 and e["reliable"] is diag.error_bounds.reliable
    assert e["max_relative_mean_error"] == diag.error_bounds.max_relative_mean_error()
    assert attrs["diagnostics_verdict"] == diag.verdict.sentence
    assert attrs["diagnostics_trust"] == {"means": diag.verdict.means,
                                          "sds": diag.verdict.sds,
                                          "tails": diag.verdict.tails}
    assert attrs["diagnostics_gap"] == diag.gap  # the scalar fields are still there


def test_per_site_bounds_group(idata, diag):
    group = idata.error_bounds
    assert set(group.data_vars) == {"mu", "tau", "theta_tilde"}
    assert list(group["theta_tilde"].dims) == ["bound", "schools"]
    assert list(group["bound"].values) == ["q_mean", "q_sd", "mean_error", "sd_error", "w2"]
    site = diag.error_bounds.sites["theta_tilde"]
    np.testing.assert_allclose(group["theta_tilde"].sel(bound="mean_error").values,
                               site.mean_error.numpy())
    np.testing.assert_allclose(group["tau"].sel(bound="sd_error").values,
                               diag.error_bounds.sites["tau"].sd_error.numpy())
    # the export's q_mean is the diagnosis' q mean, near the posterior group's draws' mean
    post = idata.posterior["mu"].values.mean()
    q_mean, q_sd = (float(group["mu"].sel(bound=k)) for k in ("q_mean", "q_sd"))
    assert abs(post - q_mean) < 4 * q_sd / np.sqrt(40)
    assert group.attrs["reliable"] is diag.error_bounds.reliable


def test_round_trip_through_netcdf(idata, tmp_path, diag):
    path = tmp_path / "fit.nc"
    pyrovi.save_netcdf(idata, path)
    back = pyrovi.load_netcdf(path)
    attrs = decode_attrs(back.vi_trace.attrs)
    assert attrs["diagnostics_bracket"] == idata.vi_trace.attrs["diagnostics_bracket"]
    assert attrs["diagnostics_trust"] == idata.vi_trace.attrs["diagnostics_trust"]
    np.testing.assert_allclose(back.error_bounds["theta_tilde"].values,
                               idata.error_bounds["theta_tilde"].values)


def test_without_bounds_no_group_and_no_attrs(meanfield):
    d = pyrovi.diagnose(meanfield, num_particles=200, seed=0, bounds=False)
    idata = to_arviz(meanfield, 40, diagnostics=d)
    assert "error_bounds" not in set(_names(idata))
    attrs = idata.vi_trace.attrs
    # the Diagnostics fields that were not computed read None, as its other absent fields
    assert attrs["diagnostics_error_bounds"] is None and attrs["diagnostics_bracket"] is None
    assert attrs["diagnostics_verdict"] == d.verdict.sentence
    assert bounds_attrs({"elbo": 1.0}) == {}
    # every value is storable: encoding refuses nothing
    assert set(encode_attrs(bounds_attrs(d))) == {"diagnostics_cubo", "diagnostics_verdict",
                                                  "diagnostics_trust"}


def _names(data):
    groups = data.groups
    return [g.strip("/") for g in (groups() if callable(groups) else groups)]
