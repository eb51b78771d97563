"""What every ``run()`` shares -- VI on either backend and EM: the per-run state and the
policy for checkpoints, Ctrl-C and failures, written once.

The policy
----------
* **Checkpoints** are written atomically (:func:`pyrovi.checkpoint.save_checkpoint`), with
  the random state of the completed steps (:meth:`RunState.mark_rng`); a
  write that fails (a full disk) warns with :class:`~pyrovi.errors.CheckpointWarning` and
  the fit goes on, the previous checkpoint intact (:func:`write_checkpoint`).
* **Ctrl-C** stops the training loop; a checkpoint is written when the fit has a path, and
  the fit returns the result so far with an :class:`~pyrovi.errors.InterruptedFitWarning`
  (:func:`stop_on_interrupt`, :func:`warn_interrupted`).
* **Failures** keep what was done: an error raised by the model during training becomes a
  :class:`~pyrovi.errors.FitError` naming the step, after a checkpoint is written; it and
  a :class:`~pyrovi.errors.NonFiniteError` carry the last good result in ``err.result``
  (:func:`keep_result`, :func:`with_result`).  :func:`guard` applies both around a loop.

Configuration objects (:class:`pyrovi.VI`, :class:`pyrovi.EM`) hold none of this: each
``run()`` makes its own :class:`RunState`, so running one configured object twice gives two
independent runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyro
import torch

from pyrovi._runtime import warn
from pyrovi.checkpoint import Checkpoint, save_checkpoint
from pyrovi.errors import (
    CheckpointError,
    CheckpointWarning,
    FitError,
    InterruptedFitWarning,
    NonFiniteError,
    PyroviError,
)

__all__ = [
    "RunState",
    "write_checkpoint",
    "guard",
    "stop_on_interrupt",
    "keep_result",
    "warn_interrupted",
    "with_result",
    "load_params",
    "load_rng",
]


@dataclasses.dataclass
class RunState:
    """The state of one ``run()`` call, made by it and dropped when it returns.

    Attributes
    ----------
    seed : int
        The seed of the run.
    device : torch.device
        Where the run computes.
    checkpoint : str or None
        Where this run writes its checkpoints (``None``: it writes none).
    start : float
        ``time.perf_counter()`` when the run began.
    notes : list of str
        Remarks that end up on the result.
    interrupted : bool
        Whether the run was stopped by Ctrl-C.
    saved_on_interrupt : bool
        Whether a checkpoint was written when the run was interrupted.
    """

    seed: int
    device: torch.device
    checkpoint: str | None = None
    start: float = dataclasses.field(default_factory=time.perf_counter)
    notes: list = dataclasses.field(default_factory=list)
    interrupted: bool = False
    saved_on_interrupt: bool = False
    rng_mark: tuple | None = None

    def wall_time(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.start

    def mark_rng(self) -> None:
        """Record torch's random state as that of the completed steps.

        Call it before the first step and after each completed step: a checkpoint then
        stores this state, not the one after an interrupted step already drew its
        particles, so a resumed fit draws exactly what an uninterrupted one would have.
        """
        cuda = None
        if self.device.type == "cuda":
            cuda = torch.cuda.get_rng_state(self.device)
        self.rng_mark = (torch.get_rng_state(), cuda)


def write_checkpoint(run: RunState, make: Callable[[], Checkpoint], *, at: str) -> bool:
    """Write the checkpoint ``make()`` to the run's path; warn and go on if that fails.

    Parameters
    ----------
    run : RunState
        The run; nothing is written when it has no checkpoint path.
    make : callable
        Builds the :class:`~pyrovi.checkpoint.Checkpoint` (called only when one is written).
    at : str
        Where the fit stands, for the warning (``"step 200"``, ``"iteration 12"``).

    Returns
    -------
    bool
        Whether the checkpoint was written.
    """
    if run.checkpoint is None:
        return False
    try:
        checkpoint = make()
        if run.rng_mark is not None:  # the state of the completed steps (see mark_rng)
            cpu, cuda = run.rng_mark
            checkpoint = dataclasses.replace(
                checkpoint, rng_state=cpu,
                cuda_rng_state=cuda if checkpoint.cuda_rng_state is not None else None,
            )
        save_checkpoint(run.checkpoint, checkpoint)
    except Exception as err:
        warn(
            f"could not write checkpoint {run.checkpoint!r} at {at} ({type(err).__name__}: "
            f"{err}); training goes on and the previous checkpoint, if any, is intact. Free "
            "disk space or pass another path.",
            CheckpointWarning,
        )
        return False
    return True


@contextlib.contextmanager
def stop_on_interrupt(
    run: RunState, *, at: Callable[[], str], save: Callable[[], Checkpoint] | None = None
) -> Iterator[None]:
    """End the block quietly on Ctrl-C: write a checkpoint (when ``save`` is given and the
    run has a path) and set ``run.interrupted``; the caller then returns the result so far
    and calls :func:`warn_interrupted`.  ``at()`` says where the fit stands
    (``"step 40"``)."""
    try:
        yield
    except KeyboardInterrupt:
        run.interrupted = True
        if save is not None:
            run.saved_on_interrupt = write_checkpoint(run, save, at=at())


@contextlib.contextmanager
def keep_result(
    run: RunState,
    *,
    unit: str,
    done: Callable[[], int],
    partial: Callable[[], Any],
    save: Callable[[], Checkpoint] | None = None,
    who: str = "the model",
    trace: str = "trace",
) -> Iterator[None]:
    """Make a failure in the block keep what was done.

    A :class:`~pyrovi.errors.FitError` (a :class:`~pyrovi.errors.NonFiniteError`, say)
    without a result gets ``partial()``; another :class:`~pyrovi.errors.PyroviError` keeps
    its class and message and gets ``step`` and ``result`` attributes; any other exception
    becomes a ``FitError`` naming the step, with ``partial()`` as its result, after a
    checkpoint is written.

    Parameters
    ----------
    run : RunState
        The run.
    unit : str
        What the loop counts: ``"step"`` or ``"iteration"``.
    done : callable
        ``() -> int``: the steps completed so far.
    partial : callable
        ``() -> result``: the result of the completed steps.
    save : callable, optional
        ``() -> Checkpoint`` of the completed steps.
    who, trace : str
        What ran the failing code and what the trace holds, for the error message.
    """
    try:
        yield
    except FitError as err:
        if err.result is not None:
            raise
        raise with_result(err, partial()) from err
    except PyroviError as err:  # its own class and message, with the result attached
        if getattr(err, "result", None) is None:
            err.step, err.result = done(), partial()
        raise
    except Exception as err:
        n = done()
        written = save is not None and write_checkpoint(run, save, at=f"{unit} {n}")
        raise FitError(
            f"{who} raised {type(err).__name__} at {unit} {n}: {err}. The parameters of the "
            f"last completed {unit} and the {trace} so far are in err.result"
            + (f"; checkpoint {run.checkpoint!r} holds them too" if written else ""),
            step=n,
            result=partial(),
        ) from err


@contextlib.contextmanager
def guard(
    run: RunState,
    *,
    unit: str,
    done: Callable[[], int],
    partial: Callable[[], Any],
    save: Callable[[], Checkpoint] | None = None,
    who: str = "the model",
    trace: str = "trace",
) -> Iterator[None]:
    """The whole policy around a training loop: :func:`keep_result` around
    :func:`stop_on_interrupt` (same parameters)."""
    with keep_result(
        run, unit=unit, done=done, partial=partial, save=save, who=who, trace=trace
    ), stop_on_interrupt(run, at=lambda: f"{unit} {done()}", save=save):
        yield


def warn_interrupted(run: RunState, message: str) -> None:
    """Warn that the run was interrupted (Ctrl-C): ``message``, and the checkpoint if one
    was written then."""
    if run.saved_on_interrupt:
        message += f" (checkpoint {run.checkpoint!r} written)"
    warn(message, InterruptedFitWarning)


def with_result(err: FitError, result: Any, step: int | None = None) -> FitError:
    """A copy of ``err`` (same class, message and site) that carries ``result``, and
    ``step`` when given; raise it ``from err``."""
    step = err.step if step is None else step
    if isinstance(err, NonFiniteError):
        return type(err)(str(err), step=step, site=err.site, result=result)
    return type(err)(str(err), step=step, result=result)


def load_params(saved: Mapping[str, torch.Tensor], *, owner: str) -> None:
    """Copy a checkpoint's unconstrained parameter values into the active parameter store.

    The values are copied into the store's own tensors, which must exist already (run the
    guide or model first): swapping the tensors in the store is ignored by an AutoGuide
    that holds its own.  ``owner`` (``"guide"``, ``"model"``) names what should have created
    them, for the error.
    """
    store = pyro.get_param_store()
    missing = sorted(set(saved) - set(store.keys()))
    if missing:
        raise CheckpointError(
            f"the checkpoint holds parameters {missing[:3]} that this {owner} does not "
            f"create; resume with the {owner} the checkpoint was written for"
        )
    with torch.no_grad():
        for name, value in saved.items():
            unconstrained = store[name].unconstrained()
            unconstrained.copy_(value.to(unconstrained.device))


def load_rng(checkpoint: Checkpoint, device: torch.device) -> None:
    """Restore torch's random state from ``checkpoint`` (last, so that the continuation
    draws what the uninterrupted fit would have drawn)."""
    torch.set_rng_state(checkpoint.rng_state)
    if checkpoint.cuda_rng_state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint.cuda_rng_state, device)
