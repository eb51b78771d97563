"""Checkpoints: everything a fit needs to continue, written atomically.

A checkpoint holds the fit's configuration (the model and guide are pickled by reference,
so they must be importable functions), the Pyro parameter store, the optimizer state with
its parameter order, the step-size schedule, torch's random state, the step count and the
trace so far.  It is written to a temporary file in the same folder and renamed over the
old one, so a failure while writing (a full disk) leaves the previous checkpoint intact.

Checkpoints are Python pickles (``torch.save``): load only files you trust.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from pyrovi._version import __version__
from pyrovi.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "fingerprint",
    "check_picklable",
    "check_checkpoint_path",
]

#: Bumped whenever the layout of a checkpoint changes; other formats are refused.
FORMAT = 1


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
        Model site -> value shape, to refuse a checkpoint of another model.
    step : int
        Steps (or iterations) completed.
    trace : list of float
        The ELBO (or log-evidence) trace so far.
    param_state : dict
        The Pyro parameter-store state (unconstrained tensors and constraints).
    optim_state : dict or None
        The torch optimizer's ``state_dict``.
    optim_param_names : list of str
        Pyro parameter names in the optimizer's order.
    schedule : dict
        The convergence rule's state and the base step sizes.
    rng_state : torch.Tensor
        torch's CPU random state after the last completed step.
    cuda_rng_state : torch.Tensor or None
        The CUDA random state, when the fit runs on a GPU.
    pyrovi_version : str
        The version that wrote the checkpoint.
    format : int
        The checkpoint layout version.
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


def fingerprint(trace) -> dict[str, tuple]:
    """Site name -> value shape of every sample site of a prototype trace."""
    return {
        name: tuple(site["value"].shape) if isinstance(site["value"], torch.Tensor) else ()
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }


def check_picklable(name: str, obj: Any) -> None:
    """Refuse a model or guide that a checkpoint could not store by reference."""
    try:
        pickle.dumps(obj)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint= needs the {name} to be picklable (a function defined at the top "
            f"level of an importable module, or a picklable object); {name} "
            f"{getattr(obj, '__qualname__', obj)!r} is not ({type(err).__name__}: {err}). "
            f"Move it to module level, or pass {name}= to pyrovi.resume() when resuming."
        ) from err


def check_checkpoint_path(checkpoint, model, guide=None) -> str | None:
    """Check the ``checkpoint`` argument of a fit before any work: a path in a writable
    folder, and a model (and guide function) that a checkpoint can store by reference."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a file path (str or os.PathLike), got "
            f"{type(checkpoint).__name__}"
        )
    path = os.fspath(checkpoint)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(
            f"checkpoint={path!r}: folder {folder!r} does not exist or is not writable; "
            "create it or pass another path"
        )
    check_picklable("model", model)
    if guide is not None:
        check_picklable("guide", guide)
    return path


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint, *, opener=None) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then rename).

    ``opener`` is the function that opens the temporary file (tests pass a failing one to
    simulate a full disk).  On any failure the temporary file is removed and the error is
    re-raised; the file at ``path`` is untouched.
    """
    path = os.fspath(path)
    opener = opener or open
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with opener(tmp, "wb") as fh:
            torch.save(dataclasses.asdict(checkpoint), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint, refusing a missing, corrupted or incompatible file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}; check the path")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"{path!r} is not a readable pyrovi checkpoint ({type(err).__name__}: {err}); "
            "the file is corrupted or truncated. Resume from another checkpoint or start "
            "the fit again."
        ) from err
    if not isinstance(data, Mapping) or "format" not in data or "kind" not in data:
        raise CheckpointError(
            f"{path!r} is not a pyrovi checkpoint (it holds a {type(data).__name__}); "
            "pass a file written by VI(..., checkpoint=...) or EM(..., checkpoint=...)"
        )
    if data["format"] != FORMAT:
        raise CheckpointError(
            f"{path!r} was written by pyrovi {data.get('pyrovi_version', '?')} in checkpoint "
            f"format {data['format']}; this pyrovi ({__version__}) reads format {FORMAT} "
            "only. Resume it with that pyrovi version, or start the fit again."
        )
    try:
        return Checkpoint(**data)
    except TypeError as err:
        raise CheckpointError(f"{path!r} is not a complete pyrovi checkpoint: {err}") from err


def check_compatible(
    checkpoint: Checkpoint, path: str, *, kind: str, family: str, prints: Mapping
) -> None:
    """Refuse a checkpoint of another inference kind, guide family or model."""
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
    saved = dict(checkpoint.fingerprint)
    if saved != dict(prints):
        diff = sorted(set(saved) ^ set(prints)) or sorted(
            k for k in saved if saved[k] != prints.get(k)
        )
        raise CheckpointError(
            f"{path!r} was written for another model: its sites differ from this model's "
            f"at {diff[:3]} (saved {[saved.get(k) for k in diff[:3]]}, now "
            f"{[prints.get(k) for k in diff[:3]]}); resume with the model and data the "
            "checkpoint was written for"
        )
