"""Exceptions and warnings raised by pyrovi.

Every error names the argument or model site at fault, what was expected, what was given
and what to do.  Errors raised while a fit is running carry the partial result so that
nothing is lost (``err.result``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PyroviError",
    "ModelError",
    "IntractableError",
    "NonFiniteError",
    "FitError",
    "RankError",
    "CheckpointError",
    "PyroviWarning",
    "CheckpointWarning",
    "InterruptedFitWarning",
    "ConvergenceWarning",
    "ModelWarning",
    "FallbackWarning",
]


class PyroviError(ValueError):
    """Base class of pyrovi's errors; a ``ValueError`` so that callers can catch either."""


class ModelError(PyroviError):
    """The model (or the model/guide pair) cannot be used as written.

    Parameters
    ----------
    message : str
        What is wrong and what to do.
    site : str, optional
        The name of the model site at fault.
    """

    def __init__(self, message: str, *, site: str | None = None):
        super().__init__(message)
        self.site = site


class IntractableError(ModelError):
    """``method="exact"`` was asked of a model whose evidence has no exact form here.

    Raised by :func:`pyrovi.log_evidence` and :func:`pyrovi.diagnose`; ``site`` names the
    latent site that makes the evidence intractable.
    """


class FitError(PyroviError):
    """A fit stopped midway; nothing is lost.

    Attributes
    ----------
    step : int
        The (0-based) step or iteration at which the fit stopped.
    result : object
        The partial result (``VIResult`` or ``EMResult``) holding the parameters of the last
        good step and the trace so far.
    """

    def __init__(self, message: str, *, step: int, result: Any = None):
        super().__init__(message)
        self.step = step
        self.result = result


class NonFiniteError(FitError):
    """A fit produced a NaN or infinite value and stopped.

    Attributes
    ----------
    step : int
        The (0-based) step at which the non-finite values began.
    site : str or None
        The model or guide site whose log-density was non-finite, when one could be found.
    result : object
        The partial result holding the parameters of the last finite step and the trace so
        far.
    """

    def __init__(self, message: str, *, step: int, site: str | None, result: Any = None):
        super().__init__(message, step=step, result=result)
        self.site = site


class RankError(FitError):
    """Another rank of a distributed fit (:mod:`pyrovi.distributed`) raised; every rank
    stopped at the same collective.

    Attributes
    ----------
    rank : int or None
        The rank that raised first (its error is named in the message).
    """

    def __init__(self, message: str, *, step: int, result: Any = None, rank: int | None = None):
        super().__init__(message, step=step, result=result)
        self.rank = rank


class CheckpointError(PyroviError):
    """A checkpoint cannot be read, or belongs to another model, guide or pyrovi version."""


class PyroviWarning(UserWarning):
    """Base class of pyrovi's warnings."""


class ConvergenceWarning(PyroviWarning):
    """A fit stopped at its step budget before the convergence rule was met."""


class ModelWarning(PyroviWarning):
    """The model looks like it holds a mistake (for instance no observed site)."""


class FallbackWarning(PyroviWarning):
    """pyrovi took a slower but correct path (for instance a loop over particles)."""


class CheckpointWarning(PyroviWarning):
    """A checkpoint could not be written; the fit goes on and the previous one is intact."""


class InterruptedFitWarning(PyroviWarning):
    """A fit was interrupted (Ctrl-C); the result so far is returned."""
