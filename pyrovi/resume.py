"""``pyrovi.resume``: continue a VI or EM fit from its checkpoint."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from pyrovi.checkpoint import load_checkpoint
from pyrovi.em import EM
from pyrovi.vi import VI

__all__ = ["resume"]


def resume(
    path: str | os.PathLike,
    *,
    num_steps: int | None = None,
    model: Callable | None = None,
    guide: object = None,
    allow_other_data: bool = False,
) -> VI | EM:
    """Configure the fit saved in a checkpoint so that ``.run(*args)`` continues it.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint written by ``VI(..., checkpoint=path)`` or ``EM(..., checkpoint=path)``.
    num_steps : int, optional
        Steps (VI) or iterations per restart (EM) in all, those before the checkpoint
        included; default: the original budget.
    model, guide : optional
        Replacements for the pickled model and guide (e.g. when they were not importable);
        ``guide`` applies to VI only.  When given, the name stored in the checkpoint is not
        imported at all.
    allow_other_data : bool
        Continue the fit on data other than those the checkpoint was written for (default
        False: ``run`` refuses other data of the same shape with a ``CheckpointError``).

    Returns
    -------
    VI or EM
        Its ``run`` takes the same model arguments as the original fit, checks that the
        model's sites and the guide family match the checkpoint (whose format version was
        checked on loading) and that the data are those of the checkpoint, and continues
        where the checkpoint left off: on the CPU a resumed VI fit ends with parameters and
        an ELBO trace bit-identical to an uninterrupted one.  The continued fit writes its
        checkpoints to ``path`` (where the checkpoint is now, not where it was first
        written).

    Raises
    ------
    CheckpointError
        A missing, foreign, corrupted or unsafe file (nothing in it is run), or a stored
        model or guide that cannot be imported here (pass ``model=`` / ``guide=``).
    """
    if not isinstance(allow_other_data, bool):
        raise TypeError(f"allow_other_data must be True or False, got {allow_other_data!r}")
    path = os.fspath(path)
    ckpt = load_checkpoint(path, skip=_supplied(model=model, guide=guide))
    if allow_other_data:
        ckpt = dataclasses.replace(ckpt, allow_other_data=True)
    config = dict(ckpt.config)
    config["checkpoint"] = path  # where the checkpoint is now: a moved file is written here
    config["overwrite"] = True  # it replaces its own checkpoint
    if model is not None:
        config["model"] = model
    if ckpt.kind == "em":
        if guide is not None:
            raise ValueError("guide= applies to VI checkpoints only; this one is of an EM fit")
        if num_steps is not None:
            config.pop("num_iters", None)  # a checkpoint of pyrovi 0.1
            config["num_steps"] = num_steps
        fit = EM(**config)
    else:
        if num_steps is not None:
            config["num_steps"] = num_steps
        if guide is not None:
            config["guide"] = guide
        fit = VI(**config)
    fit._resume = (ckpt, path)
    return fit


def _supplied(**given) -> tuple[str, ...]:
    """The configuration entries the caller passes again (not imported from the file)."""
    return tuple(name for name, value in given.items() if value is not None)
