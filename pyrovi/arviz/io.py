"""Writing and reading exports as netCDF without losing attributes or leaving debris.

``InferenceData.to_netcdf`` refuses attribute values such as None, dicts and booleans (or
gives them back changed), and a write that fails midway leaves a half-written file at the
target path.  :func:`save_netcdf` encodes every group's attributes with
:func:`~pyrovi.arviz.attrs.encode_attrs` and writes to a temporary file in the same folder
that is renamed over the target only once it is complete; :func:`load_netcdf` decodes the
attributes again.
"""

from __future__ import annotations

import math
import os

from pyrovi.arviz.attrs import decode_attrs, encode_value
from pyrovi.errors import PyroviError

__all__ = ["save_netcdf", "load_netcdf"]


def _encode(attrs) -> dict:
    """Encode what netCDF cannot store; strings and finite numbers stay as they are (so an
    export's already encoded attributes are not encoded twice)."""
    out = {}
    for key, value in attrs.items():
        native = isinstance(value, str) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)
        )
        out[str(key)] = value if native else encode_value(str(key), value)
    return out


def _groups(idata):
    return [(name, getattr(idata, name)) for name in idata.groups()]


def save_netcdf(idata, path: str | os.PathLike) -> str:
    """Write an ``InferenceData`` to ``path`` atomically, attributes encoded.

    Parameters
    ----------
    idata : arviz.InferenceData
        For instance ``result.to_arviz()``; it is not modified.
    path : str or os.PathLike
        The target file; an existing file is replaced only by a complete new one.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    PyroviError
        When the data cannot be written; the message names the cause, the target is left
        as it was and no temporary file remains.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PyroviError(f"cannot write {path!r}: folder {folder!r} does not exist")
    idata = idata.copy()
    for _, dataset in _groups(idata):
        dataset.attrs = _encode(dataset.attrs)
        for var in dataset.variables.values():
            var.attrs = _encode(var.attrs)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except Exception as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise PyroviError(
            f"could not write {path!r} ({type(err).__name__}: {err}); the file at that path "
            "is unchanged. Remove or convert the offending variable or attribute and save "
            "again."
        ) from err
    return path


def load_netcdf(path: str | os.PathLike):
    """Read a file written by :func:`save_netcdf`, attributes decoded.

    Returns
    -------
    arviz.InferenceData
        Loaded into memory (the file is closed when this returns).
    """
    import arviz as az

    idata = az.from_netcdf(os.fspath(path))
    for _, dataset in _groups(idata):
        dataset.load()
        dataset.attrs = decode_attrs(dataset.attrs)
        for var in dataset.variables.values():
            var.attrs = decode_attrs(var.attrs)
    return idata
