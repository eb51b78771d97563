"""netCDF-safe attributes: encode, write, read, decode gives the values back."""

import math

import numpy as np
import pytest
import xarray as xr

from pyrovi.arviz.attrs import JSON_PREFIX, decode_attrs, encode_attrs

VALUES = {
    "none": None,
    "yes": True,
    "no": False,
    "int": 3,
    "float": 0.25,
    "text": "meanfield",
    "list": [1, 2.5, "a"],
    "tuple": ("x", "y"),
    "dict": {"a": 1, "b": [True, None]},
    "numpy_int": np.int64(7),
    "numpy_float": np.float32(0.5),
    "nan": float("nan"),
    "inf": float("-inf"),
}


def _expected(key):
    value = VALUES[key]
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def test_encoded_values_are_netcdf_types():
    encoded = encode_attrs(VALUES)
    for key, value in encoded.items():
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), key
    assert encoded["yes"] == JSON_PREFIX + "true"
    assert encoded["none"] == JSON_PREFIX + "null"
    assert encoded["int"] == 3 and encoded["text"] == "meanfield"


def test_netcdf_round_trip_decodes_every_value(tmp_path):
    path = tmp_path / "attrs.nc"
    xr.Dataset(attrs=encode_attrs(VALUES)).to_netcdf(path)
    with xr.open_dataset(path) as ds:
        back = decode_attrs(ds.attrs)
    assert set(back) == set(VALUES)
    for key in VALUES:
        got, want = back[key], _expected(key)
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == want and type(got) is type(want), key


def test_unstorable_value_is_refused_with_its_name():
    with pytest.raises(TypeError, match="attribute 'fn' holds a function"):
        encode_attrs({"fn": lambda: 0})
