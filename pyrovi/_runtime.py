"""Process-level plumbing shared by every driver: seeds, parameter scopes, devices, warnings.

Nothing here does inference; these helpers keep fits independent of each other and of the
caller's global state (Pyro's global parameter store, torch's global random state).
"""

from __future__ import annotations

import contextlib
import inspect
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
    return int(seed)


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
        if not isinstance(device, (str, torch.device)):
            raise TypeError(
                f"device must be a str such as 'cpu' or 'cuda', a torch.device or None, "
                f"got {type(device).__name__}"
            )
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was requested but CUDA is not available on this "
                "machine; pass device='cpu' or device=None"
            )
        return dev
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


@contextlib.contextmanager
def fit_context(
    seed: int, device: torch.device, state: dict | None = None
) -> Iterator[dict]:
    """Seeded RNG + private parameter store + default device, for one fit or evaluation."""
    with seeded(seed, device), param_scope(state) as scoped, torch.device(device):
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


def check_positive(name: str, value: Any, *, integer: bool = False, allow_none: bool = False):
    """Refuse a non-positive (or wrongly typed) numeric argument, naming it."""
    if value is None and allow_none:
        return value
    kind = "a positive int" if integer else "a positive number"
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if not value > 0 or value != value:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value
