"""Export pyrovi results to ArviZ.

:func:`to_arviz` turns a ``VIResult`` or ``EMResult`` into an ``arviz.InferenceData``
(ArviZ 0.2x); :func:`decode_attrs` reads back the attributes it writes.  ArviZ is imported
only when an export is made.
"""

from pyrovi.arviz.attrs import decode_attrs
from pyrovi.arviz.converter import to_arviz
from pyrovi.arviz.io import load_netcdf, save_netcdf

__all__ = ["to_arviz", "save_netcdf", "load_netcdf", "decode_attrs"]
