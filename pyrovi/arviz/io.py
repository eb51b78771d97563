"""Writing and reading exports as netCDF without losing attributes or leaving debris.

netCDF refuses attribute values such as None, dicts and booleans (or gives them back
changed), and a write that fails midway leaves a half-written file at the target path.
:func:`save_netcdf` encodes every group's attributes with
:func:`~pyrovi.arviz.attrs.encode_attrs` and writes to a temporary file in the same folder
that is renamed over the target only once it is complete; :func:`load_netcdf` decodes the
attributes again.

Both ArviZ lines are handled: an ``arviz.InferenceData`` (ArviZ 0.2x) is written with its
own ``to_netcdf``, an ``xarray.DataTree`` (ArviZ 1.x) with xarray's, one netCDF group per
node either way, so a file written on one line reads on the other.  :func:`load_netcdf`
returns the container of the installed line (see :func:`~pyrovi.arviz.backend.arviz_line`).
"""

from __future__ import annotations

import os

from pyrovi.arviz.attrs import decode_attrs, encode_attrs
from pyrovi.arviz.backend import arviz_line
from pyrovi.errors import PyroviError

__all__ = ["save_netcdf", "load_netcdf"]


def _encode(attrs) -> dict:
    """What netCDF stores: every value encoded (:func:`~pyrovi.arviz.attrs.encode_attrs`;
    an export holds plain values in memory, so nothing is encoded twice)."""
    return encode_attrs(attrs)


def _is_datatree(data) -> bool:
    import xarray as xr

    datatree = getattr(xr, "DataTree", None)
    return datatree is not None and isinstance(data, datatree)


def _mapped(dataset, convert):
    """A shallow copy of ``dataset`` whose own and variables' attributes are converted
    (the copy's variables are new objects, so ``dataset`` itself is left as it was)."""
    dataset = dataset.copy()
    dataset.attrs = convert(dataset.attrs)
    for var in dataset.variables.values():
        var.attrs = convert(var.attrs)
    return dataset


def _map_tree(tree, convert):
    """A new ``DataTree`` with every node's attributes converted (root attributes too)."""
    import xarray as xr

    nodes = {node.path: _mapped(node.to_dataset(inherit=False), convert)
             for node in tree.subtree}
    out = xr.DataTree.from_dict(nodes)
    out.name = tree.name
    return out


def _map_idata(idata, convert):
    """A copy of an ``InferenceData`` with every group's attributes converted."""
    idata = idata.copy()
    for name in idata.groups():
        setattr(idata, name, _mapped(getattr(idata, name), convert))
    return idata


def save_netcdf(idata, path: str | os.PathLike) -> str:
    """Write an export to ``path`` atomically, attributes encoded.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
        For instance ``result.to_arviz()`` (an ``InferenceData`` on ArviZ 0.2x, a
        ``DataTree`` on ArviZ 1.x); it is not modified.
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
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if _is_datatree(idata):
            _map_tree(idata, _encode).to_netcdf(tmp)
        else:
            _map_idata(idata, _encode).to_netcdf(tmp)
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
    arviz.InferenceData or xarray.DataTree
        The container of the installed ArviZ line (``InferenceData`` on 0.2x, ``DataTree``
        on 1.x), loaded into memory (the file is closed when this returns).
    """
    path = os.fspath(path)
    if arviz_line() == 1:
        import xarray as xr

        with xr.open_datatree(path) as tree:
            return _map_tree(tree.load(), decode_attrs)
    import arviz as az

    idata = az.from_netcdf(path)
    for name in idata.groups():
        dataset = getattr(idata, name)
        dataset.load()
        dataset.attrs = decode_attrs(dataset.attrs)
        for var in dataset.variables.values():
            var.attrs = decode_attrs(var.attrs)
    return idata
