"""Dimension names from plates, event dimensions, and the user's coords / dims."""

import numpy as np
import pytest

from pyrovi.arviz import to_arviz
from pyrovi.errors import PyroviError


def test_site_in_schools_plate_gets_schools_dim(meanfield):
    idata = to_arviz(meanfield, 20)
    theta = idata.posterior["theta_tilde"]
    assert theta.dims == ("chain", "draw", "schools")
    assert theta.shape == (4, 5, 8)  # 20 i.i.d. draws as 4 chains
    np.testing.assert_array_equal(idata.posterior["schools"], np.arange(8))
    assert idata.posterior["mu"].dims == ("chain", "draw")  # scalar site: no extra dim
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "schools")
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "schools")
    assert idata.observed_data["obs"].dims == ("schools",)
    assert idata.constant_data["sigma"].dims == ("sigma_dim_0",)


def test_nested_plates_and_event_dims(nested_fit):
    idata = to_arviz(nested_fit, 10, prior=True)
    post = idata.posterior
    assert post["g"].dims == ("chain", "draw", "groups", "g_dim_0")  # dim -1 owned by no plate
    assert post["g"].shape == (1, 10, 3, 1)
    assert post["v"].dims == ("chain", "draw", "groups", "items", "v_dim_0")
    assert post["v"].shape == (1, 10, 3, 4, 5)
    assert post["w"].dims == ("chain", "draw", "w_dim_0")
    assert post["w"].shape == (1, 10, 2)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "groups", "items")
    assert idata.prior["v"].shape == (1, 10, 3, 4, 5)
    assert idata.prior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.prior_predictive["obs"].shape == (1, 10, 3, 4)


def test_coords_and_dims_override(meanfield):
    names = [f"school_{i}" for i in range(8)]
    idata = to_arviz(
        meanfield, 10, coords={"schools": names}, dims={"sigma": ["schools"]}
    )
    assert list(idata.posterior["schools"].values) == names
    assert idata.constant_data["sigma"].dims == ("schools",)
    assert list(idata.constant_data["schools"].values) == names


def test_renamed_dims_apply_to_every_group(meanfield):
    idata = to_arviz(meanfield, 10, dims={"obs": ["school"], "theta_tilde": ["school"]})
    assert idata.observed_data["obs"].dims == ("school",)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "school")
    assert idata.posterior["theta_tilde"].dims == ("chain", "draw", "school")


def test_dims_of_wrong_length_name_variable_and_shapes(meanfield):
    with pytest.raises(PyroviError, match=r"dims\['theta_tilde'\].*2 dimension.*shape \(8,\)"):
        to_arviz(meanfield, 10, dims={"theta_tilde": ["a", "b"]})


def test_coords_of_wrong_length_name_variable_and_shapes(meanfield):
    with pytest.raises(
        PyroviError, match=r"coords\['schools'\] has length 3.*variable '\w+'.*shape \(8,\).*size 8"
    ):
        to_arviz(meanfield, 10, coords={"schools": ["a", "b", "c"]})


def test_dims_for_unknown_variable_are_refused(meanfield):
    with pytest.raises(PyroviError, match=r"\['thetaa'\].*expected names among"):
        to_arviz(meanfield, 10, dims={"thetaa": ["schools"]})


def test_one_dim_name_with_two_sizes_is_refused(nested_fit):
    with pytest.raises(PyroviError, match=r"dimension 'groups' has size \d in variable '\w+'"):
        to_arviz(nested_fit, 10, dims={"w": ["groups"]})


def test_coords_for_unknown_dimension_are_refused(meanfield):
    with pytest.raises(PyroviError, match=r"coords names dimension\(s\) \['unused'\]"):
        to_arviz(meanfield, 10, coords={"unused": [0]})
