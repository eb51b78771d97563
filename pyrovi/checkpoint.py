"""Checkpoints: everything a fit needs to continue, written atomically, read safely.

What a checkpoint may contain
-----------------------------
A checkpoint file starts with the line ``PYROVI-CHECKPOINT`` and a line ``format=N``;
both are checked before anything else is read.  The rest is a ``torch.save`` archive that is
read with ``torch.load(..., weights_only=True)``, which builds tensors, numbers, strings,
``None`` and plain lists, tuples and dicts only: it never imports or calls anything, so a
planted pickle payload is refused instead of run.  In that archive:

* the fit's configuration, where a function or class (the model, a guide function, an
  optimizer class) is stored as its importable name ``"module:qualname"``, and pyrovi's
  own objects (a ready EM model, ``LBFGSMStep``, a ``pyro.optim`` optimizer, an EM
  posterior, a parameter constraint) as their class name and plain fields;
* the Pyro parameter store's unconstrained values, the optimizer state, the step-size
  schedule, torch's random state, the step count, the trace so far;
* a fingerprint of the model (site -> shape) and of the data (a SHA-256 of the model
  arguments and observed values), so that a checkpoint is only continued on the data it
  was written for.

On :func:`pyrovi.resume` a stored name is imported (as ``pickle`` would import it) only when
no replacement is passed (``model=``, ``guide=``), and it must name a plain function or one
of the classes pyrovi knows (an optimizer, an AutoGuide, a ready EM model); nothing else is
called.  Writes go through :func:`pyrovi._files.atomic_write` (an unpredictable temporary
file in the same folder, renamed over the old checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch.distributions import constraints

from pyrovi._files import atomic_write
from pyrovi._version import __version__
from pyrovi.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "is_checkpoint",
    "fingerprint",
    "data_hash",
    "check_storable",
    "check_picklable",
    "check_checkpoint_path",
    "encode",
    "decode",
    "DATA_KEY",
    "register_storable",
]

#: Bumped whenever the layout of a checkpoint changes; other formats are refused.
FORMAT = 2
#: The first line of every checkpoint file.
MAGIC = b"PYROVI-CHECKPOINT\n"
#: The fingerprint entry that holds the data hash.
DATA_KEY = "(data)"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The saved state of a fit.

    Attributes
    ----------
    kind : str
        ``"vi"`` or ``"em"``.
    config : dict
        The keyword arguments that configured the fit (``model`` and ``guide`` included).
    family : str
        The guide family (``"em"`` for EM).
    fingerprint : dict
        Model site -> value shape, and ``DATA_KEY`` -> the data's hash.
    step : int
        Steps (or iterations) completed.
    trace : list of float
        The ELBO (or log-evidence) trace so far.
    param_state : dict
        ``{"params": {name: unconstrained tensor}}`` of the Pyro parameter store.
    optim_state : dict or None
        The torch optimizer's ``state_dict``.
    optim_param_names : list of str
        Pyro parameter names in the optimizer's order.
    schedule : dict
        The convergence rule's state and the base step sizes (EM: the restarts).
    rng_state : torch.Tensor
        torch's CPU random state before the first step not yet completed.
    cuda_rng_state : torch.Tensor or None
        The CUDA random state, when the fit runs on a GPU.
    pyrovi_version : str
        The version that wrote the checkpoint.
    format : int
        The checkpoint layout version.
    allow_other_data : bool
        Not stored: set by ``resume(..., allow_other_data=True)``.
    """

    kind: str
    config: dict
    family: str
    fingerprint: dict
    step: int
    trace: list
    param_state: dict
    optim_state: dict | None
    optim_param_names: list
    schedule: dict
    rng_state: torch.Tensor
    cuda_rng_state: torch.Tensor | None = None
    pyrovi_version: str = __version__
    format: int = FORMAT
    allow_other_data: bool = False


# ----------------------------------------------------------------------- fingerprints
def _hash_value(h, value: Any, depth: int = 0) -> None:
    if depth > 20:
        return
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, (bool, int, float, str, bytes, type(None))):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}".encode())
        for v in value:
            _hash_value(h, v, depth + 1)
        h.update(b"]")
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(f"{k!s}=".encode())
            _hash_value(h, value[k], depth + 1)
        h.update(b"}")
    else:
        h.update(f"<{type(value).__qualname__}>".encode())


