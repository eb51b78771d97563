"""Histograms of the VSBC probabilities, one panel per latent site (matplotlib).

Draws on the given axes (a new figure when None), returns them and never calls
``plt.show()``; ArviZ's style is applied inside a context manager only.
"""

from __future__ import annotations

import numpy as np

from pyrovi.calibration.result import CalibrationResult

__all__ = ["plot_calibration"]


def plot_calibration(result: CalibrationResult, ax=None, *, bins: int | None = None,
                     alpha: float = 0.05):
    """Histogram of :math:`p_j = P_q(\\theta < \\theta^*_j)` per latent site.

    All scalar components of a site share its panel.  A calibrated fit gives a flat
    histogram (the dashed line); mass piled on one side means a biased approximation, a U
    shape a scale that is too small, a hump one that is too large.  Each title gives the
    site's smallest symmetry-test p-value and its verdict at ``alpha``.

    Parameters
    ----------
    result : CalibrationResult
        From :func:`pyrovi.calibrate`.
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        One axes per site (a single Axes for a single site); a new row of panels if None.
    bins : int, optional
        Histogram bins (default: about ``sqrt(num_simulations)``, between 5 and 20).
    alpha : float
        Significance level of the verdicts in the titles (default 0.05).

    Returns
    -------
    numpy.ndarray of matplotlib.axes.Axes
        One per site, in ``result.sites`` order.
    """
    import matplotlib.pyplot as plt

    from pyrovi.diagnostics.plots import _style

    if not isinstance(result, CalibrationResult):
        raise TypeError(
            f"result must be a pyrovi CalibrationResult (from pyrovi.calibrate), got "
            f"{type(result).__name__}"
        )
    sites = result.sites
    if bins is None:
        bins = int(np.clip(round(np.sqrt(result.num_simulations)), 5, 20))
    verdicts = result.passed(alpha)
    with _style():
        if ax is None:
            _, axes = plt.subplots(
                1, len(sites), figsize=(4 * len(sites), 3.2), squeeze=False
            )
            axes = axes[0]
        else:
            axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
            if axes.size != len(sites):
                raise ValueError(
                    f"ax holds {axes.size} axes but the result has {len(sites)} latent "
                    f"site(s) {list(sites)}; pass one axes per site, or ax=None"
                )
        for panel, site in zip(axes, sites):
            p = result.probabilities[site].ravel()
            panel.hist(p, bins=bins, range=(0.0, 1.0), density=True, color="C0", alpha=0.8)
            panel.axhline(1.0, color="k", linestyle="--", linewidth=1)
            panel.axvline(0.5, color="0.5", linewidth=1)
            panel.set_xlim(0.0, 1.0)
            panel.set_xlabel(r"$P_q(\theta < \theta^*)$")
            pmin = float(np.min(result.pvalue[site]))
            verdict = "passed" if verdicts[site] else "failed"
            panel.set_title(f"{site}: min p = {pmin:.2g} ({verdict})")
        axes[0].set_ylabel("density")
    return np.asarray(axes, dtype=object)
