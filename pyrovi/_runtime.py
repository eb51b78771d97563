"""Process-level plumbing shared by every driver: seeds, parameter scopes, devices, warnings.

Nothing here does inference; these helpers keep fits independent of each other and of the
caller's global state (Pyro's global parameter store, torch's global random state).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import pyro
import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def find_stack_level() -> int:
    """Return the stack level of the first frame outside pyrovi (and Pyro, torch).

    Used as ``warnings.warn(..., stacklevel=find_stack_level())`` so that a warning points at
    the user's line, as NumPyro does.
    """
    skip = (_PACKAGE_DIR, os.path.dirname(pyro.__file__), os.path.dirname(torch.__file__))
    frame = inspect.currentframe()
    level = 0
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not fname.startswith(skip) and "contextlib" not in fname:
            return level
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning]) -> None:
    """Issue ``message`` as ``category`` pointing at the user's line."""
    warnings.warn(message, category, stacklevel=find_stack_level())


def resolve_seed(seed: int | None) -> int:
    """Return ``seed`` checked, or a fresh seed drawn from torch's global generator."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


#: Seeds are ints in ``[0, MAX_SEED)`` (what torch's generators take without overflow).
MAX_SEED = 2**63


def check_seed(seed: int | None, num_inits: int = 1) -> None:
    """Refuse a ``seed`` that is not an int in ``[0, MAX_SEED)`` or leaves no room for the
    seeds ``seed + i`` of ``num_inits`` restarts (``None`` passes: drawn at run time)."""
    if seed is None:
        return
    resolve_seed(seed)
    if seed + num_inits > MAX_SEED:
        raise ValueError(
            f"seed must leave room for num_inits={num_inits} restarts (seed + i < 2**63), "
            f"got {seed!r}"
        )


def check_bool(name: str, value: Any) -> bool:
    """Refuse anything but ``True`` or ``False`` (a string such as ``"no"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_device(device: Any) -> None:
    """Refuse, before any work, a device pyrovi cannot fit on (naming the argument)."""
    if device is None:
        return
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be a str such as 'cpu' or 'cuda', a torch.device or None, "
            f"got {type(device).__name__}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"device={device!r} is not a device torch knows ({err}); pass 'cpu', 'cuda' "
            "or 'cuda:N'"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device={str(device)!r}: pyrovi fits on 'cpu' or 'cuda' only, not on "
            f"{dev.type!r}; pass device='cpu' or device='cuda'"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was requested but CUDA is not available on this "
                "machine; pass device='cpu' or device=None"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s)"
            )


def check_optim(optim: Any, lr: float) -> None:
    """Refuse, before any work, an ``optim`` argument that does not give a torch optimizer:
    a callable is called once on a throw-away parameter to see what it returns."""
    import pyro.optim

    expected = (
        "optim must be None (Adam), a torch.optim.Optimizer subclass such as "
        "torch.optim.Adam, a pyro.optim optimizer such as pyro.optim.Adam({'lr': 0.01}), "
        "or a callable params -> torch.optim.Optimizer"
    )
    if optim is None:
        return
    if inspect.isclass(optim):
        if not issubclass(optim, torch.optim.Optimizer):
            raise TypeError(f"{expected}; got the class {optim.__qualname__}")
        return
    if isinstance(optim, pyro.optim.PyroOptim):
        ctor = optim.pt_optim_constructor
        if not (inspect.isclass(ctor) and issubclass(ctor, torch.optim.Optimizer)):
            raise TypeError(f"{expected}; got a pyro.optim optimizer around {ctor!r}")
        return
    if not callable(optim):
        raise TypeError(f"{expected}; got {optim!r}")
    probe = torch.zeros(1, requires_grad=True)
    try:
        made = optim([probe])
    except Exception as err:
        raise TypeError(
            f"{expected}; calling optim([param]) raised {type(err).__name__}: {err}"
        ) from err
    if not isinstance(made, torch.optim.Optimizer):
        raise TypeError(
            f"{expected}; optim([param]) returned {type(made).__name__} {made!r}, not a "
            "torch.optim.Optimizer"
        )


