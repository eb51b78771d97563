"""netCDF-safe attributes for the ArviZ export.

netCDF stores attribute values as strings, numbers or flat numeric arrays only: ``None``,
``bool``, dicts, lists and tuples either fail to write or come back changed (a list becomes
a numpy array, a bool an int).  :func:`encode_attrs` therefore writes every value that is
not a plain ``str``, ``int`` or ``float`` as a JSON string behind the prefix
:data:`JSON_PREFIX`; :func:`decode_attrs` turns such strings back into Python values.

>>> encode_attrs({"converged": True, "seed": 0, "notes": ()})
{'converged': 'pyrovi-json:true', 'seed': 0, 'notes': 'pyrovi-json:[]'}
>>> decode_attrs(encode_attrs({"converged": True, "seed": 0, "notes": ()}))
{'converged': True, 'seed': 0, 'notes': []}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["JSON_PREFIX", "encode_attrs", "decode_attrs", "encode_value"]

#: Prefix of attribute strings that hold a JSON-encoded value.
JSON_PREFIX = "pyrovi-json:"


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python values for JSON."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "numel") and value.numel() == 1:  # torch
        return value.item()
    return value


def encode_value(name: str, value: Any) -> str | int | float:
    """One attribute value in a form netCDF stores and gives back unchanged.

    Raises
    ------
    TypeError
        When ``value`` is neither a number, a string nor JSON-serialisable; the message
        names the attribute.
    """
    value = _plain(value)
    if isinstance(value, str) and not value.startswith(JSON_PREFIX):
        return str(value)  # a plain str: subclasses (torch's TorchVersion) fail in h5py
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    try:
        # allow_nan: NaN and +-inf are encoded as the JSON extensions NaN / Infinity,
        # which json.loads reads back.
        return JSON_PREFIX + json.dumps(value, allow_nan=True)
    except TypeError as err:
        raise TypeError(
            f"attribute {name!r} holds a {type(value).__name__}, which cannot be stored in "
            "netCDF; expected a number, a string, None, a bool, or a list or dict of those. "
            "Convert it to one of these before exporting."
        ) from err


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, str | int | float]:
    """Encode every value of ``attrs`` with :func:`encode_value` (keys become ``str``).

    Parameters
    ----------
    attrs : mapping
        Attribute name -> value (numbers, strings, None, bools, lists, tuples, dicts and
        numpy or torch scalars).

    Returns
    -------
    dict
        Attribute name -> a ``str``, ``int`` or ``float``; non-finite floats, None,
        bools and containers are JSON strings starting with :data:`JSON_PREFIX`.
    """
    return {str(k): encode_value(str(k), v) for k, v in attrs.items()}


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`encode_attrs`: JSON strings behind :data:`JSON_PREFIX` become values.

    Parameters
    ----------
    attrs : mapping
        Attributes as written by the export, for instance ``idata.posterior.attrs`` after
        ``arviz.from_netcdf``.  Values without the prefix are returned unchanged (numpy
        scalars become Python numbers).

    Returns
    -------
    dict
        Attribute name -> decoded value (JSON lists come back as lists, tuples included).
    """
    out = {}
    for key, value in attrs.items():
        if isinstance(value, str) and value.startswith(JSON_PREFIX):
            out[key] = json.loads(value[len(JSON_PREFIX) :])
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out
