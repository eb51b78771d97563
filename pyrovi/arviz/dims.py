"""Dimension names and coordinates of exported variables, from the model's Pyro plates.

A batch dimension of a site inside ``pyro.plate("schools", 8)`` is named ``schools`` with
coordinates ``0..7``; every other dimension (event dimensions, batch dimensions that no
plate owns) is named ``{site}_dim_{i}``, counting those unnamed dimensions from 0.  Scalar
sites have no dimension besides ``chain`` and ``draw``.  The user's ``dims`` and ``coords``
override these defaults, and :func:`resolve_layout` checks that they fit the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pyrovi._plates import SiteShape
from pyrovi.errors import PyroviError

__all__ = ["site_dims", "default_dims", "Layout", "resolve_layout"]


def site_dims(
    name: str, shape: SiteShape, site_plates: Sequence[str], plates: Mapping[str, tuple]
) -> tuple[str, ...]:
    """Dimension names of one draw of site ``name`` (without ``chain`` / ``draw``).

    Parameters
    ----------
    name : str
        The site's name.
    shape : SiteShape
        Its value shape and how many leading dimensions are batch dimensions.
    site_plates : sequence of str
        The plates the site lives in (:attr:`pyrovi._model.ModelInfo.site_plates`).
    plates : mapping
        Plate name -> ``(full size, subsample size, dim)``
        (:attr:`pyrovi._model.ModelInfo.plates`).

    Returns
    -------
    tuple of str
        One name per dimension of ``shape.shape``.
    """
    batch = shape.batch_shape
    names: list[str | None] = [None] * len(shape.shape)
    for plate in site_plates:
        _, size, dim = plates[plate]
        axis = len(batch) + dim
        if 0 <= axis < len(batch) and batch[axis] == size:
            names[axis] = plate
    unnamed = 0
    for i, dim_name in enumerate(names):
        if dim_name is None:
            names[i] = f"{name}_dim_{unnamed}"
            unnamed += 1
    return tuple(names)  # type: ignore[arg-type]


def default_dims(name: str, shape: Sequence[int]) -> tuple[str, ...]:
    """``{name}_dim_0, {name}_dim_1, ...`` for a variable that no plate describes."""
    return tuple(f"{name}_dim_{i}" for i in range(len(shape)))


class Layout:
    """Checked dimension names and coordinates of every exported variable.

    Attributes
    ----------
    dims : dict of str to tuple of str
        Variable -> names of its dimensions (without ``chain`` / ``draw``), for its full
        value shape.  A variable that appears in several groups (an observed site in
        ``observed_data``, ``posterior_predictive`` and ``log_likelihood``) has one entry;
        the log-likelihood uses its leading (batch) names.
    coords : dict of str to numpy.ndarray
        Dimension -> coordinate values.
    """

    def __init__(self, dims: dict, coords: dict):
        self.dims = dims
        self.coords = coords

    def for_vars(self, shapes: Mapping[str, Sequence[int]]) -> tuple[dict, dict]:
        """``(dims, coords)`` for ``dict_to_dataset`` restricted to the given variables
        (variable -> shape of one draw; a shorter shape takes the leading dim names;
        a variable outside the layout, such as a sample statistic, gets default names)."""
        dims = {
            k: list(self.dims[k][: len(s)]) if k in self.dims else list(default_dims(k, s))
            for k, s in shapes.items()
        }
        used = {d for names in dims.values() for d in names}
        return dims, {d: self.coords[d] for d in used if d in self.coords}


def resolve_layout(
    shapes: Mapping[str, Sequence[int]],
    defaults: Mapping[str, Sequence[str]],
    dims: Mapping[str, Sequence[str]] | None,
    coords: Mapping[str, Sequence] | None,
) -> Layout:
    """Merge the default dimension names with the user's ``dims`` and ``coords`` and check
    that everything fits the shapes.

    Parameters
    ----------
    shapes : mapping
        Variable -> shape of one draw (without ``chain`` / ``draw``).
    defaults : mapping
        Variable -> default dimension names (one per entry of its shape).
    dims, coords : mapping, optional
        The user's overrides: variable -> dimension names, dimension -> coordinate values.

    Raises
    ------
    PyroviError
        When ``dims`` names a variable that is not exported or gives it a wrong number of
        names, when a coordinate's length differs from the size of a dimension it labels,
        when one dimension name would have two sizes, or when ``coords`` names a dimension
        that no variable has.  Each message names the variable and both shapes.
    """
    dims = dict(dims or {})
    coords = dict(coords or {})
    unknown = sorted(set(dims) - set(shapes))
    if unknown:
        raise PyroviError(
            f"dims names variable(s) {unknown} that the export does not hold; expected names "
            f"among {sorted(shapes)}. Remove them from dims or check the spelling."
        )
    out_dims: dict[str, tuple[str, ...]] = {}
    sizes: dict[str, tuple[int, str]] = {}
    for var, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        names = tuple(dims.get(var, defaults[var]))
        if isinstance(dims.get(var), str):
            names = (dims[var],)
        if len(names) != len(shape):
            raise PyroviError(
                f"dims[{var!r}] = {list(names)} gives {len(names)} dimension name(s), but "
                f"variable {var!r} has shape {shape} ({len(shape)} dimension(s) besides chain "
                f"and draw). Give exactly one name per dimension."
            )
        for dim_name, size in zip(names, shape, strict=True):
            if dim_name in ("chain", "draw"):
                raise PyroviError(
                    f"dims[{var!r}] uses the reserved name {dim_name!r}; ArviZ adds chain and "
                    "draw itself. Choose another name."
                )
            if dim_name in coords and len(coords[dim_name]) != size:
                raise PyroviError(
                    f"coords[{dim_name!r}] has length {len(coords[dim_name])}, but dimension "
                    f"{dim_name!r} of variable {var!r} (shape {shape}, dims {list(names)}) has "
                    f"size {size}. Give {size} coordinate values or name that dimension "
                    "differently in dims."
                )
            if dim_name in sizes and sizes[dim_name][0] != size:
                other_size, other = sizes[dim_name]
                raise PyroviError(
                    f"dimension {dim_name!r} has size {size} in variable {var!r} (shape "
                    f"{shape}) but size {other_size} in variable {other!r} (shape "
                    f"{tuple(shapes[other])}). Give the two dimensions different names in "
                    "dims."
                )
            sizes.setdefault(dim_name, (size, var))
        out_dims[var] = names
    extra = sorted(set(coords) - set(sizes))
    if extra:
        raise PyroviError(
            f"coords names dimension(s) {extra} that no exported variable has; the dimensions "
            f"are {sorted(sizes)}. Name them in dims for the variables they label, or remove "
            "them from coords."
        )
    out_coords = {
        d: np.asarray(coords[d]) if d in coords else np.arange(size)
        for d, (size, _) in sizes.items()
    }
    return Layout(out_dims, out_coords)
