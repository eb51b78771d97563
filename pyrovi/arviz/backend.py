"""The two ArviZ lines behind one code path.

ArviZ 0.2x (``arviz.InferenceData``; Python 3.10+) and ArviZ 1.x (``arviz_base``, an
``xarray.DataTree``; Python 3.12+) both build a group with ``dict_to_dataset``; they differ
in two keyword names and in the container.  :func:`make_dataset` and :func:`make_container`
hide that difference, so the converter is written once.  This module imports neither torch
nor pyrovi's inference code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

__all__ = ["arviz_line", "make_dataset", "make_container"]


@functools.cache
def arviz_line() -> int:
    """``1`` when ``arviz_base`` (ArviZ 1.x) is installed, else ``0`` (ArviZ 0.2x)."""
    try:
        import arviz_base  # noqa: F401
    except ImportError:
        return 0
    return 1


def make_dataset(
    data: Mapping[str, Any],
    *,
    coords: Mapping,
    dims: Mapping,
    sample: bool,
    attrs: Mapping,
    library: Any = None,
):
    """One group as an ``xarray.Dataset`` built by ArviZ's own ``dict_to_dataset``.

    Parameters
    ----------
    data : mapping
        Variable -> array; with ``sample=True`` the leading two axes are ``chain, draw``.
    coords, dims : mapping
        Dimension -> coordinates; variable -> names of its non-sample dimensions.
    sample : bool
        Whether the variables carry ``chain`` and ``draw`` axes.
    attrs : mapping
        Group attributes (netCDF-safe already).
    library : module, optional
        The inference library recorded by ArviZ (Pyro).
    """
    if arviz_line() == 1:
        from arviz_base import dict_to_dataset

        return dict_to_dataset(
            dict(data),
            attrs=dict(attrs),
            inference_library=library,
            coords=dict(coords),
            dims=dict(dims),
            sample_dims=["chain", "draw"] if sample else [],
        )
    from arviz import dict_to_dataset

    return dict_to_dataset(
        dict(data),
        attrs=dict(attrs),
        library=library,
        coords=dict(coords),
        dims=dict(dims),
        default_dims=None if sample else [],
    )


def make_container(groups: Mapping[str, Any]):
    """The groups as ``arviz.InferenceData`` (0.2x) or an ``xarray.DataTree`` (1.x)."""
    if arviz_line() == 1:
        import xarray as xr

        return xr.DataTree.from_dict(dict(groups))
    from arviz import InferenceData

    return InferenceData(**groups)
