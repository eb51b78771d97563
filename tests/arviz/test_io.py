"""save_netcdf / load_netcdf: attributes round-trip, failed writes leave nothing behind."""

import os

import arviz as az
import numpy as np
import pytest
import xarray as xr

import pyrovi
from pyrovi.errors import PyroviError


def _idata():
    idata = az.from_dict(posterior={"a": np.arange(10.0).reshape(1, 10)})
    idata.posterior.attrs.update(
        {"note": None, "converged": True, "config": {"lr": 0.05, "steps": [1, 2]}, "k": 3}
    )
    return idata


def test_attributes_netcdf_cannot_store_round_trip(tmp_path):
    path = tmp_path / "fit.nc"
    pyrovi.save_netcdf(_idata(), path)
    back = pyrovi.load_netcdf(path)
    assert back.posterior.attrs["note"] is None
    assert back.posterior.attrs["converged"] is True
    assert back.posterior.attrs["config"] == {"lr": 0.05, "steps": [1, 2]}
    assert back.posterior.attrs["k"] == 3
    np.testing.assert_array_equal(back.posterior["a"].values, np.arange(10.0).reshape(1, 10))


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
