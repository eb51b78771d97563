"""The two ArviZ lines behind one code path.

ArviZ 0.2x (``arviz.InferenceData``; Python 3.10+) and ArviZ 1.x (``arviz_base``, an
``xarray.DataTree``; Python 3.12+) both build a group with ``dict_to_dataset``; they differ
in two keyword names and in the container.  :func:`make_dataset` and :func:`make_container`
hide that difference, so the converter is written once.  The line is the installed
``arviz``'s (its major version), not whether ``arviz_base`` happens to be importable:
``arviz_base`` can remain installed next to ``arviz<1``, and then ArviZ's own functions
still expect an ``InferenceData``.  This module imports neither torch nor pyrovi's
inference code.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from typing import Any

__all__ = ["arviz_line", "line_of_version", "make_dataset", "make_container"]


def line_of_version(version: str) -> int:
    """``1`` for an ArviZ version string whose major number is 1 or more, else ``0``.

    >>> line_of_version("0.23.4"), line_of_version("1.3.0"), line_of_version("1.0.0rc1")
    (0, 1, 1)
    """
    head = str(version).strip().split(".", 1)[0]
    digits = "".join(itertools.takewhile(str.isdigit, head))
    if not digits:
        raise ValueError(f"cannot read the major version of ArviZ from {version!r}")
    return 1 if int(digits) >= 1 else 0


@functools.cache
def arviz_line() -> int:
    """``1`` when the installed ``arviz`` is 1.x or later (``arviz_base``, an
    ``xarray.DataTree``), else ``0`` (ArviZ 0.2x, ``arviz.InferenceData``).

    Decided by ``arviz.__version__``; cached for the process.
    """
    import arviz

    return line_of_version(arviz.__version__)


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
