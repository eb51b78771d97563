"""Export pyrovi results to ArviZ.

:func:`to_arviz` turns a ``VIResult`` or ``EMResult`` into an ``arviz.InferenceData``
(ArviZ 0.2x) or an ``xarray.DataTree`` (ArviZ 1.x); :func:`loo` is PSIS-LOO corrected for
draws of an approximate posterior; :func:`encode_attrs` / :func:`decode_attrs` turn the
export's attributes into netCDF-safe values and back (``save_netcdf`` / ``load_netcdf``
call them).  ArviZ is imported only when an export is made.
"""

from pyrovi.arviz.attrs import decode_attrs, encode_attrs
from pyrovi.arviz.converter import to_arviz
from pyrovi.arviz.io import load_netcdf, save_netcdf
from pyrovi.arviz.loo import loo

__all__ = ["to_arviz", "loo", "save_netcdf", "load_netcdf", "encode_attrs", "decode_attrs"]