def data_hash(*values: Any) -> str:
    """SHA-256 (hex) of tensors, numbers and strings, also inside lists, tuples and dicts;
    other objects count by their type only."""
    h = hashlib.sha256()
    for value in values:
        _hash_value(h, value)
    return h.hexdigest()


def fingerprint(trace) -> dict:
    """Site name -> value shape of every sample site of a prototype trace, and
    :data:`DATA_KEY` -> the hash of the model's arguments and observed values."""
    prints: dict = {
        name: tuple(site["value"].shape) if isinstance(site["value"], torch.Tensor) else ()
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    inputs = trace.nodes.get("_INPUT", {})
    observed = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"]
    }
    prints[DATA_KEY] = data_hash(inputs.get("args", ()), inputs.get("kwargs", {}), observed)
    return prints


# ------------------------------------------------------------- storing by reference
def _ref(obj: Any) -> str | None:
    """``"module:qualname"`` if importing that gives back ``obj``, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    try:
        found = _resolve(f"{module}:{qualname}")
    except Exception:
        return None
    return f"{module}:{qualname}" if found is obj else None


def _resolve(ref: str) -> Any:
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


_STORABLE: list = []


def register_storable(*classes: type) -> None:
    """Let checkpoints store instances of ``classes`` (dataclasses by their fields, models
    with ``checkpoint_state``/``from_checkpoint_state`` by that state) and name them.

    The packages above this module register their own classes (the EM driver registers
    the ready EM models, ``LBFGSMStep`` and the EM posteriors).
    """
    _STORABLE.extend(c for c in classes if c not in _STORABLE)


def _allowed_classes() -> tuple:
    import pyro.infer.autoguide
    import pyro.optim

    return (torch.optim.Optimizer, pyro.infer.autoguide.AutoGuide, pyro.optim.PyroOptim,
            *_STORABLE)


def _constraint_names() -> dict:
    return {id(v): k for k, v in vars(constraints).items() if isinstance(v, constraints.Constraint)}


_CONSTRAINT_CLASSES = {
    "interval": constraints.interval,
    "half_open_interval": constraints.half_open_interval,
    "greater_than": constraints.greater_than,
    "greater_than_eq": constraints.greater_than_eq,
    "less_than": constraints.less_than,
    "independent": constraints.independent,
}


def _encode_constraint(c) -> dict:
    name = _constraint_names().get(id(c))
    if name is not None:
        return {"__constraint__": name}
    cls = type(c).__name__
    if cls in ("_Interval", "_HalfOpenInterval"):
        key = "interval" if cls == "_Interval" else "half_open_interval"
        return {"__constraint__": key, "args": [encode(c.lower_bound), encode(c.upper_bound)]}
    if cls in ("_GreaterThan", "_GreaterThanEq"):
        key = "greater_than" if cls == "_GreaterThan" else "greater_than_eq"
        return {"__constraint__": key, "args": [encode(c.lower_bound)]}
    if cls == "_LessThan":
        return {"__constraint__": "less_than", "args": [encode(c.upper_bound)]}
    if cls == "_IndependentConstraint":
        return {"__constraint__": "independent",
                "args": [_encode_constraint(c.base_constraint), c.reinterpreted_batch_ndims]}
    raise CheckpointError(f"cannot store the parameter constraint {c!r} in a checkpoint")


def encode(value: Any, *, what: str = "value") -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` reads back.

    Raises
    ------
    CheckpointError
        For an object that cannot be stored by value or by reference (``what`` names it).
    """
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, (os.PathLike,)):
        return os.fspath(value)
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, constraints.Constraint):
        return _encode_constraint(value)
    if isinstance(value, tuple):
        return tuple(encode(v, what=what) for v in value)
    if isinstance(value, list):
        return [encode(v, what=what) for v in value]
    if isinstance(value, Mapping):
        return {(k if isinstance(k, (int, str)) else str(k)): encode(v, what=f"{what}[{k!r}]")
                for k, v in value.items()}
    if hasattr(type(value), "checkpoint_state") and isinstance(value, _allowed_classes()):
        return {"__object__": _ref(type(value)),
                "state": encode(value.checkpoint_state(), what=what)}
    import pyro.optim

    if isinstance(value, pyro.optim.PyroOptim):
        ctor = _ref(value.pt_optim_constructor)
        if ctor is not None and isinstance(value.pt_optim_args, Mapping):
            return {"__pyro_optim__": ctor, "args": encode(value.pt_optim_args, what=what)}
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        ref = _ref(type(value))
        if ref is not None and isinstance(value, _allowed_classes()):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return {"__object__": ref, "fields": encode(fields, what=what)}
    elif isinstance(value, (types.FunctionType, type)):
        ref = _ref(value)
        if ref is not None:
            return {"__ref__": ref}
    raise CheckpointError(
        f"a checkpoint cannot store the {what} {getattr(value, '__qualname__', value)!r}: "
        "it stores functions and classes by their importable name only (defined at the top "
        "level of an importable module; not a lambda, a local function or an instance)"
    )


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`.  Imports a stored name only to look it up, and calls
    nothing but the allow-listed classes; refuses anything else with a ``CheckpointError``."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    if not isinstance(value, dict):
        return value
    if "__dtype__" in value:
        dtype = getattr(torch, str(value["__dtype__"]), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unknown dtype {value['__dtype__']!r} in the checkpoint")
        return dtype
    if "__device__" in value:
        return torch.device(str(value["__device__"]))
    if "__constraint__" in value:
        name = str(value["__constraint__"])
        if name in _CONSTRAINT_CLASSES and "args" in value:
            return _CONSTRAINT_CLASSES[name](*decode(value["args"]))
        c = getattr(constraints, name, None)
        if not isinstance(c, constraints.Constraint):
            raise CheckpointError(f"unknown constraint {name!r} in the checkpoint")
        return c
    if "__unstored__" in value:
        name = str(value["__unstored__"])
        raise CheckpointError(
            f"the checkpoint does not hold the {name} ({value.get('what')!r} cannot be "
            f"imported by name); pass {name}= to pyrovi.resume()"
        )
    if "__ref__" in value:
        return _lookup(str(value["__ref__"]))
    if "__pyro_optim__" in value:
        import pyro.optim

        ctor = _lookup(str(value["__pyro_optim__"]))
        if not (isinstance(ctor, type) and issubclass(ctor, torch.optim.Optimizer)):
            raise CheckpointError(f"{value['__pyro_optim__']!r} is not a torch optimizer")
        return pyro.optim.PyroOptim(ctor, decode(value["args"]))
    if "__object__" in value:
        cls = _lookup(str(value["__object__"]))
        if not isinstance(cls, type):
            raise CheckpointError(f"{value['__object__']!r} is not a class")
        if "state" in value and issubclass(cls, _allowed_classes()) and hasattr(
            cls, "from_checkpoint_state"
        ):
            return cls.from_checkpoint_state(decode(value["state"]))
        if "fields" in value and dataclasses.is_dataclass(cls):
            return cls(**decode(value["fields"]))
        raise CheckpointError(f"the checkpoint asks to build {value['__object__']!r}; refused")
    return {k: decode(v) for k, v in value.items()}


def _lookup(ref: str) -> Any:
    try:
        obj = _resolve(ref)
    except Exception as err:
        raise CheckpointError(
            f"the checkpoint names {ref!r}, which cannot be imported here "
            f"({type(err).__name__}: {err}); pass it again to pyrovi.resume (model=, guide=)"
        ) from err
    allowed = isinstance(obj, types.FunctionType) or (
        isinstance(obj, type) and issubclass(obj, _allowed_classes())
    )
    if not allowed:
        raise CheckpointError(
            f"the checkpoint names {ref!r}, which is neither a function nor a class pyrovi "
            "stores (an optimizer, an AutoGuide, a ready EM model); refusing it"
        )
    return obj


# ------------------------------------------------------------------ configuration checks
def check_storable(name: str, obj: Any) -> None:
    """Refuse a model, guide or optimizer that a checkpoint cannot store."""
    try:
        encode(obj, what=name)
    except CheckpointError as err:
        raise CheckpointError(
            f"checkpoint= needs the {name} to be storable: {err}. Move it to module level, "
            f"or pass {name}= to pyrovi.resume() when resuming."
        ) from None


#: The old name.
check_picklable = check_storable


def check_checkpoint_path(
    checkpoint, model, guide=None, *, overwrite: bool = False, config: Mapping | None = None
) -> str | None:
    """Check the ``checkpoint`` argument of a fit before any work.

    A path (not a folder) in a writable folder; a configuration (besides the model and
    guide, which :func:`pyrovi.resume` can be given again) that a checkpoint can store; and
    an existing file there must be a pyrovi checkpoint of the same model, unless
    ``overwrite``.
    """
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a file path (str or os.PathLike), got "
            f"{type(checkpoint).__name__}"
        )
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        raise ValueError(
            f"checkpoint={path!r} is a folder; pass a file path such as "
            f"{os.path.join(path, 'fit.ckpt')!r}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(
            f"checkpoint={path!r}: folder {folder!r} does not exist or is not writable; "
            "create it or pass another path"
        )
    for key, value in (config or {}).items():
        if key not in ("model", "guide"):
            check_storable(f"argument {key}=", value)
    if not overwrite and os.path.lexists(path):
        _check_replaceable(path, model)
    return path


def _check_replaceable(path: str, model) -> None:
    """Refuse to replace a file that is not a pyrovi checkpoint of ``model``."""
    hint = "pass overwrite=True to replace it, or another path"
    if os.path.islink(path) or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint={path!r} exists and is not a regular file; {hint}")
    if not is_checkpoint(path):
        raise CheckpointError(
            f"checkpoint={path!r} exists and is not a pyrovi checkpoint; refusing to "
            f"overwrite it: {hint}"
        )
    try:
        saved = _read(path)["config"].get("model")
    except (CheckpointError, KeyError, TypeError, AttributeError):
        return  # an unreadable or older pyrovi checkpoint: replacing it loses nothing usable
    mine = encode_callable("model", model)
    if saved != mine:
        name = (saved.get("__ref__") or saved.get("__object__") or saved.get("what")
                ) if isinstance(saved, dict) else saved
        raise CheckpointError(
            f"checkpoint={path!r} holds a checkpoint of another model ({name}); refusing "
            f"to overwrite it: {hint}, or pyrovi.resume({path!r}) to continue that fit"
        )


# ---------------------------------------------------------------------- write and read
def encode_callable(name: str, obj: Any) -> Any:
    """The model or guide as a checkpoint stores it: by name when it can be imported again,
    else a placeholder that makes :func:`pyrovi.resume` ask for it (``model=``, ``guide=``)."""
    try:
        return encode(obj, what=name)
    except CheckpointError:
        what = getattr(obj, "__qualname__", None) or f"an instance of {type(obj).__qualname__}"
        return {"__unstored__": name, "what": str(what)}


def _plain(checkpoint: Checkpoint) -> dict:
    data = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)}
    data.pop("allow_other_data")
    config = dict(data["config"])
    for key in ("model", "guide"):
        if key in config:
            config[key] = encode_callable(key, config[key])
    data["config"] = config
    data["param_state"] = {"params": dict(checkpoint.param_state["params"])}
    return encode(data, what="checkpoint entry")


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint, *, opener=None) -> None:
    """Write ``checkpoint`` to ``path`` atomically (:func:`pyrovi._files.atomic_write`).

    ``opener`` (``fd -> file object``) opens the temporary file (tests pass a failing one
    to simulate a full disk).  On any failure the temporary file is removed and the error
    is re-raised; the file at ``path`` is untouched.
    """
    data = _plain(checkpoint)

    def write(fh) -> None:
        fh.write(MAGIC)
        fh.write(f"format={FORMAT} pyrovi={__version__}\n".encode())
        torch.save(data, fh)

    atomic_write(path, write, opener=opener)


def _header(fh) -> tuple[int, str] | None:
    """The format number and pyrovi version of an open checkpoint file, or None if it is
    not one (reads the first two lines only)."""
    if fh.read(len(MAGIC)) != MAGIC:
        return None
    line = fh.readline(64)
    if not line.startswith(b"format=") or not line.endswith(b"\n"):
        return None
    fields = dict(f.split("=", 1) for f in line.decode("ascii", "replace").split() if "=" in f)
    try:
        return int(fields["format"]), fields.get("pyrovi", "?")
    except (KeyError, ValueError):
        return None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a pyrovi checkpoint (reads its first line only)."""
    try:
        with open(path, "rb") as fh:
            return _header(fh) is not None
    except OSError:
        return False


def _read(path: str) -> dict:
    """The raw content of a checkpoint file (plain data, nothing looked up or called)."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}; check the path")
    with open(path, "rb") as fh:
        header = _header(fh)
        if header is None:
            raise CheckpointError(
                f"{path!r} is not a pyrovi checkpoint (it does not start with the pyrovi "
                "checkpoint header; older pyrovi versions wrote plain pickles, which are no "
                "longer read because loading a pickle can run code); pass a file written by "
                "VI(..., checkpoint=...) or EM(..., checkpoint=...)"
            )
        fmt, version = header
        if fmt != FORMAT:
            raise CheckpointError(
                f"{path!r} was written by pyrovi {version} in checkpoint format {fmt}; this "
                f"pyrovi ({__version__}) reads format {FORMAT} only. Resume it with that "
                "pyrovi version, or start the fit again."
            )
        body = fh.read()
    try:
        data = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:
        unsafe = "weights_only" in str(err) or "Unsupported global" in str(err)
        why = ("it holds objects other than tensors and plain data, which pyrovi refuses "
               "to load (loading them could run code)") if unsafe else \
            "the file is corrupted or truncated"
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path!r} is not a readable pyrovi checkpoint: {why} ({type(err).__name__}: "
            f"{first}). Resume from another checkpoint or start the fit again."
        ) from None
    if not isinstance(data, Mapping) or data.get("format") != FORMAT or "kind" not in data:
        raise CheckpointError(f"{path!r} is not a complete pyrovi checkpoint")
    return data


def load_checkpoint(path: str | os.PathLike, *, skip: tuple = ()) -> Checkpoint:
    """Read a checkpoint, refusing a missing, foreign, corrupted or incompatible file.

    The header is checked before anything is deserialised, and the body is read with
    ``weights_only=True``: a file that holds anything but tensors and plain data is refused
    without running any of it.  The configuration entries named in ``skip`` (``"model"``,
    ``"guide"``: the caller supplies them again) are not looked up (their value is None).
    """
    path = os.fspath(path)
    data = _read(path)
    try:
        fields = dict(data)
        fields["config"] = {k: None if k in skip else decode(v)
                            for k, v in data["config"].items()}
        fields["schedule"] = decode(data["schedule"])
        fields["param_state"] = {"params": dict(data["param_state"]["params"])}
        return Checkpoint(**fields)
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{path!r} is not a complete pyrovi checkpoint: {err}") from err


def check_compatible(
    checkpoint: Checkpoint, path: str, *, kind: str, family: str, prints: Mapping
) -> None:
    """Refuse a checkpoint of another inference kind, guide family, model or data."""
    if checkpoint.kind != kind:
        raise CheckpointError(
            f"{path!r} is a checkpoint of a {checkpoint.kind.upper()} fit, not of a "
            f"{kind.upper()} fit"
        )
    if checkpoint.family != family:
        raise CheckpointError(
            f"{path!r} was written by a fit with guide family {checkpoint.family!r}, not "
            f"{family!r}; resume with the same guide"
        )
    saved = {k: v for k, v in checkpoint.fingerprint.items() if k != DATA_KEY}
    now = {k: v for k, v in prints.items() if k != DATA_KEY}
    if saved != now:
        diff = sorted(set(saved) ^ set(now)) or sorted(
            k for k in saved if saved[k] != now.get(k)
        )
        raise CheckpointError(
            f"{path!r} was written for another model: its sites differ from this model's "
            f"at {diff[:3]} (saved {[saved.get(k) for k in diff[:3]]}, now "
            f"{[now.get(k) for k in diff[:3]]}); resume with the model and data the "
            "checkpoint was written for"
        )
    old, new = checkpoint.fingerprint.get(DATA_KEY), prints.get(DATA_KEY)
    if old != new and not checkpoint.allow_other_data:
        raise CheckpointError(
            f"{path!r} was written for other data: the model arguments or observed values "
            "differ from those the checkpoint was fitted to (same shapes, other values). "
            "Resume with the same data, or pass pyrovi.resume(path, allow_other_data=True) "
            "to continue the fit on these data on purpose."
        )
