"""pyrovi: variational inference, exact-posterior EM and ELBO-vs-evidence diagnostics for
Pyro models."""

from pyrovi._version import __version__
from pyrovi.arviz import load_netcdf, save_netcdf, to_arviz
from pyrovi.calibration import CalibrationResult, calibrate, plot_calibration
from pyrovi.diagnostics import (
    AIS,
    Bracket,
    ComparisonTable,
    Diagnostics,
    Estimate,
    assess,
    check_evidence,
    compare,
    diagnose,
    error_bounds,
    evidence_bracket,
    log_evidence,
    plot_elbo,
    plot_gap,
)
from pyrovi.em import EM, EMResult
from pyrovi.errors import (
    CheckpointError,
    CheckpointWarning,
    ConvergenceWarning,
    FallbackWarning,
    FitError,
    InterruptedFitWarning,
    IntractableError,
    ModelError,
    ModelWarning,
    NonFiniteError,
    PyroviError,
    PyroviWarning,
    RankError,
)
from pyrovi.guides import FAMILIES
from pyrovi.resume import resume
from pyrovi.vi import VI, VIResult

__all__ = [
    "__version__",
    "VI",
    "VIResult",
    "resume",
    "to_arviz",
    "save_netcdf",
    "load_netcdf",
    "EM",
    "EMResult",
    "diagnose",
    "Diagnostics",
    "log_evidence",
    "Estimate",
    "evidence_bracket",
    "Bracket",
    "check_evidence",
    "error_bounds",
    "assess",
    "AIS",
    "compare",
    "ComparisonTable",
    "plot_elbo",
    "plot_gap",
    "calibrate",
    "CalibrationResult",
    "plot_calibration",
    "FAMILIES",
    "PyroviError",
    "ModelError",
    "IntractableError",
    "NonFiniteError",
    "FitError",
    "RankError",
    "CheckpointError",
    "PyroviWarning",
    "ConvergenceWarning",
    "ModelWarning",
    "FallbackWarning",
    "CheckpointWarning",
    "InterruptedFitWarning",
]