def traced_model(model, args: tuple, kwargs: Mapping):
    """:func:`pyrovi._model.inspect_model`, except that a model that fails on a
    ``pyro.param`` whose initial value became NaN (outside its constraint), or on an
    argument with zero elements (a division by the number of rows, say), is refused with a
    ``ModelError`` naming that parameter or argument instead of the raw error."""
    from pyrovi._model import inspect_model
    from pyrovi.errors import ModelError

    try:
        return inspect_model(model, args, kwargs)
    except Exception as err:
        store = pyro.get_param_store()
        for name in list(store.keys()):
            value = store[name]
            if not bool(torch.isfinite(value.detach()).all()):
                raise ModelError(
                    f"pyro.param {name!r} has an initial value that is not finite or lies "
                    f"outside its constraint ({store._constraints.get(name)}); Pyro turned "
                    f"it into NaN and the model failed ({type(err).__name__}). Pass an "
                    "initial value inside the constraint", site=name
                ) from err
        named = [(f"argument {i}", v) for i, v in enumerate(args)] + [
            (f"argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in named:
            if isinstance(value, torch.Tensor) and value.numel() == 0:
                raise ModelError(
                    f"the model failed ({type(err).__name__}: {err}) on {label}, which holds "
                    f"no values (shape {tuple(value.shape)}); pass non-empty data"
                ) from err
        raise


def check_trace_values(trace, owner: str = "model") -> None:
    """Refuse, naming it, an observed site with zero elements and a ``pyro.param`` whose
    initial value is not finite or outside its constraint (Pyro maps a value outside the
    constraint to NaN without a word)."""
    from pyrovi.errors import ModelError

    for name, site in trace.nodes.items():
        value = site.get("value")
        if not isinstance(value, torch.Tensor):
            continue
        fn = site.get("fn")
        event = tuple(getattr(fn, "event_shape", ()))
        is_factor = bool(event) and event[-1] == 0  # pyro.factor: a Unit site of no values
        if (site["type"] == "sample" and site.get("is_observed") and value.numel() == 0
                and not is_factor):
            raise ModelError(
                f"observed site {name!r} of the {owner} holds no values (shape "
                f"{tuple(value.shape)}); pass non-empty data", site=name
            )
        if site["type"] != "param":
            continue
        store = pyro.get_param_store()
        unconstrained = store[name].unconstrained() if name in store else value
        bad = not bool(torch.isfinite(value.detach()).all()) or not bool(
            torch.isfinite(unconstrained.detach()).all()
        )
        constraint = store._constraints.get(name) if name in store else None
        if not bad and constraint is not None and value.is_floating_point():
            with contextlib.suppress(Exception):
                bad = not bool(constraint.check(value.detach()).all())
        if bad:
            raise ModelError(
                f"pyro.param {name!r} has an initial value that is not finite or lies "
                f"outside its constraint ({constraint}); Pyro would turn it into NaN. Pass "
                "an initial value inside the constraint", site=name
            )


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's random state seeded, restoring the caller's state after.

    Pyro draws all of its randomness from torch, so this makes a fit reproducible without
    touching the caller's random streams.
    """
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_device(device: str | torch.device | None, args: tuple, kwargs: Mapping) -> torch.device:
    """The device a fit runs on: ``device`` if given, else that of the first tensor argument."""
    if device is not None:
        check_device(device)
        return torch.device(device)
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def move_to_device(value: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(move_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [move_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: move_to_device(v, device) for k, v in value.items()}
    return value


@contextlib.contextmanager
def param_scope(state: dict | None = None) -> Iterator[dict]:
    """A private Pyro parameter store for the duration of the block.

    Wraps :meth:`pyro.params.param_store.ParamStoreDict.scope`: each fit gets its own store,
    so two fits of one model in a process never share or overwrite parameters, and the
    caller's global store is restored afterwards.  Pass a fit's saved ``state`` to evaluate
    its guide again later.
    """
    with pyro.get_param_store().scope(state) as scoped_state:
        yield scoped_state


def default_device(device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.device(device)`` as the default device for the block, or nothing when it
    already is the default: the device context is a torch function mode that intercepts
    every torch call (about a fifth of the time of a small model's trace on the CPU)."""
    device = torch.device(device)
    current = torch.get_default_device()
    if device.type == current.type and (device.index is None or device.index == current.index):
        return contextlib.nullcontext()
    return torch.device(device)


@contextlib.contextmanager
def fit_context(
    seed: int, device: torch.device, state: dict | None = None
) -> Iterator[dict]:
    """Seeded RNG + private parameter store + default device, for one fit or evaluation."""
    with seeded(seed, device), param_scope(state) as scoped, default_device(device):
        yield scoped


def snapshot_store() -> dict:
    """A detached copy of the active Pyro parameter store's state.

    ``ParamStoreDict.scope`` only writes its state back when the block exits, and optimizers
    update the unconstrained tensors in place, so results take a copy.
    """
    state = pyro.get_param_store().get_state()
    return {
        "params": {k: v.detach().clone() for k, v in state["params"].items()},
        "constraints": dict(state["constraints"]),
    }


def store_params() -> dict[str, torch.Tensor]:
    """Constrained, detached values of every parameter in the active Pyro parameter store."""
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def renamed_keyword(owner: str, old: str, old_value: Any, new: str, new_value: Any,
                    default: Any) -> Any:
    """The value of a keyword renamed from ``old`` to ``new``: ``old_value`` (with a
    ``DeprecationWarning``) when the caller still passes the old name, else ``new_value``.

    The old name is accepted for one release; passing both is refused.
    """
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"{owner} got both {new}= and its old name {old}=; pass {new}= only")
    warn(f"{owner}: the keyword {old}= is now {new}= (one name across VI and EM); {old}= "
         "will be removed in the next release", DeprecationWarning)
    return old_value


def check_positive(
    name: str, value: Any, *, integer: bool = False, allow_none: bool = False,
    finite: bool = True,
):
    """Refuse a non-positive, non-finite (unless ``finite=False``) or wrongly typed numeric
    argument, naming it."""
    if value is None and allow_none:
        return value
    kind = "a positive int" if integer else "a positive number"
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if not value > 0 or value != value:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be {kind}, got {value!r}; it must be finite")
    return value
