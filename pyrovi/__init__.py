"""pyrovi: variational inference, exact-posterior EM and ELBO-vs-evidence diagnostics for
Pyro models."""

from pyrovi._version import __version__
from pyrovi.errors import (
    ConvergenceWarning,
    FallbackWarning,
    ModelError,
    ModelWarning,
    NonFiniteError,
    PyroviError,
    PyroviWarning,
)
from pyrovi.arviz import to_arviz
from pyrovi.guides import FAMILIES
from pyrovi.vi import VI, VIResult

__all__ = [
    "__version__",
    "VI",
    "VIResult",
    "to_arviz",
    "FAMILIES",
    "PyroviError",
    "ModelError",
    "NonFiniteError",
    "PyroviWarning",
    "ConvergenceWarning",
    "ModelWarning",
    "FallbackWarning",
]
