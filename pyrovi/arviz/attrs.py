"""Attributes of the ArviZ export: plain Python values in memory, encoded only for netCDF.

An export's attributes are ordinary values (``attrs["converged"]`` is ``True`` or
``False``, ``attrs["notes"]`` a list).  netCDF stores attribute values as strings, numbers
or flat numeric arrays only: ``None``, ``bool``, dicts, lists and tuples either fail to
write or come back changed (a list becomes a numpy array, a bool an int).  On the way to a
file, :func:`encode_attrs` therefore writes every value that is not a plain ``str``,
``int`` or finite ``float`` as a JSON string behind the prefix :data:`JSON_PREFIX`, and
:func:`decode_attrs` turns such strings back into Python values when the file is read
(``pyrovi.save_netcdf`` and ``pyrovi.load_netcdf`` call them).  A user string that happens
to start with the prefix is itself written as JSON, so it reads back unaltered.

>>> encode_attrs({"converged": True, "seed": 0, "notes": ()})
{'converged': 'pyrovi-json:true', 'seed': 0, 'notes': 'pyrovi-json:[]'}
>>> decode_attrs(encode_attrs({"converged": True, "seed": 0, "notes": ()}))
{'converged': True, 'seed': 0, 'notes': []}
>>> decode_attrs(encode_attrs({"text": "pyrovi-json:true"}))
{'text': 'pyrovi-json:true'}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyrovi.errors import PyroviError

__all__ = ["JSON_PREFIX", "MAX_DEPTH", "encode_attrs", "decode_attrs", "encode_value",
           "decode_value", "plain_attrs", "bounds_attrs"]

#: Prefix of attribute strings that hold a JSON-encoded value.
JSON_PREFIX = "pyrovi-json:"

#: Deepest nesting of lists and dicts an attribute may hold (encoded or decoded).
MAX_DEPTH = 32


def _plain(value: Any, name: str, depth: int = 0) -> Any:
    """``value`` with numpy and torch scalars and arrays turned into Python values."""
    if depth > MAX_DEPTH:
        raise PyroviError(
            f"attribute {name!r} nests lists or dicts more than {MAX_DEPTH} levels deep; "
            "flatten it (or store it as a variable) before exporting."
        )
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), name, depth)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, name, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, name, depth + 1) for v in value]
    if hasattr(value, "item") and hasattr(value, "numel"):  # torch
        if value.numel() == 1:
            return value.item()
        return _plain(value.tolist(), name, depth)
    if isinstance(value, str):
        return str(value)  # a plain str: subclasses (torch's TorchVersion) fail in h5py
    return value


def plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as plain Python values (numpy / torch scalars -> numbers, tuples ->
    lists, str subclasses -> str): what an export holds in memory.

    Raises
    ------
    TypeError
        When a value is neither a number, a string, None, a bool nor a list or dict of
        those; the message names the attribute.
    PyroviError
        When a value nests more than :data:`MAX_DEPTH` levels deep.
    """
    out = {}
    for key, value in attrs.items():
        value = _plain(value, str(key))
        _check_storable(str(key), value)
        out[str(key)] = value
    return out


def _check_storable(name: str, value: Any, depth: int = 0) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for v in value:
            _check_storable(name, v, depth + 1)
        return
    if isinstance(value, dict):
        for v in value.values():
            _check_storable(name, v, depth + 1)
        return
    raise TypeError(
        f"attribute {name!r} holds a {type(value).__name__}, which cannot be stored in "
        "netCDF; expected a number, a string, None, a bool, or a list or dict of those. "
        "Convert it to one of these before exporting."
    )


def encode_value(name: str, value: Any) -> str | int | float:
    """One attribute value in a form netCDF stores and :func:`decode_value` gives back
    unchanged.

    Plain strings (not starting with :data:`JSON_PREFIX`), ints and finite floats are
    returned as they are; everything else (bools, None, lists, dicts, non-finite floats,
    and strings that start with the prefix) becomes ``JSON_PREFIX + json``.

    Raises
    ------
    TypeError
        When ``value`` is neither a number, a string nor JSON-serialisable; the message
        names the attribute.
    PyroviError
        When ``value`` nests more than :data:`MAX_DEPTH` levels deep.
    """
    value = _plain(value, name)
    if isinstance(value, str) and not value.startswith(JSON_PREFIX):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    _check_storable(name, value)
    # allow_nan: NaN and +-inf are encoded as the JSON extensions NaN / Infinity, which
    # json.loads reads back.
    return JSON_PREFIX + json.dumps(value, allow_nan=True)


