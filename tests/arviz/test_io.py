"""save_netcdf / load_netcdf: attributes round-trip, failed writes leave nothing behind, on
both ArviZ lines (``InferenceData`` on 0.2x, ``xarray.DataTree`` on 1.x)."""

import os

import numpy as np
import pytest
import xarray as xr

import pyrovi
from pyrovi.arviz import decode_attrs, to_arviz
from pyrovi.errors import PyroviError

from ._lines import from_dict


def _idata():
    idata = from_dict({"posterior": {"a": np.arange(10.0).reshape(1, 10)}})
    idata.posterior.attrs.update(
        {"note": None, "converged": True, "config": {"lr": 0.05, "steps": [1, 2]}, "k": 3}
    )
    return idata


def _groups(data) -> dict:
    """Group name -> ``xarray.Dataset`` of either container."""
    if isinstance(data, xr.DataTree):
        return {node.name: node.to_dataset(inherit=False) for node in data.subtree
                if node is not data}
    return {name: data[name] for name in data.groups()}


def test_attributes_netcdf_cannot_store_round_trip(tmp_path):
    path = tmp_path / "fit.nc"
    pyrovi.save_netcdf(_idata(), path)
    back = pyrovi.load_netcdf(path)
    assert back.posterior.attrs["note"] is None
    assert back.posterior.attrs["converged"] is True
    assert back.posterior.attrs["config"] == {"lr": 0.05, "steps": [1, 2]}
    assert back.posterior.attrs["k"] == 3
    np.testing.assert_array_equal(back.posterior["a"].values, np.arange(10.0).reshape(1, 10))


def test_the_input_is_not_modified(tmp_path):
    idata = _idata()
    pyrovi.save_netcdf(idata, tmp_path / "fit.nc")
    assert idata.posterior.attrs["converged"] is True
    assert idata.posterior.attrs["note"] is None


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "fit.nc"
    pyrovi.save_netcdf(_idata(), path)
    bad = _idata()
    bad.posterior["b"] = xr.DataArray(
        np.array([[object()] * 10], dtype=object), dims=("chain", "draw")
    )
    with pytest.raises(PyroviError, match=r"could not write .*fit.nc.* the file at that path is unchanged"):
        pyrovi.save_netcdf(bad, path)
    assert os.listdir(tmp_path) == ["fit.nc"]
    assert pyrovi.load_netcdf(path).posterior.attrs["k"] == 3
    # and the same path takes the next write
    good = _idata()
    good.posterior.attrs["k"] = 4
    pyrovi.save_netcdf(good, path)
    assert pyrovi.load_netcdf(path).posterior.attrs["k"] == 4


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(PyroviError, match=r"folder .* does not exist"):
        pyrovi.save_netcdf(_idata(), tmp_path / "nope" / "fit.nc")


def test_an_export_saves_and_loads_with_its_attributes(tmp_path):
    import pyro
    import pyro.distributions as dist
    import torch

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    fit = pyrovi.VI(model, seed=0, progress=False, num_steps=200, elbo_particles=50).run(
        torch.randn(5)
    )
    path = pyrovi.save_netcdf(fit.to_arviz(50), tmp_path / "fit.nc")
    back = pyrovi.load_netcdf(path)
    assert back.posterior.attrs["converged"] is fit.converged
    assert back.posterior.attrs["guide_family"] == "meanfield"
    assert back.posterior["mu"].shape == (1, 50)


@pytest.mark.parametrize("name", ["meanfield", "em_fit", "nested_fit"])
def test_save_load_round_trip_is_lossless(name, request, tmp_path):
    result = request.getfixturevalue(name)
    idata = to_arviz(result, 30, prior=True, coords=None)
    path = pyrovi.save_netcdf(idata, tmp_path / "export.nc")
    back = pyrovi.load_netcdf(path)
    assert type(back) is type(idata)
    before, after = _groups(idata), _groups(back)
    assert list(after) == list(before)
    for group, ds in before.items():
        # values, dims, coords, dtypes; attributes come back decoded
        xr.testing.assert_equal(ds, after[group])
        assert decode_attrs(ds.attrs) == after[group].attrs
        for var in ds.variables:
            assert after[group][var].dtype == ds[var].dtype
            assert decode_attrs(ds[var].attrs) == after[group][var].attrs
    assert after["posterior"].attrs["converged"] is result.converged
