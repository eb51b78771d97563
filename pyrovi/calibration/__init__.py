"""Simulation-based calibration of posterior approximations (VSBC, Yao et al. 2018).

``calibrate(model, *args, guide=..., num_simulations=...)`` simulates data from the prior,
fits each data set and tests whether the posterior probabilities of the true values are
symmetric about 1/2; :func:`plot_calibration` draws their histograms.
"""

from pyrovi.calibration.driver import calibrate
from pyrovi.calibration.plot import plot_calibration
from pyrovi.calibration.result import CalibrationResult
from pyrovi.calibration.stats import posterior_probability, symmetry_test

__all__ = [
    "calibrate",
    "CalibrationResult",
    "plot_calibration",
    "posterior_probability",
    "symmetry_test",
]
