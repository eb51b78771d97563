"""Export pyrovi results to ArviZ.

:func:`to_arviz` turns a ``VIResult`` or ``EMResult`` into an ``arviz.InferenceData``
(ArviZ 0.2x); :func:`decode_attrs` reads back the attributes it writes.  ArviZ is imported
only when an export is made.
"""

from pyrovi.arviz.attrs import JSON_PREFIX, decode_attrs, encode_attrs
from pyrovi.arviz.converter import ResultConverter, to_arviz

__all__ = ["to_arviz", "decode_attrs", "encode_attrs", "JSON_PREFIX", "ResultConverter"]