def decode_value(name: str, value: Any) -> Any:
    """Undo :func:`encode_value` for one attribute: a string behind :data:`JSON_PREFIX`
    becomes its value, a numpy scalar a Python number, anything else is returned as is.

    Raises
    ------
    PyroviError
        When the JSON behind the prefix is malformed or nests more than
        :data:`MAX_DEPTH` levels deep; the message names the attribute.
    """
    if isinstance(value, np.generic):
        return value.item()
    if not (isinstance(value, str) and value.startswith(JSON_PREFIX)):
        return value
    text = value[len(JSON_PREFIX):]
    # a cheap bound before parsing: json.loads recurses once per level
    if text.count("[") + text.count("{") > MAX_DEPTH and _bracket_depth(text) > MAX_DEPTH:
        raise PyroviError(
            f"attribute {name!r} holds JSON nested more than {MAX_DEPTH} levels deep "
            f"({len(text)} characters after the prefix {JSON_PREFIX!r}); pyrovi never writes "
            "such values, so the file was changed by something else. Remove or fix that "
            "attribute."
        )
    try:
        decoded = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise PyroviError(
            f"attribute {name!r} starts with {JSON_PREFIX!r} but what follows is not valid "
            f"JSON ({shown!r}: {err}); pyrovi writes only valid JSON there, so the file was "
            "changed by something else. Remove or fix that attribute."
        ) from None
    return decoded


def _bracket_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text, strings skipped."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, str | int | float]:
    """Encode every value of ``attrs`` with :func:`encode_value` (keys become ``str``):
    what to write to netCDF.

    Parameters
    ----------
    attrs : mapping
        Attribute name -> value (numbers, strings, None, bools, lists, tuples, dicts and
        numpy or torch scalars), as an export holds them in memory.

    Returns
    -------
    dict
        Attribute name -> a ``str``, ``int`` or ``float``; non-finite floats, None,
        bools, containers and strings that start with :data:`JSON_PREFIX` are JSON
        strings behind that prefix.
    """
    return {str(k): encode_value(str(k), v) for k, v in attrs.items()}


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`encode_attrs`: JSON strings behind :data:`JSON_PREFIX` become values.

    Parameters
    ----------
    attrs : mapping
        Attributes as read from a file, for instance ``idata.posterior.attrs`` after
        ``arviz.from_netcdf``.  Values without the prefix are returned unchanged (numpy
        scalars become Python numbers), so decoding attributes that are already plain is
        harmless.

    Returns
    -------
    dict
        Attribute name -> decoded value (JSON lists come back as lists, tuples included).

    Raises
    ------
    PyroviError
        When a prefixed value is not valid JSON or nests more than :data:`MAX_DEPTH`
        levels deep; the message names the attribute.
    """
    return {key: decode_value(str(key), value) for key, value in attrs.items()}


def bounds_attrs(diagnostics: Any) -> dict[str, Any]:
    """The bracket, CUBO, error-bound summary and verdict of a diagnosis as plain values:
    the attributes ``diagnostics_bracket``, ``diagnostics_cubo``,
    ``diagnostics_error_bounds`` (dicts), ``diagnostics_verdict`` (the sentence) and
    ``diagnostics_trust`` (``{"means", "sds", "tails"}``: True, False or None), each present
    only when the diagnosis holds it.  Every dict says which of its numbers are bounds and
    which estimates (keys ``lower_is``, ``upper_is``, ``is``).

    ``diagnostics`` is pyrovi's ``Diagnostics`` (its ``bracket``, ``cubo``,
    ``error_bounds`` and ``verdict`` fields); a mapping or another dataclass without them
    gives ``{}``.
    """
    get = (diagnostics.get if isinstance(diagnostics, Mapping)
           else lambda k: getattr(diagnostics, k, None))
    out: dict[str, Any] = {}
    b = get("bracket")
    if b is not None:
        out["diagnostics_bracket"] = {
            "lower": b.lower, "lower_se": b.lower_se, "lower_is": "bound",
            "upper": b.upper, "upper_se": b.upper_se,
            "upper_is": "bound" if b.upper_is_bound else "estimate",
            "width": b.width, "num_temperatures": b.num_temperatures,
            "num_chains": b.num_chains, "method": b.method,
        }
    c = get("cubo")
    if c is not None:
        out["diagnostics_cubo"] = {
            "value": c.value, "se": c.se, "order": c.order, "num_particles": c.num_particles,
            "is": "estimate of an upper bound on log p(x) (biased low)",
        }
    eb = get("error_bounds")
    if eb is not None:
        out["diagnostics_error_bounds"] = {
            "d2": eb.d2, "w2": eb.w2, "lower_source": eb.lower_source, "khat": eb.khat,
            "reliable": eb.reliable, "num_particles": eb.num_particles, "z": eb.z,
            "max_relative_mean_error": eb.max_relative_mean_error(),
            "max_relative_sd_error": eb.max_relative_sd_error(),
            "is": "bounds on |q - posterior| (estimated from draws of q; trusted when "
                  "reliable: k-hat < 0.5); per site in the error_bounds group",
        }
    v = get("verdict")
    if v is not None:
        out["diagnostics_verdict"] = v.sentence
        out["diagnostics_trust"] = {"means": v.means, "sds": v.sds, "tails": v.tails}
    return plain_attrs(out)
